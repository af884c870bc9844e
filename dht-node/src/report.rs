//! What a put or get actually did: truthful, per-peer reports.

use dht_core::{json::ItemJson, Admission, MutableItem, ReasonCode, Target};
use libp2p::PeerId;
use serde::Serialize;

/// What one replica did with a put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaResult {
    /// Stored (inserted, replaced or refreshed).
    Stored(Admission),
    /// Validated and refused, with the reason.
    Rejected {
        /// Stable reason code.
        code: ReasonCode,
        /// Detail from the replica.
        detail: String,
    },
    /// No answer (timeout, unreachable, refused request).
    Failed(String),
}

/// One replica's answer to a put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaOutcome {
    /// The replica.
    pub peer: PeerId,
    /// What it did.
    pub result: ReplicaResult,
}

/// The report of a put: which peers stored the item, which rejected it and why, which
/// did not answer, and whether a majority of the nodes responsible for the target hold
/// it. The majority is always counted over the whole responsible set, never over the
/// peers that happened to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutReport {
    /// Target of the item.
    pub target: Target,
    /// Seq of the item.
    pub seq: u64,
    /// This node.
    pub node: PeerId,
    /// What this node's own store did (None when it is not a responsible full node).
    pub local: Option<ReplicaResult>,
    /// Each peer that answered (responsible replicas and stand-ins).
    pub replicas: Vec<ReplicaOutcome>,
    /// The `k` nodes responsible for the target as far as this node knew, nearest first
    /// (this node included when it is one of them).
    pub responsible: Vec<PeerId>,
    /// Responsible replicas that were down (suspected or dead, so not asked) or did not
    /// answer.
    pub unreachable: Vec<PeerId>,
    /// Live peers outside the responsible set that were sent the item in place of
    /// unreachable replicas, or of replicas that failed or were slow to answer (hedged:
    /// see `dht_hedged_requests_total`: the request to the slow replica stays in
    /// flight). An unreachable replica is handed the item back when it returns. Copies
    /// held by stand-ins never count towards the majority.
    pub stand_ins: Vec<PeerId>,
    /// Peers asked that had not answered when the put returned; the put goes on in the
    /// background (see the `dht_puts_returned_early` metric).
    pub pending: Vec<PeerId>,
}

impl PutReport {
    /// Peers that stored the item.
    pub fn stored_on(&self) -> Vec<PeerId> {
        self.replicas
            .iter()
            .filter(|r| matches!(r.result, ReplicaResult::Stored(_)))
            .map(|r| r.peer)
            .collect()
    }

    /// Peers that rejected the item, with the reason.
    pub fn rejected_by(&self) -> Vec<(PeerId, ReasonCode)> {
        self.replicas
            .iter()
            .filter_map(|r| match &r.result {
                ReplicaResult::Rejected { code, .. } => Some((r.peer, *code)),
                _ => None,
            })
            .collect()
    }

    /// Peers that did not answer.
    pub fn failed(&self) -> Vec<PeerId> {
        self.replicas
            .iter()
            .filter(|r| matches!(r.result, ReplicaResult::Failed(_)))
            .map(|r| r.peer)
            .collect()
    }

    /// How many of the responsible nodes (this one included) hold the item.
    pub fn responsible_stored(&self) -> usize {
        let remote = self
            .replicas
            .iter()
            .filter(|r| {
                matches!(r.result, ReplicaResult::Stored(_)) && self.responsible.contains(&r.peer)
            })
            .count();
        let local = matches!(self.local, Some(ReplicaResult::Stored(_)))
            && self.responsible.contains(&self.node);
        remote + usize::from(local)
    }

    /// Whether a majority of the responsible set holds the item (stand-ins do not count).
    pub fn majority_stored(&self) -> bool {
        !self.responsible.is_empty() && self.responsible_stored() * 2 > self.responsible.len()
    }

    /// JSON form for tools.
    pub fn to_json(&self) -> serde_json::Value {
        let result = |r: &ReplicaResult| match r {
            ReplicaResult::Stored(a) => {
                serde_json::json!({"result": "stored", "admission": admission_name(*a)})
            }
            ReplicaResult::Rejected { code, detail } => {
                serde_json::json!({"result": "rejected", "reason": code.as_str(), "detail": detail})
            }
            ReplicaResult::Failed(e) => serde_json::json!({"result": "failed", "detail": e}),
        };
        let ids = |v: &[PeerId]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        serde_json::json!({
            "target": self.target.to_string(),
            "seq": self.seq,
            "local": self.local.as_ref().map(result),
            "majority": self.majority_stored(),
            "responsible": self.responsible.len(),
            "responsible_stored": self.responsible_stored(),
            "unreachable": ids(&self.unreachable),
            "stand_ins": ids(&self.stand_ins),
            "pending": ids(&self.pending),
            "stored": self.stored_on().len(),
            "rejected": self.rejected_by().len(),
            "failed": self.failed().len(),
            "replicas": self.replicas.iter().map(|r| {
                let mut v = result(&r.result);
                v["peer"] = serde_json::Value::String(r.peer.to_string());
                v
            }).collect::<Vec<_>>(),
        })
    }
}

/// The name of an admission.
pub fn admission_name(a: Admission) -> &'static str {
    match a {
        Admission::Insert => "inserted",
        Admission::Replace { .. } => "replaced",
        Admission::Refresh => "refreshed",
        Admission::Supersede { .. } => "superseded",
    }
}

/// How a get decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetMode {
    /// Return the first valid answer (fast path).
    First,
    /// Ask the closest replicas, wait for this many answers (0: a majority of those
    /// asked), return the highest valid seq and repair stale or missing copies.
    Quorum(usize),
}

/// A valid item found by a get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The item (a tombstone for [`GetOutcome::Deleted`]).
    pub item: MutableItem,
    /// Its expiry, unix ms.
    pub expires_at_ms: u64,
    /// Who answered with it (None: the local store).
    pub from: Option<PeerId>,
}

/// The outcome of a get: what it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetOutcome {
    /// A value.
    Found(Found),
    /// Deleted: a tombstone at this seq.
    Deleted(Found),
    /// Peers answered and none holds the item.
    NotFound,
    /// No peer answered.
    Unreachable,
}

impl GetOutcome {
    /// The outcome of finding `found`: a value, or a tombstone.
    pub(crate) fn of(found: Found) -> Self {
        if found.item.is_tombstone() {
            GetOutcome::Deleted(found)
        } else {
            GetOutcome::Found(found)
        }
    }
}

/// The report of a get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetReport {
    /// The target read.
    pub target: Target,
    /// The outcome (the field keeps its name for the `dht-node` binary's sake; it is
    /// no kad lookup).
    pub lookup: GetOutcome,
    /// Peers asked.
    pub asked: usize,
    /// Peers that answered.
    pub answered: usize,
    /// Peers that answered with an invalid copy, and why it was invalid.
    pub invalid: Vec<(PeerId, ReasonCode)>,
    /// Peers sent the best copy because theirs was stale or missing.
    pub repairing: Vec<PeerId>,
}

impl GetReport {
    /// The value, if found.
    pub fn value(&self) -> Option<&[u8]> {
        match &self.lookup {
            GetOutcome::Found(f) => f.item.value().map(|v| &v[..]),
            _ => None,
        }
    }

    /// The seq of a value or tombstone found.
    pub fn seq(&self) -> Option<u64> {
        match &self.lookup {
            GetOutcome::Found(f) | GetOutcome::Deleted(f) => Some(f.item.seq),
            _ => None,
        }
    }

    /// Whether the item reads as deleted.
    pub fn is_deleted(&self) -> bool {
        matches!(self.lookup, GetOutcome::Deleted(_))
    }

    /// JSON form for tools.
    pub fn to_json(&self) -> serde_json::Value {
        let (status, item) = match &self.lookup {
            GetOutcome::Found(f) => ("found", Some(f)),
            GetOutcome::Deleted(f) => ("deleted", Some(f)),
            GetOutcome::NotFound => ("not_found", None),
            GetOutcome::Unreachable => ("unreachable", None),
        };
        serde_json::json!({
            "target": self.target.to_string(),
            "status": status,
            "seq": item.map(|f| f.item.seq),
            "item": item.map(|f| ItemJson::from(&f.item)),
            "expires_at_ms": item.map(|f| f.expires_at_ms),
            "asked": self.asked,
            "answered": self.answered,
            "invalid": self.invalid.iter().map(|(p, c)| serde_json::json!({"peer": p.to_string(), "reason": c.as_str()})).collect::<Vec<_>>(),
            "repairing": self.repairing.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        })
    }
}

/// A snapshot of a node's state.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStats {
    /// This node's peer id.
    pub peer_id: String,
    /// "full" or "client".
    pub mode: crate::config::NodeMode,
    /// Peers in the routing table.
    pub routing_table_peers: usize,
    /// Connected peers.
    pub connected_peers: usize,
    /// Whether the routing table holds the whole membership of full nodes (bootstrapped,
    /// no k-bucket full): puts and gets then route in one hop, with no lookup.
    pub membership_known: bool,
    /// Items in the local store.
    pub items_stored: u64,
    /// Bytes in the local store.
    pub store_bytes: u64,
    /// Listen addresses.
    pub listen_addrs: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(peer: PeerId, result: ReplicaResult) -> ReplicaOutcome {
        ReplicaOutcome { peer, result }
    }

    #[test]
    fn the_majority_counts_only_the_responsible_set() {
        let me = PeerId::random();
        let (a, b, c, stand_in) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let mut report = PutReport {
            target: Target([1; 32]),
            seq: 1,
            node: me,
            local: Some(ReplicaResult::Stored(Admission::Insert)),
            replicas: vec![
                outcome(stand_in, ReplicaResult::Stored(Admission::Insert)),
                outcome(a, ReplicaResult::Failed("timeout".into())),
                outcome(
                    b,
                    ReplicaResult::Rejected {
                        code: ReasonCode::Stale,
                        detail: String::new(),
                    },
                ),
            ],
            responsible: vec![me, a, b, c],
            unreachable: vec![c],
            stand_ins: vec![stand_in],
            pending: Vec::new(),
        };
        // This node alone of four: no majority, though a stand-in stored it too.
        assert_eq!(report.responsible_stored(), 1);
        assert!(!report.majority_stored());
        assert_eq!(report.stored_on(), vec![stand_in]);
        assert_eq!(report.failed(), vec![a]);
        assert_eq!(report.rejected_by(), vec![(b, ReasonCode::Stale)]);
        // Two of four is no majority either; three is.
        report
            .replicas
            .push(outcome(c, ReplicaResult::Stored(Admission::Refresh)));
        assert!(!report.majority_stored());
        report.replicas.push(outcome(
            a,
            ReplicaResult::Stored(Admission::Replace { previous_seq: 0 }),
        ));
        assert_eq!(report.responsible_stored(), 3);
        assert!(report.majority_stored());
        // This node's own copy counts only when it is responsible.
        report.responsible = vec![a, b, c];
        assert_eq!(report.responsible_stored(), 2);
        // An empty responsible set never has a majority.
        report.responsible.clear();
        assert!(!report.majority_stored());
    }

    #[test]
    fn a_get_outcome_reads_a_tombstone_as_deleted() {
        let key = dht_core::SigningKey::generate_ed25519();
        let value = MutableItem::sign(&key, key.public_key(), "svc", 1, &b"v"[..]);
        let tomb = MutableItem::tombstone(&key, key.public_key(), "svc", 2);
        let found = |item: &MutableItem| Found {
            item: item.clone(),
            expires_at_ms: 0,
            from: None,
        };
        let report = |lookup| GetReport {
            target: value.target(),
            lookup,
            asked: 0,
            answered: 0,
            invalid: Vec::new(),
            repairing: Vec::new(),
        };
        let got = report(GetOutcome::of(found(&value)));
        assert_eq!(
            (got.value(), got.seq(), got.is_deleted()),
            (Some(&b"v"[..]), Some(1), false)
        );
        let gone = report(GetOutcome::of(found(&tomb)));
        assert_eq!(
            (gone.value(), gone.seq(), gone.is_deleted()),
            (None, Some(2), true)
        );
        assert_eq!(report(GetOutcome::NotFound).seq(), None);
    }
}
