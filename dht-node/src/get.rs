//! The get queries. Every copy read is validated with the dht-core rules and must belong
//! to the target; copies are ranked by [`dht_core::precedence`], the one order every
//! replica and reader applies. Peers that are down are never asked.
//!
//! - First-valid ([`GetMode::First`]): the local copy when this node is a responsible
//!   replica that has finished its catch-up; else the alpha closest live peers, and a
//!   lookup only if none answered with the item within `get_hedge_delay`.
//! - Best-of-quorum ([`GetMode::Quorum`]): the responsible set as the routing table knows
//!   it, confirmed by a lookup in parallel; returns the best copy once a majority of the
//!   responsible set answered, and repairs stale or missing copies.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dht_core::store::RecordStore;
use dht_core::wire::DecodeLimits;
use dht_core::{PutOptions, ReasonCode, Target};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use libp2p::PeerId;
use tracing::{debug, instrument};

use crate::config::NodeMode;
use crate::metrics::GetLabels;
use crate::node::Node;
use crate::placement::Placement;
use crate::protocol::{
    request_proto, response_proto, GetRequestProto, RequestProto, ResponseProto,
};
use crate::report::{Found, GetMode, GetReport, Lookup, ReplicaResult};
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
            GetMode::First if self.inner.shared.caught_up() => self.get_first(target).await?,
            // A node still catching up may hold a copy that was replaced or deleted while
            // it was away: the newest of a quorum answers instead.
            GetMode::First | GetMode::Quorum(_) => {
                let quorum = match mode {
                    GetMode::Quorum(n) => n,
                    GetMode::First => 0,
                };
                self.get_quorum(target, quorum).await?
            }
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

    /// The local store, if this node is a full node among the nodes responsible for
    /// `target` (a node outside that set may hold an outdated copy).
    pub(crate) fn responsible_store(&self, target: &Target) -> Option<Arc<dyn RecordStore>> {
        let store = self.store()?;
        let me = self.inner.peer_id;
        self.inner
            .shared
            .view
            .responsible(target, self.inner.config.replication, me, &[])
            .contains(&me)
            .then_some(store)
    }

    async fn local_copy(&self, target: Target) -> Result<Option<Found>, NodeError> {
        let Some(store) = self.responsible_store(&target) else {
            return Ok(None);
        };
        let stored = tokio::task::spawn_blocking(move || store.get(&target))
            .await
            .map_err(|e| NodeError::Task(e.to_string()))??;
        Ok(stored.map(|s| Found {
            item: s.item,
            expires_at_ms: s.expires_at_ms,
            from: None,
        }))
    }

    async fn ask(&self, peer: PeerId, target: Target) -> (PeerId, Result<Option<Found>, Answer>) {
        let request = RequestProto {
            kind: Some(request_proto::Kind::Get(GetRequestProto {
                target: Bytes::copy_from_slice(target.as_bytes()),
            })),
        };
        let result = match self.request(peer, request).await {
            Err(e) => {
                debug!(%peer, error = %e, "get request failed");
                Err(Answer::Failed)
            }
            Ok(ResponseProto {
                kind: Some(response_proto::Kind::Get(g)),
            }) => match g.envelope {
                None => Ok(None),
                Some(env) => {
                    let limits = DecodeLimits {
                        max_value_len: self.inner.validator.policy().max_value_len,
                    };
                    env.into_envelope(&limits)
                        .map_err(dht_core::Rejection::from)
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
                        .map_err(|r| Answer::Invalid(r.code()))
                }
            },
            // A refusal ("catching_up", "rate_limited") or an unexpected answer.
            Ok(other) => {
                debug!(%peer, answer = ?other.kind.map(|_| "other"), "get refused");
                Err(Answer::Failed)
            }
        };
        (peer, result)
    }

    async fn get_first(&self, target: Target) -> Result<GetReport, NodeError> {
        let mut report = GetReport {
            target,
            lookup: Lookup::Unreachable,
            asked: 0,
            answered: 0,
            invalid: Vec::new(),
            repairing: Vec::new(),
        };
        if let Some(found) = self.local_copy(target).await? {
            report.lookup = lookup_of(found);
            return Ok(report);
        }
        let k = self.inner.config.replication;
        let liveness = &self.inner.shared.liveness;
        let mut asked: HashSet<PeerId> = HashSet::new();
        let mut pending = FuturesUnordered::new();
        let first: Vec<PeerId> = self
            .inner
            .shared
            .view
            .closest(&target, k)
            .into_iter()
            .filter(|p| !liveness.is_down(p))
            .take(self.inner.config.parallelism)
            .collect();
        for p in first {
            asked.insert(p);
            pending.push(self.ask(p, target));
        }
        // Hedged: the lookup starts only if the closest known peers have not answered
        // with the item within `get_hedge_delay` (or all missed), so a read that the
        // routing table already resolves costs alpha requests, not a whole lookup.
        let hedge = tokio::time::sleep(self.inner.config.get_hedge_delay);
        tokio::pin!(hedge);
        let mut hedged = false;
        let lookup = futures::future::OptionFuture::from(None);
        tokio::pin!(lookup);
        let mut lookup_done = false;
        loop {
            if !hedged && (hedge.is_elapsed() || pending.is_empty()) {
                hedged = true;
                lookup.set(Some(self.lookup(target)).into());
            }
            tokio::select! {
                _ = &mut hedge, if !hedged => {}
                Some((peer, answer)) = pending.next(), if !pending.is_empty() => {
                    match answer {
                        Ok(Some(found)) => {
                            report.answered += 1;
                            report.asked = asked.len();
                            report.lookup = lookup_of(found);
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
                Some(peers) = &mut lookup, if hedged && !lookup_done => {
                    lookup_done = true;
                    let key = crate::routing::target_key(&target);
                    let found = peers.unwrap_or_default().into_iter().map(|(p, _)| p);
                    for p in crate::routing::closest_of(&key, found, k) {
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
            Lookup::NotFound
        } else {
            Lookup::Unreachable
        };
        Ok(report)
    }

    fn placement_of(&self, target: &Target, known: &HashSet<PeerId>) -> Placement {
        let me = self.peer_id();
        let full = self.config().mode == NodeMode::Full;
        let liveness = &self.inner.shared.liveness;
        Placement::of(
            target,
            known.iter().copied().chain(full.then_some(me)),
            self.config().replication,
            me,
            |p| liveness.is_down(p),
        )
    }

    async fn get_quorum(&self, target: Target, quorum: usize) -> Result<GetReport, NodeError> {
        let me = self.peer_id();
        let k = self.config().replication;
        let mut known: HashSet<PeerId> = self
            .inner
            .shared
            .view
            .snapshot()
            .into_keys()
            .filter(|p| *p != me)
            .collect();
        let mut placement = self.placement_of(&target, &known);
        let mut report = GetReport {
            target,
            lookup: Lookup::Unreachable,
            asked: 0,
            answered: 0,
            invalid: Vec::new(),
            repairing: Vec::new(),
        };
        // Copies by who holds them (None: this node).
        let mut copies: Vec<(Option<PeerId>, Option<Found>)> = Vec::new();
        if self.responsible_store(&target).is_some() {
            copies.push((None, self.local_copy(target).await?));
        }
        let mut asked: HashSet<PeerId> = HashSet::new();
        let mut pending = FuturesUnordered::new();
        for p in placement.to_ask(me) {
            asked.insert(p);
            pending.push(self.ask(p, target));
        }
        let lookup = self.lookup(target);
        tokio::pin!(lookup);
        let mut lookup_done = false;
        let mut enough_at: Option<Instant> = None;
        loop {
            let answered = copies.len();
            let need = if quorum == 0 {
                placement.majority()
            } else {
                quorum
            }
            .min(asked.len() + usize::from(copies.iter().any(|(p, _)| p.is_none())))
            .max(1);
            // The need grows when the lookup finds more of the responsible set.
            if answered < need {
                enough_at = None;
            } else if enough_at.is_none() {
                enough_at = Some(Instant::now());
            }
            let waiting_for_lookup = !lookup_done
                && placement.responsible.len() < k
                && !self.inner.shared.table_is_membership();
            if let Some(at) = enough_at {
                if !waiting_for_lookup || at.elapsed() >= self.config().put_lookup_grace {
                    break;
                }
            }
            if pending.is_empty() && lookup_done {
                break;
            }
            let grace_end = enough_at
                .map(|at| tokio::time::Instant::from_std(at + self.config().put_lookup_grace));
            tokio::select! {
                Some((peer, answer)) = pending.next(), if !pending.is_empty() => match answer {
                    Ok(found) => {
                        report.answered += 1;
                        copies.push((Some(peer), found));
                    }
                    Err(Answer::Invalid(code)) => {
                        report.answered += 1;
                        report.invalid.push((peer, code));
                        copies.push((Some(peer), None));
                    }
                    Err(Answer::Failed) => {}
                },
                found = &mut lookup, if !lookup_done => {
                    lookup_done = true;
                    if let Ok(found) = found {
                        known.extend(found.into_iter().map(|(p, _)| p).filter(|p| *p != me));
                        placement = self.placement_of(&target, &known);
                        for p in placement.to_ask(me) {
                            if asked.insert(p) {
                                pending.push(self.ask(p, target));
                            }
                        }
                    }
                }
                _ = async {
                    match grace_end {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
        report.asked = asked.len();
        let best = copies
            .iter()
            .filter_map(|(_, f)| f.as_ref())
            .max_by(|a, b| dht_core::precedence(&a.item, &b.item))
            .cloned();
        match best {
            Some(best) => {
                // Read repair: every answering copy that loses to the best gets it.
                let stale: Vec<Option<PeerId>> = copies
                    .iter()
                    .filter(|(_, f)| {
                        f.as_ref()
                            .is_none_or(|f| dht_core::precedence(&f.item, &best.item).is_lt())
                    })
                    .map(|(p, _)| *p)
                    .collect();
                report.repairing = stale.iter().flatten().copied().collect();
                if !stale.is_empty() {
                    self.spawn_repair(stale, best.clone());
                }
                report.lookup = lookup_of(best);
            }
            None if !copies.is_empty() => report.lookup = Lookup::NotFound,
            None => report.lookup = Lookup::Unreachable,
        }
        Ok(report)
    }

    fn spawn_repair(&self, targets: Vec<Option<PeerId>>, best: Found) {
        let node = self.clone();
        tokio::spawn(async move {
            let opts = PutOptions {
                cas: None,
                expires_at_ms: Some(best.expires_at_ms).filter(|t| *t > 0),
            };
            if targets.contains(&None) {
                if let Ok(v) = node.inner.validator.validate(best.item.clone()) {
                    let _ = node.store_locally(v, opts).await;
                }
            }
            let remote = targets.iter().flatten().copied();
            let mut sends: FuturesUnordered<_> = remote
                .map(|peer| {
                    let node = &node;
                    let item = &best.item;
                    async move { node.send_item_to(peer, item, opts).await }
                })
                .collect();
            let mut repaired = 0;
            while let Some(r) = sends.next().await {
                repaired += usize::from(matches!(r, ReplicaResult::Stored(_)));
            }
            debug!(repaired, "read repair");
        });
    }
}

fn lookup_of(found: Found) -> Lookup {
    if found.item.is_tombstone() {
        Lookup::Deleted(found)
    } else {
        Lookup::Found(found)
    }
}
