//! Failure detection. A peer whose dial or request failed is *suspected* at once: puts
//! and gets skip it (a stand-in takes its place) and the swarm re-dials it with
//! exponential backoff. A peer suspected for longer than `dead_after` is *declared
//! dead*: it leaves the routing table and the nodes now responsible for its items fill
//! the missing copies. A successful connection clears both states, and a peer that comes
//! back is reported so that missed changes are exchanged at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use parking_lot::RwLock;

/// First re-dial delay after a failure; doubled per failure up to [`MAX_REDIAL_BACKOFF`].
pub(crate) const FIRST_REDIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between re-dials of a suspected or dead peer.
pub(crate) const MAX_REDIAL_BACKOFF: Duration = Duration::from_secs(30);

/// The health record of a peer that failed.
#[derive(Debug, Clone)]
struct Health {
    /// First failure of the current outage.
    since: Instant,
    /// Consecutive failures.
    failures: u32,
    /// When to dial it again.
    next_redial: Instant,
    /// Addresses to re-dial.
    addrs: Vec<Multiaddr>,
    /// Declared dead (out of the routing table).
    dead: bool,
}

/// What a state change means to the rest of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// Nothing new.
    None,
    /// The peer was healthy and is now suspected.
    Suspected,
    /// The peer was suspected or dead and answered again.
    Returned {
        /// It had been declared dead.
        was_dead: bool,
    },
}

/// Suspected and dead peers, shared by the swarm task and the query code.
#[derive(Debug)]
pub(crate) struct Liveness {
    peers: RwLock<HashMap<PeerId, Health>>,
    dead_after: Duration,
    forget_after: Duration,
}

impl Liveness {
    /// A detector declaring peers dead after `dead_after` of failures, and giving up
    /// re-dialling them after `forget_after`.
    pub(crate) fn new(dead_after: Duration, forget_after: Duration) -> Self {
        Liveness {
            peers: RwLock::new(HashMap::new()),
            dead_after,
            forget_after,
        }
    }

    /// Whether `peer` is suspected or dead (skip it).
    pub(crate) fn is_down(&self, peer: &PeerId) -> bool {
        self.peers.read().contains_key(peer)
    }

    /// Peers currently suspected or dead.
    pub(crate) fn down(&self) -> Vec<PeerId> {
        self.peers.read().keys().copied().collect()
    }

    /// A dial or request to `peer` failed.
    pub(crate) fn failed(&self, peer: PeerId, addrs: Vec<Multiaddr>, now: Instant) -> Change {
        let mut peers = self.peers.write();
        match peers.get_mut(&peer) {
            Some(h) => {
                h.failures = h.failures.saturating_add(1);
                h.next_redial = now + backoff(h.failures);
                if !addrs.is_empty() {
                    h.addrs = addrs;
                }
                Change::None
            }
            None => {
                peers.insert(
                    peer,
                    Health {
                        since: now,
                        failures: 1,
                        next_redial: now + backoff(1),
                        addrs,
                        dead: false,
                    },
                );
                Change::Suspected
            }
        }
    }

    /// A connection to `peer` was established or it answered.
    pub(crate) fn alive(&self, peer: &PeerId) -> Change {
        if !self.peers.read().contains_key(peer) {
            return Change::None;
        }
        match self.peers.write().remove(peer) {
            Some(h) => Change::Returned { was_dead: h.dead },
            None => Change::None,
        }
    }

    /// Peers due for a re-dial now, with their addresses; schedules the next attempt.
    pub(crate) fn due_redials(&self, now: Instant) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let mut peers = self.peers.write();
        let forget_after = self.forget_after;
        peers.retain(|_, h| now.duration_since(h.since) < forget_after);
        peers
            .iter_mut()
            .filter(|(_, h)| h.next_redial <= now)
            .map(|(p, h)| {
                h.failures = h.failures.saturating_add(1);
                h.next_redial = now + backoff(h.failures);
                (*p, h.addrs.clone())
            })
            .collect()
    }

    /// When the next re-dial or death declaration is due (`None`: nobody is down), so
    /// that the swarm task wakes for it and otherwise sleeps.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.peers
            .read()
            .values()
            .map(|h| {
                if h.dead {
                    h.next_redial
                } else {
                    h.next_redial.min(h.since + self.dead_after)
                }
            })
            .min()
    }

    /// Suspected peers whose outage has lasted `dead_after`: marked dead and returned
    /// (each once).
    pub(crate) fn newly_dead(&self, now: Instant) -> Vec<PeerId> {
        let mut out = Vec::new();
        for (p, h) in self.peers.write().iter_mut() {
            if !h.dead && now.duration_since(h.since) >= self.dead_after {
                h.dead = true;
                out.push(*p);
            }
        }
        out
    }
}

fn backoff(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    FIRST_REDIAL_BACKOFF
        .saturating_mul(1 << shift)
        .min(MAX_REDIAL_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_suspects_and_an_answer_clears() {
        let l = Liveness::new(Duration::from_secs(10), Duration::from_secs(3600));
        let p = PeerId::random();
        let t0 = Instant::now();
        assert!(!l.is_down(&p));
        assert_eq!(l.failed(p, vec![], t0), Change::Suspected);
        assert_eq!(l.failed(p, vec![], t0), Change::None);
        assert!(l.is_down(&p));
        assert_eq!(l.alive(&p), Change::Returned { was_dead: false });
        assert!(!l.is_down(&p));
        assert_eq!(l.alive(&p), Change::None);
    }

    #[test]
    fn redials_back_off_and_outages_become_deaths() {
        let l = Liveness::new(Duration::from_secs(10), Duration::from_secs(3600));
        let p = PeerId::random();
        let t0 = Instant::now();
        l.failed(p, vec!["/ip4/127.0.0.1/tcp/1".parse().unwrap()], t0);
        assert!(l.due_redials(t0).is_empty());
        let due = l.due_redials(t0 + FIRST_REDIAL_BACKOFF);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1.len(), 1);
        // The next attempt waits longer.
        assert!(l.due_redials(t0 + FIRST_REDIAL_BACKOFF * 2).is_empty());
        assert_eq!(l.next_due(), Some(t0 + FIRST_REDIAL_BACKOFF * 3));
        assert!(l.newly_dead(t0 + Duration::from_secs(9)).is_empty());
        assert_eq!(l.newly_dead(t0 + Duration::from_secs(10)), vec![p]);
        assert!(l.newly_dead(t0 + Duration::from_secs(11)).is_empty());
        assert_eq!(l.alive(&p), Change::Returned { was_dead: true });
        // Forgotten after the retention.
        l.failed(p, vec![], t0);
        assert!(l.due_redials(t0 + Duration::from_secs(3600)).is_empty());
        assert!(!l.is_down(&p));
    }

    #[test]
    fn backoff_is_capped() {
        assert_eq!(backoff(1), FIRST_REDIAL_BACKOFF);
        assert_eq!(backoff(2), FIRST_REDIAL_BACKOFF * 2);
        assert_eq!(backoff(40), MAX_REDIAL_BACKOFF);
    }
}
