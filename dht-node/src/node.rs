//! The node API: build, put, get, delete, closest peers, stats, events, shutdown.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dht_core::store::{RecordStore, RedbStore, StoreConfig};
use dht_core::{MutableItem, PublicKey, PutOptions, ReasonCode, SigningKey, Target, Validator};
use futures::StreamExt;
use libp2p::{identity, Multiaddr, PeerId};
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, instrument, warn};

use crate::config::{NodeConfig, NodeMode};
use crate::events::NodeEvent;
use crate::inbound::Inbound;
use crate::metrics::Metrics;
use crate::network::{build_swarm, Command, Driver, Shared};
use crate::protocol::{
    put_item_proto, request_proto, response_proto, PutRequestProto, RequestProto, ResponseProto,
};
use crate::report::{GetMode, NodeStats, PutReport, ReplicaResult};
use crate::routing::{load_peers, save_peers};
use crate::NodeError;

/// File names inside the data directory.
const KEY_FILE: &str = "node.key";
const STORE_FILE: &str = "items.redb";
const PEERS_FILE: &str = "peers.json";
const EPOCH_FILE: &str = "store.epoch";
/// Sync cursors into each peer's store.
pub(crate) const CURSORS_FILE: &str = "sync-cursors.json";

/// How long a dead peer is still re-dialled (with backoff) before it is forgotten.
const FORGET_DEAD_AFTER: Duration = Duration::from_secs(6 * 60 * 60);

/// A running DHT node. Cheap to clone; all clones drive the same node.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<NodeInner>,
}

pub(crate) struct NodeInner {
    pub peer_id: PeerId,
    pub config: NodeConfig,
    pub validator: Validator,
    pub store: parking_lot::RwLock<Option<Arc<dyn RecordStore>>>,
    pub commands: mpsc::Sender<Command>,
    pub shared: Arc<Shared>,
    pub tasks: Mutex<Vec<JoinHandle<()>>>,
    pub listen_addrs: Vec<Multiaddr>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.inner.peer_id)
            .field("mode", &self.inner.config.mode)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Node`].
#[derive(Default)]
pub struct NodeBuilder {
    config: NodeConfig,
    keypair: Option<identity::Keypair>,
    store: Option<Arc<dyn RecordStore>>,
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
        Node::start(self.config, self.keypair, self.store).await
    }
}

/// Loads the node key from the data directory, creating it on first run.
pub fn load_or_create_keypair(dir: &Path) -> Result<identity::Keypair, NodeError> {
    let path = dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) if bytes.is_empty() => Err(NodeError::Config(format!(
            "{}: the node key file is empty; restore it from a backup to keep this node's \
             peer id, or delete it to start under a new one",
            path.display()
        ))),
        Ok(bytes) => identity::Keypair::from_protobuf_encoding(&bytes).map_err(|_| {
            NodeError::Config(format!(
                "{}: not a node key (damaged, or not written by dht-node); restore it from a \
                 backup to keep this node's peer id, or delete it to start under a new one",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let k = identity::Keypair::generate_ed25519();
            let bytes = k
                .to_protobuf_encoding()
                .map_err(|e| NodeError::Config(e.to_string()))?;
            std::fs::write(&path, bytes)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(k)
        }
        Err(e) => Err(e.into()),
    }
}

/// Refuses to start on a store that vanished or is damaged (its items would be lost
/// without a word), unless `repair` asks to move it aside and start empty: the node
/// then rebuilds what it is responsible for from the network (catch-up, hand-off).
fn check_store_file(dir: &Path, repair: bool) -> Result<(), NodeError> {
    let path = dir.join(STORE_FILE);
    let had_store = dir.join(EPOCH_FILE).exists();
    if !path.exists() {
        if had_store && !repair {
            return Err(NodeError::Store(dht_core::StoreError::Damaged {
                path,
                detail: "the file is missing, though this data directory held a store".into(),
            }));
        }
        if had_store {
            warn!(path = %path.display(), "item store missing: starting empty (repair)");
            std::fs::remove_file(dir.join(EPOCH_FILE))?;
        }
        return Ok(());
    }
    if !repair {
        return Ok(());
    }
    // Open it once to find out; a damaged one is moved aside.
    let probe = RedbStore::open(&path, StoreConfig::default());
    match probe {
        Err(dht_core::StoreError::Damaged { detail, .. }) => {
            let aside = dht_core::store::move_aside(&path)?;
            warn!(
                path = %path.display(),
                moved_to = %aside.display(),
                %detail,
                "damaged item store moved aside: starting empty and rebuilding from the network"
            );
            let _ = std::fs::remove_file(dir.join(EPOCH_FILE));
            Ok(())
        }
        Err(e) => Err(e.into()),
        Ok(store) => {
            drop(store);
            Ok(())
        }
    }
}

/// The epoch of the store in `dir`: a random id written beside a store created anew, so
/// that peers holding sync cursors into an earlier store start over.
fn store_epoch(dir: &Path) -> Result<u64, NodeError> {
    let path = dir.join(EPOCH_FILE);
    let store_exists = dir.join(STORE_FILE).exists();
    if store_exists {
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(epoch) = text.trim().parse() {
                return Ok(epoch);
            }
        }
    }
    let epoch: u64 = rand::random();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, epoch.to_string())?;
    std::fs::rename(&tmp, &path)?;
    Ok(epoch)
}

/// The libp2p identity of a Skywire secp256k1 key, so a DMSG server's DHT identity can
/// be its existing key.
pub fn keypair_from_skywire_secret(secret: &[u8]) -> Result<identity::Keypair, NodeError> {
    let mut raw = secret.to_vec();
    let sk = identity::secp256k1::SecretKey::try_from_bytes(&mut raw)
        .map_err(|e| NodeError::Config(format!("secp256k1 secret key: {e}")))?;
    Ok(identity::Keypair::from(identity::secp256k1::Keypair::from(
        sk,
    )))
}

impl Node {
    /// A builder with default configuration.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    async fn start(
        config: NodeConfig,
        keypair: Option<identity::Keypair>,
        store: Option<Arc<dyn RecordStore>>,
    ) -> Result<Node, NodeError> {
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
                    None => Arc::new(dht_core::store::MemoryStore::new(store_config)),
                })
            }
        };

        let metrics = Metrics::new();
        let mut swarm = build_swarm(keypair, &config, &metrics)?;
        for addr in &config.external_addresses {
            swarm.add_external_address(addr.clone());
        }
        let mut listeners = HashMap::new();
        for addr in &config.listen {
            let id = swarm
                .listen_on(addr.clone())
                .map_err(|e| NodeError::listen(addr, e))?;
            listeners.insert(id, addr.clone());
        }
        // Wait until every listener reports an address, so callers learn real ports.
        let mut listen_addrs = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !listeners.is_empty() {
            match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
                Ok(libp2p::swarm::SwarmEvent::NewListenAddr {
                    listener_id,
                    address,
                }) => {
                    listeners.remove(&listener_id);
                    listen_addrs.push(address);
                }
                Ok(libp2p::swarm::SwarmEvent::ListenerError { listener_id, error })
                | Ok(libp2p::swarm::SwarmEvent::ListenerClosed {
                    listener_id,
                    reason: Err(error),
                    ..
                }) => {
                    return Err(match listeners.get(&listener_id) {
                        Some(addr) => NodeError::Listen {
                            addr: addr.clone(),
                            source: error,
                        },
                        None => NodeError::Transport(format!("listener failed: {error}")),
                    })
                }
                Ok(_) => {}
                Err(_) => return Err(NodeError::Transport("listeners did not start".into())),
            }
        }

        let store_is_empty = match &store {
            Some(s) => s.stats()?.items == 0,
            None => true,
        };
        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            view: Default::default(),
            events,
            metrics,
            liveness: crate::liveness::Liveness::new(config.dead_after, FORGET_DEAD_AFTER),
            // A client has nothing to catch up; a full node reads from others until its
            // catch-up finished.
            // An empty store has no stale copy to serve.
            caught_up: std::sync::atomic::AtomicBool::new(
                config.mode == NodeMode::Client || store_is_empty,
            ),
            bootstrapped: std::sync::atomic::AtomicBool::new(false),
        });
        let inbound = store.as_ref().map(|store| {
            Arc::new(Inbound {
                store: store.clone(),
                validator: validator.clone(),
                shared: shared.clone(),
                local: peer_id,
                replication: config.replication,
                max_message_len: config.max_message_len(),
                epoch,
                strangers: crate::admission::StrangerAdmission::new(
                    config.stranger_items_per_peer,
                    config.stranger_items_per_range,
                    config.stranger_bytes,
                ),
            })
        });
        let (tx, rx) = mpsc::channel(4096);
        let driver = Driver::new(swarm, rx, tx.clone(), shared.clone(), inbound, &config);
        let driver_task = tokio::spawn(driver.run());

        let node = Node {
            inner: Arc::new(NodeInner {
                peer_id,
                config,
                validator,
                store: parking_lot::RwLock::new(store),
                commands: tx,
                shared,
                tasks: Mutex::new(vec![driver_task]),
                listen_addrs,
            }),
        };
        info!(peer_id = %node.peer_id(), mode = ?node.inner.config.mode, "node started");
        node.join().await?;
        if node.store().is_some() {
            let maintenance = tokio::spawn(crate::maintenance::run(node.clone()));
            node.inner.tasks.lock().push(maintenance);
        }
        Ok(node)
    }

    /// Adds saved and bootstrap peers and starts a kad bootstrap.
    async fn join(&self) -> Result<(), NodeError> {
        let mut known = 0;
        if let Some(dir) = &self.inner.config.data_dir {
            match load_peers(&dir.join(PEERS_FILE)) {
                Ok(peers) => {
                    for (peer, addrs) in peers {
                        for addr in addrs {
                            self.command(Command::AddPeer(peer, addr)).await?;
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
                    self.command(Command::AddPeer(peer, addr.clone())).await?;
                    known += 1;
                }
                Some(_) => {}
                None => self.command(Command::Dial(addr.clone())).await?,
            }
        }
        if known == 0 {
            // The first node of a network: its (empty) table is the whole membership.
            self.inner
                .shared
                .bootstrapped
                .store(true, std::sync::atomic::Ordering::Release);
        }
        // Nodes joining at the same time may each miss the other in their first round
        // (the peer they asked had not yet added the other): a few early rounds, then one
        // every 5 minutes (a round with an empty routing table is skipped quietly).
        let early: &'static [u64] = if known > 0 { &[1, 3, 10, 30] } else { &[] };
        if known > 0 {
            info!(known, "joining the network");
            self.command(Command::Bootstrap).await?;
        }
        let commands = self.inner.commands.clone();
        let rounds = tokio::spawn(async move {
            for secs in early.iter().copied().chain(std::iter::repeat(5 * 60)) {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                if commands.send(Command::Bootstrap).await.is_err() {
                    return;
                }
            }
        });
        self.inner.tasks.lock().push(rounds);
        Ok(())
    }

    pub(crate) async fn command(&self, cmd: Command) -> Result<(), NodeError> {
        self.inner
            .commands
            .send(cmd)
            .await
            .map_err(|_| NodeError::Shutdown)
    }

    /// Refuses every connection to and from `peer` and closes the open ones (an operator
    /// banning a hostile peer; tests cutting a network in two).
    pub async fn block_peer(&self, peer: PeerId) -> Result<(), NodeError> {
        self.command(Command::Block(peer)).await
    }

    /// Lifts [`Node::block_peer`] and dials the peer again.
    pub async fn unblock_peer(&self, peer: PeerId) -> Result<(), NodeError> {
        self.command(Command::Unblock(peer)).await
    }

    /// Peers currently suspected or declared dead (skipped by puts and gets).
    pub fn peers_down(&self) -> Vec<PeerId> {
        self.inner.shared.liveness.down()
    }

    /// Whether the start-up catch-up has finished (until then reads do not trust the
    /// local copy alone).
    pub fn caught_up(&self) -> bool {
        self.inner.shared.caught_up()
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

    /// The local store (full nodes).
    pub fn store(&self) -> Option<Arc<dyn RecordStore>> {
        self.inner.store.read().clone()
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.shared.metrics
    }

    /// Subscribes to node events.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.inner.shared.events.subscribe()
    }

    /// Peers currently in the routing table with their addresses.
    pub fn routing_table(&self) -> HashMap<PeerId, Vec<Multiaddr>> {
        self.inner.shared.view.snapshot()
    }

    /// A snapshot of the node's state.
    pub async fn stats(&self) -> Result<NodeStats, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::ConnectedPeers(tx)).await?;
        let connected_peers = rx.await.map_err(|_| NodeError::Shutdown)?;
        let store_stats = match self.store() {
            Some(s) => {
                let s = s.clone();
                tokio::task::spawn_blocking(move || s.stats())
                    .await
                    .map_err(|e| NodeError::Task(e.to_string()))??
            }
            None => Default::default(),
        };
        Ok(NodeStats {
            peer_id: self.inner.peer_id.to_string(),
            mode: self.inner.config.mode,
            routing_table_peers: self.inner.shared.view.len(),
            connected_peers,
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
            .lookup(target)
            .await?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    }

    pub(crate) async fn lookup(
        &self,
        target: Target,
    ) -> Result<Vec<(PeerId, Vec<Multiaddr>)>, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Lookup { target, reply: tx }).await?;
        match tokio::time::timeout(
            self.inner.config.lookup_timeout + Duration::from_secs(1),
            rx,
        )
        .await
        {
            Ok(Ok(peers)) => Ok(peers),
            Ok(Err(_)) => Err(NodeError::Shutdown),
            Err(_) => Err(NodeError::Timeout),
        }
    }

    /// One raw item-protocol request to one peer, with the request timeout. For tooling
    /// and tests; the typed API is [`Node::put`], [`Node::get`] and friends.
    pub async fn request(
        &self,
        peer: PeerId,
        request: RequestProto,
    ) -> Result<ResponseProto, NodeError> {
        let addrs = self.inner.shared.view.addresses(&peer);
        let (tx, rx) = oneshot::channel();
        self.command(Command::Request {
            peer,
            addrs,
            request,
            reply: tx,
        })
        .await?;
        match tokio::time::timeout(
            self.inner.config.request_timeout + Duration::from_millis(500),
            rx,
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(NodeError::Shutdown),
            Err(_) => Err(NodeError::Timeout),
        }
    }

    /// Sends an item to one peer as it is, without validating it locally first, and
    /// returns what the peer did. For tooling and tests that probe what replicas accept.
    pub async fn send_item_to(
        &self,
        peer: PeerId,
        item: &MutableItem,
        opts: PutOptions,
    ) -> ReplicaResult {
        let request = RequestProto {
            kind: Some(request_proto::Kind::Put(PutRequestProto {
                items: vec![put_item_proto(item, opts)],
            })),
        };
        match self.request(peer, request).await {
            Ok(r) => first_put_result(r),
            Err(e) => ReplicaResult::Failed(e.to_string()),
        }
    }

    /// Deletes the subject's item under `salt`: reads the current seq (best of a quorum)
    /// and publishes a signed tombstone one above it.
    #[instrument(skip_all, fields(subject = %subject, salt = %String::from_utf8_lossy(salt)))]
    pub async fn delete(
        &self,
        key: &SigningKey,
        subject: PublicKey,
        salt: &[u8],
    ) -> Result<PutReport, NodeError> {
        let current = self.get(subject, salt, GetMode::Quorum(0)).await?;
        let seq = current.seq().map_or(1, |s| s.saturating_add(1));
        self.put(MutableItem::tombstone(
            key,
            subject,
            Bytes::copy_from_slice(salt),
            seq,
        ))
        .await
    }

    /// Saves the routing table to the data directory (if any).
    pub fn save_routing_table(&self) -> Result<(), NodeError> {
        if let Some(dir) = &self.inner.config.data_dir {
            let peers = self.inner.shared.view.snapshot();
            if !peers.is_empty() {
                save_peers(&dir.join(PEERS_FILE), &peers)?;
            }
        }
        Ok(())
    }

    /// Stops the node: saves the routing table, stops maintenance and the swarm.
    pub async fn shutdown(&self) {
        if let Err(e) = self.save_routing_table() {
            warn!(error = %e, "could not save the routing table");
        }
        let _ = self.inner.commands.send(Command::Shutdown).await;
        let tasks: Vec<JoinHandle<()>> = self.inner.tasks.lock().drain(..).collect();
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        // Release the store (and the redb file): wait, briefly, for in-flight work (an
        // inbound request being answered) to let go of it, so that a restart on the
        // same data directory can open it.
        let store = self.inner.store.write().take();
        if let Some(store) = store {
            let weak = Arc::downgrade(&store);
            drop(store);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while weak.strong_count() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        info!(peer_id = %self.inner.peer_id, "node stopped");
    }
}

fn first_put_result(r: ResponseProto) -> ReplicaResult {
    match r.kind {
        Some(response_proto::Kind::Put(p)) => match p.results.into_iter().next() {
            Some(res) => crate::protocol::replica_result(res),
            None => ReplicaResult::Failed("empty put response".into()),
        },
        // A refusal of the whole request with a reason code (a frame over the limit is
        // refused from its header) is a rejection; anything else is a failure.
        Some(response_proto::Kind::Error(e)) => match ReasonCode::from_name(&e.code) {
            Some(code) => ReplicaResult::Rejected {
                code,
                detail: e.detail,
            },
            None => ReplicaResult::Failed(format!("{}: {}", e.code, e.detail)),
        },
        _ => ReplicaResult::Failed("unexpected response".into()),
    }
}
