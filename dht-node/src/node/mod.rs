//! The node API: a running [`Node`] and its accessors. The queries live beside it, one
//! file each: [`crate::put`], [`crate::get`] (and [`crate::repair`]); start-up in
//! [`start`], the builder in [`builder`], shutdown in [`shutdown`].

mod builder;
mod shutdown;
mod start;

use std::collections::HashMap;
use std::sync::Arc;

use dht_core::store::RecordStore;
use dht_core::{MutableItem, PutOptions, Target, Validator};
use libp2p::{Multiaddr, PeerId};
use parking_lot::Mutex;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use tracing::instrument;

pub use builder::NodeBuilder;
pub use start::JOINING_ROUNDS;

use crate::config::NodeConfig;
use crate::events::NodeEvent;
use crate::metrics::Metrics;
use crate::network::{Client, Command};
use crate::protocol::{PutItem, PutResult};
use crate::report::{NodeStats, ReplicaResult};
use crate::sent_values::SentValues;
use crate::sent_values::ValueForms;
use crate::state::NodeState;
use crate::NodeError;

/// A running DHT node. Cheap to clone; all clones drive the same node.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<NodeInner>,
}

/// What the clones of a [`Node`] share.
pub(crate) struct NodeInner {
    pub peer_id: PeerId,
    pub config: NodeConfig,
    pub validator: Validator,
    pub state: Arc<NodeState>,
    pub client: Client,
    pub tasks: Mutex<Vec<JoinHandle<()>>>,
    pub listen_addrs: Vec<Multiaddr>,
    /// The last value put per target: the base of the next put's patch.
    pub sent_values: SentValues,
    /// Put requests in flight and items waiting to share one, per peer.
    pub put_batches: crate::put_batch::PutBatches,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.inner.peer_id)
            .field("mode", &self.inner.config.mode)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A builder with default configuration.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// Refuses every connection to and from `peer` and closes the open ones (an operator
    /// banning a hostile peer; tests cutting a network in two).
    pub async fn block_peer(&self, peer: PeerId) -> Result<(), NodeError> {
        self.inner.client.command(Command::Block(peer)).await
    }

    /// Lifts [`Node::block_peer`] and dials the peer again.
    pub async fn unblock_peer(&self, peer: PeerId) -> Result<(), NodeError> {
        self.inner.client.command(Command::Unblock(peer)).await
    }

    /// Peers currently suspected or declared dead (skipped by puts and gets).
    pub fn peers_down(&self) -> Vec<PeerId> {
        self.inner.state.liveness.down()
    }

    /// Whether the routing table holds the whole membership of full nodes (see
    /// [`NodeConfig::bucket_size`](crate::NodeConfig::bucket_size)): puts and gets then
    /// route in one hop, with no lookup.
    pub fn membership_known(&self) -> bool {
        self.inner.state.membership_known()
    }

    /// Whether the start-up catch-up has finished (until then reads do not trust the
    /// local copy alone).
    pub fn caught_up(&self) -> bool {
        self.inner.state.caught_up()
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.peer_id
    }

    /// Addresses this node listens on (with the OS-chosen ports).
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.inner.listen_addrs
    }

    /// A dialable address with `/p2p/<peer id>`, for others to bootstrap from.
    pub fn bootstrap_addr(&self) -> Option<Multiaddr> {
        self.inner
            .listen_addrs
            .iter()
            .find(|a| crate::routing::is_dialable(a))
            .map(|a| {
                a.clone()
                    .with(libp2p::multiaddr::Protocol::P2p(self.inner.peer_id))
            })
    }

    /// The configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// The rules this node applies.
    pub fn validator(&self) -> &Validator {
        &self.inner.validator
    }

    /// The local store (full nodes). From async code, prefer [`Node::with_store`]: store
    /// calls block.
    pub fn store(&self) -> Option<Arc<dyn RecordStore>> {
        self.inner.state.store()
    }

    /// Runs `f` on the local store on the blocking pool, the async-safe way to read or
    /// scan the store; `Ok(None)` when there is none (a client, or a node shut down).
    pub async fn with_store<T, F>(&self, f: F) -> Result<Option<T>, NodeError>
    where
        F: FnOnce(&dyn RecordStore) -> T + Send + 'static,
        T: Send + 'static,
    {
        self.inner.state.with_store(f).await
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.state.metrics
    }

    /// Subscribes to node events.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.inner.state.events.subscribe()
    }

    /// Peers currently in the routing table with their addresses.
    pub fn routing_table(&self) -> HashMap<PeerId, Vec<Multiaddr>> {
        self.inner.state.view.snapshot()
    }

    /// A snapshot of the node's state.
    pub async fn stats(&self) -> Result<NodeStats, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .client
            .command(Command::ConnectedPeers(tx))
            .await?;
        let connected_peers = rx.await.map_err(|_| NodeError::Shutdown)?;
        let store_stats = self
            .with_store(|s| s.stats())
            .await?
            .transpose()?
            .unwrap_or_default();
        Ok(NodeStats {
            peer_id: self.inner.peer_id.to_string(),
            mode: self.inner.config.mode,
            routing_table_peers: self.inner.state.view.len(),
            connected_peers,
            membership_known: self.inner.state.membership_known(),
            items_stored: store_stats.items,
            store_bytes: store_stats.bytes,
            listen_addrs: self
                .inner
                .listen_addrs
                .iter()
                .map(|a| a.to_string())
                .collect(),
        })
    }

    /// Iterative lookup of the peers closest to `target` (nearest first).
    #[instrument(skip(self), fields(%target))]
    pub async fn closest_peers(&self, target: Target) -> Result<Vec<PeerId>, NodeError> {
        Ok(self
            .inner
            .client
            .lookup(target)
            .await?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    }

    /// The local store, if this node is a full node among the nodes responsible for
    /// `target` (a node outside that set may hold an outdated copy).
    pub(crate) fn responsible_store(&self, target: &Target) -> Option<Arc<dyn RecordStore>> {
        let store = self.store()?;
        let me = self.inner.peer_id;
        self.inner
            .state
            .view
            .responsible(target, self.inner.config.replication, me, &[])
            .contains(&me)
            .then_some(store)
    }

    /// Stores a verified item in the local store and says what happened.
    pub(crate) async fn store_locally(
        &self,
        verified: dht_core::VerifiedItem,
        opts: PutOptions,
    ) -> Result<ReplicaResult, NodeError> {
        let target = verified.target();
        let item = verified.item().clone();
        let Some(r) = self.with_store(move |s| s.put(verified, opts)).await? else {
            return Err(NodeError::Shutdown);
        };
        Ok(match r {
            Ok(a) => {
                self.inner.state.emit(NodeEvent::ItemStored {
                    target,
                    seq: item.seq,
                    tombstone: item.is_tombstone(),
                });
                self.metrics().count_put(&item.salt, Ok(a));
                ReplicaResult::Stored(a)
            }
            Err(dht_core::StoreError::Rejected(r)) => {
                self.metrics().count_put(&item.salt, Err(r.code()));
                ReplicaResult::Rejected {
                    code: r.code(),
                    detail: r.to_string(),
                }
            }
            Err(e) => return Err(e.into()),
        })
    }

    /// Sends an item to one peer as it is and returns what the peer did.
    pub(crate) async fn send_item(
        &self,
        peer: PeerId,
        item: &MutableItem,
        opts: PutOptions,
    ) -> ReplicaResult {
        let put = PutItem::plain(item.clone(), opts);
        self.exchange(peer, put).await.unwrap_or_else(|r| r.into())
    }

    /// Sends an item to one peer with its value in `forms`' first form (a patch against
    /// the last value this node put there, or compressed) to a peer speaking the coded
    /// protocol; a replica that lacks the patch's base gets the full value once more,
    /// compressed. Returns what the peer did.
    pub(crate) async fn send_item_coded(
        &self,
        peer: PeerId,
        item: &MutableItem,
        opts: PutOptions,
        forms: &ValueForms,
    ) -> ReplicaResult {
        let put = |coded| PutItem {
            item: item.clone(),
            opts,
            coded,
        };
        let first = forms.first.clone();
        let patched = first.as_ref().is_some_and(|w| w.base().is_some());
        match self.exchange(peer, put(first)).await {
            Err(PutResult::NeedBase { .. }) if patched => {
                self.metrics().put_need_base.inc();
                let full = forms.full();
                self.exchange(peer, put(full))
                    .await
                    .unwrap_or_else(|r| r.into())
            }
            Err(r) => r.into(),
            Ok(r) => r,
        }
    }

    /// One put item to one peer: what it did, or (`Err`) the put result to act on
    /// when it did not store it (rejected or lacking a patch's base). Items bound for
    /// the same peer at once share requests ([`crate::put_batch`]).
    async fn exchange(&self, peer: PeerId, put: PutItem) -> Result<ReplicaResult, PutResult> {
        self.exchange_put(peer, put).await
    }
}

/// Hooks for tests and tooling that probe what replicas accept (feature `test-util`).
#[cfg(feature = "test-util")]
impl Node {
    /// One raw item-protocol request to one peer, with the request timeout, answered
    /// as it came: tests put hostile frames on the wire with it. The typed API is
    /// [`Node::put`], [`Node::get`] and friends.
    pub async fn request(
        &self,
        peer: PeerId,
        request: crate::protocol::RequestProto,
    ) -> Result<crate::protocol::ResponseProto, NodeError> {
        self.inner
            .client
            .send(peer, crate::protocol::ItemRequest::Message(request))
            .await
    }

    /// Stalls this node: every inbound item request (put, get, sync) is held for
    /// `delay` before it is handled, as by an overloaded replica that is slow but not
    /// dead (its connections, pings and kad answers stay prompt). Zero lifts it.
    pub fn set_answer_delay(&self, delay: std::time::Duration) {
        self.inner.state.set_answer_delay(delay);
    }

    /// Sends an item to one peer as it is, without validating it locally first, and
    /// returns what the peer did.
    pub async fn send_item_to(
        &self,
        peer: PeerId,
        item: &MutableItem,
        opts: PutOptions,
    ) -> ReplicaResult {
        self.send_item(peer, item, opts).await
    }
}
