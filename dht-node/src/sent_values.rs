//! The last value this node put at each target, kept (bounded, least recently used
//! first out) as the base of the next put's patch: a replica that stored it rebuilds the
//! new value from a patch a few hundred bytes long (see [`dht_core::codec`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use bytes::Bytes;
use dht_core::codec::WireValue;
use dht_core::Target;
use parking_lot::Mutex;

/// Most targets remembered: enough for a mirror re-asserting every key of a 10x seed
/// (13,000 edges) to send patches rather than whole values; the bytes bound below
/// holds in any case.
pub(crate) const MAX_TARGETS: usize = 65_536;
/// Most value bytes remembered.
pub(crate) const MAX_BYTES: usize = 64 * 1024 * 1024;

/// The last value put per target, bounded in targets and bytes.
pub(crate) struct SentValues {
    inner: Mutex<Lru>,
}

struct Lru {
    entries: HashMap<Target, Entry>,
    /// Last use -> target: the first is the least recently used.
    order: BTreeMap<u64, Target>,
    tick: u64,
    bytes: usize,
    max_targets: usize,
    max_bytes: usize,
}

struct Entry {
    seq: u64,
    value: Bytes,
    used: u64,
}

impl Default for SentValues {
    fn default() -> Self {
        Self::new(MAX_TARGETS, MAX_BYTES)
    }
}

impl SentValues {
    /// Remembers at most `max_targets` values and `max_bytes` bytes of them.
    pub fn new(max_targets: usize, max_bytes: usize) -> Self {
        SentValues {
            inner: Mutex::new(Lru {
                entries: HashMap::new(),
                order: BTreeMap::new(),
                tick: 0,
                bytes: 0,
                max_targets,
                max_bytes,
            }),
        }
    }

    /// The last value put at `target` and its seq.
    pub fn get(&self, target: &Target) -> Option<(u64, Bytes)> {
        let mut lru = self.inner.lock();
        let lru = &mut *lru;
        lru.tick += 1;
        let e = lru.entries.get_mut(target)?;
        lru.order.remove(&e.used);
        e.used = lru.tick;
        lru.order.insert(e.used, *target);
        Some((e.seq, e.value.clone()))
    }

    /// Remembers `value` as put at `target` with `seq`, unless a higher seq is already
    /// remembered there; the least recently used values go to keep within the bounds.
    pub fn record(&self, target: Target, seq: u64, value: Bytes) {
        let mut lru = self.inner.lock();
        let lru = &mut *lru;
        if value.len() > lru.max_bytes || lru.max_targets == 0 {
            return;
        }
        if let Some(old) = lru.entries.get(&target) {
            if old.seq > seq {
                return;
            }
            let old = lru.entries.remove(&target).expect("just seen");
            lru.order.remove(&old.used);
            lru.bytes -= old.value.len();
        }
        while lru.entries.len() >= lru.max_targets || lru.bytes + value.len() > lru.max_bytes {
            let Some((_, oldest)) = lru.order.pop_first() else {
                break;
            };
            if let Some(e) = lru.entries.remove(&oldest) {
                lru.bytes -= e.value.len();
            }
        }
        lru.tick += 1;
        lru.bytes += value.len();
        lru.order.insert(lru.tick, target);
        lru.entries.insert(
            target,
            Entry {
                seq,
                value,
                used: lru.tick,
            },
        );
    }

    /// Targets and bytes remembered.
    #[cfg(test)]
    fn size(&self) -> (usize, usize) {
        let lru = self.inner.lock();
        (lru.entries.len(), lru.bytes)
    }
}

/// Values shorter than this go as they are: coding them saves too little.
pub(crate) const MIN_CODED_VALUE: usize = 256;

/// The wire forms of one put's value, shared by the replicas it goes to. Peers that only
/// speak item protocol 1.0.0 get the value as is whatever these say (the codec decides).
pub(crate) struct ValueForms {
    value: Bytes,
    /// What every replica gets first: a patch against the last value this node put at
    /// the target, or the value compressed; `None`: as is.
    pub first: Option<WireValue>,
    /// The value compressed, for a replica that lacks the patch's base (made once, when
    /// first needed).
    full: OnceLock<Option<WireValue>>,
}

impl ValueForms {
    /// The forms of `value` (`None`: a tombstone), given the last value put at its
    /// target (`base`, with its seq). Small values, and values that code no smaller,
    /// go as they are.
    pub fn new(value: Option<&Bytes>, base: Option<(u64, Bytes)>) -> Self {
        let value = value.cloned().unwrap_or_default();
        let first = (value.len() >= MIN_CODED_VALUE)
            .then(|| WireValue::encode_for(&value, base.as_ref().map(|(s, v)| (*s, &v[..]))))
            .filter(|w| !matches!(w, WireValue::Plain(_)));
        ValueForms {
            value,
            first,
            full: OnceLock::new(),
        }
    }

    /// The value without a patch: compressed, or `None` (as is).
    pub fn full(&self) -> Option<WireValue> {
        self.full
            .get_or_init(|| {
                match &self.first {
                    Some(w @ WireValue::Zstd(_)) => Some(w.clone()),
                    _ if self.value.len() < MIN_CODED_VALUE => None,
                    _ => Some(WireValue::encode_for(&self.value, None)),
                }
                .filter(|w| !matches!(w, WireValue::Plain(_)))
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(i: u8) -> Target {
        Target::from_slice(&[i; 32]).unwrap()
    }

    #[test]
    fn keeps_the_highest_seq_and_evicts_the_least_recently_used() {
        let s = SentValues::new(2, 100);
        s.record(t(1), 2, Bytes::from_static(b"two"));
        s.record(t(1), 1, Bytes::from_static(b"one"));
        assert_eq!(s.get(&t(1)), Some((2, Bytes::from_static(b"two"))));
        s.record(t(2), 1, Bytes::from_static(b"b"));
        // t(1) was used last: t(2) goes when a third target comes.
        s.get(&t(1));
        s.record(t(3), 1, Bytes::from_static(b"c"));
        assert_eq!(s.get(&t(2)), None);
        assert!(s.get(&t(1)).is_some() && s.get(&t(3)).is_some());
        assert_eq!(s.size(), (2, 4));
    }

    #[test]
    fn keeps_within_its_bytes() {
        let s = SentValues::new(100, 10);
        s.record(t(1), 1, Bytes::from(vec![0u8; 6]));
        s.record(t(2), 1, Bytes::from(vec![0u8; 6]));
        assert_eq!(s.get(&t(1)), None);
        assert_eq!(s.size(), (1, 6));
        // A value over the whole budget is not remembered (and evicts nothing).
        s.record(t(3), 1, Bytes::from(vec![0u8; 11]));
        assert_eq!(s.size(), (1, 6));
        // A replacement frees the old value's bytes.
        s.record(t(2), 2, Bytes::from(vec![0u8; 9]));
        assert_eq!(s.size(), (1, 9));
    }
}
