//! The connection budget: a node keeps at most `high` peers connected; past that it closes
//! the least recently used connections (never ones younger than a grace period) until
//! `low` remain. Kademlia needs no standing connection to a routing-table peer (it dials
//! on demand), so trimming costs one reconnection later, while an unbounded count ends in
//! file-descriptor exhaustion: accepts then fail and dialers wait for handshakes that
//! never complete.
//!
//! A full node keeps two budgets: one for full nodes and one for client-mode peers
//! (visors), which move to the second once identify shows they serve no kad. A visor
//! keeps a small budget of its own (`client_connections`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// A connected peer's use record.
#[derive(Debug, Clone, Copy)]
struct Use {
    connected_at: Instant,
    last_used: Instant,
    connections: usize,
}

/// Tracks connected peers and picks which to disconnect when over budget.
#[derive(Debug)]
pub struct ConnectionBudget {
    high: usize,
    low: usize,
    grace: Duration,
    peers: HashMap<PeerId, Use>,
}

impl ConnectionBudget {
    /// A budget of `high` connected peers, trimmed down to three quarters of it.
    pub fn new(high: usize, grace: Duration) -> Self {
        let high = high.max(1);
        ConnectionBudget {
            high,
            low: (high * 3 / 4).max(1),
            grace,
            peers: HashMap::new(),
        }
    }

    /// Connected peers tracked.
    #[cfg(test)]
    fn connected(&self) -> usize {
        self.peers.len()
    }

    /// Whether more peers are connected than the budget allows (a trim is due, now or
    /// once their grace period ends).
    pub fn is_over(&self) -> bool {
        self.peers.len() > self.high
    }

    /// Whether `peer` is tracked here.
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    /// Moves `peer`'s record (all its connections) to the budget `to`.
    pub fn move_to(&mut self, peer: &PeerId, to: &mut ConnectionBudget) {
        if let Some(u) = self.peers.remove(peer) {
            to.peers.insert(*peer, u);
        }
    }

    /// A connection to `peer` was established.
    pub fn established(&mut self, peer: PeerId, now: Instant) {
        let u = self.peers.entry(peer).or_insert(Use {
            connected_at: now,
            last_used: now,
            connections: 0,
        });
        u.connections += 1;
        u.last_used = now;
    }

    /// A connection to `peer` closed.
    pub fn closed(&mut self, peer: &PeerId) {
        if let Some(u) = self.peers.get_mut(peer) {
            u.connections = u.connections.saturating_sub(1);
            if u.connections == 0 {
                self.peers.remove(peer);
            }
        }
    }

    /// `peer` was just used (a request to or from it).
    pub fn touch(&mut self, peer: &PeerId, now: Instant) {
        if let Some(u) = self.peers.get_mut(peer) {
            u.last_used = now;
        }
    }

    /// The peers to disconnect now: none while at most `high` are connected; otherwise
    /// the least recently used ones, down to `low`, among those neither connected nor
    /// used within the grace period (so a request in flight is not cut; the budget is
    /// soft while every peer is busy).
    pub fn over_budget(&self, now: Instant) -> Vec<PeerId> {
        if self.peers.len() <= self.high {
            return Vec::new();
        }
        let mut candidates: Vec<(Instant, PeerId)> = self
            .peers
            .iter()
            .filter(|(_, u)| {
                now.saturating_duration_since(u.connected_at) >= self.grace
                    && now.saturating_duration_since(u.last_used) >= self.grace
            })
            .map(|(p, u)| (u.last_used, *p))
            .collect();
        candidates.sort();
        let excess = self.peers.len() - self.low;
        candidates
            .into_iter()
            .take(excess)
            .map(|(_, p)| p)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_least_recently_used_down_to_low_water() {
        let t0 = Instant::now();
        let mut b = ConnectionBudget::new(4, Duration::from_secs(1));
        let peers: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        for p in &peers {
            b.established(*p, t0);
        }
        // Peer 0 was used last, peer 1 before it; both are still in their grace period.
        let later = t0 + Duration::from_secs(2);
        b.touch(&peers[1], later);
        b.touch(&peers[0], later + Duration::from_millis(1));
        let drop = b.over_budget(later + Duration::from_millis(2));
        assert_eq!(drop.len(), 5 - 3);
        assert!(!drop.contains(&peers[0]) && !drop.contains(&peers[1]));
        // Once every peer is idle, the least recently used go first.
        let idle = later + Duration::from_secs(5);
        b.touch(&peers[2], idle);
        let drop = b.over_budget(idle + Duration::from_secs(2));
        assert_eq!(drop.len(), 2);
        assert!(drop.contains(&peers[3]) && drop.contains(&peers[4]));
    }

    #[test]
    fn busy_peers_are_not_trimmed() {
        let t0 = Instant::now();
        let mut b = ConnectionBudget::new(1, Duration::from_secs(1));
        let (p, q) = (PeerId::random(), PeerId::random());
        b.established(p, t0);
        b.established(q, t0);
        let later = t0 + Duration::from_secs(3);
        b.touch(&p, later);
        b.touch(&q, later);
        assert!(b.over_budget(later).is_empty());
    }

    #[test]
    fn within_budget_or_in_grace_nothing_is_trimmed() {
        let t0 = Instant::now();
        let mut b = ConnectionBudget::new(2, Duration::from_secs(10));
        let peers: Vec<PeerId> = (0..2).map(|_| PeerId::random()).collect();
        for p in &peers {
            b.established(*p, t0);
        }
        assert!(b.over_budget(t0).is_empty());
        let third = PeerId::random();
        b.established(third, t0);
        assert!(
            b.over_budget(t0 + Duration::from_secs(1)).is_empty(),
            "grace"
        );
        assert_eq!(b.over_budget(t0 + Duration::from_secs(11)).len(), 2);
    }

    #[test]
    fn a_peer_moved_to_another_budget_counts_there_only() {
        let t0 = Instant::now();
        let mut full = ConnectionBudget::new(1, Duration::ZERO);
        let mut clients = ConnectionBudget::new(8, Duration::ZERO);
        let (p, q) = (PeerId::random(), PeerId::random());
        full.established(p, t0);
        full.established(q, t0);
        assert!(full.is_over());
        full.move_to(&q, &mut clients);
        assert!(!full.is_over() && full.over_budget(t0).is_empty());
        assert!(clients.contains(&q) && !full.contains(&q));
        clients.closed(&q);
        assert_eq!(clients.connected(), 0);
    }

    #[test]
    fn a_peer_leaves_only_when_its_last_connection_closes() {
        let t0 = Instant::now();
        let mut b = ConnectionBudget::new(8, Duration::ZERO);
        let p = PeerId::random();
        b.established(p, t0);
        b.established(p, t0);
        b.closed(&p);
        assert_eq!(b.connected(), 1);
        b.closed(&p);
        assert_eq!(b.connected(), 0);
    }
}
