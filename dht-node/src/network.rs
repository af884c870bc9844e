//! The swarm task: owns the libp2p swarm (kad for routing, identify, and the item
//! protocol), runs lookups and requests for the node's API, hands inbound requests to the
//! [`crate::inbound`] handler, and keeps the shared [`RoutingView`] current.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dht_core::Target;
use futures::StreamExt;
use libp2p::kad::{self, QueryId, QueryResult};
use libp2p::request_response::{
    self, OutboundFailure, OutboundRequestId, ProtocolSupport, ResponseChannel,
};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{allow_block_list, identify, identity, ping, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::config::{NodeConfig, NodeMode};
use crate::connections::ConnectionBudget;
use crate::events::NodeEvent;
use crate::inbound::Inbound;
use crate::kad_records::{check_record, ItemRecordStore};
use crate::liveness::{Change, Liveness};
use crate::metrics::RequestLabels;
use crate::protocol::{
    error_response, request_kind, request_proto, ItemCodec, ItemRequest, RequestProto,
    ResponseProto, ITEM_PROTOCOL, KAD_PROTOCOL,
};
use crate::routing::{ip_range, is_dialable, RoutingView};
use crate::NodeError;

/// How often connected peers are pinged (`/ipfs/ping/1.0.0`): a pong clears a
/// suspicion, a missed one closes the connection.
const PING_INTERVAL: Duration = Duration::from_secs(30);

/// Inbound requests of one peer outside the routing table handled at once; more are
/// refused `rate_limited` at once rather than queued in front of other peers' requests.
const MAX_HANDLING_PER_STRANGER: usize = 8;
/// The same for full nodes of the routing table (a DMSG server mirroring a discovery
/// sends dozens of puts at once).
const MAX_HANDLING_PER_FULL_NODE: usize = 128;

/// Item-protocol streams one connection may have open at once (each may buffer up to
/// one frame, so this bounds a peer's share of memory).
const MAX_STREAMS_PER_CONNECTION: usize = 32;

/// A new connection is never trimmed before it is this old (a lookup needs it first).
const CONNECTION_GRACE: Duration = Duration::from_secs(2);

/// The combined behaviour of a node.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    kad: kad::Behaviour<ItemRecordStore>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    items: request_response::Behaviour<ItemCodec>,
}

/// Peers with their addresses, nearest first.
pub type PeerList = Vec<(PeerId, Vec<Multiaddr>)>;

/// What the node's API asks of the swarm task.
pub enum Command {
    /// Iterative lookup of the closest peers to a target.
    Lookup {
        /// Target.
        target: Target,
        /// Answer: peers with addresses, nearest first.
        reply: oneshot::Sender<PeerList>,
    },
    /// One item-protocol request to one peer.
    Request {
        /// Peer.
        peer: PeerId,
        /// Addresses to dial if not connected.
        addrs: Vec<Multiaddr>,
        /// Request.
        request: RequestProto,
        /// Answer.
        reply: oneshot::Sender<Result<ResponseProto, NodeError>>,
    },
    /// Answer an inbound request.
    Respond {
        /// The requester.
        peer: PeerId,
        /// Channel of the inbound request.
        channel: ResponseChannel<ResponseProto>,
        /// Response.
        response: ResponseProto,
    },
    /// Dial an address (bootstrap).
    Dial(Multiaddr),
    /// Add a known peer address to the routing table.
    AddPeer(PeerId, Multiaddr),
    /// Run a kad bootstrap (refresh buckets).
    Bootstrap,
    /// Refuse every connection to and from a peer (and close the open ones).
    Block(PeerId),
    /// Lift a [`Command::Block`].
    Unblock(PeerId),
    /// Number of connected peers.
    ConnectedPeers(oneshot::Sender<usize>),
    /// Stop the swarm task.
    Shutdown,
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self, cost: f64, per_second: f64, burst: f64, now: Instant) -> bool {
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * per_second).min(burst);
        self.last = now;
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// Per-peer token buckets for inbound requests: one counting requests, one counting
/// the bytes they carry.
struct RateLimiter {
    limit: crate::config::RateLimit,
    buckets: HashMap<PeerId, (Bucket, Bucket)>,
}

impl RateLimiter {
    fn new(limit: crate::config::RateLimit) -> Self {
        RateLimiter {
            limit,
            buckets: HashMap::new(),
        }
    }

    /// Whether `peer` may send one more request of `bytes` now.
    fn allow(&mut self, peer: PeerId, bytes: usize) -> bool {
        let now = Instant::now();
        let l = self.limit;
        let full = |tokens| Bucket { tokens, last: now };
        let (requests, volume) = self
            .buckets
            .entry(peer)
            .or_insert((full(l.burst), full(l.burst_bytes)));
        // Check both before taking from either.
        let mut r = *requests;
        let mut v = *volume;
        if r.take(1.0, l.per_second, l.burst, now)
            && v.take(bytes as f64, l.bytes_per_second, l.burst_bytes, now)
        {
            *requests = r;
            *volume = v;
            true
        } else {
            false
        }
    }

    fn forget(&mut self, peer: &PeerId) {
        self.buckets.remove(peer);
    }
}

/// The IP of an address, if it has one.
fn ip_of(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => Some(ip.into()),
        libp2p::multiaddr::Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    })
}

/// The bytes an inbound request carries, as counted by the per-peer byte budget.
fn request_bytes(request: &ItemRequest) -> usize {
    const BASE: usize = 256;
    match request {
        ItemRequest::Oversized { len, .. } => *len,
        ItemRequest::Message(m) => match &m.kind {
            Some(request_proto::Kind::Put(p)) => p
                .items
                .iter()
                .map(|i| {
                    BASE + i
                        .envelope
                        .as_ref()
                        .and_then(|e| e.item.as_ref())
                        .map_or(0, |it| it.value.len())
                })
                .sum::<usize>()
                .max(BASE),
            _ => BASE,
        },
    }
}

/// State shared between the swarm task and the node API.
pub struct Shared {
    /// Snapshot of the routing table.
    pub view: RoutingView,
    /// Events for the host.
    pub events: tokio::sync::broadcast::Sender<NodeEvent>,
    /// Metrics.
    pub metrics: crate::metrics::Metrics,
    /// Suspected and dead peers.
    pub(crate) liveness: Liveness,
    /// Whether the start-up catch-up finished (until then the local copy alone answers
    /// no read).
    pub(crate) caught_up: std::sync::atomic::AtomicBool,
    /// Whether a bootstrap round finished (or there was nobody to bootstrap from): from
    /// then on a routing table smaller than `k` is taken as the whole membership, and
    /// queries answer from it without waiting for their lookup.
    pub(crate) bootstrapped: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Whether the start-up catch-up has finished.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether the routing table, if smaller than `k`, holds the whole membership: a
    /// bootstrap round has finished.
    pub(crate) fn table_is_membership(&self) -> bool {
        self.bootstrapped.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Builds the swarm.
pub fn build_swarm(
    keypair: identity::Keypair,
    config: &NodeConfig,
    metrics: &crate::metrics::Metrics,
) -> Result<Swarm<Behaviour>, NodeError> {
    let local_id = keypair.public().to_peer_id();
    let mut kad_config = kad::Config::new(KAD_PROTOCOL);
    kad_config
        .set_replication_factor(NonZeroUsize::new(config.replication.max(1)).expect("max(1)"))
        .set_parallelism(NonZeroUsize::new(config.parallelism.max(1)).expect("max(1)"))
        .set_query_timeout(config.lookup_timeout)
        // Items travel in this project's own protocol; kad serves them read-only as
        // records (see `kad_records`) and stores none itself: disable the record jobs.
        .set_replication_interval(None)
        .set_publication_interval(None)
        .set_record_ttl(None)
        .set_provider_publication_interval(None)
        // Inbound PUT_VALUE records are validated and stored by `on_kad_put`.
        .set_record_filtering(kad::StoreInserts::FilterBoth)
        // A record is one encoded item: let the largest item through in both directions.
        .set_max_packet_size(config.max_message_len())
        // The node runs its own periodic bootstrap (see `Node::join`), only when it knows
        // peers: kad's would warn "No known peers" on a lone bootstrap node.
        .set_periodic_bootstrap_interval(None);
    let max_message_len = config.max_message_len();
    let traffic = metrics.item_protocol_bytes.clone();
    let mode = config.mode;
    let idle = config.idle_connection_timeout;
    let request_timeout = config.request_timeout;

    let behaviour = move |key: &identity::Keypair| {
        let kad = kad::Behaviour::with_config(local_id, ItemRecordStore::new(local_id), kad_config);
        let identify = identify::Behaviour::new(
            identify::Config::new("/skywire-dht/id/1.0.0".into(), key.public())
                .with_agent_version(format!("dht-node/{}", env!("CARGO_PKG_VERSION"))),
        );
        let support = match mode {
            NodeMode::Full => ProtocolSupport::Full,
            NodeMode::Client => ProtocolSupport::Outbound,
        };
        let items = request_response::Behaviour::with_codec(
            ItemCodec::new(max_message_len, &traffic),
            [(ITEM_PROTOCOL, support)],
            request_response::Config::default()
                .with_request_timeout(request_timeout)
                .with_max_concurrent_streams(MAX_STREAMS_PER_CONNECTION),
        );
        Behaviour {
            blocked: Default::default(),
            kad,
            identify,
            ping: ping::Behaviour::new(ping::Config::new().with_interval(PING_INTERVAL)),
            items,
        }
    };

    let builder = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .map_err(|e| NodeError::Transport(e.to_string()))?;
    let mut swarm = if config.quic {
        builder
            .with_quic()
            .with_behaviour(behaviour)
            .map_err(|e| NodeError::Transport(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
            .build()
    } else {
        builder
            .with_behaviour(behaviour)
            .map_err(|e| NodeError::Transport(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
            .build()
    };
    swarm.behaviour_mut().kad.set_mode(Some(match config.mode {
        NodeMode::Full => kad::Mode::Server,
        NodeMode::Client => kad::Mode::Client,
    }));
    Ok(swarm)
}

/// The swarm event loop.
pub struct Driver {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    self_tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    inbound: Option<Arc<Inbound>>,
    lookups: HashMap<QueryId, oneshot::Sender<PeerList>>,
    requests: HashMap<OutboundRequestId, oneshot::Sender<Result<ResponseProto, NodeError>>>,
    limiter: RateLimiter,
    max_per_range: Option<usize>,
    range_includes_loopback: bool,
    view_dirty: bool,
    budget: ConnectionBudget,
    /// The remote IP of each connected peer (for per-range budgets).
    remote_ips: HashMap<PeerId, std::net::IpAddr>,
    /// Inbound requests being handled, per peer.
    handling: HashMap<PeerId, usize>,
}

impl Driver {
    /// Creates the driver.
    pub fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        self_tx: mpsc::Sender<Command>,
        shared: Arc<Shared>,
        inbound: Option<Arc<Inbound>>,
        config: &NodeConfig,
    ) -> Self {
        let mut swarm = swarm;
        if let Some(inbound) = &inbound {
            // A full node serves its items as kad records, once caught up (as the item
            // protocol's get does).
            let view = shared.clone();
            swarm
                .behaviour_mut()
                .kad
                .store_mut()
                .attach(inbound.store.clone(), Arc::new(move || view.caught_up()));
        }
        Driver {
            swarm,
            commands,
            self_tx,
            shared,
            inbound,
            lookups: HashMap::new(),
            requests: HashMap::new(),
            limiter: RateLimiter::new(config.rate_limit),
            max_per_range: config.max_peers_per_ip_range,
            range_includes_loopback: config.ip_range_limit_loopback,
            view_dirty: true,
            budget: ConnectionBudget::new(config.max_connected_peers, CONNECTION_GRACE),
            remote_ips: HashMap::new(),
            handling: HashMap::new(),
        }
    }

    /// Runs until shutdown.
    pub async fn run(mut self) {
        let mut refresh = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    None | Some(Command::Shutdown) => break,
                    Some(cmd) => self.on_command(cmd),
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = refresh.tick() => {
                    if self.view_dirty {
                        self.refresh_view();
                    }
                    self.trim_connections();
                    self.finish_abandoned_lookups();
                    self.check_liveness();
                    self.shared
                        .metrics
                        .connected_peers
                        .set(self.swarm.connected_peers().count() as i64);
                }
            }
        }
        debug!("swarm task stopped");
    }

    /// Re-dials suspected peers whose backoff elapsed, and declares dead those whose
    /// outage lasted `dead_after`: they leave the routing table (their items are
    /// re-replicated by maintenance) and are still re-dialled, less often.
    fn check_liveness(&mut self) {
        let now = Instant::now();
        for (peer, addrs) in self.shared.liveness.due_redials(now) {
            self.redial(peer, addrs);
        }
        for peer in self.shared.liveness.newly_dead(now) {
            info!(%peer, "peer declared dead: leaving the routing table");
            self.swarm.behaviour_mut().kad.remove_peer(&peer);
            self.view_dirty = true;
            self.refresh_view();
            self.shared.metrics.peers_declared_dead.inc();
            let _ = self.shared.events.send(NodeEvent::PeerDeparted(peer));
        }
    }

    fn redial(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            debug!(%peer, error = %e, "re-dial not started");
        }
    }

    /// A dial or request to `peer` failed: suspect it.
    fn suspect(&mut self, peer: PeerId, why: &str) {
        let addrs = self.shared.view.addresses(&peer);
        if addrs.is_empty() && !self.shared.liveness.is_down(&peer) {
            // Not a routing-table peer (a client, a one-off dial): nothing to track.
            return;
        }
        if self.shared.liveness.failed(peer, addrs, Instant::now()) == Change::Suspected {
            debug!(%peer, why, "peer suspected");
            self.shared.metrics.peers_suspected.inc();
            let _ = self.shared.events.send(NodeEvent::PeerSuspected(peer));
        }
    }

    /// `peer` answered or connected: clear any suspicion.
    fn heard_from(&mut self, peer: PeerId) {
        if let Change::Returned { was_dead } = self.shared.liveness.alive(&peer) {
            info!(%peer, was_dead, "peer is back");
            let _ = self.shared.events.send(NodeEvent::PeerReturned(peer));
        }
    }

    /// Disconnects the least recently used peers while over the connection budget.
    fn trim_connections(&mut self) {
        for peer in self.budget.over_budget(Instant::now()) {
            debug!(%peer, "connection budget: disconnecting least recently used peer");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// Stops the kad queries whose caller went away (a get answered before its lookup
    /// finished), so they stop costing requests.
    fn finish_abandoned_lookups(&mut self) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        self.lookups.retain(|id, reply| {
            if reply.is_closed() {
                if let Some(mut query) = kad.query_mut(id) {
                    query.finish();
                }
                false
            } else {
                true
            }
        });
    }

    /// Counts a finished query's kad requests in the metrics.
    fn count_kad_requests(&self, last: bool, stats: &kad::QueryStats) {
        if last {
            self.shared
                .metrics
                .outbound_requests
                .get_or_create(&RequestLabels {
                    kind: "find_node".into(),
                })
                .inc_by(u64::from(stats.num_requests()));
        }
    }

    fn refresh_view(&mut self) {
        let mut peers = HashMap::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            for e in bucket.iter() {
                peers.insert(
                    *e.node.key.preimage(),
                    e.node.value.iter().cloned().collect(),
                );
            }
        }
        self.shared
            .metrics
            .routing_table_peers
            .set(peers.len() as i64);
        self.shared.view.replace(peers);
        self.view_dirty = false;
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Lookup { target, reply } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_closest_peers(target.as_bytes().to_vec());
                self.lookups.insert(id, reply);
            }
            Command::Request {
                peer,
                addrs,
                request,
                reply,
            } => {
                self.budget.touch(&peer, Instant::now());
                self.shared
                    .metrics
                    .outbound_requests
                    .get_or_create(&RequestLabels {
                        kind: request_kind(&request).into(),
                    })
                    .inc();
                let id = self
                    .swarm
                    .behaviour_mut()
                    .items
                    .send_request_with_addresses(&peer, ItemRequest::Message(request), addrs);
                self.requests.insert(id, reply);
            }
            Command::Respond {
                peer,
                channel,
                response,
            } => {
                if let Some(n) = self.handling.get_mut(&peer) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.handling.remove(&peer);
                    }
                }
                if self
                    .swarm
                    .behaviour_mut()
                    .items
                    .send_response(channel, response)
                    .is_err()
                {
                    debug!("response dropped: requester went away");
                }
            }
            Command::Dial(addr) => {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    warn!(%addr, error = %e, "dial failed");
                }
            }
            Command::AddPeer(peer, addr) => {
                self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                // Known at once to the query code (a restarted node reads before the
                // next periodic refresh).
                self.refresh_view();
            }
            Command::Bootstrap => {
                if let Err(e) = self.swarm.behaviour_mut().kad.bootstrap() {
                    debug!(error = %e, "bootstrap: no known peers");
                }
            }
            Command::Block(peer) => {
                self.swarm.behaviour_mut().blocked.block_peer(peer);
                // Unreachable from now on: skip it as any failed peer.
                self.suspect(peer, "blocked");
            }
            Command::Unblock(peer) => {
                self.swarm.behaviour_mut().blocked.unblock_peer(peer);
                // Dial it now rather than at the next backoff step.
                let addrs = self.shared.view.addresses(&peer);
                self.redial(peer, addrs);
            }
            Command::ConnectedPeers(reply) => {
                let _ = reply.send(self.swarm.connected_peers().count());
            }
            Command::Shutdown => {}
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.on_kad(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) if info.protocols.contains(&KAD_PROTOCOL) => {
                // Only peers serving kad (full nodes) enter the routing table; a client
                // node learns full nodes' addresses the same way for its own lookups.
                for addr in info.listen_addrs.into_iter().filter(is_dialable) {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
                // Known at once as a full node (its hand-offs are not a stranger's).
                self.refresh_view();
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(_)) => {}
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(_),
                ..
            })) => self.heard_from(peer),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(_)) => {}
            SwarmEvent::Behaviour(BehaviourEvent::Blocked(never)) => match never {},
            SwarmEvent::Behaviour(BehaviourEvent::Items(e)) => self.on_items(e),
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                if let Some(ip) = ip_of(endpoint.get_remote_address()) {
                    self.remote_ips.insert(peer_id, ip);
                }
                self.budget.established(peer_id, Instant::now());
                self.heard_from(peer_id);
                self.trim_connections();
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } => {
                self.budget.closed(&peer_id);
                if num_established == 0 {
                    self.limiter.forget(&peer_id);
                    self.remote_ips.remove(&peer_id);
                    // Closed by an error (a crashed or cut-off peer), not by an idle
                    // timeout or the budget: suspect it and probe it at once; a probe
                    // that connects clears the suspicion within a round trip.
                    if let Some(error) = cause {
                        let addrs = self.shared.view.addresses(&peer_id);
                        if !addrs.is_empty() {
                            debug!(peer = %peer_id, %error, "connection lost");
                            self.suspect(peer_id, "connection lost");
                            self.redial(peer_id, addrs);
                        }
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(?peer_id, %error, "outgoing connection failed");
                if let Some(peer) = peer_id {
                    if !matches!(
                        error,
                        libp2p::swarm::DialError::DialPeerConditionFalse(_)
                            | libp2p::swarm::DialError::Aborted
                    ) {
                        self.suspect(peer, "dial failed");
                    }
                }
            }
            _ => {}
        }
    }

    fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed {
                id,
                result: QueryResult::GetClosestPeers(r),
                step,
                stats,
            } => {
                self.count_kad_requests(step.last, &stats);
                let peers = match r {
                    Ok(ok) => ok.peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                if step.last {
                    if let Some(reply) = self.lookups.remove(&id) {
                        let _ =
                            reply.send(peers.into_iter().map(|p| (p.peer_id, p.addrs)).collect());
                    }
                }
            }
            kad::Event::OutboundQueryProgressed {
                result: QueryResult::Bootstrap(r),
                step,
                stats,
                ..
            } if step.last => {
                self.count_kad_requests(true, &stats);
                debug!(ok = r.is_ok(), "bootstrap round finished");
                self.view_dirty = true;
                self.shared
                    .bootstrapped
                    .store(true, std::sync::atomic::Ordering::Release);
                let _ = self.shared.events.send(NodeEvent::BootstrapFinished);
            }
            kad::Event::RoutingUpdated {
                peer,
                is_new_peer,
                addresses,
                ..
            } => {
                self.budget.touch(&peer, Instant::now());
                if is_new_peer && !self.admit_by_ip_range(&peer, addresses.iter()) {
                    self.swarm.behaviour_mut().kad.remove_peer(&peer);
                    warn!(%peer, "routing table: too many peers from one IP range");
                    return;
                }
                self.view_dirty = true;
                if is_new_peer {
                    self.refresh_view();
                    let _ = self.shared.events.send(NodeEvent::PeerAdded(peer));
                }
            }
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        source,
                        record: Some(record),
                        ..
                    },
            } => self.on_kad_put(source, record),
            _ => {}
        }
    }

    /// An inbound kad `PUT_VALUE`: kad has already acknowledged it (the protocol has no
    /// way to refuse), so a record is only stored if it passes the same checks as an
    /// item-protocol put; a refused one is logged and counted in
    /// `dht_kad_put_rejected_total{reason}`.
    fn on_kad_put(&mut self, source: PeerId, record: kad::Record) {
        let Some(inbound) = self.inbound.clone() else {
            // A client node is no kad server: nothing reaches here.
            return;
        };
        if !self.limiter.allow(source, 256 + record.value.len()) {
            self.shared.metrics.rate_limited.inc();
            refuse_kad_put(
                &self.shared.metrics,
                source,
                "rate_limited",
                &"too many requests",
            );
            return;
        }
        let stranger = self.shared.view.addresses(&source).is_empty();
        let ip = self.remote_ips.get(&source).copied();
        // Signature checks and the store are blocking work: keep them off the swarm task.
        tokio::task::spawn_blocking(move || {
            let metrics = &inbound.shared.metrics;
            let verified = match check_record(&inbound.validator, &record).and_then(|v| {
                if stranger {
                    inbound.admit_stranger(source, ip, &v)?;
                }
                Ok(v)
            }) {
                Ok(v) => v,
                Err(r) => return refuse_kad_put(metrics, source, r.code().as_str(), &r),
            };
            let (target, seq, tombstone) = (
                verified.target(),
                verified.item().seq,
                verified.item().is_tombstone(),
            );
            let salt = verified.item().salt.clone();
            match inbound.store.put(verified, dht_core::PutOptions::default()) {
                Ok(admission) => {
                    debug!(%source, %target, seq, "kad put stored");
                    metrics.count_put(&salt, Ok(admission));
                    if matches!(admission, dht_core::Admission::Supersede { .. }) {
                        metrics.equivocations.inc();
                    }
                    let _ = inbound.shared.events.send(NodeEvent::ItemStored {
                        target,
                        seq,
                        tombstone,
                    });
                }
                Err(dht_core::StoreError::Rejected(r)) => {
                    metrics.count_put(&salt, Err(r.code()));
                    refuse_kad_put(metrics, source, r.code().as_str(), &r);
                }
                Err(e) => {
                    tracing::error!(error = %e, "kad put: store failed");
                    refuse_kad_put(metrics, source, "internal", &e);
                }
            }
        });
    }

    /// Whether a new peer may enter the routing table under the per-IP-range bound.
    fn admit_by_ip_range<'a>(
        &mut self,
        peer: &PeerId,
        addrs: impl Iterator<Item = &'a Multiaddr>,
    ) -> bool {
        let Some(max) = self.max_per_range else {
            return true;
        };
        let lo = self.range_includes_loopback;
        let ranges: HashSet<Vec<u8>> = addrs.filter_map(|a| ip_range(a, lo)).collect();
        if ranges.is_empty() {
            return true;
        }
        let mut counts: HashMap<Vec<u8>, usize> = HashMap::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            for e in bucket.iter() {
                if e.node.key.preimage() == peer {
                    continue;
                }
                let theirs: HashSet<Vec<u8>> = e
                    .node
                    .value
                    .iter()
                    .filter_map(|a| ip_range(a, lo))
                    .collect();
                for r in theirs {
                    *counts.entry(r).or_default() += 1;
                }
            }
        }
        ranges
            .iter()
            .all(|r| counts.get(r).copied().unwrap_or(0) < max)
    }

    fn on_items(&mut self, event: request_response::Event<ItemRequest, ResponseProto>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    self.budget.touch(&peer, Instant::now());
                    self.on_inbound(peer, request, channel);
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    self.heard_from(peer);
                    if let Some(reply) = self.requests.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                debug!(%peer, %error, "request failed");
                if !matches!(error, OutboundFailure::UnsupportedProtocols) {
                    self.suspect(peer, "request failed");
                }
                if let Some(reply) = self.requests.remove(&request_id) {
                    let _ = reply.send(Err(NodeError::Request(error.to_string())));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "inbound request failed");
                // A frame far over the limit is no honest mistake: drop the connection,
                // so the bytes already in flight behind it stop costing anything.
                if let request_response::InboundFailure::Io(e) = &error {
                    if e.kind() == std::io::ErrorKind::InvalidData
                        && e.to_string().contains("exceeds the limit")
                    {
                        self.shared
                            .metrics
                            .count_put(b"", Err(dht_core::ReasonCode::TooLarge));
                        let _ = self.swarm.disconnect_peer_id(peer);
                    }
                }
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_inbound(
        &mut self,
        peer: PeerId,
        request: ItemRequest,
        channel: ResponseChannel<ResponseProto>,
    ) {
        let Some(inbound) = self.inbound.clone() else {
            let _ = self
                .swarm
                .behaviour_mut()
                .items
                .send_response(channel, error_response("not_serving", "client-mode node"));
            return;
        };
        if !self.limiter.allow(peer, request_bytes(&request)) {
            self.shared.metrics.rate_limited.inc();
            let _ = self
                .swarm
                .behaviour_mut()
                .items
                .send_response(channel, error_response("rate_limited", "too many requests"));
            return;
        }
        let request = match request {
            ItemRequest::Message(m) => m,
            ItemRequest::Oversized { len, limit } => {
                self.shared
                    .metrics
                    .count_put(b"", Err(dht_core::ReasonCode::TooLarge));
                let _ = self.swarm.behaviour_mut().items.send_response(
                    channel,
                    error_response(
                        dht_core::ReasonCode::TooLarge.as_str(),
                        format!("message of {len} bytes exceeds the limit of {limit}"),
                    ),
                );
                return;
            }
        };
        // Fair service: one peer's requests never queue up in front of everyone else's.
        let cap = if self.shared.view.addresses(&peer).is_empty() {
            MAX_HANDLING_PER_STRANGER
        } else {
            MAX_HANDLING_PER_FULL_NODE
        };
        let handling = self.handling.entry(peer).or_default();
        if *handling >= cap {
            self.shared.metrics.rate_limited.inc();
            let _ = self.swarm.behaviour_mut().items.send_response(
                channel,
                error_response("rate_limited", "too many requests in flight"),
            );
            return;
        }
        *handling += 1;
        let tx = self.self_tx.clone();
        let ip = self.remote_ips.get(&peer).copied();
        tokio::spawn(async move {
            let response = inbound.handle(peer, ip, request).await;
            let _ = tx
                .send(Command::Respond {
                    peer,
                    channel,
                    response,
                })
                .await;
        });
    }
}

/// Logs and counts an inbound kad record that was not stored.
fn refuse_kad_put(
    metrics: &crate::metrics::Metrics,
    source: PeerId,
    reason: &str,
    detail: &dyn std::fmt::Display,
) {
    info!(%source, reason, "kad PUT_VALUE refused (already acknowledged by kad): {detail}");
    metrics
        .kad_put_rejected
        .get_or_create(&crate::metrics::KadRejectLabels {
            reason: reason.into(),
        })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limiter_counts_requests_and_bytes() {
        let mut l = RateLimiter::new(crate::config::RateLimit {
            per_second: 0.0,
            burst: 10.0,
            bytes_per_second: 0.0,
            burst_bytes: 1_000.0,
        });
        let p = PeerId::random();
        // Bytes run out first: 4 x 256 > 1,000.
        assert!(l.allow(p, 256));
        assert!(l.allow(p, 256));
        assert!(l.allow(p, 256));
        assert!(!l.allow(p, 256));
        // A refused request takes nothing: a small one still fits.
        assert!(l.allow(p, 100));
        // Another peer has its own buckets.
        assert!(l.allow(PeerId::random(), 900));
    }
}
