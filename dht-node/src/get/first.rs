//! First-valid get: the local copy when this node is a responsible replica; else the
//! alpha closest live peers of the routing table, hedged by a lookup (see [`Hedge`]).

use std::collections::HashSet;

use dht_core::Target;
use futures::future::OptionFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use libp2p::PeerId;

use super::{new_report, Answer};
use crate::config::NodeMode;
use crate::node::Node;
use crate::report::{GetOutcome, GetReport};
use crate::routing::{closest_of, target_key};
use crate::NodeError;

/// The hedge of a first-valid get. A read that the routing table already resolves
/// costs alpha requests, not a whole lookup: the lookup starts only once
/// `get_hedge_delay` passed without the item, or every peer asked missed. A visor
/// (client mode) first hedges to the rest of the responsible set it knows, alpha peers
/// per hedge delay, and looks up only once it has asked them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hedge {
    /// The closest known peers are asked; the lookup waits for the hedge delay.
    Waiting,
    /// The lookup runs.
    LookingUp,
    /// The lookup answered and the peers it found were asked.
    Done,
}

impl Node {
    /// The peers a first-valid get asks before its hedge: the alpha closest live peers
    /// of the responsible set; a visor (client mode) asks the ones among them it is
    /// connected to, when there are any, so that a read costs one round trip over a
    /// warm connection and opens none (it keeps `client_connections` full nodes).
    fn first_asked(&self, responsible: &[PeerId]) -> Vec<PeerId> {
        let alpha = self.inner.config.parallelism;
        if self.inner.config.mode == NodeMode::Client {
            let connected = self.inner.state.connected.read();
            let warm: Vec<PeerId> = responsible
                .iter()
                .filter(|p| connected.contains(p))
                .take(alpha)
                .copied()
                .collect();
            if !warm.is_empty() {
                return warm;
            }
        }
        responsible.iter().take(alpha).copied().collect()
    }

    pub(super) async fn get_first(&self, target: Target) -> Result<GetReport, NodeError> {
        let mut report = new_report(target);
        if let Some(found) = self.local_copy(target).await? {
            report.lookup = GetOutcome::of(found);
            return Ok(report);
        }
        let k = self.inner.config.replication;
        let liveness = &self.inner.state.liveness;
        let mut asked: HashSet<PeerId> = HashSet::new();
        let mut pending = FuturesUnordered::new();
        let responsible: Vec<PeerId> = self
            .inner
            .state
            .view
            .closest(&target, k)
            .into_iter()
            .filter(|p| !liveness.is_down(p))
            .collect();
        let first = self.first_asked(&responsible);
        for p in &first {
            asked.insert(*p);
            pending.push(self.ask(*p, target));
        }
        // A visor hedges to the rest of the responsible set it knows before it looks
        // up: a lookup dials every full node it asks, and a fleet of visors looking up
        // at once would storm the full nodes with handshakes.
        let mut spare: Vec<PeerId> = match self.inner.config.mode {
            NodeMode::Client => responsible
                .into_iter()
                .filter(|p| !asked.contains(p))
                .rev()
                .collect(),
            NodeMode::Full => Vec::new(),
        };
        let hedge_delay = self.inner.config.get_hedge_delay;
        let mut hedge = Hedge::Waiting;
        let delay = tokio::time::sleep(hedge_delay);
        tokio::pin!(delay);
        let lookup = OptionFuture::from(None);
        tokio::pin!(lookup);
        loop {
            if hedge == Hedge::Waiting && (delay.is_elapsed() || pending.is_empty()) {
                if spare.is_empty() {
                    hedge = Hedge::LookingUp;
                    lookup.set(Some(self.inner.client.lookup(target)).into());
                } else {
                    // Nearest first (`spare` is reversed).
                    for _ in 0..self.inner.config.parallelism {
                        if let Some(p) = spare.pop() {
                            asked.insert(p);
                            pending.push(self.ask(p, target));
                        }
                    }
                    delay
                        .as_mut()
                        .reset(tokio::time::Instant::now() + hedge_delay);
                }
            }
            tokio::select! {
                _ = &mut delay, if hedge == Hedge::Waiting => {}
                Some((peer, answer)) = pending.next(), if !pending.is_empty() => {
                    match answer {
                        Ok(Some(found)) => {
                            report.answered += 1;
                            report.asked = asked.len();
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
                }
                Some(peers) = &mut lookup, if hedge == Hedge::LookingUp => {
                    hedge = Hedge::Done;
                    let key = target_key(&target);
                    let found = peers.unwrap_or_default().into_iter().map(|(p, _)| p);
                    for p in closest_of(&key, found, k) {
                        if p != self.inner.peer_id && !liveness.is_down(&p) && asked.insert(p) {
                            pending.push(self.ask(p, target));
                        }
                    }
                }
                else => break,
            }
        }
        report.asked = asked.len();
        report.lookup = if report.answered > 0 {
            GetOutcome::NotFound
        } else {
            GetOutcome::Unreachable
        };
        Ok(report)
    }
}
