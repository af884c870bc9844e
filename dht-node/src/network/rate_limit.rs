//! Per-peer token buckets for inbound requests: one counting requests, one counting the
//! bytes they carry. A request is let through only if both buckets have room. Peers
//! outside the routing table (visors, command-line clients, strangers) get a twentieth
//! of a full node's rates and bursts: enough for a client, little for a flood.

use std::collections::HashMap;
use std::time::Instant;

use libp2p::PeerId;

use crate::config::RateLimit;

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self, cost: f64, per_second: f64, burst: f64, now: Instant) -> bool {
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * per_second).min(burst);
        self.last = now;
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// How many times smaller a stranger's rates and bursts are than a full node's.
const STRANGER_SHARE: f64 = 20.0;

/// The limit of a peer outside the routing table, derived from a full node's: a
/// twentieth of the rates and bursts, with room for at least one request of the largest
/// value (the byte burst never drops below `min_burst_bytes`).
pub(super) fn stranger_limit(l: RateLimit, min_burst_bytes: f64) -> RateLimit {
    RateLimit {
        per_second: l.per_second / STRANGER_SHARE,
        burst: (l.burst / STRANGER_SHARE).max(1.0),
        bytes_per_second: l.bytes_per_second / STRANGER_SHARE,
        burst_bytes: (l.burst_bytes / STRANGER_SHARE).max(min_burst_bytes.min(l.burst_bytes)),
    }
}

/// Peers whose buckets are kept before refilled ones are dropped.
const PRUNE_AT_LEAST: usize = 1_024;
/// Peers whose buckets are kept at most; past it, the longest idle go first.
const MAX_TRACKED: usize = 65_536;

/// The buckets of every peer. A peer's buckets outlive its connections (a client that
/// reconnects does not start again with full buckets); they are dropped once they have
/// refilled, when nothing would be lost by forgetting them.
pub(super) struct RateLimiter {
    limit: RateLimit,
    stranger: RateLimit,
    buckets: HashMap<PeerId, Buckets>,
    /// Idle time after which any bucket is full again.
    refill: std::time::Duration,
    /// Size of `buckets` at which they are next pruned.
    prune_at: usize,
}

/// A stranger is refused at least this many requests (beyond its rate) before it is
/// taken for a flood.
const REFUSALS_AT_LEAST: f64 = 100.0;

/// One peer's buckets.
#[derive(Debug, Clone, Copy)]
struct Buckets {
    requests: Bucket,
    bytes: Bucket,
    /// Room for refused requests: a stranger that keeps sending past refusals empties
    /// it (see [`RateLimiter::strike`]).
    refusals: Bucket,
}

impl Buckets {
    fn last(&self) -> Instant {
        self.requests
            .last
            .max(self.bytes.last)
            .max(self.refusals.last)
    }
}

/// How long an empty bucket of `l` takes to refill (a rate of zero: ten minutes).
fn refill_time(l: &RateLimit) -> f64 {
    let time = |burst: f64, rate: f64| if rate > 0.0 { burst / rate } else { 600.0 };
    time(l.burst, l.per_second).max(time(l.burst_bytes, l.bytes_per_second))
}

impl RateLimiter {
    /// Full nodes get `limit`; strangers [`stranger_limit`] of it.
    pub(super) fn new(limit: RateLimit, min_burst_bytes: f64) -> Self {
        let stranger = stranger_limit(limit, min_burst_bytes);
        let refill = refill_time(&limit)
            .max(refill_time(&stranger))
            .clamp(1.0, 600.0);
        RateLimiter {
            limit,
            stranger,
            buckets: HashMap::new(),
            refill: std::time::Duration::from_secs_f64(refill),
            prune_at: PRUNE_AT_LEAST,
        }
    }

    /// Whether `peer` (a stranger, or a full node of the routing table) may send one
    /// more request of `bytes` now.
    pub(super) fn allow(&mut self, peer: PeerId, bytes: usize, stranger: bool) -> bool {
        self.allow_at(peer, bytes, stranger, Instant::now())
    }

    fn allow_at(&mut self, peer: PeerId, bytes: usize, stranger: bool, now: Instant) -> bool {
        let l = if stranger { self.stranger } else { self.limit };
        if self.buckets.len() >= self.prune_at && !self.buckets.contains_key(&peer) {
            self.prune(now);
        }
        let b = self.entry(peer, stranger, now);
        // Check both before taking from either.
        let mut r = b.requests;
        let mut v = b.bytes;
        if r.take(1.0, l.per_second, l.burst, now)
            && v.take(bytes as f64, l.bytes_per_second, l.burst_bytes, now)
        {
            b.requests = r;
            b.bytes = v;
            true
        } else {
            false
        }
    }

    fn entry(&mut self, peer: PeerId, stranger: bool, now: Instant) -> &mut Buckets {
        let l = if stranger { self.stranger } else { self.limit };
        let full = |tokens| Bucket { tokens, last: now };
        self.buckets.entry(peer).or_insert(Buckets {
            requests: full(l.burst),
            bytes: full(l.burst_bytes),
            refusals: full(self.stranger.burst.max(REFUSALS_AT_LEAST)),
        })
    }

    /// Counts one refused request of a stranger. Whether the stranger has now been
    /// refused more than its burst's worth of requests (at least
    /// [`REFUSALS_AT_LEAST`]) beyond its rate: it keeps sending regardless of
    /// refusals, a flood rather than a client.
    pub(super) fn strike(&mut self, peer: PeerId) -> bool {
        self.strike_at(peer, Instant::now())
    }

    fn strike_at(&mut self, peer: PeerId, now: Instant) -> bool {
        let l = self.stranger;
        let b = self.entry(peer, true, now);
        let room = l.burst.max(REFUSALS_AT_LEAST);
        !b.refusals.take(1.0, l.per_second, room, now)
    }

    /// Drops the buckets that have refilled (forgetting them changes nothing), and, past
    /// [`MAX_TRACKED`], the longest idle.
    fn prune(&mut self, now: Instant) {
        let refill = self.refill;
        let idle = |b: &Buckets| now.duration_since(b.last());
        self.buckets.retain(|_, b| idle(b) < refill);
        if self.buckets.len() >= MAX_TRACKED {
            let mut ages: Vec<_> = self.buckets.values().map(idle).collect();
            let keep = MAX_TRACKED / 2;
            let cut = ages.len() - keep;
            let (_, oldest_kept, _) = ages.select_nth_unstable(cut);
            let oldest_kept = *oldest_kept;
            self.buckets.retain(|_, b| idle(b) < oldest_kept);
        }
        self.prune_at = (self.buckets.len() * 2).max(PRUNE_AT_LEAST);
    }

    /// Peers whose buckets are kept.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_rate_limiter_counts_requests_and_bytes() {
        let mut l = RateLimiter::new(
            RateLimit {
                per_second: 0.0,
                burst: 10.0,
                bytes_per_second: 0.0,
                burst_bytes: 1_000.0,
            },
            0.0,
        );
        let p = PeerId::random();
        // Bytes run out first: 4 x 256 > 1,000.
        assert!(l.allow(p, 256, false));
        assert!(l.allow(p, 256, false));
        assert!(l.allow(p, 256, false));
        assert!(!l.allow(p, 256, false));
        // A refused request takes nothing: a small one still fits.
        assert!(l.allow(p, 100, false));
        // Another peer has its own buckets.
        assert!(l.allow(PeerId::random(), 900, false));
    }

    #[test]
    fn buckets_refill_at_their_rate_up_to_the_burst() {
        let mut l = RateLimiter::new(
            RateLimit {
                per_second: 2.0,
                burst: 2.0,
                bytes_per_second: 1e9,
                burst_bytes: 1e9,
            },
            0.0,
        );
        let p = PeerId::random();
        let t0 = Instant::now();
        assert!(l.allow_at(p, 1, false, t0));
        assert!(l.allow_at(p, 1, false, t0));
        assert!(!l.allow_at(p, 1, false, t0));
        // Half a second refills one request.
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.allow_at(p, 1, false, t1));
        assert!(!l.allow_at(p, 1, false, t1));
        // A long pause refills no more than the burst.
        let t2 = t1 + Duration::from_secs(60);
        assert!(l.allow_at(p, 1, false, t2));
        assert!(l.allow_at(p, 1, false, t2));
        assert!(!l.allow_at(p, 1, false, t2));
    }

    #[test]
    fn buckets_outlive_connections_and_are_pruned_once_refilled() {
        let limit = RateLimit {
            per_second: 1.0,
            burst: 2.0,
            bytes_per_second: 1e9,
            burst_bytes: 1e9,
        };
        let mut l = RateLimiter::new(limit, 0.0);
        let t0 = Instant::now();
        let flooder = PeerId::random();
        assert!(l.allow_at(flooder, 1, false, t0));
        assert!(l.allow_at(flooder, 1, false, t0));
        assert!(!l.allow_at(flooder, 1, false, t0));
        // Many other peers come and go: the flooder's empty bucket is not pruned while
        // it could still refuse anything.
        let t1 = t0 + Duration::from_millis(100);
        for _ in 0..PRUNE_AT_LEAST * 3 {
            assert!(l.allow_at(PeerId::random(), 1, false, t1));
        }
        assert!(!l.allow_at(flooder, 1, false, t1));
        // Once every bucket refilled, the next pruning drops all of them: only the
        // peers seen since are kept.
        let t2 = t1 + Duration::from_secs(60);
        let before = l.tracked();
        let mut added = 0;
        while l.tracked() >= before && added <= before * 2 {
            l.allow_at(PeerId::random(), 1, false, t2);
            added += 1;
        }
        assert_eq!(l.tracked(), added);
        // A pruned peer starts again with full buckets, as it would have anyway.
        assert!(l.allow_at(flooder, 1, false, t2));
        assert!(l.allow_at(flooder, 1, false, t2));
    }

    #[test]
    fn a_stranger_refused_past_its_burst_is_struck_out() {
        let limit = RateLimit {
            per_second: 200.0,
            burst: 4_000.0,
            bytes_per_second: 1e9,
            burst_bytes: 1e9,
        };
        // Strangers: 10 requests a second, a burst of 200.
        let mut l = RateLimiter::new(limit, 0.0);
        let t0 = Instant::now();
        let (flooder, client) = (PeerId::random(), PeerId::random());
        assert_eq!(
            (0..1_000)
                .filter(|_| l.allow_at(flooder, 1, true, t0))
                .count(),
            200
        );
        // 200 refusals are tolerated; the 201st strikes the flooder out.
        assert_eq!((0..300).position(|_| l.strike_at(flooder, t0)), Some(200));
        // A client refused now and then, at no more than its rate, never is.
        for i in 0..1_000u64 {
            let t = t0 + Duration::from_millis(100 * i);
            if !l.allow_at(client, 1, true, t) {
                assert!(!l.strike_at(client, t));
            }
            l.allow_at(client, 1, true, t);
        }
    }

    #[test]
    fn the_buckets_kept_are_bounded() {
        let limit = RateLimit {
            per_second: 0.0,
            burst: 1.0,
            bytes_per_second: 0.0,
            burst_bytes: 1e9,
        };
        let mut l = RateLimiter::new(limit, 0.0);
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED + 10 {
            l.allow_at(
                PeerId::random(),
                1,
                false,
                t0 + Duration::from_micros(i as u64),
            );
        }
        assert!(l.tracked() <= MAX_TRACKED, "{}", l.tracked());
    }

    #[test]
    fn strangers_get_a_twentieth_with_room_for_one_largest_value() {
        let full = RateLimit::default();
        let s = stranger_limit(full, 1.1e6);
        assert_eq!(s.per_second, full.per_second / 20.0);
        assert_eq!(s.burst, full.burst / 20.0);
        assert!(s.burst_bytes >= 1.1e6);
        let mut l = RateLimiter::new(
            RateLimit {
                per_second: 0.0,
                burst: 40.0,
                bytes_per_second: 0.0,
                burst_bytes: 1e9,
            },
            0.0,
        );
        let (stranger, node) = (PeerId::random(), PeerId::random());
        let t = Instant::now();
        assert_eq!(
            (0..40).filter(|_| l.allow_at(stranger, 1, true, t)).count(),
            2
        );
        assert_eq!(
            (0..40).filter(|_| l.allow_at(node, 1, false, t)).count(),
            40
        );
    }
}
