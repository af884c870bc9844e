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

#![deny(missing_docs)]

// The order a put travels through them is in the README ("Layout").
mod admission; // budgets of peers outside the routing table
mod bandwidth; // bytes per application protocol
mod config;
mod connections; // the connection budget
mod data_dir; // key and store files
mod error;
mod events;
mod get; // the get queries
mod inbound; // a replica validating and storing
mod kad_records; // items as kad records
mod liveness; // suspected and dead peers
mod maintenance; // catch-up, hand-off, re-replication, republish, expiry
mod membership; // learning every full node of a small network from peers
mod metrics;
mod network; // the swarm task, rate limits
mod node; // the API, start-up, shutdown
mod placement; // the responsible set, stand-ins for replicas that are down
mod protocol; // typed messages, the wire, framing and limits
mod put; // the put query
mod put_batch; // put items bound for one peer share requests
mod repair; // read repair
mod report;
mod routing; // the routing view, responsibility, the saved table
mod rtt; // observed round trips per peer, hedge deadlines
mod sent_values; // the last value put per target, base of the next patch
mod state; // the node's shared state
#[cfg(feature = "testnet")]
mod testnet;

pub mod http;
pub mod process;
pub mod settings;

pub use admission::Budget;
pub use config::{NodeConfig, NodeMode, RateLimit, DEFAULT_PORT};
pub use data_dir::{keypair_from_skywire_secret, load_or_create_keypair};
pub use error::NodeError;
pub use events::NodeEvent;
pub use metrics::{
    GetLabels, KadRejectLabels, Metrics, ProtocolBytesLabels, PutLabels, RequestLabels, SaltLabels,
    TrafficLabels,
};
pub use node::{Node, NodeBuilder, JOINING_ROUNDS};
pub use protocol::{ITEM_PROTOCOL, KAD_PROTOCOL};
pub use report::{
    admission_name, Found, GetMode, GetOutcome, GetReport, NodeStats, PutReport, ReplicaOutcome,
    ReplicaResult,
};
pub use routing::{closest_of, target_key};
#[cfg(feature = "testnet")]
pub use testnet::{Testnet, TestnetBuilder};

pub use libp2p::{identity, Multiaddr, PeerId};

/// Helpers for tests and benchmarks (feature `test-util`): the item protocol's prost
/// messages and codec, to put hostile or hand-made frames on the wire (see also
/// [`Node::request`] and [`Node::send_item_to`]).
#[cfg(feature = "test-util")]
pub mod test_util {
    pub use crate::protocol::*;
}
