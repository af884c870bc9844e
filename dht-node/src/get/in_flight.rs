//! The requests of a get in flight, each with its hedge timers: *late* once its
//! deadline (from the peer's observed round trips, see [`crate::rtt`]) passed, when
//! the query asks another peer in its place; *given up* after
//! [`GIVE_UP_DEADLINES`] deadlines, when the query stops waiting for it (the request
//! itself stays in flight until the request timeout and may still answer).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use dht_core::Target;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use libp2p::PeerId;

use super::Answer;
use crate::node::Node;
use crate::put::GIVE_UP_DEADLINES;
use crate::report::Found;

/// A peer's answer to a get.
pub(super) type Reply = (PeerId, Result<Option<Found>, Answer>);

/// Requests of one get, in flight.
pub(super) struct InFlight<'a> {
    node: &'a Node,
    target: Target,
    /// Every peer asked.
    pub asked: HashSet<PeerId>,
    /// When each request not answered (and not yet late) becomes late.
    due: HashMap<PeerId, Instant>,
    /// When the get stops waiting for each request not answered.
    give_up: HashMap<PeerId, Instant>,
    pending: FuturesUnordered<BoxFuture<'a, Reply>>,
}

impl<'a> InFlight<'a> {
    /// No request yet.
    pub fn new(node: &'a Node, target: Target) -> Self {
        InFlight {
            node,
            target,
            asked: HashSet::new(),
            due: HashMap::new(),
            give_up: HashMap::new(),
            pending: FuturesUnordered::new(),
        }
    }

    /// Asks `peer` (once; never this node). Whether a request was sent.
    pub fn ask(&mut self, peer: PeerId) -> bool {
        if peer == self.node.peer_id() || !self.asked.insert(peer) {
            return false;
        }
        let now = Instant::now();
        let deadline = self.node.inner.state.rtt.deadline(&peer);
        self.due.insert(peer, now + deadline);
        self.give_up
            .insert(peer, now + deadline * GIVE_UP_DEADLINES);
        let (node, target) = (self.node, self.target);
        self.pending
            .push(async move { node.ask(peer, target).await }.boxed());
        true
    }

    /// Whether no request is in flight.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether a request in flight is still within its give-up time.
    pub fn worth_waiting(&self, now: Instant) -> bool {
        self.give_up.values().any(|t| *t > now)
    }

    /// Requests in flight within their give-up time and not late.
    pub fn on_time(&self) -> usize {
        self.due.len()
    }

    /// The next instant a request turns late.
    pub fn next_late(&self) -> Option<Instant> {
        self.due.values().min().copied()
    }

    /// The next instant a timer fires (a request turns late or is given up).
    pub fn next_timer(&self, now: Instant) -> Option<Instant> {
        let late = self.due.values().min().copied();
        let give_up = self.give_up.values().filter(|t| **t > now).min().copied();
        late.into_iter().chain(give_up).min()
    }

    /// Requests that turned late by `now` (each counted once).
    pub fn take_late(&mut self, now: Instant) -> usize {
        let before = self.due.len();
        self.due.retain(|_, t| *t > now);
        before - self.due.len()
    }

    /// The next answer. The flag tells whether the request was on time (not yet
    /// replaced by another as late).
    pub async fn next(&mut self) -> Option<(Reply, bool)> {
        let (peer, answer) = self.pending.next().await?;
        let on_time = self.due.remove(&peer).is_some();
        self.give_up.remove(&peer);
        Some(((peer, answer), on_time))
    }
}
