//! A snapshot of the routing table that tasks outside the swarm can read, the
//! responsibility rule (which nodes hold a target), per-IP-range admission, and the
//! saved routing table.

use std::collections::HashMap;
use std::path::Path;

use dht_core::Target;
use libp2p::kad::KBucketKey;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use parking_lot::RwLock;

/// The kad-space key of a target (kad hashes the preimage with SHA256).
pub fn target_key(target: &Target) -> KBucketKey<Vec<u8>> {
    KBucketKey::new(target.as_bytes().to_vec())
}

/// Peers of the routing table with their addresses, refreshed by the swarm task.
#[derive(Debug, Default)]
pub struct RoutingView {
    peers: RwLock<HashMap<PeerId, Vec<Multiaddr>>>,
}

impl RoutingView {
    /// Replaces the snapshot.
    pub fn replace(&self, peers: HashMap<PeerId, Vec<Multiaddr>>) {
        *self.peers.write() = peers;
    }

    /// Number of peers in the routing table.
    pub fn len(&self) -> usize {
        self.peers.read().len()
    }

    /// Addresses of a peer.
    pub fn addresses(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.peers.read().get(peer).cloned().unwrap_or_default()
    }

    /// All peers and addresses.
    pub fn snapshot(&self) -> HashMap<PeerId, Vec<Multiaddr>> {
        self.peers.read().clone()
    }

    /// Up to `n` known peers closest to `target`, nearest first.
    pub fn closest(&self, target: &Target, n: usize) -> Vec<PeerId> {
        let key = target_key(target);
        let peers = self.peers.read();
        closest_of(&key, peers.keys().copied(), n)
    }

    /// The `k` nodes responsible for `target` as far as this node knows: the `k` closest
    /// among the routing table, `local` and `extra` (e.g. a peer asking to sync, or
    /// peers that just left when computing who held an item before).
    pub fn responsible(
        &self,
        target: &Target,
        k: usize,
        local: PeerId,
        extra: &[PeerId],
    ) -> Vec<PeerId> {
        let key = target_key(target);
        let peers = self.peers.read();
        let all = peers
            .keys()
            .copied()
            .chain(std::iter::once(local))
            .chain(extra.iter().copied());
        closest_of(&key, all, k)
    }
}

/// The `n` peers of `peers` closest to `key`, nearest first, without duplicates.
pub fn closest_of(
    key: &KBucketKey<Vec<u8>>,
    peers: impl Iterator<Item = PeerId>,
    n: usize,
) -> Vec<PeerId> {
    let mut v: Vec<(libp2p::kad::KBucketDistance, PeerId)> = peers
        .map(|p| (key.distance(&KBucketKey::from(p)), p))
        .collect();
    v.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    v.dedup_by(|a, b| a.1 == b.1);
    v.truncate(n);
    v.into_iter().map(|(_, p)| p).collect()
}

/// The IP range an address counts against: IPv4 /24 or IPv6 /48. Non-IP addresses, and
/// loopback unless `include_loopback`, are exempt (`None`).
pub fn ip_range(addr: &Multiaddr, include_loopback: bool) -> Option<Vec<u8>> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) if include_loopback || !ip.is_loopback() => {
            Some(ip.octets()[..3].to_vec())
        }
        Protocol::Ip6(ip) if include_loopback || !ip.is_loopback() => {
            Some(ip.octets()[..6].to_vec())
        }
        _ => None,
    })
}

/// Whether an address is usable to reach a peer (not unspecified, not a relay).
pub fn is_dialable(addr: &Multiaddr) -> bool {
    addr.iter().all(|p| match p {
        Protocol::Ip4(ip) => !ip.is_unspecified(),
        Protocol::Ip6(ip) => !ip.is_unspecified(),
        _ => true,
    })
}

/// One peer of the saved routing table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedPeer {
    /// Peer id (base58).
    pub peer_id: String,
    /// Known addresses.
    pub addrs: Vec<String>,
}

/// Writes the routing table atomically (temp file + rename).
pub fn save_peers(path: &Path, peers: &HashMap<PeerId, Vec<Multiaddr>>) -> std::io::Result<()> {
    let saved: Vec<SavedPeer> = peers
        .iter()
        .map(|(p, a)| SavedPeer {
            peer_id: p.to_string(),
            addrs: a.iter().map(|a| a.to_string()).collect(),
        })
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&saved)?)?;
    std::fs::rename(tmp, path)
}

/// Reads a saved routing table; unknown or malformed entries are skipped with a warning.
pub fn load_peers(path: &Path) -> std::io::Result<Vec<(PeerId, Vec<Multiaddr>)>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let saved: Vec<SavedPeer> = serde_json::from_slice(&bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok(saved
        .into_iter()
        .filter_map(|s| {
            let peer = s.peer_id.parse().ok();
            if peer.is_none() {
                tracing::warn!(peer = %s.peer_id, "skipping malformed saved peer");
            }
            Some((
                peer?,
                s.addrs.iter().filter_map(|a| a.parse().ok()).collect(),
            ))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_ranges() {
        let a: Multiaddr = "/ip4/10.1.2.3/tcp/1".parse().unwrap();
        let b: Multiaddr = "/ip4/10.1.2.99/tcp/1".parse().unwrap();
        let c: Multiaddr = "/ip4/10.1.3.3/tcp/1".parse().unwrap();
        let l: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        assert_eq!(ip_range(&a, false), ip_range(&b, false));
        assert_ne!(ip_range(&a, false), ip_range(&c, false));
        assert_eq!(ip_range(&l, false), None);
        assert!(ip_range(&l, true).is_some());
    }

    #[test]
    fn responsibility_includes_local_and_extra() {
        let view = RoutingView::default();
        let peers: HashMap<PeerId, Vec<Multiaddr>> =
            (0..30).map(|_| (PeerId::random(), vec![])).collect();
        view.replace(peers);
        let local = PeerId::random();
        let t = Target([7; 32]);
        let r = view.responsible(&t, 20, local, &[]);
        assert_eq!(r.len(), 20);
        let all = view.responsible(&t, 100, local, &[]);
        assert_eq!(all.len(), 31);
        assert!(all.contains(&local));
        // Sorted by distance.
        let key = target_key(&t);
        let d: Vec<_> = all
            .iter()
            .map(|p| key.distance(&KBucketKey::from(*p)))
            .collect();
        assert!(d.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn saved_table_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers.json");
        let mut peers = HashMap::new();
        peers.insert(
            PeerId::random(),
            vec!["/ip4/1.2.3.4/tcp/5".parse().unwrap()],
        );
        save_peers(&path, &peers).unwrap();
        let loaded: HashMap<_, _> = load_peers(&path).unwrap().into_iter().collect();
        assert_eq!(loaded, peers);
        std::fs::write(&path, b"not json").unwrap();
        assert!(load_peers(&path).is_err());
    }
}
