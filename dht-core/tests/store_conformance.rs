//! One conformance suite, run against both record stores.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dht_core::store::{MemoryStore, RecordStore, RedbStore, StoreConfig, StoreLimits, PAGE_SIZE};
use dht_core::{
    Admission, Cas, MutableItem, Policy, PutOptions, ReasonCode, SigningKey, Target, Validator,
    VerifiedItem,
};

/// A store under test, with its manual clock (and temp dir for redb).
struct Harness<S> {
    store: S,
    clock: Arc<AtomicU64>,
    validator: Validator,
    _dir: Option<tempfile::TempDir>,
}

const T0: u64 = 1_700_000_000_000;

fn config(policy: Policy, limits: StoreLimits) -> (StoreConfig, Arc<AtomicU64>, Validator) {
    let clock = Arc::new(AtomicU64::new(T0));
    let c = clock.clone();
    let validator = Validator::new(policy);
    (
        StoreConfig {
            validator: validator.clone(),
            limits,
            clock: Arc::new(move || c.load(Ordering::SeqCst)),
        },
        clock,
        validator,
    )
}

trait Make: RecordStore + Sized {
    fn make(policy: Policy, limits: StoreLimits) -> Harness<Self>;
}

impl Make for MemoryStore {
    fn make(policy: Policy, limits: StoreLimits) -> Harness<Self> {
        let (cfg, clock, validator) = config(policy, limits);
        Harness {
            store: MemoryStore::new(cfg),
            clock,
            validator,
            _dir: None,
        }
    }
}

impl Make for RedbStore {
    fn make(policy: Policy, limits: StoreLimits) -> Harness<Self> {
        let (cfg, clock, validator) = config(policy, limits);
        let dir = tempfile::tempdir().unwrap();
        Harness {
            store: RedbStore::open(dir.path().join("db.redb"), cfg).unwrap(),
            clock,
            validator,
            _dir: Some(dir),
        }
    }
}

impl<S: RecordStore> Harness<S> {
    fn v(&self, item: MutableItem) -> VerifiedItem {
        self.validator.validate(item).unwrap()
    }
    fn put(&self, item: MutableItem) -> Result<Admission, ReasonCode> {
        self.put_opts(item, PutOptions::default())
    }
    fn put_opts(&self, item: MutableItem, opts: PutOptions) -> Result<Admission, ReasonCode> {
        self.store.put(self.v(item), opts).map_err(|e| {
            e.rejection()
                .expect("a rejection, not a store failure")
                .code()
        })
    }
    fn advance(&self, d: Duration) {
        self.clock.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
    }
}

fn default_harness<S: Make>() -> Harness<S> {
    S::make(Policy::default(), StoreLimits::default())
}

fn check_ordering_rules<S: Make>() {
    let h = default_harness::<S>();
    let k = SigningKey::generate_ed25519();
    let pk = k.public_key();
    let target = Target::of(&pk, b"tp");
    assert!(h.store.get(&target).unwrap().is_none());
    assert_eq!(
        h.put(MutableItem::sign(&k, pk, "tp", 5, "a")),
        Ok(Admission::Insert)
    );
    assert_eq!(h.store.get(&target).unwrap().unwrap().item.seq, 5);
    assert_eq!(
        h.put(MutableItem::sign(&k, pk, "tp", 5, "a")),
        Ok(Admission::Refresh)
    );
    assert_eq!(
        h.put(MutableItem::sign(&k, pk, "tp", 5, "b")),
        Err(ReasonCode::Equivocation)
    );
    assert_eq!(
        h.put(MutableItem::sign(&k, pk, "tp", 4, "z")),
        Err(ReasonCode::Stale)
    );
    assert_eq!(
        h.put(MutableItem::sign(&k, pk, "tp", 6, "c")),
        Ok(Admission::Replace { previous_seq: 5 })
    );
    let got = h.store.get(&target).unwrap().unwrap();
    assert_eq!(got.item.value().unwrap().as_ref(), b"c");
    assert_eq!(h.store.stats().unwrap().items, 1);
}

fn check_refresh_extends_expiry<S: Make>() {
    let h = default_harness::<S>();
    let k = SigningKey::generate_ed25519();
    let pk = k.public_key();
    let target = Target::of(&pk, b"svc");
    h.put(MutableItem::sign(&k, pk, "svc", 1, "v")).unwrap();
    let first = h.store.get(&target).unwrap().unwrap().expires_at_ms;
    h.advance(Duration::from_secs(60));
    assert_eq!(
        h.put(MutableItem::sign(&k, pk, "svc", 1, "v")),
        Ok(Admission::Refresh)
    );
    let second = h.store.get(&target).unwrap().unwrap().expires_at_ms;
    assert_eq!(second, first + 60_000);
}

fn check_compare_and_swap<S: Make>() {
    let h = default_harness::<S>();
    let k = SigningKey::generate_ed25519();
    let pk = k.public_key();
    let cas = |c| PutOptions {
        cas: Some(c),
        expires_at_ms: None,
    };
    assert_eq!(
        h.put_opts(MutableItem::sign(&k, pk, "x", 1, "a"), cas(Cas::Seq(0))),
        Err(ReasonCode::CasMismatch)
    );
    assert_eq!(
        h.put_opts(MutableItem::sign(&k, pk, "x", 1, "a"), cas(Cas::Absent)),
        Ok(Admission::Insert)
    );
    assert_eq!(
        h.put_opts(MutableItem::sign(&k, pk, "x", 2, "b"), cas(Cas::Absent)),
        Err(ReasonCode::CasMismatch)
    );
    assert_eq!(
        h.put_opts(MutableItem::sign(&k, pk, "x", 2, "b"), cas(Cas::Seq(7))),
        Err(ReasonCode::CasMismatch)
    );
    assert!(h
        .put_opts(MutableItem::sign(&k, pk, "x", 2, "b"), cas(Cas::Seq(1)))
        .is_ok());
    assert_eq!(
        h.store
            .get(&Target::of(&pk, b"x"))
            .unwrap()
            .unwrap()
            .item
            .seq,
        2
    );
}

fn check_tombstone_beats_stale<S: Make>() {
    let h = default_harness::<S>();
    let k = SigningKey::generate_secp256k1();
    let pk = k.public_key();
    let target = Target::of(&pk, b"dmsg");
    h.put(MutableItem::sign(&k, pk, "dmsg", 1, "entry"))
        .unwrap();
    h.put(MutableItem::tombstone(&k, pk, "dmsg", 2)).unwrap();
    let got = h.store.get(&target).unwrap().unwrap();
    assert!(got.item.is_tombstone());
    assert!(got.item.value().is_none());
    assert_eq!(got.item.seq, 2);
    // The old value, replayed by some replica, cannot come back.
    assert_eq!(
        h.put(MutableItem::sign(&k, pk, "dmsg", 1, "entry")),
        Err(ReasonCode::Stale)
    );
    assert!(h.store.get(&target).unwrap().unwrap().item.is_tombstone());
    // "Deleted at seq 2" is distinct from "never existed".
    assert!(h.store.get(&Target::of(&pk, b"never")).unwrap().is_none());
    // The owner may publish again above the tombstone.
    assert!(h.put(MutableItem::sign(&k, pk, "dmsg", 3, "again")).is_ok());
}

fn check_expiry_and_sweep<S: Make>() {
    let policy = Policy {
        ttl: Duration::from_secs(100),
        ..Policy::default()
    };
    let h = S::make(policy, StoreLimits::default());
    let k = SigningKey::generate_ed25519();
    let pk = k.public_key();
    for i in 0..10u64 {
        h.put(MutableItem::sign(&k, pk, format!("s{i}"), 1, "v"))
            .unwrap();
    }
    // Requested expiry is capped at now + ttl, and a past deadline is refused.
    let capped = PutOptions {
        cas: None,
        expires_at_ms: Some(T0 + 1_000_000),
    };
    h.put_opts(MutableItem::sign(&k, pk, "capped", 1, "v"), capped)
        .unwrap();
    assert_eq!(
        h.store
            .get(&Target::of(&pk, b"capped"))
            .unwrap()
            .unwrap()
            .expires_at_ms,
        T0 + 100_000
    );
    let past = PutOptions {
        cas: None,
        expires_at_ms: Some(T0 - 1),
    };
    assert_eq!(
        h.put_opts(MutableItem::sign(&k, pk, "past", 1, "v"), past),
        Err(ReasonCode::Expired)
    );

    assert_eq!(h.store.stats().unwrap().items, 11);
    h.advance(Duration::from_secs(101));
    assert!(h.store.get(&Target::of(&pk, b"s0")).unwrap().is_none());
    assert_eq!(h.store.iter_all().count(), 0);
    assert_eq!(h.store.sweep_expired(4).unwrap(), 4);
    assert_eq!(h.store.sweep_expired(100).unwrap(), 7);
    let stats = h.store.stats().unwrap();
    assert_eq!((stats.items, stats.bytes), (0, 0));
    // An expired item counts as absent: a lower seq may be stored again.
    assert_eq!(
        h.put(MutableItem::sign(&k, pk, "s0", 0, "v")),
        Ok(Admission::Insert)
    );
}

fn check_per_signer_quota<S: Make>() {
    let mirror = SigningKey::generate_secp256k1();
    let policy = Policy::default().authorize("tp", mirror.public_key());
    let h = S::make(
        policy,
        StoreLimits {
            max_items_per_signer: 3,
            ..StoreLimits::default()
        },
    );
    let k = SigningKey::generate_ed25519();
    let pk = k.public_key();
    for i in 0..3 {
        h.put(MutableItem::sign(&k, pk, format!("s{i}"), 1, "v"))
            .unwrap();
    }
    assert_eq!(
        h.put(MutableItem::sign(&k, pk, "s3", 1, "v")),
        Err(ReasonCode::QuotaExceeded)
    );
    // Updating an item already held is not a new item.
    assert!(h.put(MutableItem::sign(&k, pk, "s0", 2, "w")).is_ok());
    // An authorized publisher is not limited.
    for i in 0..10 {
        let subject = SigningKey::generate_ed25519().public_key();
        h.put(MutableItem::sign(&mirror, subject, "tp", 1, format!("{i}")))
            .unwrap();
    }
    assert_eq!(h.store.stats().unwrap().items, 13);
}

fn check_byte_quota_evicts_only_non_authorized<S: Make>() {
    let mirror = SigningKey::generate_secp256k1();
    let policy = Policy::default().authorize("tp", mirror.public_key());
    let h = S::make(
        policy,
        StoreLimits {
            max_items_per_signer: 1000,
            max_total_bytes: 10_000,
        },
    );
    let value = vec![7u8; 1_500];
    let mut authorized = Vec::new();
    for _ in 0..3 {
        let subject = SigningKey::generate_ed25519().public_key();
        h.put(MutableItem::sign(&mirror, subject, "tp", 1, value.clone()))
            .unwrap();
        authorized.push(Target::of(&subject, b"tp"));
    }
    let k = SigningKey::generate_ed25519();
    let pk = k.public_key();
    let mut own = Vec::new();
    for i in 0..3 {
        h.advance(Duration::from_secs(1));
        h.put(MutableItem::sign(&k, pk, format!("o{i}"), 1, value.clone()))
            .unwrap();
        own.push(Target::of(&pk, format!("o{i}").as_bytes()));
    }
    // Full: one more authorized item evicts the soonest-expiring non-authorized item.
    h.advance(Duration::from_secs(1));
    let subject = SigningKey::generate_ed25519().public_key();
    h.put(MutableItem::sign(&mirror, subject, "tp", 1, value.clone()))
        .unwrap();
    authorized.push(Target::of(&subject, b"tp"));
    assert!(
        h.store.get(&own[0]).unwrap().is_none(),
        "oldest own item evicted"
    );
    for t in &authorized {
        assert!(
            h.store.get(t).unwrap().is_some(),
            "authorized items are never evicted"
        );
    }
    assert!(h.store.stats().unwrap().bytes <= 10_000);
    // Fill with authorized items until nothing can be evicted any more.
    let mut rejected = false;
    for _ in 0..10 {
        let subject = SigningKey::generate_ed25519().public_key();
        match h.put(MutableItem::sign(&mirror, subject, "tp", 1, value.clone())) {
            Ok(_) => authorized.push(Target::of(&subject, b"tp")),
            Err(code) => {
                assert_eq!(code, ReasonCode::QuotaExceeded);
                rejected = true;
                break;
            }
        }
    }
    assert!(rejected);
    for t in &authorized {
        assert!(h.store.get(t).unwrap().is_some());
    }
    assert!(own.iter().all(|t| h.store.get(t).unwrap().is_none()));
}

fn check_streaming_iteration<S: Make>() {
    let h = S::make(
        Policy::default(),
        StoreLimits {
            max_items_per_signer: 10_000,
            ..StoreLimits::default()
        },
    );
    let k = SigningKey::generate_ed25519();
    let pk = k.public_key();
    let n = 2 * PAGE_SIZE + 88;
    let items: Vec<_> = (0..n)
        .map(|i| {
            (
                h.v(MutableItem::sign(&k, pk, format!("salt-{i}"), 1, "v")),
                PutOptions::default(),
            )
        })
        .collect();
    let outcomes = h.store.put_batch(items).unwrap();
    assert!(outcomes.iter().all(|o| o.is_ok()));
    let targets: Vec<Target> = h
        .store
        .iter_all()
        .map(|r| r.unwrap().item.target())
        .collect();
    assert_eq!(targets.len(), n);
    assert!(
        targets.windows(2).all(|w| w[0] < w[1]),
        "ascending by target"
    );
    // A sub-range.
    let (from, to) = (targets[100], targets[400]);
    assert_eq!(h.store.iter_range(from, to).count(), 301);
    // Changes stream in order, across pages, and a cursor resumes after itself.
    let changes: Vec<u64> = h
        .store
        .changed_since(0)
        .map(|c| c.unwrap().change_seq)
        .collect();
    assert_eq!(changes.len(), n);
    assert!(changes.windows(2).all(|w| w[0] < w[1]));
    let cursor = changes[300];
    let later: Vec<u64> = h
        .store
        .changed_since(cursor)
        .map(|c| c.unwrap().change_seq)
        .collect();
    assert_eq!(later, changes[301..]);
    // An update moves the item to the end of the change order.
    h.put(MutableItem::sign(&k, pk, "salt-0", 2, "w")).unwrap();
    let last = h
        .store
        .changed_since(*changes.last().unwrap())
        .map(|c| c.unwrap())
        .collect::<Vec<_>>();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].stored.item.seq, 2);
}

fn check_batch_outcomes<S: Make>() {
    let h = default_harness::<S>();
    let k = SigningKey::generate_ed25519();
    let pk = k.public_key();
    let batch = vec![
        (
            h.v(MutableItem::sign(&k, pk, "a", 2, "x")),
            PutOptions::default(),
        ),
        (
            h.v(MutableItem::sign(&k, pk, "a", 1, "old")),
            PutOptions::default(),
        ),
        (
            h.v(MutableItem::sign(&k, pk, "b", 1, "x")),
            PutOptions::default(),
        ),
        (
            h.v(MutableItem::sign(&k, pk, "b", 1, "y")),
            PutOptions::default(),
        ),
    ];
    let r = h.store.put_batch(batch).unwrap();
    assert_eq!(r[0], Ok(Admission::Insert));
    assert_eq!(r[1].as_ref().unwrap_err().code(), ReasonCode::Stale);
    assert_eq!(r[2], Ok(Admission::Insert));
    assert_eq!(r[3].as_ref().unwrap_err().code(), ReasonCode::Equivocation);
    assert_eq!(h.store.stats().unwrap().items, 2);
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $( #[test] fn $check() { super::$check::<MemoryStore>() } )*
        }
        mod redb {
            use super::*;
            $( #[test] fn $check() { super::$check::<RedbStore>() } )*
        }
    };
}

conformance!(
    check_ordering_rules,
    check_refresh_extends_expiry,
    check_compare_and_swap,
    check_tombstone_beats_stale,
    check_expiry_and_sweep,
    check_per_signer_quota,
    check_byte_quota_evicts_only_non_authorized,
    check_streaming_iteration,
    check_batch_outcomes,
);

#[test]
fn redb_items_survive_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let k = SigningKey::generate_secp256k1();
    let pk = k.public_key();
    let validator = Validator::default();
    let stats = {
        let store = RedbStore::open(&path, StoreConfig::default()).unwrap();
        for i in 0..50u64 {
            let item = validator
                .validate(MutableItem::sign(&k, pk, format!("s{i}"), i, "v"))
                .unwrap();
            store.put(item, PutOptions::default()).unwrap();
        }
        store
            .put(
                validator
                    .validate(MutableItem::tombstone(&k, pk, "s0", 99))
                    .unwrap(),
                PutOptions::default(),
            )
            .unwrap();
        store.stats().unwrap()
    };
    let store = RedbStore::open(&path, StoreConfig::default()).unwrap();
    assert_eq!(store.stats().unwrap(), stats);
    assert_eq!(
        store
            .get(&Target::of(&pk, b"s7"))
            .unwrap()
            .unwrap()
            .item
            .seq,
        7
    );
    assert!(store
        .get(&Target::of(&pk, b"s0"))
        .unwrap()
        .unwrap()
        .item
        .is_tombstone());
    assert_eq!(store.iter_all().count(), 50);
    // The change counter continues after a restart.
    let before: Vec<u64> = store
        .changed_since(0)
        .map(|c| c.unwrap().change_seq)
        .collect();
    store
        .put(
            validator
                .validate(MutableItem::sign(&k, pk, "new", 1, "v"))
                .unwrap(),
            PutOptions::default(),
        )
        .unwrap();
    let after = store.changed_since(*before.iter().max().unwrap()).count();
    assert_eq!(after, 1);
}
