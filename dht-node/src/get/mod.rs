//! The get queries. Every copy read is validated with the dht-core rules and must belong
//! to the target; copies are ranked by [`dht_core::precedence`], the one order every
//! replica and reader applies. Peers that are down are never asked.
//!
//! - First-valid ([`GetMode::First`], [`first`]): the local copy when this node is a
//!   responsible replica that has finished its catch-up; else the alpha closest live
//!   peers, each one that misses or is slow replaced by the next the table knows, and
//!   a lookup only if none answered with the item within `get_hedge_delay`.
//! - Best-of-quorum ([`GetMode::Quorum`], [`quorum`]): the responsible set as the
//!   routing table knows it, confirmed by a lookup in parallel; returns the best copy
//!   once a majority of the responsible set answered (a slow or failed replica replaced
//!   by the next live peer), and repairs stale or missing copies ([`crate::repair`]).
//!
//! Neither waits on a slow peer while another could answer: [`in_flight`] holds each
//! request's deadlines, derived from the peer's observed round trips. Only a miss (no
//! copy anywhere) may still wait for the last peers and the lookup, rather than report
//! one it does not know.

mod first;
mod in_flight;
mod quorum;

use std::time::Instant;

use dht_core::{ReasonCode, Target};
use libp2p::PeerId;
use tracing::{debug, instrument};

use crate::metrics::GetLabels;
use crate::node::Node;
use crate::protocol::{Request, Response};
use crate::report::{Found, GetMode, GetOutcome, GetReport};
use crate::NodeError;

/// Why a peer's answer to a get did not count.
enum Answer {
    /// The copy failed validation.
    Invalid(ReasonCode),
    /// No usable answer.
    Failed,
}

impl Node {
    /// Reads the item of `subject` under `salt`.
    pub async fn get(
        &self,
        subject: dht_core::PublicKey,
        salt: &[u8],
        mode: GetMode,
    ) -> Result<GetReport, NodeError> {
        self.get_target(Target::of(&subject, salt), mode).await
    }

    /// Reads the item at `target`. Every copy is validated with the dht-core rules and
    /// must belong to `target`; invalid copies are reported, never returned.
    #[instrument(skip(self), fields(%target))]
    pub async fn get_target(&self, target: Target, mode: GetMode) -> Result<GetReport, NodeError> {
        let started = Instant::now();
        let report = match mode {
            GetMode::First if self.inner.state.caught_up() => self.get_first(target).await?,
            // A node still catching up may hold a copy that was replaced or deleted while
            // it was away: the newest of a quorum answers instead.
            GetMode::First => self.get_quorum(target, 0).await?,
            GetMode::Quorum(n) => self.get_quorum(target, n).await?,
        };
        self.metrics()
            .get_latency
            .get_or_create(&GetLabels {
                mode: match mode {
                    GetMode::First => "first".into(),
                    GetMode::Quorum(_) => "quorum".into(),
                },
            })
            .observe(started.elapsed().as_secs_f64());
        Ok(report)
    }

    /// The local copy, when this node is a responsible full node.
    async fn local_copy(&self, target: Target) -> Result<Option<Found>, NodeError> {
        let Some(store) = self.responsible_store(&target) else {
            return Ok(None);
        };
        let stored = tokio::task::spawn_blocking(move || store.get(&target)).await??;
        Ok(stored.map(|s| Found {
            item: s.item,
            expires_at_ms: s.expires_at_ms,
            from: None,
        }))
    }

    /// Asks `peer` for its copy at `target` and validates it.
    async fn ask(&self, peer: PeerId, target: Target) -> (PeerId, Result<Option<Found>, Answer>) {
        let result = match self.inner.client.request(peer, Request::Get(target)).await {
            Err(e) => {
                debug!(%peer, error = %e, "get request failed");
                Err(Answer::Failed)
            }
            Ok(Response::Get(None)) => Ok(None),
            Ok(Response::Get(Some(copy))) => copy
                .and_then(|e| {
                    let exp = e.expires_at_ms.unwrap_or(0);
                    self.inner
                        .validator
                        .validate_for(&target, e.item)
                        .map(|v| (v, exp))
                })
                .map(|(v, exp)| {
                    Some(Found {
                        item: v.into_item(),
                        expires_at_ms: exp,
                        from: Some(peer),
                    })
                })
                .map_err(|r| Answer::Invalid(r.code())),
            // A refusal ("catching_up", "rate_limited") or an unexpected answer.
            Ok(other) => {
                debug!(%peer, answer = ?other, "get refused");
                Err(Answer::Failed)
            }
        };
        (peer, result)
    }
}

/// An empty report of a get of `target`.
fn new_report(target: Target) -> GetReport {
    GetReport {
        target,
        lookup: GetOutcome::Unreachable,
        asked: 0,
        answered: 0,
        invalid: Vec::new(),
        repairing: Vec::new(),
    }
}
