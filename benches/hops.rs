//! Hops per lookup.
//!
//! libp2p-kad runs lookups asynchronously and reports only the requests a query made, not
//! its depth, so hops are counted by replaying Kademlia's iterative lookup (alpha = 3
//! parallel requests per round, keep the k closest) over routing tables:
//!
//! - [`measure`]: the routing tables the live testnet nodes actually built;
//! - [`simulate`]: for sizes beyond one machine's sockets, a model network whose k-buckets
//!   are filled from the whole membership (each bucket: k random nodes of its range). This
//!   is a simulation, and the tables say so.
//!
//! Two figures per lookup: rounds until the first of the k closest nodes (a replica) is
//! asked (the depth of a first-valid get), and rounds until the k closest known are all
//! asked (the depth of a full lookup: put and best-of-quorum get).

use std::collections::{HashMap, HashSet};

use dht_core::Target;
use dht_node::{closest_of, target_key};
use dht_node::{PeerId, Testnet};
use rand::Rng;

/// Replica set size (k) and parallelism (alpha) replayed.
const K: usize = 20;
const ALPHA: usize = 3;

/// Hop counts over a sample of lookups.
#[derive(Debug, Default, Clone, Copy)]
pub struct Hops {
    /// Mean rounds until a replica is asked.
    pub to_replica_mean: f64,
    /// Largest rounds until a replica is asked.
    pub to_replica_max: usize,
    /// Mean rounds until the final k closest were all known.
    pub full_mean: f64,
    /// Lookups that found every one of the true k closest.
    pub exact_share: f64,
}

/// Replays one iterative lookup. `table(p)` is `p`'s routing table; `dist` orders ids by
/// distance to the target. Returns (rounds to a replica, rounds until the final k closest
/// were all known, that final set).
fn replay<I: Copy + Eq + std::hash::Hash + Ord>(
    origin: I,
    mut table: impl FnMut(I) -> Vec<I>,
    closest: impl Fn(Vec<I>) -> Vec<I>,
    replicas: &HashSet<I>,
) -> (usize, usize, Vec<I>) {
    let mut queried: HashSet<I> = HashSet::from([origin]);
    let mut candidates = closest(table(origin));
    let mut to_replica = if replicas.contains(&origin) {
        0
    } else {
        usize::MAX
    };
    let (mut round, mut converged) = (0, 0);
    loop {
        let ask: Vec<I> = candidates
            .iter()
            .filter(|p| !queried.contains(p))
            .take(ALPHA)
            .copied()
            .collect();
        if ask.is_empty() {
            break;
        }
        round += 1;
        let mut all = candidates.clone();
        for p in ask {
            queried.insert(p);
            if replicas.contains(&p) {
                to_replica = to_replica.min(round);
            }
            all.extend(table(p));
        }
        let next = closest(all);
        if next != candidates {
            converged = round;
        }
        candidates = next;
    }
    (to_replica, converged, candidates)
}

fn summarize(samples: &[(usize, usize, bool)]) -> Hops {
    let n = samples.len().max(1) as f64;
    let reached: Vec<usize> = samples
        .iter()
        .map(|s| s.0)
        .filter(|&h| h != usize::MAX)
        .collect();
    Hops {
        to_replica_mean: reached.iter().sum::<usize>() as f64 / reached.len().max(1) as f64,
        to_replica_max: reached.iter().copied().max().unwrap_or(0),
        full_mean: samples.iter().map(|s| s.1).sum::<usize>() as f64 / n,
        exact_share: samples.iter().filter(|s| s.2).count() as f64 / n,
    }
}

/// Hops over the live routing tables of `net`, one lookup per target from a random node.
pub fn measure(net: &Testnet, targets: &[Target]) -> Hops {
    let tables: HashMap<PeerId, Vec<PeerId>> = net
        .nodes
        .iter()
        .map(|n| (n.peer_id(), n.routing_table().into_keys().collect()))
        .collect();
    let all: Vec<PeerId> = tables.keys().copied().collect();
    let mut rng = rand::thread_rng();
    let samples: Vec<(usize, usize, bool)> = targets
        .iter()
        .map(|t| {
            let key = target_key(t);
            let replicas: HashSet<PeerId> = closest_of(&key, all.iter().copied(), K)
                .into_iter()
                .collect();
            let origin = all[rng.gen_range(0..all.len())];
            let (a, b, found) = replay(
                origin,
                |p| tables.get(&p).cloned().unwrap_or_default(),
                |v| closest_of(&key, v.into_iter(), K),
                &replicas,
            );
            let exact = found.iter().all(|p| replicas.contains(p));
            (a, b, exact)
        })
        .collect();
    summarize(&samples)
}

/// A model Kademlia network of `size` nodes with 64-bit ids: every node's bucket `i`
/// (peers sharing exactly `i` leading bits) holds up to k random members of that range.
pub fn simulate(size: usize, lookups: usize) -> Hops {
    let mut rng = rand::thread_rng();
    let mut ids: Vec<u64> = (0..size).map(|_| rng.gen()).collect();
    ids.sort_unstable();
    ids.dedup();
    // Routing tables built lazily per node (only the nodes a lookup touches).
    let mut tables: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut table_of = |id: u64| -> Vec<u64> {
        tables
            .entry(id)
            .or_insert_with(|| {
                let mut rng = rand::thread_rng();
                let mut t = Vec::new();
                for bit in 0..64u32 {
                    // Ids sharing exactly `bit` leading bits with `id`: one contiguous
                    // range of the sorted ids.
                    let span: u64 = if bit == 63 {
                        0
                    } else {
                        (1u64 << (63 - bit)) - 1
                    };
                    let prefix = (id ^ (1u64 << (63 - bit))) & !span;
                    let lo = ids.partition_point(|&x| x < prefix);
                    let hi = ids.partition_point(|&x| x <= prefix | span);
                    let range = &ids[lo..hi];
                    if range.len() <= K {
                        t.extend_from_slice(range);
                    } else {
                        for _ in 0..K {
                            t.push(range[rng.gen_range(0..range.len())]);
                        }
                    }
                }
                t.sort_unstable();
                t.dedup();
                t
            })
            .clone()
    };
    let mut samples = Vec::with_capacity(lookups);
    for _ in 0..lookups {
        let target: u64 = rng.gen();
        let closest = |v: Vec<u64>| {
            let mut v = v;
            v.sort_unstable_by_key(|x| x ^ target);
            v.dedup();
            v.truncate(K);
            v
        };
        // The true k closest.
        let replicas: HashSet<u64> = {
            let mut v = ids.clone();
            let nth = K.min(v.len() - 1);
            v.select_nth_unstable_by_key(nth, |x| x ^ target);
            v.truncate(K);
            v.into_iter().collect()
        };
        let origin = ids[rng.gen_range(0..ids.len())];
        let (a, b, found) = replay(origin, &mut table_of, closest, &replicas);
        let exact = found.iter().all(|p| replicas.contains(p));
        samples.push((a, b, exact));
    }
    summarize(&samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_model_networks_resolve_in_few_rounds_and_find_the_true_closest() {
        let h = simulate(2_000, 50);
        assert!(h.to_replica_mean >= 1.0 && h.to_replica_max < 10, "{h:?}");
        assert!(h.exact_share > 0.9, "{h:?}");
    }
}
