//! # dht-node
//!
//! A Kademlia full node for the Skywire DHT on libp2p: libp2p-kad (under this project's
//! own protocol name) does routing; items travel in this project's own request-response
//! protocol so that every put gets a truthful per-replica answer and every copy read is
//! validated with the [`dht_core`] rules.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dht_node::NodeError> {
//! use dht_core::{MutableItem, SigningKey};
//! use dht_node::{GetMode, Node};
//!
//! let node = Node::builder().data_dir("/var/lib/dht").build().await?;
//! let key = SigningKey::generate_ed25519();
//! let report = node.put(MutableItem::sign(&key, key.public_key(), "svc", 1, &b"[]"[..])).await?;
//! println!("stored on {} peers", report.stored_on().len());
//! let got = node.get(key.public_key(), b"svc", GetMode::First).await?;
//! assert_eq!(got.value(), Some(&b"[]"[..]));
//! node.shutdown().await;
//! # Ok(()) }
//! ```

mod admission;
pub mod config;
pub mod connections;
pub mod error;
pub mod events;
mod get;
pub mod http;
pub mod inbound;
pub mod kad_records;
mod liveness;
pub mod maintenance;
pub mod metrics;
pub mod network;
pub mod node;
mod placement;
pub mod process;
pub mod protocol;
mod put;
pub mod report;
pub mod routing;
pub mod settings;
pub mod testnet;

pub use admission::Budget;
pub use config::{NodeConfig, NodeMode, RateLimit, DEFAULT_PORT};
pub use error::NodeError;
pub use events::NodeEvent;
pub use node::{keypair_from_skywire_secret, load_or_create_keypair, Node, NodeBuilder};
pub use report::{
    Found, GetMode, GetReport, Lookup, NodeStats, PutReport, ReplicaOutcome, ReplicaResult,
};
pub use testnet::Testnet;

pub use libp2p::{identity, Multiaddr, PeerId};
