//! Background work of a full node: catch-up sync at start (only what changed since the
//! last sync with each peer), exchange of missed changes with a peer that comes back,
//! re-replication when a peer is declared dead, hand-off of items to peers that became
//! responsible for them, the republish pass, the expiry sweep and saving the routing
//! table. Everything streams from the store page by page; nothing collects the whole
//! store into memory.
//!
//! - [`sync`]: sync cursors, the start-up catch-up, pulls from a returning peer;
//! - [`push`]: re-replication, hand-off and republish (items pushed to the peers
//!   responsible for them).
//!
//! Maintenance works through a narrow [`Maintenance`] handle (shared state, the swarm
//! client, the configuration), never through the node itself.

mod push;
mod sync;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use dht_core::store::RecordStore;
use dht_core::Validator;
use libp2p::PeerId;
use rand::Rng;
use tokio::sync::broadcast;
use tracing::{debug, warn};

use crate::config::NodeConfig;
use crate::events::NodeEvent;
use crate::metrics::Metrics;
use crate::network::Client;
use crate::state::NodeState;
use crate::NodeError;
use push::{push_responsible, rereplicate};
use sync::{catch_up, pull_from, SyncCursors};

/// Wait after a new peer appears before handing off (several joins share one pass).
const HANDOFF_DEBOUNCE: Duration = Duration::from_millis(300);
/// A timer that is not armed: it fires in a year.
const NEVER: Duration = Duration::from_secs(3600 * 24 * 365);

/// What maintenance may use of a node.
pub(crate) struct Maintenance {
    /// This node.
    pub local: PeerId,
    /// The node's configuration.
    pub config: NodeConfig,
    /// The rules items pulled from peers are validated with.
    pub validator: Validator,
    /// Routing view, liveness, events, metrics, the store.
    pub state: Arc<NodeState>,
    /// Requests to peers.
    pub client: Client,
}

impl Maintenance {
    fn peer_id(&self) -> PeerId {
        self.local
    }

    fn config(&self) -> &NodeConfig {
        &self.config
    }

    fn validator(&self) -> &Validator {
        &self.validator
    }

    fn store(&self) -> Option<Arc<dyn RecordStore>> {
        self.state.store()
    }

    fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.state.events.subscribe()
    }

    fn save_routing_table(&self) -> Result<(), NodeError> {
        self.state
            .save_routing_table(self.config.data_dir.as_deref())
    }
}

/// Runs the maintenance loop until the node shuts down.
pub(crate) async fn run(m: Arc<Maintenance>) {
    let mut events = m.subscribe();
    let cursors = Arc::new(SyncCursors::load(m.config().data_dir.as_deref()));
    tokio::spawn(catch_up(m.clone(), cursors.clone()));
    let mut departed: HashSet<PeerId> = HashSet::new();
    let rereplicate_at = tokio::time::sleep(NEVER);
    tokio::pin!(rereplicate_at);
    let config = m.config().clone();
    let mut sweep = tokio::time::interval(config.sweep_interval);
    let mut save = tokio::time::interval(config.save_interval);
    let mut new_peers: HashSet<PeerId> = HashSet::new();
    let handoff_at = tokio::time::sleep(NEVER);
    tokio::pin!(handoff_at);
    let republish_at = tokio::time::sleep(jittered(config.republish_interval));
    tokio::pin!(republish_at);
    let mut busy: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(NodeEvent::PeerAdded(p)) => {
                    new_peers.insert(p);
                    handoff_at.as_mut().reset(tokio::time::Instant::now() + HANDOFF_DEBOUNCE);
                }
                Ok(NodeEvent::PeerDeparted(p)) => {
                    departed.insert(p);
                    rereplicate_at.as_mut().reset(tokio::time::Instant::now() + HANDOFF_DEBOUNCE);
                }
                Ok(NodeEvent::PeerReturned(p)) => {
                    // Exchange what changed while apart: pull its changes since the last
                    // sync, and hand it back what it is responsible for (the copies this
                    // node held for it as a stand-in, and anything it missed).
                    let m = m.clone();
                    let cursors = cursors.clone();
                    tokio::spawn(async move {
                        let pulled = pull_from(&m, p, &cursors).await;
                        cursors.save();
                        debug!(peer = %p, items = pulled.len(), "pulled changes from a returning peer");
                        push_responsible(m, Some(HashSet::from([p]))).await;
                    });
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => debug!(n, "maintenance lagged on events"),
                Err(_) => break,
            },
            _ = &mut handoff_at => {
                handoff_at.as_mut().reset(tokio::time::Instant::now() + NEVER);
                if busy.as_ref().is_some_and(|t| !t.is_finished()) {
                    // Try again once the running pass is done.
                    handoff_at.as_mut().reset(tokio::time::Instant::now() + HANDOFF_DEBOUNCE);
                    continue;
                }
                let peers = std::mem::take(&mut new_peers);
                busy = Some(tokio::spawn(push_responsible(m.clone(), Some(peers))));
            }
            _ = &mut rereplicate_at => {
                rereplicate_at.as_mut().reset(tokio::time::Instant::now() + NEVER);
                let gone = std::mem::take(&mut departed);
                tokio::spawn(rereplicate(m.clone(), gone));
            }
            _ = &mut republish_at => {
                republish_at.as_mut().reset(tokio::time::Instant::now() + jittered(config.republish_interval));
                if busy.as_ref().is_none_or(|t| t.is_finished()) {
                    busy = Some(tokio::spawn(push_responsible(m.clone(), None)));
                }
            }
            _ = sweep.tick() => sweep_once(&m).await,
            _ = save.tick() => {
                if let Err(e) = m.save_routing_table() {
                    warn!(error = %e, "could not save the routing table");
                }
            }
        }
    }
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.9..1.1))
}

async fn sweep_once(m: &Maintenance) {
    let r = m
        .state
        .with_store(|store| {
            let removed = store.sweep_expired(100_000)?;
            Ok::<_, dht_core::StoreError>((removed, store.stats()?))
        })
        .await;
    match r {
        Ok(None) => {}
        Ok(Some(Ok((removed, stats)))) => {
            if removed > 0 {
                debug!(removed, "expired items swept");
            }
            m.metrics().items_stored.set(stats.items as i64);
            m.metrics().store_bytes.set(stats.bytes);
        }
        Ok(Some(Err(e))) => warn!(error = %e, "sweep failed"),
        Err(e) => warn!(error = %e, "sweep task failed"),
    }
}
