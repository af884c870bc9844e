//! First-valid get: the local copy when this node is a responsible replica; else the
//! alpha closest live peers of the routing table, hedged by the next ones of the table
//! and by a lookup (see [`Hedge`]).

use std::collections::VecDeque;
use std::time::Instant;

use dht_core::Target;
use futures::future::OptionFuture;
use libp2p::PeerId;

use super::in_flight::InFlight;
use super::{new_report, Answer};
use crate::config::NodeMode;
use crate::node::Node;
use crate::report::{GetOutcome, GetReport};
use crate::routing::{closest_of, target_key};
use crate::NodeError;

/// The hedge of a first-valid get. A read that the routing table already resolves
/// costs alpha requests, not a whole lookup: the lookup starts only once
/// `get_hedge_delay` passed without the item, or every peer asked missed. The lookup
/// never blocks the table: a peer that misses, fails or passes its deadline (from its
/// observed round trips, see [`crate::rtt`]) is replaced at once by the next closest
/// peer the table knows. A visor (client mode), and a full node whose table holds the
/// whole membership, first hedge to the rest of the responsible set they know, alpha
/// peers per hedge delay, and look up only once they have asked them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hedge {
    /// The closest known peers are asked; the lookup waits for the hedge delay.
    Waiting,
    /// The lookup runs.
    LookingUp,
    /// The lookup answered (and the peers it found were asked).
    Done,
}

impl Node {
    /// The peers a first-valid get asks before its hedge: the alpha closest live peers
    /// of the responsible set, those this node is connected to first, so that a read
    /// costs one round trip over a warm connection (a visor opens none while a replica
    /// is connected: it keeps `client_connections` full nodes; a full node of a small
    /// network keeps them all, see `NodeConfig::bucket_size`). Any replica holds the
    /// item, so a connected one a little farther off answers as well as the closest.
    fn first_asked(&self, responsible: &[PeerId]) -> Vec<PeerId> {
        let alpha = self.inner.config.parallelism;
        let connected = self.inner.state.connected.read();
        let (warm, cold): (Vec<PeerId>, Vec<PeerId>) =
            responsible.iter().partition(|p| connected.contains(p));
        if self.inner.config.mode == NodeMode::Client && !warm.is_empty() {
            // A visor opens no connection while one to a replica is warm: the rest of
            // the responsible set is its hedge.
            return warm.into_iter().take(alpha).collect();
        }
        warm.into_iter().chain(cold).take(alpha).collect()
    }

    pub(super) async fn get_first(&self, target: Target) -> Result<GetReport, NodeError> {
        let mut report = new_report(target);
        if let Some(found) = self.local_copy(target).await? {
            report.lookup = GetOutcome::of(found);
            return Ok(report);
        }
        let k = self.inner.config.replication;
        let liveness = &self.inner.state.liveness;
        // The table's candidates, nearest first: alpha asked now, the rest in reserve.
        let mut reserve: VecDeque<PeerId> = self
            .inner
            .state
            .view
            .closest(&target, k)
            .into_iter()
            .filter(|p| !liveness.is_down(p))
            .collect();
        let mut flight = InFlight::new(self, target);
        let first = self.first_asked(reserve.make_contiguous());
        reserve.retain(|p| !first.contains(p));
        for p in first {
            flight.ask(p);
        }
        // A visor hedges to the rest of the responsible set it knows before it looks
        // up: a lookup dials every full node it asks, and a fleet of visors looking up
        // at once would storm the full nodes with handshakes.
        let client = self.inner.config.mode == NodeMode::Client;
        // A full node whose table holds the whole membership also hedges within the
        // responsible set: a lookup could only find the peers it already has. Its hedge
        // (and a visor's) waits a typical request deadline (from observed round trips),
        // not the fixed delay, which on a WAN is shorter than one round trip, and which
        // a fleet of visors short of CPU would turn into a storm of hedged requests.
        let one_hop = client || self.inner.state.membership_known();
        let hedge_delay = if one_hop {
            self.inner
                .config
                .get_hedge_delay
                .max(self.inner.state.rtt.typical())
        } else {
            self.inner.config.get_hedge_delay
        };
        let mut hedge = Hedge::Waiting;
        let delay = tokio::time::sleep(hedge_delay);
        tokio::pin!(delay);
        let lookup = OptionFuture::from(None);
        tokio::pin!(lookup);
        loop {
            if hedge == Hedge::Waiting && (delay.is_elapsed() || flight.is_empty()) {
                if one_hop && !reserve.is_empty() {
                    for _ in 0..self.inner.config.parallelism {
                        if let Some(p) = reserve.pop_front() {
                            flight.ask(p);
                        }
                    }
                    delay
                        .as_mut()
                        .reset(tokio::time::Instant::now() + hedge_delay);
                } else {
                    hedge = Hedge::LookingUp;
                    lookup.set(Some(self.inner.client.lookup(target)).into());
                }
            }
            // Only the timers of late requests wake the loop: a miss is reported only
            // once every peer asked answered (or failed) and the lookup answered, so a
            // slow replica or lookup delays a "not found", never a read that one of
            // the table's peers can answer.
            let wake = flight.next_late();
            // Each peer that missed, failed or is late: the next of the table asked.
            let mut replace = 0usize;
            tokio::select! {
                _ = &mut delay, if hedge == Hedge::Waiting => {}
                _ = async {
                    match wake {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending().await,
                    }
                }, if wake.is_some() => {
                    replace += flight.take_late(Instant::now());
                }
                Some(((peer, answer), on_time)) = flight.next(), if !flight.is_empty() => {
                    match answer {
                        Ok(Some(found)) => {
                            report.answered += 1;
                            report.asked = flight.asked.len();
                            report.lookup = GetOutcome::of(found);
                            return Ok(report);
                        }
                        Ok(None) => report.answered += 1,
                        Err(Answer::Invalid(code)) => {
                            report.answered += 1;
                            report.invalid.push((peer, code));
                        }
                        Err(Answer::Failed) => {}
                    }
                    // A late peer was replaced already.
                    replace += usize::from(on_time);
                }
                Some(peers) = &mut lookup, if hedge == Hedge::LookingUp => {
                    hedge = Hedge::Done;
                    let key = target_key(&target);
                    let found = peers.unwrap_or_default().into_iter().map(|(p, _)| p);
                    for p in closest_of(&key, found, k) {
                        if p != self.inner.peer_id && !liveness.is_down(&p) {
                            flight.ask(p);
                        }
                    }
                }
                else => break,
            }
            while replace > 0 {
                let Some(p) = reserve.pop_front() else { break };
                if flight.ask(p) {
                    self.metrics().hedged_requests.inc();
                    replace -= 1;
                }
            }
        }
        report.asked = flight.asked.len();
        report.lookup = if report.answered > 0 {
            GetOutcome::NotFound
        } else {
            GetOutcome::Unreachable
        };
        Ok(report)
    }
}
