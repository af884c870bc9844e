//! Temporary bans of peers that break the item protocol on purpose: frames far over the
//! limit, or oversized frames from a stranger faster than its byte budget. A banned peer
//! is disconnected and its connections are refused (by the swarm's block list) until
//! the ban ends. Bans are bounded in number, so rotating identities cannot grow them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// How long a ban lasts.
pub(super) const BAN_TIME: Duration = Duration::from_secs(30);
/// Bans held at once; past it, a new offender is only disconnected.
const MAX_BANS: usize = 4_096;

/// The peers banned, with the end of each ban.
#[derive(Debug, Default)]
pub(super) struct Bans {
    until: HashMap<PeerId, Instant>,
}

impl Bans {
    /// Bans `peer` from `now` (or extends its ban). Whether it was not banned before
    /// and now is.
    pub(super) fn ban(&mut self, peer: PeerId, now: Instant) -> bool {
        if let Some(until) = self.until.get_mut(&peer) {
            *until = now + BAN_TIME;
            return false;
        }
        if self.until.len() >= MAX_BANS {
            return false;
        }
        self.until.insert(peer, now + BAN_TIME);
        true
    }

    /// Forgets `peer`'s ban without lifting anything (it is blocked for another reason).
    pub(super) fn forget(&mut self, peer: &PeerId) {
        self.until.remove(peer);
    }

    /// Whether `peer` is banned.
    pub(super) fn is_banned(&self, peer: &PeerId) -> bool {
        self.until.contains_key(peer)
    }

    /// When the next ban ends.
    pub(super) fn next_end(&self) -> Option<Instant> {
        self.until.values().min().copied()
    }

    /// Removes and returns the bans over at `now`.
    pub(super) fn take_expired(&mut self, now: Instant) -> Vec<PeerId> {
        let over: Vec<PeerId> = self
            .until
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in &over {
            self.until.remove(p);
        }
        over
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_end_after_their_time_and_are_bounded() {
        let mut bans = Bans::default();
        let t0 = Instant::now();
        let p = PeerId::random();
        assert!(bans.ban(p, t0));
        // Banned again later: the ban is extended, not counted twice.
        assert!(!bans.ban(p, t0 + Duration::from_secs(10)));
        assert!(bans.take_expired(t0 + BAN_TIME).is_empty());
        assert_eq!(
            bans.take_expired(t0 + Duration::from_secs(10) + BAN_TIME),
            vec![p]
        );
        for _ in 0..MAX_BANS {
            assert!(bans.ban(PeerId::random(), t0));
        }
        assert!(!bans.ban(PeerId::random(), t0));
        assert_eq!(bans.take_expired(t0 + BAN_TIME).len(), MAX_BANS);
    }
}
