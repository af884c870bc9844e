//! The swarm task's event loop: commands from the node, swarm events, and a
//! housekeeping tick that refreshes the routing view, trims connections over the
//! budget, stops abandoned lookups and drives the liveness probes. The tick is adaptive:
//! every [`TICK`] while there is something to watch (lookups in flight, a stale view, a
//! budget over its size), at the next re-dial or death declaration when peers are
//! down, and every [`IDLE_TICK`] otherwise, so that a quiet node does next to nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::kad::{self, QueryId};
use libp2p::request_response::OutboundRequestId;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, ping, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info};

use super::bans::Bans;
use super::rate_limit::RateLimiter;
use super::transport::{Behaviour, BehaviourEvent};
use super::{Command, PeerList};
use crate::config::{NodeConfig, NodeMode};
use crate::connections::ConnectionBudget;
use crate::events::NodeEvent;
use crate::inbound::Inbound;
use crate::liveness::Change;
use crate::metrics::RequestLabels;
use crate::protocol::{ResponseFrame, KAD_PROTOCOL};
use crate::routing::is_dialable;
use crate::state::NodeState;
use crate::NodeError;

/// A new connection is never trimmed before it is this old (a lookup needs it first).
const CONNECTION_GRACE: Duration = Duration::from_secs(2);
/// Housekeeping period while something needs watching.
const TICK: Duration = Duration::from_millis(500);
/// Housekeeping period of a quiet node.
const IDLE_TICK: Duration = Duration::from_secs(30);

/// An item-protocol request awaiting its answer.
pub(super) struct PendingRequest {
    /// Where the answer goes.
    pub(super) reply: oneshot::Sender<Result<ResponseFrame, NodeError>>,
    /// When it was sent, if over a connection already open (a request that first
    /// dials measures the dial too, not the round trip).
    pub(super) sent: Option<Instant>,
}

/// The swarm event loop.
pub(crate) struct Driver {
    pub(super) swarm: Swarm<Behaviour>,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) self_tx: mpsc::Sender<Command>,
    pub(super) state: Arc<NodeState>,
    pub(super) inbound: Option<Arc<Inbound>>,
    pub(super) lookups: HashMap<QueryId, oneshot::Sender<PeerList>>,
    pub(super) requests: HashMap<OutboundRequestId, PendingRequest>,
    pub(super) limiter: RateLimiter,
    pub(super) max_per_range: Option<usize>,
    pub(super) range_includes_loopback: bool,
    pub(super) view_dirty: bool,
    /// Connected peers against `max_connected_peers` (a visor: `client_connections`).
    pub(super) budget: ConnectionBudget,
    /// A full node's client-mode peers (visors), against `max_client_peers`.
    pub(super) clients: ConnectionBudget,
    /// Full node or client.
    pub(super) mode: NodeMode,
    /// The remote IP of each connected peer (for per-range budgets).
    pub(super) remote_ips: HashMap<PeerId, std::net::IpAddr>,
    /// Inbound requests being handled, per peer.
    pub(super) handling: HashMap<PeerId, usize>,
    /// Refusals held back before they are sent (see `item_requests`), per peer.
    pub(super) held: HashMap<PeerId, usize>,
    /// Connected peers that identified as kad servers (full nodes), in the routing
    /// table or not (a full bucket leaves some out).
    pub(super) servers: HashSet<PeerId>,
    /// Peers banned for breaking the item protocol on purpose.
    pub(super) bans: Bans,
    /// Capacity of a k-bucket: a bucket this full may have left a full node out.
    bucket_size: usize,
    /// Most full nodes a full node keeps warm connections to (three quarters of
    /// `max_connected_peers`, so that warming never makes the budget trim).
    warm_limit: usize,
    /// Whether the last warming step left full nodes to dial (the tick stays short).
    warming: bool,
}

/// Dials a warming step starts at most (the rest wait for the next tick).
const WARM_DIALS_PER_TICK: usize = 32;

impl Driver {
    /// Creates the driver.
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        self_tx: mpsc::Sender<Command>,
        state: Arc<NodeState>,
        inbound: Option<Arc<Inbound>>,
        config: &NodeConfig,
    ) -> Self {
        let mut swarm = swarm;
        if let Some(inbound) = &inbound {
            // A full node serves its items as kad records, once caught up (as the item
            // protocol's get does).
            let view = state.clone();
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
            state,
            inbound,
            lookups: HashMap::new(),
            requests: HashMap::new(),
            limiter: RateLimiter::new(config.rate_limit, config.max_message_len() as f64),
            max_per_range: config.max_peers_per_ip_range,
            range_includes_loopback: config.ip_range_limit_loopback,
            view_dirty: true,
            budget: ConnectionBudget::new(
                match config.mode {
                    NodeMode::Full => config.max_connected_peers,
                    NodeMode::Client => config.client_connections,
                },
                CONNECTION_GRACE,
            ),
            clients: ConnectionBudget::new(config.max_client_peers, CONNECTION_GRACE),
            mode: config.mode,
            remote_ips: HashMap::new(),
            handling: HashMap::new(),
            held: HashMap::new(),
            servers: HashSet::new(),
            bans: Bans::default(),
            bucket_size: config.bucket_size.max(1),
            warm_limit: config.max_connected_peers * 3 / 4,
            warming: false,
        }
    }

    /// Whether `peer` is a stranger: neither in the routing table nor identified as a
    /// full node. Strangers get smaller rate limits and in-flight caps.
    pub(super) fn is_stranger(&self, peer: &PeerId) -> bool {
        !self.servers.contains(peer) && self.state.view.addresses(peer).is_empty()
    }

    /// Runs until shutdown.
    pub(crate) async fn run(mut self) {
        let tick = tokio::time::sleep(TICK);
        tokio::pin!(tick);
        loop {
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    None | Some(Command::Shutdown) => break,
                    Some(cmd) => self.on_command(cmd),
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = &mut tick => {
                    if self.view_dirty {
                        self.refresh_view();
                    }
                    self.trim_connections();
                    self.finish_abandoned_lookups();
                    self.check_liveness();
                    self.lift_expired_bans();
                    self.warm_connections();
                    tick.as_mut().reset(self.next_tick(Instant::now() + IDLE_TICK).into());
                }
            }
            // Work that just arrived (a lookup, a suspicion, a connection over budget)
            // brings the next tick forward.
            let next = self.next_tick(tick.deadline().into_std());
            if next < tick.deadline().into_std() {
                tick.as_mut().reset(next.into());
            }
        }
        debug!("swarm task stopped");
    }

    /// When housekeeping should run next, at the latest `latest`.
    fn next_tick(&self, latest: Instant) -> Instant {
        let busy = self.view_dirty
            || !self.lookups.is_empty()
            || self.budget.is_over()
            || self.clients.is_over()
            || self.warming;
        let mut next = if busy {
            latest.min(Instant::now() + TICK)
        } else {
            latest
        };
        if let Some(due) = self.state.liveness.next_due() {
            next = next.min(due.max(Instant::now()));
        }
        if let Some(end) = self.bans.next_end() {
            next = next.min(end.max(Instant::now()));
        }
        next
    }

    /// `peer` was just used (a request to or from it): the last to be trimmed.
    pub(super) fn touch(&mut self, peer: &PeerId) {
        let now = Instant::now();
        self.budget.touch(peer, now);
        self.clients.touch(peer, now);
    }

    /// Counts the connected peers in the metrics and the shared state.
    fn count_connected(&self) {
        self.state
            .metrics
            .connected_peers
            .set(self.swarm.connected_peers().count() as i64);
    }

    /// Re-dials suspected peers whose backoff elapsed, and declares dead those whose
    /// outage lasted `dead_after`: they leave the routing table (their items are
    /// re-replicated by maintenance) and are still re-dialled, less often.
    fn check_liveness(&mut self) {
        let now = Instant::now();
        for (peer, addrs) in self.state.liveness.due_redials(now) {
            self.redial(peer, addrs);
        }
        for peer in self.state.liveness.newly_dead(now) {
            info!(%peer, "peer declared dead: leaving the routing table");
            self.swarm.behaviour_mut().kad.remove_peer(&peer);
            self.view_dirty = true;
            self.refresh_view();
            self.state.metrics.peers_declared_dead.inc();
            self.state.emit(NodeEvent::PeerDeparted(peer));
        }
    }

    pub(super) fn redial(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            debug!(%peer, error = %e, "re-dial not started");
        }
    }

    /// A dial or request to `peer` failed: suspect it.
    pub(super) fn suspect(&mut self, peer: PeerId, why: &str) {
        let addrs = self.state.view.addresses(&peer);
        if addrs.is_empty() && !self.state.liveness.is_down(&peer) {
            // Not a routing-table peer (a client, a one-off dial): nothing to track.
            return;
        }
        if self.state.liveness.failed(peer, addrs, Instant::now()) == Change::Suspected {
            debug!(%peer, why, "peer suspected");
            self.state.metrics.peers_suspected.inc();
            self.state.emit(NodeEvent::PeerSuspected(peer));
        }
    }

    /// `peer` answered or connected: clear any suspicion.
    pub(super) fn heard_from(&mut self, peer: PeerId) {
        if let Change::Returned { was_dead } = self.state.liveness.alive(&peer) {
            info!(%peer, was_dead, "peer is back");
            self.state.emit(NodeEvent::PeerReturned(peer));
        }
    }

    /// Keeps a connection to every full node while the membership is known and small
    /// (it fits in three quarters of `max_connected_peers`): every put and get is then
    /// one round trip over a warm connection, never a dial (TCP, noise and yamux cost
    /// two to three round trips before the request). Dials what is missing, at most
    /// [`WARM_DIALS_PER_TICK`] a tick; peers that are down are left to the liveness
    /// probes. Of each pair of full nodes only one dials (see [`dials_first`]): both
    /// dialling at once would open two connections, each pinged. Idle connections cost
    /// one ping every [`super::transport::PING_INTERVAL`].
    fn warm_connections(&mut self) {
        self.warming = false;
        if !self.keeps_warm() {
            return;
        }
        let me = *self.swarm.local_peer_id();
        let cold: Vec<(PeerId, Vec<Multiaddr>)> = self
            .state
            .view
            .snapshot()
            .into_iter()
            .filter(|(p, _)| {
                dials_first(&me, p)
                    && !self.swarm.is_connected(p)
                    && !self.state.liveness.is_down(p)
                    && !self.bans.is_banned(p)
            })
            .take(WARM_DIALS_PER_TICK + 1)
            .collect();
        self.warming = cold.len() > WARM_DIALS_PER_TICK;
        for (peer, addrs) in cold.into_iter().take(WARM_DIALS_PER_TICK) {
            debug!(%peer, "warming a connection to a full node");
            self.redial(peer, addrs);
        }
    }

    /// Whether this node keeps a connection to every full node: a full node whose
    /// membership is known and fits in three quarters of its connection budget.
    fn keeps_warm(&self) -> bool {
        self.mode == NodeMode::Full
            && self.state.membership_known()
            && self.state.view.len() <= self.warm_limit
    }

    /// Disconnects the least recently used peers while over a connection budget (full
    /// nodes and clients apart).
    pub(super) fn trim_connections(&mut self) {
        // A visor's join and periodic rounds (lookups of its own id, bootstraps) dial
        // the full nodes they ask: trimming those while the round runs only makes its
        // next query dial them again, a handshake on both sides each time (a fleet of
        // joining visors then stormed the full nodes). Trimmed once the round ends.
        if self.mode == NodeMode::Client && self.joining() {
            return;
        }
        let now = Instant::now();
        let mut over = self.budget.over_budget(now);
        over.extend(self.clients.over_budget(now));
        for peer in over {
            debug!(%peer, "connection budget: disconnecting least recently used peer");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// Whether a round of this node's own (a bootstrap, a lookup of its own id) runs.
    fn joining(&self) -> bool {
        let me = self.swarm.local_peer_id().to_bytes();
        self.swarm
            .behaviour()
            .kad
            .iter_queries()
            .any(|q| match q.info() {
                kad::QueryInfo::Bootstrap { .. } => true,
                kad::QueryInfo::GetClosestPeers { key, .. } => *key == me,
                _ => false,
            })
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
    pub(super) fn count_kad_requests(&self, last: bool, stats: &kad::QueryStats) {
        if last {
            self.state
                .metrics
                .outbound_requests
                .get_or_create(&RequestLabels {
                    kind: "find_node".into(),
                })
                .inc_by(u64::from(stats.num_requests()));
        }
    }

    pub(super) fn refresh_view(&mut self) {
        let mut peers = HashMap::new();
        let mut room = true;
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            room &= bucket.num_entries() < self.bucket_size;
            for e in bucket.iter() {
                peers.insert(
                    *e.node.key.preimage(),
                    e.node.value.iter().cloned().collect(),
                );
            }
        }
        self.state
            .metrics
            .routing_table_peers
            .set(peers.len() as i64);
        // A table larger than one bucket is a network too large to take any table as
        // whole: at 1,000 nodes, tables of 272 to 718 peers had no full bucket and
        // members rounds that brought nothing new, yet held a fraction of the network.
        room &= peers.len() < self.bucket_size;
        self.state.view.replace(peers);
        self.state.set_buckets_have_room(room);
        self.view_dirty = false;
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
                if self.servers.insert(peer_id) {
                    self.refresh_view();
                } else {
                    // A periodic re-identify: addresses rarely change.
                    self.view_dirty = true;
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                ..
            })) if self.mode == NodeMode::Full && !self.clients.contains(&peer_id) => {
                // A client-mode peer (a visor): it counts against the clients' budget,
                // never against the full nodes'.
                debug!(peer = %peer_id, "client-mode peer");
                self.budget.move_to(&peer_id, &mut self.clients);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(_)) => {}
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => {
                self.state.rtt.observe(peer, rtt);
                self.heard_from(peer);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(_)) => {}
            SwarmEvent::Behaviour(BehaviourEvent::Blocked(never)) => match never {},
            SwarmEvent::Behaviour(BehaviourEvent::Gate(never)) => match never {},
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
                if self.clients.contains(&peer_id) {
                    self.clients.established(peer_id, Instant::now());
                } else {
                    self.budget.established(peer_id, Instant::now());
                }
                self.state.connected.write().insert(peer_id);
                self.state.metrics.connections_opened.inc();
                self.count_connected();
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
                self.clients.closed(&peer_id);
                if num_established == 0 {
                    self.state.connected.write().remove(&peer_id);
                    self.count_connected();
                    self.servers.remove(&peer_id);
                    self.remote_ips.remove(&peer_id);
                    // Its next request dials first: the deadline of an unmeasured peer.
                    self.state.rtt.forget(&peer_id);
                    // Closed by an error (a crashed or cut-off peer), not by an idle
                    // timeout or the budget: suspect it and probe it at once; a probe
                    // that connects clears the suspicion within a round trip. Only
                    // where every connection is kept warm: in a network larger than
                    // the budget, the other end closing is mostly its own budget
                    // trimming (yamux reports that as an error too), and re-dialling
                    // it at once pushes it over budget again. At 1,000 nodes that loop
                    // opened 18,553 connections and suspected 14,402 times during 60
                    // puts. There a crashed peer is noticed by the next request to it.
                    if let Some(error) = cause.filter(|_| self.keeps_warm()) {
                        let addrs = self.state.view.addresses(&peer_id);
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
}

/// The IP of an address, if it has one.
pub(super) fn ip_of(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => Some(ip.into()),
        libp2p::multiaddr::Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    })
}

/// Whether `me` is the one of the pair (`me`, `peer`) that opens their warm connection.
/// Both ends compute the same answer for the pair, and each node dials about half of
/// the others (a plain "lower id dials" would make the lowest id dial everyone).
fn dials_first(me: &PeerId, peer: &PeerId) -> bool {
    let (a, b) = (me.to_bytes(), peer.to_bytes());
    let mixed = a.last().copied().unwrap_or(0) ^ b.last().copied().unwrap_or(0);
    (a < b) == (mixed & 1 == 0)
}

#[cfg(test)]
mod tests {
    use super::dials_first;
    use libp2p::PeerId;

    #[test]
    fn exactly_one_of_each_pair_dials_and_each_node_dials_about_half() {
        let peers: Vec<PeerId> = (0..64).map(|_| PeerId::random()).collect();
        for a in &peers {
            let mut dialled = 0;
            for b in peers.iter().filter(|b| *b != a) {
                assert_ne!(dials_first(a, b), dials_first(b, a), "{a} and {b}");
                dialled += usize::from(dials_first(a, b));
            }
            // 63 others: a fair coin per pair, far from all or none.
            assert!((8..=55).contains(&dialled), "{a} dials {dialled} of 63");
        }
    }
}
