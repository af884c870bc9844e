//! The put query. The item goes at once to the responsible set as the routing table knows
//! it (stand-ins replacing replicas that are down) while a lookup confirms the set (none
//! when the table holds the whole membership: `NodeState::membership_known`); the
//! put returns as soon as a majority of the responsible set holds the item and the
//! stragglers had a grace of half what the majority took (so a put takes at most 1.5
//! times its majority, never a timeout's worth). What is still in flight then finishes
//! in the background.
//!
//! No put waits a timeout on a slow replica while others answer. Each request has a
//! deadline derived from the peer's observed round trips ([`crate::rtt`]); a replica
//! past it (or one that failed) is hedged: the next live peer beyond the responsible set
//! gets the item too (a stand-in, which never counts towards the majority). Without a majority, the put
//! waits for the responsible replicas still in flight up to [`GIVE_UP_DEADLINES`] of
//! their deadlines (and of what the first answer took; until one answers, for their
//! requests' course), and for the lookup up to [`LOOKUP_DEADLINES`] typical deadlines;
//! then it returns what is true: no majority (yet), with the replicas still pending
//! named in the report, and [`NodeEvent::PutFinished`] tells what became of them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dht_core::{MutableItem, PublicKey, PutOptions, SigningKey, Target};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use libp2p::PeerId;
use tracing::{debug, instrument};

use crate::config::NodeMode;
use crate::events::NodeEvent;
use crate::network::PeerList;
use crate::node::Node;
use crate::placement::Placement;
use crate::report::{GetMode, PutReport, ReplicaOutcome, ReplicaResult};
use crate::sent_values::{ValueForms, MIN_CODED_VALUE};
use crate::NodeError;

/// Shortest wait for stragglers once a majority stored (on loopback a majority takes a
/// few milliseconds; the replicas answering in the same flight still make the report).
const MIN_STRAGGLER_GRACE: Duration = Duration::from_millis(1);
/// Without a majority, a responsible replica still in flight is waited on for this many
/// of its deadlines (a replica that is merely slow, a busy machine) before the put
/// returns without it.
pub(crate) const GIVE_UP_DEADLINES: u32 = 3;
/// Without a majority, the lookup confirming the responsible set is waited on for this
/// many typical request deadlines (a lookup is a few rounds of requests; kad itself
/// would wait up to ten seconds for an unresponsive peer).
pub(crate) const LOOKUP_DEADLINES: u32 = 4;

/// Most spares one put asks in place of slow or failed replicas: stand-ins never make
/// the majority, and an overloaded network must not be sent twice the requests.
const MAX_HEDGES: usize = 4;

/// One put in progress.
struct PutQuery {
    node: Node,
    target: Target,
    item: MutableItem,
    opts: PutOptions,
    forms: Arc<ValueForms>,
    known: HashSet<PeerId>,
    placement: Placement,
    asked: HashSet<PeerId>,
    /// When each request not answered yet becomes late (its peer is then slow and
    /// another is asked in its place); removed once late or answered.
    due: HashMap<PeerId, Instant>,
    /// When a put without a majority stops waiting for each unanswered request.
    give_up: HashMap<PeerId, Instant>,
    /// Peers beyond the responsible set asked in place of slow or failed replicas.
    hedged: Vec<PeerId>,
    pending: FuturesUnordered<BoxFuture<'static, (PeerId, ReplicaResult)>>,
    lookup: Option<BoxFuture<'static, Result<PeerList, NodeError>>>,
    /// When a put without a majority stops waiting for the lookup.
    lookup_give_up: Instant,
    /// When the put started sending.
    started: Instant,
    /// How long the first answer (stored or rejected) of a responsible replica took.
    first_answer: Option<Duration>,
    outcomes: Vec<ReplicaOutcome>,
    local: Option<ReplicaResult>,
}

impl PutQuery {
    fn replan(&mut self) {
        let node = &self.node;
        let me = node.peer_id();
        let full = node.config().mode == NodeMode::Full;
        let liveness = &node.inner.state.liveness;
        self.placement = Placement::of(
            &self.target,
            self.known.iter().copied().chain(full.then_some(me)),
            node.config().replication,
            me,
            |p| liveness.is_down(p),
        );
        for peer in self.placement.to_ask(me) {
            self.ask(peer);
        }
    }

    /// Sends the item to `peer` (once) and starts its hedge timer.
    fn ask(&mut self, peer: PeerId) {
        if !self.asked.insert(peer) {
            return;
        }
        let now = Instant::now();
        let deadline = self.node.inner.state.rtt.deadline(&peer);
        self.due.insert(peer, now + deadline);
        self.give_up
            .insert(peer, now + deadline * GIVE_UP_DEADLINES);
        let node = self.node.clone();
        let item = self.item.clone();
        let opts = self.opts;
        let forms = self.forms.clone();
        self.pending.push(
            async move { (peer, node.send_item_coded(peer, &item, opts, &forms).await) }.boxed(),
        );
    }

    /// Asks the nearest spare not asked yet in place of a slow or failed replica (at
    /// most [`MAX_HEDGES`] per put).
    fn hedge(&mut self) {
        if self.hedged.len() >= MAX_HEDGES {
            return;
        }
        let spare = self
            .placement
            .spares
            .iter()
            .find(|p| !self.asked.contains(p))
            .copied();
        if let Some(peer) = spare {
            self.node.metrics().hedged_requests.inc();
            self.hedged.push(peer);
            self.ask(peer);
        }
    }

    /// The earliest hedge timer still running.
    fn next_late(&self) -> Option<Instant> {
        self.due.values().min().copied()
    }

    /// Peers whose deadline passed: slow. Each responsible one is hedged.
    fn on_late(&mut self, now: Instant) {
        let late: Vec<PeerId> = self
            .due
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in late {
            self.due.remove(&peer);
            debug!(%peer, "replica slow: hedged");
            if self.placement.responsible.contains(&peer) {
                self.hedge();
            }
        }
    }

    /// When a put without a majority returns: once every responsible replica still in
    /// flight and the lookup had their time (None: nothing is left to wait for). A
    /// replica's time is [`GIVE_UP_DEADLINES`] of its deadlines and as many times what
    /// the first replica's answer took (a busy machine is slow for everyone); while no
    /// replica answered at all, nothing singles one out as slow: their requests run
    /// their course.
    fn give_up_at(&self) -> Option<Instant> {
        let replicas = self
            .give_up
            .iter()
            .filter(|(p, _)| self.placement.responsible.contains(p))
            .map(|(_, t)| match self.first_answer {
                Some(first) => (*t).max(self.started + first * GIVE_UP_DEADLINES),
                None => self.started + self.node.config().request_timeout * 2,
            });
        let lookup = self.lookup.is_some().then_some(self.lookup_give_up);
        replicas.chain(lookup).max()
    }

    fn has_majority(&self) -> bool {
        self.report().majority_stored()
    }

    fn finished(&self) -> bool {
        self.pending.is_empty() && self.lookup.is_none()
    }

    /// Whether every request not yet late has been answered.
    fn only_late_pending(&self) -> bool {
        self.due.is_empty()
    }

    /// Waits for the next answer or the lookup's result.
    async fn step(&mut self) {
        enum Event {
            Answer(PeerId, ReplicaResult),
            Lookup(Result<PeerList, NodeError>),
            Late,
            Idle,
        }
        let next_late = self.next_late();
        let event = {
            let pending = &mut self.pending;
            let lookup = &mut self.lookup;
            tokio::select! {
                _ = async {
                    match next_late {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending().await,
                    }
                }, if next_late.is_some() => Event::Late,
                Some((peer, result)) = pending.next(), if !pending.is_empty() => {
                    Event::Answer(peer, result)
                }
                found = async {
                    match lookup.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                }, if lookup.is_some() => Event::Lookup(found),
                else => Event::Idle,
            }
        };
        match event {
            Event::Answer(peer, result) => {
                self.due.remove(&peer);
                self.give_up.remove(&peer);
                // A replica that stored or rejected it shows how fast replicas answer
                // now; a failure (a closed connection, a timeout) does not.
                let answered = !matches!(result, ReplicaResult::Failed(_));
                if answered
                    && self.first_answer.is_none()
                    && self.placement.responsible.contains(&peer)
                {
                    self.first_answer = Some(self.started.elapsed());
                }
                // A replica that failed is hedged at once.
                if matches!(result, ReplicaResult::Failed(_))
                    && self.placement.responsible.contains(&peer)
                {
                    self.hedge();
                }
                self.outcomes.push(ReplicaOutcome { peer, result });
            }
            Event::Late => self.on_late(Instant::now()),
            Event::Lookup(found) => {
                self.lookup = None;
                match found {
                    Ok(peers) => {
                        let me = self.node.peer_id();
                        self.known
                            .extend(peers.into_iter().map(|(p, _)| p).filter(|p| *p != me));
                        self.replan();
                    }
                    Err(e) => debug!(error = %e, "lookup failed; the routing table's set stands"),
                }
            }
            Event::Idle => {}
        }
    }

    fn report(&self) -> PutReport {
        let answered: HashSet<PeerId> = self.outcomes.iter().map(|o| o.peer).collect();
        let failed: HashSet<PeerId> = self
            .outcomes
            .iter()
            .filter(|o| matches!(o.result, ReplicaResult::Failed(_)))
            .map(|o| o.peer)
            .collect();
        let mut unreachable = self.placement.unreachable.clone();
        unreachable.extend(
            self.placement
                .responsible
                .iter()
                .filter(|p| failed.contains(p))
                .copied(),
        );
        PutReport {
            target: self.target,
            seq: self.item.seq,
            node: self.node.peer_id(),
            local: self.local.clone(),
            replicas: self.outcomes.clone(),
            responsible: self.placement.responsible.clone(),
            unreachable,
            stand_ins: self
                .placement
                .stand_ins
                .iter()
                .chain(&self.hedged)
                .copied()
                .collect(),
            pending: self
                .asked
                .iter()
                .filter(|p| !answered.contains(p))
                .copied()
                .collect(),
        }
    }
}

impl Node {
    /// The wire forms of a put's value: a patch against the last value this node put at
    /// the target (at a lower seq), else compressed; the new value is remembered as the
    /// next put's base. Coding a large value takes a few milliseconds: off the reactor.
    async fn value_forms(&self, item: &MutableItem) -> Arc<ValueForms> {
        let target = item.target();
        let base = self
            .inner
            .sent_values
            .get(&target)
            .filter(|(seq, _)| *seq < item.seq);
        let value = item.value().cloned();
        if let Some(v) = &value {
            if v.len() >= MIN_CODED_VALUE {
                self.inner.sent_values.record(target, item.seq, v.clone());
            }
        }
        let small = value.as_ref().is_none_or(|v| v.len() < MIN_CODED_VALUE);
        if small {
            return Arc::new(ValueForms::new(value.as_ref(), None));
        }
        let forms =
            tokio::task::spawn_blocking(move || ValueForms::new(value.as_ref(), base)).await;
        Arc::new(forms.unwrap_or_else(|_| ValueForms::new(None, None)))
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

    /// Publishes an item with default options.
    pub async fn put(&self, item: MutableItem) -> Result<PutReport, NodeError> {
        self.put_with(item, PutOptions::default()).await
    }

    /// Publishes an item: validates it, stores it locally (when this node is one of the
    /// responsible full nodes) and on the other responsible replicas, and reports what
    /// each did. Returns once a majority of the responsible set holds it (or every
    /// replica answered); see [`PutReport`].
    #[instrument(skip_all, fields(target = %item.target(), seq = item.seq))]
    pub async fn put_with(
        &self,
        item: MutableItem,
        opts: PutOptions,
    ) -> Result<PutReport, NodeError> {
        let verified = self
            .inner
            .validator
            .validate(item)
            .map_err(NodeError::Rejected)?;
        let target = verified.target();
        let item = verified.item().clone();
        let local = match self.responsible_store(&target) {
            Some(_) => Some(self.store_locally(verified, opts).await?),
            None => None,
        };
        let forms = self.value_forms(&item).await;
        let me = self.peer_id();
        let started = Instant::now();
        let lookup_give_up = started + self.inner.state.rtt.typical() * LOOKUP_DEADLINES;
        let lookup = {
            let node = self.clone();
            async move { node.inner.client.lookup(target).await }.boxed()
        };
        let mut query = PutQuery {
            node: self.clone(),
            target,
            item,
            opts,
            forms,
            known: self
                .inner
                .state
                .view
                .snapshot()
                .into_keys()
                .filter(|p| *p != me)
                .collect(),
            placement: Placement::default(),
            asked: HashSet::new(),
            due: HashMap::new(),
            give_up: HashMap::new(),
            hedged: Vec::new(),
            pending: FuturesUnordered::new(),
            // A table that holds the whole membership already names the responsible
            // set: no lookup (its requests would be most of the put's bytes).
            lookup: (!self.inner.state.membership_known()).then_some(lookup),
            lookup_give_up,
            started,
            first_answer: None,
            outcomes: Vec::new(),
            local,
        };
        query.replan();
        let k = self.config().replication;
        let mut majority_at = query.has_majority().then(Instant::now);
        while !query.finished() {
            let young =
                query.placement.responsible.len() < k && !self.inner.state.table_is_membership();
            let stop_at = match majority_at {
                // Every replica not late has answered and a majority holds the item: a
                // lookup still running can only add to a table that already answered
                // (it goes on in the background), unless the table is young.
                Some(_) if query.only_late_pending() && !young => break,
                Some(at) => {
                    let grace = (at.duration_since(started) / 2).max(MIN_STRAGGLER_GRACE);
                    // A responsible set smaller than k before any bootstrap round
                    // finished may only mean the routing table is young: give the
                    // lookup longer to find the rest. After one, the table is the
                    // membership.
                    let grace = if young && query.lookup.is_some() {
                        grace.max(self.config().put_lookup_grace)
                    } else {
                        grace
                    };
                    at + grace
                }
                // No majority yet: wait while a responsible replica or the lookup may
                // still bring it, never on one past its give-up time; with nothing left
                // that could bring it (stand-ins do not count), return.
                None => match query.give_up_at() {
                    Some(t) => t,
                    None => break,
                },
            };
            if stop_at <= Instant::now() {
                break;
            }
            tokio::select! {
                _ = query.step() => {}
                _ = tokio::time::sleep_until(stop_at.into()) => {}
            }
            // The lookup may grow the responsible set and so the majority needed.
            if !query.has_majority() {
                majority_at = None;
            } else if majority_at.is_none() {
                majority_at = Some(Instant::now());
            }
        }
        let report = query.report();
        if !report.majority_stored() {
            self.metrics().puts_without_majority.inc();
        }
        if !query.finished() {
            self.metrics().puts_returned_early.inc();
            tokio::spawn(async move {
                while !query.finished() {
                    query.step().await;
                }
                let late = query.report();
                debug!(
                    stored = late.stored_on().len(),
                    failed = late.failed().len(),
                    "put finished in the background"
                );
                query.node.inner.state.emit(NodeEvent::PutFinished {
                    target: late.target,
                    seq: late.seq,
                    responsible_stored: late.responsible_stored(),
                    majority: late.majority_stored(),
                });
            });
        }
        debug!(
            stored = report.stored_on().len(),
            responsible_stored = report.responsible_stored(),
            responsible = report.responsible.len(),
            unreachable = report.unreachable.len(),
            pending = report.pending.len(),
            "put returned"
        );
        Ok(report)
    }
}
