//! Where an item lives: the `k` nodes responsible for a target (the closest known full
//! nodes, this one included when it is among them), which of them are down, and which
//! live nodes stand in for those (sloppy quorum). Pure: the put and get queries feed it
//! what they know.

use std::collections::HashSet;

use dht_core::Target;
use libp2p::PeerId;

use crate::routing::{closest_of, target_key};

/// The replica plan of one target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Placement {
    /// The `k` responsible nodes, nearest first (this node included when it is one).
    pub responsible: Vec<PeerId>,
    /// Responsible peers that are suspected or dead: not asked.
    pub unreachable: Vec<PeerId>,
    /// Live peers just outside the responsible set, one per unreachable replica: they
    /// hold the item until the replica returns and is handed it back.
    pub stand_ins: Vec<PeerId>,
    /// The next live peers beyond the stand-ins, nearest first (at most `k`): asked in
    /// place of replicas that are slow to answer or failed (see [`crate::rtt`]).
    pub spares: Vec<PeerId>,
}

impl Placement {
    /// Computes the plan over `candidates` (known full nodes; include `local` when this
    /// node is a full node).
    pub fn of(
        target: &Target,
        candidates: impl Iterator<Item = PeerId>,
        k: usize,
        local: PeerId,
        is_down: impl Fn(&PeerId) -> bool,
    ) -> Self {
        let key = target_key(target);
        let ordered = closest_of(&key, candidates, usize::MAX);
        let responsible: Vec<PeerId> = ordered.iter().take(k).copied().collect();
        let unreachable: Vec<PeerId> = responsible
            .iter()
            .filter(|p| **p != local && is_down(p))
            .copied()
            .collect();
        let mut beyond = ordered
            .iter()
            .skip(k)
            .filter(|p| **p != local && !is_down(p))
            .copied();
        let stand_ins = beyond.by_ref().take(unreachable.len()).collect();
        let spares = beyond.take(k).collect();
        Placement {
            responsible,
            unreachable,
            stand_ins,
            spares,
        }
    }

    /// The peers to send the item to: live responsible peers and the stand-ins.
    pub fn to_ask(&self, local: PeerId) -> Vec<PeerId> {
        let down: HashSet<&PeerId> = self.unreachable.iter().collect();
        self.responsible
            .iter()
            .filter(|p| **p != local && !down.contains(p))
            .chain(self.stand_ins.iter())
            .copied()
            .collect()
    }

    /// Whether `peer` is one of the responsible nodes.
    #[cfg(test)]
    pub fn is_responsible(&self, peer: &PeerId) -> bool {
        self.responsible.contains(peer)
    }

    /// Copies a majority of the responsible set needs.
    pub fn majority(&self) -> usize {
        self.responsible.len() / 2 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    #[test]
    fn responsible_set_is_the_k_closest_and_stand_ins_replace_the_down() {
        let all = peers(30);
        let local = all[0];
        let target = Target([9; 32]);
        let healthy = Placement::of(&target, all.iter().copied(), 20, local, |_| false);
        assert_eq!(healthy.responsible.len(), 20);
        assert!(healthy.unreachable.is_empty() && healthy.stand_ins.is_empty());
        let expected = closest_of(&target_key(&target), all.iter().copied(), 20);
        assert_eq!(healthy.responsible, expected);

        let down: HashSet<PeerId> = healthy.responsible.iter().take(3).copied().collect();
        let p = Placement::of(&target, all.iter().copied(), 20, local, |x| {
            down.contains(x)
        });
        // The responsible set does not shrink when members are down: the majority is
        // still counted over all k.
        assert_eq!(p.responsible, healthy.responsible);
        assert_eq!(p.majority(), 11);
        let unreachable: HashSet<PeerId> = p.unreachable.iter().copied().collect();
        assert_eq!(
            unreachable,
            down.iter().filter(|x| **x != local).copied().collect()
        );
        assert_eq!(p.stand_ins.len(), p.unreachable.len());
        // Spares come after the stand-ins, live and outside the responsible set.
        let local_beyond = usize::from(!p.is_responsible(&local));
        assert_eq!(p.spares.len() + p.stand_ins.len() + local_beyond, 30 - 20);
        for s in &p.spares {
            assert!(!p.is_responsible(s) && !down.contains(s) && !p.stand_ins.contains(s));
        }
        for s in &p.stand_ins {
            assert!(!p.is_responsible(s) && !down.contains(s));
        }
        let ask = p.to_ask(local);
        assert!(ask.iter().all(|x| !down.contains(x) && *x != local));
        assert_eq!(ask.len(), 20 - usize::from(p.is_responsible(&local)));
    }

    #[test]
    fn a_small_network_is_responsible_as_a_whole() {
        let all = peers(5);
        let p = Placement::of(&Target([1; 32]), all.iter().copied(), 20, all[0], |x| {
            *x == all[3]
        });
        assert_eq!(p.responsible.len(), 5);
        assert_eq!(p.majority(), 3);
        assert_eq!(p.unreachable, vec![all[3]]);
        assert!(p.stand_ins.is_empty());
        assert_eq!(p.to_ask(all[0]).len(), 3);
    }
}
