//! Write admission for strangers. A peer outside the routing table (a client, or anyone
//! who connected without being a known full node) that sends items creating NEW targets
//! under keys that are not authorized publishers is budgeted: new items per second per
//! peer and per IP range (IPv4 /24, IPv6 /48). Updates of targets already held, items of
//! authorized publishers, and everything full nodes of the routing table hand over are
//! never throttled, so junk from many fresh keys cannot fill the store or crowd out real
//! items, while a visor writing its own entries always has room. All strangers together
//! also share one budget of bytes: since every item expires by its signed deadline
//! (at most the TTL), the bytes strangers can have alive at once are bounded by that
//! budget's burst plus its rate times the TTL.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::Instant;

use libp2p::PeerId;
use parking_lot::Mutex;

/// Budgets of one kind of key: sustained per second and burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// New items per second, sustained.
    pub per_second: f64,
    /// Burst.
    pub burst: f64,
}

/// Most keys tracked before idle full buckets are dropped.
const MAX_TRACKED: usize = 4096;

/// Token buckets by key.
#[derive(Debug)]
struct Buckets<K> {
    budget: Budget,
    map: HashMap<K, (f64, Instant)>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    fn new(budget: Budget) -> Self {
        Buckets {
            budget,
            map: HashMap::new(),
        }
    }

    fn level(&mut self, key: &K, now: Instant) -> f64 {
        let b = self.budget;
        let (tokens, last) = self.map.entry(key.clone()).or_insert((b.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * b.per_second).min(b.burst);
        *last = now;
        *tokens
    }

    fn take(&mut self, key: &K, amount: f64) {
        if let Some((tokens, _)) = self.map.get_mut(key) {
            *tokens -= amount;
        }
    }

    fn prune(&mut self, now: Instant) {
        if self.map.len() > MAX_TRACKED {
            let b = self.budget;
            self.map.retain(|_, (tokens, last)| {
                *tokens + now.duration_since(*last).as_secs_f64() * b.per_second < b.burst
            });
        }
    }
}

/// The buckets: per peer, per IP range, and one for all strangers' bytes.
#[derive(Debug)]
struct AllBuckets {
    peers: Buckets<PeerId>,
    ranges: Buckets<Vec<u8>>,
    bytes: Buckets<()>,
}

/// The stranger budgets of a node.
#[derive(Debug)]
pub(crate) struct StrangerAdmission {
    inner: Mutex<AllBuckets>,
}

impl StrangerAdmission {
    /// Budgets per peer and per IP range (items), and for all strangers together (bytes).
    pub(crate) fn new(per_peer: Budget, per_range: Budget, all_bytes: Budget) -> Self {
        StrangerAdmission {
            inner: Mutex::new(AllBuckets {
                peers: Buckets::new(per_peer),
                ranges: Buckets::new(per_range),
                bytes: Buckets::new(all_bytes),
            }),
        }
    }

    /// Whether `peer` (from `ip`) may create one more new item of `bytes` now; takes it
    /// from every budget if so.
    pub(crate) fn admit(&self, peer: PeerId, ip: Option<IpAddr>, bytes: usize) -> bool {
        let now = Instant::now();
        let mut guard = self.inner.lock();
        let AllBuckets {
            peers,
            ranges,
            bytes: all,
        } = &mut *guard;
        peers.prune(now);
        ranges.prune(now);
        let range = ip.map(range_of);
        let peer_ok = peers.level(&peer, now) >= 1.0;
        let range_ok = range.as_ref().is_none_or(|r| ranges.level(r, now) >= 1.0);
        let bytes_ok = all.level(&(), now) >= bytes as f64;
        if peer_ok && range_ok && bytes_ok {
            peers.take(&peer, 1.0);
            if let Some(r) = &range {
                ranges.take(r, 1.0);
            }
            all.take(&(), bytes as f64);
            true
        } else {
            false
        }
    }
}

/// The /24 of an IPv4 address, the /48 of an IPv6 one.
fn range_of(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets()[..3].to_vec(),
        IpAddr::V6(v6) => v6.octets()[..6].to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_and_its_range_share_a_budget() {
        let a = StrangerAdmission::new(
            Budget {
                per_second: 0.0,
                burst: 3.0,
            },
            Budget {
                per_second: 0.0,
                burst: 5.0,
            },
            Budget {
                per_second: 0.0,
                burst: 1e9,
            },
        );
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let same_range: IpAddr = "10.1.2.99".parse().unwrap();
        let p = PeerId::random();
        assert!(a.admit(p, Some(ip), 10));
        assert!(a.admit(p, Some(ip), 10));
        assert!(a.admit(p, Some(ip), 10));
        assert!(!a.admit(p, Some(ip), 10), "the peer's burst is spent");
        // Fresh peers in the same /24 share the range's budget.
        assert!(a.admit(PeerId::random(), Some(same_range), 10));
        assert!(a.admit(PeerId::random(), Some(same_range), 10));
        assert!(
            !a.admit(PeerId::random(), Some(same_range), 10),
            "the range's burst is spent"
        );
        // Another range is not affected.
        assert!(a.admit(PeerId::random(), Some("10.9.9.9".parse().unwrap()), 10));
    }

    #[test]
    fn all_strangers_share_one_byte_budget() {
        let roomy = Budget {
            per_second: 0.0,
            burst: 1e6,
        };
        let a = StrangerAdmission::new(
            roomy,
            roomy,
            Budget {
                per_second: 0.0,
                burst: 1_000.0,
            },
        );
        // Peers from many ranges: the total still runs out.
        let mut admitted = 0;
        for i in 0..50u8 {
            let ip: IpAddr = format!("10.{i}.0.1").parse().unwrap();
            admitted += usize::from(a.admit(PeerId::random(), Some(ip), 100));
        }
        assert_eq!(admitted, 10);
    }
}
