//! Best-of-quorum get: the responsible set as the routing table knows it, confirmed by a
//! lookup in parallel; the best copy of a majority (or of `quorum` answers) is returned
//! and every copy that loses to it is repaired. A replica that fails or passes its
//! deadline is replaced by the next live peer (a spare of the placement); once a copy
//! was found, the get waits for the lookup no longer than [`LOOKUP_DEADLINES`] typical
//! deadlines, and for no peer past its give-up time: it then answers from the copies
//! it has.

use std::collections::HashSet;
use std::time::Instant;

use dht_core::{precedence, Target};
use libp2p::PeerId;

use super::in_flight::InFlight;
use super::{new_report, Answer};
use crate::config::NodeMode;
use crate::node::Node;
use crate::placement::Placement;
use crate::put::LOOKUP_DEADLINES;
use crate::report::{Found, GetOutcome, GetReport};
use crate::NodeError;

impl Node {
    fn placement_of(&self, target: &Target, known: &HashSet<PeerId>) -> Placement {
        let me = self.peer_id();
        let full = self.config().mode == NodeMode::Full;
        let liveness = &self.inner.state.liveness;
        Placement::of(
            target,
            known.iter().copied().chain(full.then_some(me)),
            self.config().replication,
            me,
            |p| liveness.is_down(p),
        )
    }

    pub(super) async fn get_quorum(
        &self,
        target: Target,
        quorum: usize,
    ) -> Result<GetReport, NodeError> {
        let me = self.peer_id();
        let k = self.config().replication;
        let mut known: HashSet<PeerId> = self
            .inner
            .state
            .view
            .snapshot()
            .into_keys()
            .filter(|p| *p != me)
            .collect();
        let mut placement = self.placement_of(&target, &known);
        let mut report = new_report(target);
        // Copies by who holds them (None: this node).
        let mut copies: Vec<(Option<PeerId>, Option<Found>)> = Vec::new();
        if self.responsible_store(&target).is_some() {
            copies.push((None, self.local_copy(target).await?));
        }
        let mut flight = InFlight::new(self, target);
        for p in placement.to_ask(me) {
            flight.ask(p);
        }
        let lookup = self.inner.client.lookup(target);
        tokio::pin!(lookup);
        // When the table holds the whole membership, the responsible set is known and
        // the lookup would only cost requests: it is never started (the future is not
        // polled).
        let mut lookup_done = self.inner.state.membership_known();
        let lookup_give_up = Instant::now() + self.inner.state.rtt.typical() * LOOKUP_DEADLINES;
        let mut enough_at: Option<Instant> = None;
        loop {
            let answered = copies.len();
            let need = if quorum == 0 {
                placement.majority()
            } else {
                quorum
            }
            .min(flight.asked.len() + usize::from(copies.iter().any(|(p, _)| p.is_none())))
            .max(1);
            // The need grows when the lookup finds more of the responsible set.
            if answered < need {
                enough_at = None;
            } else if enough_at.is_none() {
                enough_at = Some(Instant::now());
            }
            let waiting_for_lookup = !lookup_done
                && placement.responsible.len() < k
                && !self.inner.state.table_is_membership();
            if let Some(at) = enough_at {
                if !waiting_for_lookup || at.elapsed() >= self.config().put_lookup_grace {
                    break;
                }
            }
            let now = Instant::now();
            // Not enough answers, and nothing left worth waiting for: no peer within
            // its give-up time, the lookup done or past its own; and a copy found (with
            // none, the get waits for the peers still in flight rather than report a
            // miss it does not know).
            let lookup_waited = lookup_done || lookup_give_up <= now;
            let found = copies.iter().any(|(_, f)| f.is_some());
            if !flight.worth_waiting(now) && lookup_waited && found {
                break;
            }
            // Each replica that failed or is late: the next spare asked.
            let mut replace = flight.take_late(now);
            let wake = [
                enough_at.map(|at| at + self.config().put_lookup_grace),
                flight.next_timer(now),
                (!lookup_done).then_some(lookup_give_up),
            ]
            .into_iter()
            .flatten()
            .filter(|t| *t > now)
            .min();
            tokio::select! {
                Some(((peer, answer), on_time)) = flight.next(), if !flight.is_empty() => {
                    match answer {
                        Ok(found) => {
                            report.answered += 1;
                            copies.push((Some(peer), found));
                        }
                        Err(Answer::Invalid(code)) => {
                            report.answered += 1;
                            report.invalid.push((peer, code));
                            copies.push((Some(peer), None));
                        }
                        Err(Answer::Failed) => replace += usize::from(on_time),
                    }
                }
                found = &mut lookup, if !lookup_done => {
                    lookup_done = true;
                    if let Ok(found) = found {
                        known.extend(found.into_iter().map(|(p, _)| p).filter(|p| *p != me));
                        placement = self.placement_of(&target, &known);
                        for p in placement.to_ask(me) {
                            flight.ask(p);
                        }
                    }
                }
                _ = async {
                    match wake {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending().await,
                    }
                }, if wake.is_some() => {
                    replace += flight.take_late(Instant::now());
                }
                else => break,
            }
            // Spares only while answers are short of the need.
            if copies.len() + flight.on_time() < need {
                for p in placement.spares.clone() {
                    if replace == 0 {
                        break;
                    }
                    if flight.ask(p) {
                        self.metrics().hedged_requests.inc();
                        replace -= 1;
                    }
                }
            }
        }
        report.asked = flight.asked.len();
        match best_and_stale(&copies) {
            Some((best, stale)) => {
                // Read repair: every answering copy that loses to the best gets it.
                report.repairing = stale.iter().flatten().copied().collect();
                if !stale.is_empty() {
                    self.spawn_repair(stale, best.clone());
                }
                report.lookup = GetOutcome::of(best);
            }
            None if !copies.is_empty() => report.lookup = GetOutcome::NotFound,
            None => report.lookup = GetOutcome::Unreachable,
        }
        Ok(report)
    }
}

/// The best of the copies (by [`precedence`]) and who holds a copy that loses to it or
/// none at all (None: this node); None when no copy was found.
fn best_and_stale(
    copies: &[(Option<PeerId>, Option<Found>)],
) -> Option<(Found, Vec<Option<PeerId>>)> {
    let best = copies
        .iter()
        .filter_map(|(_, f)| f.as_ref())
        .max_by(|a, b| precedence(&a.item, &b.item))
        .cloned()?;
    let stale = copies
        .iter()
        .filter(|(_, f)| {
            f.as_ref()
                .is_none_or(|f| precedence(&f.item, &best.item).is_lt())
        })
        .map(|(p, _)| *p)
        .collect();
    Some((best, stale))
}

#[cfg(test)]
mod tests {
    use dht_core::{MutableItem, SigningKey};

    use super::*;

    fn found(item: &MutableItem, from: Option<PeerId>) -> Option<Found> {
        Some(Found {
            item: item.clone(),
            expires_at_ms: 0,
            from,
        })
    }

    #[test]
    fn the_newest_copy_wins_and_every_other_holder_is_repaired() {
        let key = SigningKey::generate_ed25519();
        let v1 = MutableItem::sign(&key, key.public_key(), "svc", 1, &b"one"[..]);
        let v2 = MutableItem::sign(&key, key.public_key(), "svc", 2, &b"two"[..]);
        let gone = MutableItem::tombstone(&key, key.public_key(), "svc", 3);
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let copies = vec![
            (None, found(&v1, None)),
            (Some(a), found(&v2, Some(a))),
            (Some(b), None),
            (Some(c), found(&v2, Some(c))),
        ];
        let (best, stale) = best_and_stale(&copies).unwrap();
        assert_eq!(best.item, v2);
        assert_eq!(stale, vec![None, Some(b)]);
        // A newer tombstone beats every value.
        let mut with_tombstone = copies.clone();
        with_tombstone.push((Some(b), found(&gone, Some(b))));
        let (best, stale) = best_and_stale(&with_tombstone).unwrap();
        assert!(best.item.is_tombstone());
        assert_eq!(stale.len(), 4);
        // Nothing found anywhere: no best, nothing to repair.
        assert!(best_and_stale(&[(Some(a), None), (None, None)]).is_none());
        assert!(best_and_stale(&[]).is_none());
    }

    #[test]
    fn equal_seqs_are_ordered_the_same_way_whoever_reads() {
        let key = SigningKey::generate_ed25519();
        let x = MutableItem::sign(&key, key.public_key(), "svc", 5, &b"x"[..]);
        let y = MutableItem::sign(&key, key.public_key(), "svc", 5, &b"y"[..]);
        let (a, b) = (PeerId::random(), PeerId::random());
        let one = best_and_stale(&[(Some(a), found(&x, Some(a))), (Some(b), found(&y, Some(b)))])
            .unwrap();
        let other = best_and_stale(&[(Some(b), found(&y, Some(b))), (Some(a), found(&x, Some(a)))])
            .unwrap();
        assert_eq!(one.0.item, other.0.item);
        assert_eq!(one.1.len(), 1);
    }
}
