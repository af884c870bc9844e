//! The node's shared state: what the swarm task, the queries, the inbound handler and
//! maintenance all read (the routing view, liveness, whether catch-up finished), the
//! event channel, the metrics, and the local store with its one async-safe access path
//! ([`NodeState::with_store`]).

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dht_core::store::RecordStore;
use libp2p::PeerId;
use parking_lot::RwLock;
use tokio::sync::broadcast;

use crate::events::NodeEvent;
use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::routing::{save_peers, RoutingView};
use crate::rtt::RttTable;
use crate::NodeError;

/// The saved routing table, inside the data directory.
pub(crate) const PEERS_FILE: &str = "peers.json";

/// State shared by every part of a running node.
pub(crate) struct NodeState {
    /// Snapshot of the routing table.
    pub view: RoutingView,
    /// Events for the host.
    pub events: broadcast::Sender<NodeEvent>,
    /// Metrics.
    pub metrics: Metrics,
    /// Suspected and dead peers.
    pub liveness: Liveness,
    /// Observed round trips per peer: the queries' hedge deadlines.
    pub rtt: RttTable,
    /// Peers with an open connection (kept by the swarm task): a visor reads from the
    /// connected ones first.
    pub connected: RwLock<HashSet<PeerId>>,
    /// The local store (full nodes); taken at shutdown.
    store: RwLock<Option<Arc<dyn RecordStore>>>,
    /// Whether the start-up catch-up finished (until then the local copy alone answers
    /// no read).
    caught_up: AtomicBool,
    /// Whether a bootstrap round finished (or there was nobody to bootstrap from): from
    /// then on a routing table smaller than `k` is taken as the whole membership, and
    /// queries answer from it without waiting for their lookup.
    bootstrapped: AtomicBool,
    /// Whether no k-bucket of the routing table is full: every full node this node has
    /// heard of is in it (see [`NodeState::membership_known`]).
    buckets_have_room: AtomicBool,
    /// Whether a round of the members exchange brought no new member (or this node is
    /// the first of its network): see [`crate::membership`].
    members_learned: AtomicBool,
    /// Microseconds every inbound item request is held before it is handled: a stalled
    /// (slow, not dead) replica, set by tests through `Node::set_answer_delay`.
    answer_delay_us: AtomicU64,
}

impl NodeState {
    /// The state of a node starting with `store`; `caught_up` when there is nothing to
    /// catch up on (a client, or an empty store with no stale copy to serve).
    pub fn new(
        metrics: Metrics,
        liveness: Liveness,
        rtt: RttTable,
        store: Option<Arc<dyn RecordStore>>,
        caught_up: bool,
    ) -> Self {
        let (events, _) = broadcast::channel(1024);
        NodeState {
            view: RoutingView::default(),
            events,
            metrics,
            liveness,
            rtt,
            connected: RwLock::new(HashSet::new()),
            store: RwLock::new(store),
            caught_up: AtomicBool::new(caught_up),
            bootstrapped: AtomicBool::new(false),
            buckets_have_room: AtomicBool::new(false),
            members_learned: AtomicBool::new(false),
            answer_delay_us: AtomicU64::new(0),
        }
    }

    /// Whether the start-up catch-up has finished.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Records that the start-up catch-up finished: reads trust the local copy.
    pub fn set_caught_up(&self) {
        self.caught_up.store(true, Ordering::Release);
    }

    /// Whether the routing table, if smaller than `k`, holds the whole membership: a
    /// bootstrap round has finished.
    pub fn table_is_membership(&self) -> bool {
        self.bootstrapped.load(Ordering::Acquire)
    }

    /// Whether the routing table holds the whole membership of full nodes: a bootstrap
    /// round finished, the members exchange converged (see [`crate::membership`]), and no
    /// k-bucket is full (none had to leave a full node out). Then
    /// the responsible set of any target is computed from the table alone (one hop), and
    /// a put needs no lookup to confirm it: a small network of full nodes (tens of DMSG
    /// servers) is always in this state.
    pub fn membership_known(&self) -> bool {
        self.table_is_membership()
            && self.members_learned.load(Ordering::Acquire)
            && self.buckets_have_room.load(Ordering::Acquire)
    }

    /// Records that the members exchange converged (or that there is nobody to ask).
    pub fn set_members_learned(&self) {
        self.members_learned.store(true, Ordering::Release);
    }

    /// Whether every k-bucket had room at the last look at the routing table (a network
    /// small enough for one hop; see [`NodeState::membership_known`]).
    pub fn buckets_have_room(&self) -> bool {
        self.buckets_have_room.load(Ordering::Acquire)
    }

    /// Records whether every k-bucket has room.
    pub fn set_buckets_have_room(&self, room: bool) {
        self.buckets_have_room.store(room, Ordering::Release);
    }

    /// Records that a bootstrap round finished (or that there is nobody to ask).
    pub fn set_bootstrapped(&self) {
        self.bootstrapped.store(true, Ordering::Release);
    }

    /// How long inbound item requests are held before they are handled (zero unless a
    /// test stalls this node).
    pub fn answer_delay(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.answer_delay_us.load(Ordering::Relaxed))
    }

    /// Holds every inbound item request for `delay` before handling it (tests).
    #[cfg(feature = "test-util")]
    pub fn set_answer_delay(&self, delay: std::time::Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.answer_delay_us.store(us, Ordering::Relaxed);
    }

    /// Sends an event to every subscriber (none listening is fine).
    pub fn emit(&self, event: NodeEvent) {
        let _ = self.events.send(event);
    }

    /// The local store, while the node runs (full nodes).
    pub fn store(&self) -> Option<Arc<dyn RecordStore>> {
        self.store.read().clone()
    }

    /// Takes the store out (shutdown): new work no longer finds it.
    pub fn take_store(&self) -> Option<Arc<dyn RecordStore>> {
        self.store.write().take()
    }

    /// Runs `f` on the local store on the blocking pool: the path async code takes to
    /// the store (a read, a scan, a write), so that no store access stalls a reactor
    /// thread. `Ok(None)` when there is no store (a client, or a node shut down).
    pub async fn with_store<T, F>(&self, f: F) -> Result<Option<T>, NodeError>
    where
        F: FnOnce(&dyn RecordStore) -> T + Send + 'static,
        T: Send + 'static,
    {
        let Some(store) = self.store() else {
            return Ok(None);
        };
        let r = tokio::task::spawn_blocking(move || f(&*store)).await?;
        Ok(Some(r))
    }

    /// Saves the routing table into `data_dir` (an empty table is not saved: it would
    /// replace a useful one).
    pub fn save_routing_table(&self, data_dir: Option<&Path>) -> Result<(), NodeError> {
        if let Some(dir) = data_dir {
            let peers = self.view.snapshot();
            if !peers.is_empty() {
                save_peers(&dir.join(PEERS_FILE), &peers)?;
            }
        }
        Ok(())
    }
}
