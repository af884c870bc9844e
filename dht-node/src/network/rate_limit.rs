//! Per-peer token buckets for inbound requests: one counting requests, one counting the
//! bytes they carry. A request is let through only if both buckets have room.

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

/// The buckets of every peer.
pub(super) struct RateLimiter {
    limit: RateLimit,
    buckets: HashMap<PeerId, (Bucket, Bucket)>,
}

impl RateLimiter {
    pub(super) fn new(limit: RateLimit) -> Self {
        RateLimiter {
            limit,
            buckets: HashMap::new(),
        }
    }

    /// Whether `peer` may send one more request of `bytes` now.
    pub(super) fn allow(&mut self, peer: PeerId, bytes: usize) -> bool {
        self.allow_at(peer, bytes, Instant::now())
    }

    fn allow_at(&mut self, peer: PeerId, bytes: usize, now: Instant) -> bool {
        let l = self.limit;
        let full = |tokens| Bucket { tokens, last: now };
        let (requests, volume) = self
            .buckets
            .entry(peer)
            .or_insert((full(l.burst), full(l.burst_bytes)));
        // Check both before taking from either.
        let mut r = *requests;
        let mut v = *volume;
        if r.take(1.0, l.per_second, l.burst, now)
            && v.take(bytes as f64, l.bytes_per_second, l.burst_bytes, now)
        {
            *requests = r;
            *volume = v;
            true
        } else {
            false
        }
    }

    /// Drops a disconnected peer's buckets.
    pub(super) fn forget(&mut self, peer: &PeerId) {
        self.buckets.remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_rate_limiter_counts_requests_and_bytes() {
        let mut l = RateLimiter::new(RateLimit {
            per_second: 0.0,
            burst: 10.0,
            bytes_per_second: 0.0,
            burst_bytes: 1_000.0,
        });
        let p = PeerId::random();
        // Bytes run out first: 4 x 256 > 1,000.
        assert!(l.allow(p, 256));
        assert!(l.allow(p, 256));
        assert!(l.allow(p, 256));
        assert!(!l.allow(p, 256));
        // A refused request takes nothing: a small one still fits.
        assert!(l.allow(p, 100));
        // Another peer has its own buckets.
        assert!(l.allow(PeerId::random(), 900));
    }

    #[test]
    fn buckets_refill_at_their_rate_up_to_the_burst() {
        let mut l = RateLimiter::new(RateLimit {
            per_second: 2.0,
            burst: 2.0,
            bytes_per_second: 1e9,
            burst_bytes: 1e9,
        });
        let p = PeerId::random();
        let t0 = Instant::now();
        assert!(l.allow_at(p, 1, t0));
        assert!(l.allow_at(p, 1, t0));
        assert!(!l.allow_at(p, 1, t0));
        // Half a second refills one request.
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.allow_at(p, 1, t1));
        assert!(!l.allow_at(p, 1, t1));
        // A long pause refills no more than the burst.
        let t2 = t1 + Duration::from_secs(60);
        assert!(l.allow_at(p, 1, t2));
        assert!(l.allow_at(p, 1, t2));
        assert!(!l.allow_at(p, 1, t2));
        // Forgetting a peer gives it full buckets again.
        l.forget(&p);
        assert!(l.allow_at(p, 1, t2));
    }
}
