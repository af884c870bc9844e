//! Start-up: identity and store from the data directory, the swarm and its listeners,
//! the shared state, the swarm task, joining the network, maintenance.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use dht_core::store::{MemoryStore, RecordStore, RedbStore, StoreConfig};
use dht_core::Validator;
use libp2p::identity;
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{Node, NodeBuilder, NodeInner};
use crate::admission::StrangerAdmission;
use crate::config::NodeMode;
use crate::data_dir::{check_store_file, load_or_create_keypair, store_epoch, STORE_FILE};
use crate::inbound::Inbound;
use crate::liveness::Liveness;
use crate::maintenance::{self, Maintenance};
use crate::membership;
use crate::metrics::Metrics;
use crate::network::{build_swarm, listen, Client, Command, Driver};
use crate::protocol::decode_limits;
use crate::routing::load_peers;
use crate::rtt::RttTable;
use crate::state::{NodeState, PEERS_FILE};
use crate::NodeError;

/// How long a dead peer is still re-dialled (with backoff) before it is forgotten.
const FORGET_DEAD_AFTER: Duration = Duration::from_secs(6 * 60 * 60);

/// Commands queued for the swarm task at most.
const COMMAND_QUEUE: usize = 4096;

/// Extra bootstrap rounds after joining, seconds apart (see [`Node::join`]).
const EARLY_BOOTSTRAP_ROUNDS: [u64; 4] = [1, 3, 10, 30];

/// When a full node's last early round (a self-lookup and a members exchange, made by
/// every node that joins a network) starts, after it joined: until then a quiet network
/// still has bursts of joining traffic (measurements of other traffic wait past it).
pub const JOINING_ROUNDS: Duration = Duration::from_secs({
    let mut sum = 0;
    let mut i = 0;
    while i < EARLY_BOOTSTRAP_ROUNDS.len() {
        sum += EARLY_BOOTSTRAP_ROUNDS[i];
        i += 1;
    }
    sum
});
/// Seconds between bootstrap rounds after the early ones, while the routing table
/// changes.
const PERIODIC_BOOTSTRAP_SECS: u64 = 5 * 60;
/// The longest wait between rounds: the wait doubles from [`PERIODIC_BOOTSTRAP_SECS`]
/// up to this while rounds find the routing table unchanged (new nodes announce
/// themselves when they join; the rounds only catch what that missed).
const MAX_BOOTSTRAP_SECS: u64 = 40 * 60;

impl Node {
    pub(super) async fn start(builder: NodeBuilder) -> Result<Node, NodeError> {
        let NodeBuilder {
            config,
            keypair,
            store,
        } = builder;
        if let Some(dir) = &config.data_dir {
            std::fs::create_dir_all(dir)?;
        }
        let keypair = match (keypair, &config.data_dir) {
            (Some(k), _) => k,
            (None, Some(dir)) => load_or_create_keypair(dir)?,
            (None, None) => identity::Keypair::generate_ed25519(),
        };
        let peer_id = keypair.public().to_peer_id();
        let validator = Validator::new(config.policy.clone());
        if let (Some(dir), NodeMode::Full) = (&config.data_dir, config.mode) {
            check_store_file(dir, config.repair_store)?;
        }
        let epoch = match &config.data_dir {
            Some(dir) => store_epoch(dir)?,
            None => rand::random(),
        };
        let store: Option<Arc<dyn RecordStore>> = match (config.mode, store) {
            (NodeMode::Client, _) => None,
            (NodeMode::Full, Some(s)) => Some(s),
            (NodeMode::Full, None) => {
                let store_config = StoreConfig {
                    validator: validator.clone(),
                    limits: config.store_limits,
                    ..StoreConfig::default()
                };
                Some(match &config.data_dir {
                    Some(dir) => Arc::new(
                        RedbStore::open(dir.join(STORE_FILE), store_config)
                            .map_err(|e| NodeError::from_store_open(dir.join(STORE_FILE), e))?,
                    ),
                    None => Arc::new(MemoryStore::new(store_config)),
                })
            }
        };

        let metrics = Metrics::new();
        let mut swarm = build_swarm(keypair, &config, &metrics)?;
        for addr in &config.external_addresses {
            swarm.add_external_address(addr.clone());
        }
        let listen_addrs = listen(&mut swarm, &config.listen).await?;

        let store_is_empty = match &store {
            Some(s) => s.stats()?.items == 0,
            None => true,
        };
        // A client has nothing to catch up; a full node reads from others until its
        // catch-up finished. An empty store has no stale copy to serve.
        let caught_up = config.mode == NodeMode::Client || store_is_empty;
        let state = Arc::new(NodeState::new(
            metrics,
            Liveness::new(config.dead_after, FORGET_DEAD_AFTER),
            RttTable::new(config.min_request_deadline, config.request_timeout),
            store.clone(),
            caught_up,
        ));
        let limits = decode_limits(validator.policy());
        let inbound = store.map(|store| {
            Arc::new(Inbound {
                store,
                validator: validator.clone(),
                limits,
                state: state.clone(),
                local: peer_id,
                replication: config.replication,
                max_message_len: config.max_message_len(),
                epoch,
                strangers: StrangerAdmission::new(
                    config.stranger_items_per_peer,
                    config.stranger_items_per_range,
                    config.stranger_bytes,
                ),
            })
        });
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let driver = Driver::new(swarm, rx, tx.clone(), state.clone(), inbound, &config);
        let driver_task = tokio::spawn(driver.run());
        let client = Client::new(
            tx,
            state.clone(),
            limits,
            config.request_timeout,
            config.lookup_timeout,
        );

        let node = Node {
            inner: Arc::new(NodeInner {
                peer_id,
                config,
                validator,
                state,
                client,
                tasks: Mutex::new(vec![driver_task]),
                listen_addrs,
                sent_values: Default::default(),
                put_batches: Default::default(),
            }),
        };
        info!(peer_id = %node.peer_id(), mode = ?node.inner.config.mode, "node started");
        node.join().await?;
        if node.store().is_some() {
            let handle = Maintenance {
                local: node.peer_id(),
                config: node.inner.config.clone(),
                validator: node.inner.validator.clone(),
                state: node.inner.state.clone(),
                client: node.inner.client.clone(),
            };
            let task = tokio::spawn(maintenance::run(Arc::new(handle)));
            node.inner.tasks.lock().push(task);
        }
        Ok(node)
    }

    /// Adds saved and bootstrap peers and starts a kad bootstrap.
    async fn join(&self) -> Result<(), NodeError> {
        let client = &self.inner.client;
        let mut known = 0;
        if let Some(dir) = &self.inner.config.data_dir {
            match load_peers(&dir.join(PEERS_FILE)) {
                Ok(peers) => {
                    for (peer, addrs) in peers {
                        for addr in addrs {
                            client.command(Command::AddPeer(peer, addr)).await?;
                            known += 1;
                        }
                    }
                }
                Err(e) => warn!(error = %e, "ignoring unreadable saved routing table"),
            }
        }
        for addr in self.inner.config.bootstrap.clone() {
            let peer = addr.iter().find_map(|p| match p {
                libp2p::multiaddr::Protocol::P2p(id) => Some(id),
                _ => None,
            });
            match peer {
                Some(peer) if peer != self.inner.peer_id => {
                    client.command(Command::AddPeer(peer, addr.clone())).await?;
                    known += 1;
                }
                Some(_) => {}
                None => client.command(Command::Dial(addr.clone())).await?,
            }
        }
        let early: &[u64] = if known == 0 {
            // The first node of a network: its (empty) table is the whole membership.
            self.inner.state.set_bootstrapped();
            self.inner.state.set_members_learned();
            &[]
        } else {
            info!(known, "joining the network");
            client
                .command(match self.inner.config.mode {
                    NodeMode::Full => Command::Bootstrap,
                    // A visor needs full nodes to read from, not a table spanning the
                    // key space: one lookup of its own id (a bootstrap adds a lookup
                    // per bucket, each asking k full nodes; a read whose responsible
                    // set the table misses looks it up anyway).
                    NodeMode::Client => Command::SelfLookup,
                })
                .await?;
            match self.inner.config.mode {
                NodeMode::Full => &EARLY_BOOTSTRAP_ROUNDS,
                // A visor makes no early rounds: each would dial the full nodes it asks,
                // and a fleet of visors must not storm them. It learns of full nodes
                // that joined later at its periodic rounds.
                NodeMode::Client => &[],
            }
        };
        // Nodes joining at the same time may each miss the other in their first round
        // (the peer they asked had not yet added the other): a few early rounds (lookups
        // of the node's own id: its neighbours are what a concurrent join may miss; a
        // full bootstrap per round made a forming network burn its CPU for a minute),
        // then a full bootstrap every 5 minutes, backing off to 40 while the routing table stays the same
        // (kad's own periodic bootstrap is off: it warns "No known peers" on a lone
        // bootstrap node; a round with an empty routing table is skipped quietly).
        // A visor's rounds are lookups of its own id every 40 minutes, jittered: each
        // dials the k full nodes it asks (a handshake on each), so a fleet of visors
        // rounding every 5 minutes would cost the full nodes more than the fleet's
        // idle connections do (1,000 visors: ~70 handshakes a second). It learns of
        // full nodes that joined since then from its reads' lookups.
        let client = client.clone();
        let early = early.to_vec();
        let state = self.inner.state.clone();
        let me = self.inner.peer_id;
        let visor = self.inner.config.mode == NodeMode::Client;
        let rounds = tokio::spawn(async move {
            for secs in early {
                // Members are asked for twice per round, each time until an answer
                // brings nothing new: a forming network's tables fill from each other,
                // and each exchange finds more.
                let half = Duration::from_millis(secs * 500);
                tokio::time::sleep(half).await;
                membership::converge(&client, &state, me).await;
                tokio::time::sleep(half).await;
                if client.command(Command::SelfLookup).await.is_err() {
                    return;
                }
                membership::converge(&client, &state, me).await;
            }
            let mut wait = if visor {
                MAX_BOOTSTRAP_SECS
            } else {
                PERIODIC_BOOTSTRAP_SECS
            };
            let mut last = state.view.snapshot().into_keys().collect::<HashSet<_>>();
            loop {
                let jitter = if visor {
                    rand::thread_rng().gen_range(0.9..1.1)
                } else {
                    1.0
                };
                tokio::time::sleep(Duration::from_secs(wait).mul_f64(jitter)).await;
                let table = state.view.snapshot().into_keys().collect::<HashSet<_>>();
                wait = if table == last || visor {
                    (wait * 2).min(MAX_BOOTSTRAP_SECS)
                } else {
                    PERIODIC_BOOTSTRAP_SECS
                };
                last = table;
                let round = if visor {
                    Command::SelfLookup
                } else {
                    Command::Bootstrap
                };
                if client.command(round).await.is_err() {
                    return;
                }
                if !visor {
                    membership::learn(&client, &state, me).await;
                }
            }
        });
        self.inner.tasks.lock().push(rounds);
        Ok(())
    }
}
