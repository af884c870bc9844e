//! Observed round trips, per peer: a smoothed RTT and its variation (RFC 6298's
//! estimator), fed by the item protocol's request/response times and by libp2p pings.
//! Queries derive each request's *hedge deadline* from it: past the deadline a peer is
//! treated as slow and the query moves on to other peers (the request itself stays in
//! flight and still counts if it answers), so no query waits a request timeout for a
//! peer that merely stalls.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::PeerId;
use parking_lot::RwLock;

/// Weight of a new sample in the smoothed RTT (RFC 6298's alpha).
const ALPHA: f64 = 1.0 / 8.0;
/// Weight of a new sample in the RTT variation (RFC 6298's beta).
const BETA: f64 = 1.0 / 4.0;
/// Most peers tracked; past it the table is cleared of the peers least recently
/// measured (a bound on memory with many clients connected).
const MAX_PEERS: usize = 8_192;
/// Highest deadline, whatever was observed: a peer that has not answered within it is
/// slow, however slow it was before (a stall inflates the estimate; the request
/// timeout, seconds, is for giving up on the request, not for a query to wait).
pub(crate) const MAX_DEADLINE: Duration = Duration::from_secs(1);
/// A peer's deadline before any sample: this many times the typical (median) smoothed
/// RTT of the peers measured, for a request that may first need a dial (TCP, noise and
/// yamux cost about three round trips, the request one more).
const UNMEASURED_RTTS: u32 = 6;

/// A peer's estimate.
#[derive(Debug, Clone, Copy)]
struct Estimate {
    /// Smoothed RTT, seconds.
    srtt: f64,
    /// RTT variation, seconds.
    rttvar: f64,
    /// Samples taken (saturating), for eviction.
    seen: u64,
}

/// Per-peer smoothed round-trip times, shared by the swarm task (which measures) and
/// the queries (which derive deadlines).
#[derive(Debug)]
pub(crate) struct RttTable {
    peers: RwLock<HashMap<PeerId, Estimate>>,
    floor: Duration,
    ceiling: Duration,
}

impl RttTable {
    /// A table whose deadlines never go below `floor` (a loopback RTT is microseconds,
    /// while a busy machine takes milliseconds to answer) nor above `ceiling` (the
    /// request timeout) or [`MAX_DEADLINE`].
    pub(crate) fn new(floor: Duration, ceiling: Duration) -> Self {
        RttTable {
            peers: RwLock::new(HashMap::new()),
            floor,
            ceiling: ceiling.min(MAX_DEADLINE).max(floor),
        }
    }

    /// Records one round trip to `peer` (a request answered, a pong).
    pub(crate) fn observe(&self, peer: PeerId, rtt: Duration) {
        let sample = rtt.as_secs_f64();
        let mut peers = self.peers.write();
        if peers.len() >= MAX_PEERS && !peers.contains_key(&peer) {
            let mut seen: Vec<u64> = peers.values().map(|e| e.seen).collect();
            seen.sort_unstable();
            let cut = seen[seen.len() / 2];
            peers.retain(|_, e| e.seen > cut);
        }
        peers
            .entry(peer)
            .and_modify(|e| {
                e.rttvar = (1.0 - BETA) * e.rttvar + BETA * (e.srtt - sample).abs();
                e.srtt = (1.0 - ALPHA) * e.srtt + ALPHA * sample;
                e.seen = e.seen.saturating_add(1);
            })
            .or_insert(Estimate {
                srtt: sample,
                rttvar: sample / 2.0,
                seen: 1,
            });
    }

    /// Forgets `peer` (disconnected: its next request may need a dial).
    pub(crate) fn forget(&self, peer: &PeerId) {
        self.peers.write().remove(peer);
    }

    /// The smoothed RTT of `peer`, if measured.
    #[cfg(test)]
    pub(crate) fn srtt(&self, peer: &PeerId) -> Option<Duration> {
        self.peers
            .read()
            .get(peer)
            .map(|e| Duration::from_secs_f64(e.srtt))
    }

    /// How long a request to `peer` may take before the query treats it as slow and
    /// asks someone else: the RTO of RFC 6298 (smoothed RTT plus four variations)
    /// within [floor, ceiling]; for a peer not measured yet, [`UNMEASURED_RTTS`] times
    /// the median smoothed RTT of the others (as many floors when none is).
    pub(crate) fn deadline(&self, peer: &PeerId) -> Duration {
        let peers = self.peers.read();
        let secs = match peers.get(peer) {
            Some(e) => e.srtt + 4.0 * e.rttvar,
            None => {
                let mut all: Vec<f64> = peers.values().map(|e| e.srtt).collect();
                if all.is_empty() {
                    return self.unmeasured();
                }
                all.sort_unstable_by(f64::total_cmp);
                all[all.len() / 2] * f64::from(UNMEASURED_RTTS)
            }
        };
        let d = Duration::try_from_secs_f64(secs).unwrap_or(self.ceiling);
        d.clamp(self.floor, self.ceiling)
    }

    /// The deadline of a request whose peer is not known in particular (a lookup's
    /// round): the median smoothed RTT's RTO-like bound within [floor, ceiling].
    pub(crate) fn typical(&self) -> Duration {
        let peers = self.peers.read();
        let mut all: Vec<f64> = peers.values().map(|e| e.srtt + 4.0 * e.rttvar).collect();
        if all.is_empty() {
            return self.unmeasured();
        }
        all.sort_unstable_by(f64::total_cmp);
        Duration::try_from_secs_f64(all[all.len() / 2])
            .unwrap_or(self.ceiling)
            .clamp(self.floor, self.ceiling)
    }
}

impl RttTable {
    /// The deadline when nothing was measured yet: [`UNMEASURED_RTTS`] floors.
    fn unmeasured(&self) -> Duration {
        (self.floor * UNMEASURED_RTTS).min(self.ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn deadlines_follow_the_observed_rtt_within_the_floor_and_ceiling() {
        let t = RttTable::new(100 * MS, 800 * MS);
        let (fast, slow, new) = (PeerId::random(), PeerId::random(), PeerId::random());
        // Before any sample: six floors.
        assert_eq!(t.deadline(&new), 600 * MS);
        assert_eq!(t.typical(), 600 * MS);
        for _ in 0..50 {
            t.observe(fast, Duration::from_micros(200));
            t.observe(slow, 400 * MS);
        }
        // Loopback: the floor, not microseconds.
        assert_eq!(t.deadline(&fast), 100 * MS);
        let d = t.deadline(&slow);
        assert!(d >= 400 * MS && d < 600 * MS, "{d:?}");
        // A stall raises the deadline, bounded by the ceiling.
        t.observe(slow, 60_000 * MS);
        assert_eq!(t.deadline(&slow), 800 * MS);
        // Never above MAX_DEADLINE, whatever the request timeout.
        assert_eq!(RttTable::new(100 * MS, 5_000 * MS).ceiling, MAX_DEADLINE);
        // An unmeasured peer: six median RTTs (within the bounds).
        assert!(t.deadline(&new) >= 100 * MS);
        t.forget(&slow);
        assert!(t.srtt(&slow).is_none());
        assert!(t.srtt(&fast).is_some());
    }

    #[test]
    fn the_table_stays_bounded() {
        let t = RttTable::new(MS, 5_000 * MS);
        for _ in 0..MAX_PEERS + 10 {
            t.observe(PeerId::random(), 10 * MS);
        }
        assert!(t.peers.read().len() <= MAX_PEERS);
    }
}
