//! # dmsg-plugin
//!
//! What makes the DHT useful to Skywire: a DMSG server embeds [`DhtPlugin`] to run as a
//! full node and mounts its [gateway] (DHT reads in the shapes the HTTP discoveries
//! serve); the transport, service and DMSG discoveries push FULL per-key lists through
//! the [adapters] (salts "tp", "svc", "dmsg"); visors read with the [visor] client, DHT
//! first and HTTP as fallback.
//!
//! By construction, an edge's item IS its full list (one item per edge, never one per
//! transport), an emptied key becomes a signed tombstone that every replica keeps, and
//! values up to 1 MiB are accepted.

#![deny(missing_docs)]

pub mod adapters;
pub mod dht_to_http;
#[cfg(feature = "test-util")]
pub mod fakes;
pub mod formats;
pub mod gateway;
mod laggards;
pub mod mirror;
pub mod mirror_api;
pub mod plugin;
pub mod settings;
pub mod visor;

pub use adapters::{
    BatchOutcome, DmsgMirror, DmsgStore, ServiceMirror, ServiceStore, SourceError, TransportMirror,
    TransportStore,
};
pub use dht_to_http::{PusherConfig, PusherError};
pub use formats::{DmsgEntry, ServiceEntry, TransportEntry};
pub use gateway::GatewayConfig;
pub use mirror::{
    KeyOutcome, Mirror, MirrorAction, RetryPolicy, SeqClock, DEFAULT_COALESCE_WINDOW,
};
pub use plugin::{DhtPlugin, PluginConfig, PluginError, PushConfig};
pub use visor::{Answer, Source, VisorClient, VisorClientConfig};
