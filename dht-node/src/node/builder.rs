//! [`NodeBuilder`]: configuration, identity and store of a node about to start.

use std::path::PathBuf;
use std::sync::Arc;

use dht_core::store::RecordStore;
use libp2p::{identity, Multiaddr};

use super::Node;
use crate::config::{NodeConfig, NodeMode};
use crate::NodeError;

/// Builds a [`Node`].
#[derive(Default)]
pub struct NodeBuilder {
    pub(super) config: NodeConfig,
    pub(super) keypair: Option<identity::Keypair>,
    pub(super) store: Option<Arc<dyn RecordStore>>,
}

impl NodeBuilder {
    /// Replaces the whole configuration.
    pub fn config(mut self, config: NodeConfig) -> Self {
        self.config = config;
        self
    }

    /// Full node or client.
    pub fn mode(mut self, mode: NodeMode) -> Self {
        self.config.mode = mode;
        self
    }

    /// Listen addresses (replacing the defaults).
    pub fn listen(mut self, addrs: Vec<Multiaddr>) -> Self {
        self.config.listen = addrs;
        self
    }

    /// Adds a bootstrap peer.
    pub fn bootstrap(mut self, addr: Multiaddr) -> Self {
        self.config.bootstrap.push(addr);
        self
    }

    /// Data directory (redb store, key, saved routing table).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.data_dir = Some(dir.into());
        self
    }

    /// Acceptance policy.
    pub fn policy(mut self, policy: dht_core::Policy) -> Self {
        self.config.policy = policy;
        self
    }

    /// The node's libp2p identity (default: loaded from or created in the data
    /// directory, else random ed25519). A secp256k1 identity lets a DMSG server use its
    /// Skywire key.
    pub fn keypair(mut self, keypair: identity::Keypair) -> Self {
        self.keypair = Some(keypair);
        self
    }

    /// A store to use instead of the default (redb in the data directory, else memory).
    pub fn store(mut self, store: Arc<dyn RecordStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Starts the node: listens, joins the network, starts maintenance.
    pub async fn build(self) -> Result<Node, NodeError> {
        Node::start(self).await
    }
}
