//! One conformance suite, run against both record stores.
//!
//! Every check is a generic function over a store factory
//! (`make: impl Fn(StoreConfig) -> S`); the `conformance!` macro instantiates one
//! `#[test]` per check per store (`memory::*` and `redb::*`). Time is a manual clock.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dht_core::store::{
    ChangedItem, MemoryStore, PutOutcome, RecordStore, RedbStore, StoreConfig, StoreLimits,
    StoreStats, PAGE_SIZE,
};
use dht_core::{
    precedence, Admission, Cas, MutableItem, Policy, PutOptions, ReasonCode, Rejection, SigningKey,
    StoreError, StoredItem, Target, Validator, VerifiedItem,
};

/// Start of the manual clock (unix ms).
const T0: u64 = 1_700_000_000_000;
/// TTL of every policy in this suite.
const TTL: Duration = Duration::from_secs(3600);
const TTL_MS: u64 = 3_600_000;

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// A manual clock shared with the store's config.
#[derive(Clone)]
struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
    fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

/// What a check needs besides the store: its clock and the validator the store uses.
struct Env {
    clock: ManualClock,
    validator: Validator,
}

impl Env {
    fn verify(&self, item: MutableItem) -> VerifiedItem {
        self.validator.validate(item).expect("test item is valid")
    }
}

fn setup_with(policy: Policy, limits: StoreLimits) -> (StoreConfig, Env) {
    let clock = ManualClock(Arc::new(AtomicU64::new(T0)));
    let validator = Validator::new(Policy { ttl: TTL, ..policy });
    let c = clock.clone();
    let cfg = StoreConfig {
        validator: validator.clone(),
        limits,
        clock: Arc::new(move || c.now()),
    };
    (cfg, Env { clock, validator })
}

fn setup() -> (StoreConfig, Env) {
    setup_with(Policy::default(), StoreLimits::default())
}

/// Limits that never get in the way of a check about something else.
fn roomy() -> StoreLimits {
    StoreLimits {
        max_items_per_signer: 100_000,
        ..StoreLimits::default()
    }
}

/// The outcome of a put with a rejection reduced to its stable code. A failure of the
/// store itself (not a rejection) fails the test.
fn code(r: Result<PutOutcome, StoreError>) -> Result<PutOutcome, ReasonCode> {
    r.map_err(|e| match e {
        StoreError::Rejected(r) => r.code(),
        other => panic!("store failure instead of a rejection: {other}"),
    })
}

/// The same for a batch outcome.
fn codes(rs: Vec<Result<PutOutcome, Rejection>>) -> Vec<Result<PutOutcome, ReasonCode>> {
    rs.into_iter().map(|r| r.map_err(|e| e.code())).collect()
}

fn opts_cas(cas: Cas) -> PutOptions {
    PutOptions {
        cas: Some(cas),
        expires_at_ms: None,
    }
}

fn opts_expiry(expires_at_ms: u64) -> PutOptions {
    PutOptions {
        cas: None,
        expires_at_ms: Some(expires_at_ms),
    }
}

fn ed25519(seed: u8) -> SigningKey {
    SigningKey::from_bytes(dht_core::Scheme::Ed25519, &[seed; 32]).unwrap()
}

fn get<S: RecordStore>(store: &S, t: &Target) -> Option<StoredItem> {
    store.get(t).expect("get works")
}

fn all<S: RecordStore>(store: &S) -> Vec<StoredItem> {
    store
        .iter_all()
        .map(|r| r.expect("iteration works"))
        .collect()
}

fn changes<S: RecordStore>(store: &S, since: u64) -> Vec<ChangedItem> {
    store
        .changed_since(since)
        .map(|r| r.expect("iteration works"))
        .collect()
}

fn stats<S: RecordStore>(store: &S) -> StoreStats {
    store.stats().expect("stats work")
}

/// A redb store in a temporary directory that lives as long as the store.
struct TempRedb {
    // Declared first: dropped (closed) before the directory is removed.
    store: RedbStore,
    _dir: tempfile::TempDir,
}

impl RecordStore for TempRedb {
    fn get(&self, target: &Target) -> Result<Option<StoredItem>, StoreError> {
        self.store.get(target)
    }
    fn put(&self, item: VerifiedItem, opts: PutOptions) -> Result<PutOutcome, StoreError> {
        self.store.put(item, opts)
    }
    fn put_batch(
        &self,
        items: Vec<(VerifiedItem, PutOptions)>,
    ) -> Result<Vec<Result<PutOutcome, Rejection>>, StoreError> {
        self.store.put_batch(items)
    }
    fn range_page(
        &self,
        from: Target,
        to: Target,
        limit: usize,
    ) -> Result<Vec<StoredItem>, StoreError> {
        self.store.range_page(from, to, limit)
    }
    fn changes_page(&self, since: u64, limit: usize) -> Result<Vec<ChangedItem>, StoreError> {
        self.store.changes_page(since, limit)
    }
    fn sweep_expired(&self, limit: usize) -> Result<usize, StoreError> {
        self.store.sweep_expired(limit)
    }
    fn stats(&self) -> Result<StoreStats, StoreError> {
        self.store.stats()
    }
}

fn memory_store(cfg: StoreConfig) -> MemoryStore {
    MemoryStore::new(cfg)
}

fn redb_store(cfg: StoreConfig) -> TempRedb {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path().join("db.redb"), cfg).unwrap();
    TempRedb { store, _dir: dir }
}

// ---------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------

fn check_insert_get<S: RecordStore>(make: impl Fn(StoreConfig) -> S) {
    let (cfg, env) = setup();
    let store = make(cfg);
    let k = SigningKey::generate_ed25519();
    let item = MutableItem::sign(&k, k.public_key(), "tp", 1, &b"[]"[..]);
    let target = item.target();
    assert_eq!(get(&store, &target), None);
    assert_eq!(stats(&store), StoreStats::default());

    assert_eq!(
        code(store.put(env.verify(item.clone()), PutOptions::default())),
        Ok(Admission::Insert)
    );
    let got = get(&store, &target).expect("stored");
    assert_eq!(got.item, item);
    assert_eq!(got.expires_at_ms, T0 + TTL_MS);
    assert!(!got.by_authorized_publisher);
    let s = stats(&store);
    assert_eq!(s.items, 1);
    assert!(s.bytes >= item.stored_size() as u64, "{s:?}");

    // A secp256k1 item at another target lives alongside; another salt of the same
    // subject is another target that holds nothing.
    let k2 = SigningKey::generate_secp256k1();
    let item2 = MutableItem::sign(&k2, k2.public_key(), "svc", 9, &b"[1]"[..]);
    assert_eq!(
        code(store.put(env.verify(item2.clone()), PutOptions::default())),
        Ok(Admission::Insert)
    );
    assert_eq!(get(&store, &target).unwrap().item, item);
    assert_eq!(get(&store, &item2.target()).unwrap().item, item2);
    assert_eq!(get(&store, &Target::of(&k.public_key(), b"svc")), None);
    assert_eq!(stats(&store).items, 2);
}

fn check_higher_seq_replaces<S: RecordStore>(make: impl Fn(StoreConfig) -> S) {
    let (cfg, env) = setup();
    let store = make(cfg);
    let k = SigningKey::generate_secp256k1();
    let pk = k.public_key();
    let target = Target::of(&pk, b"tp");
    store
        .put(
            env.verify(MutableItem::sign(&k, pk, "tp", 1, &b"small"[..])),
            PutOptions::default(),
        )
        .unwrap();
    let bytes_small = stats(&store).bytes;

    env.clock.advance_ms(10_000);
    let big = MutableItem::sign(&k, pk, "tp", 7, vec![9u8; 1000]);
    assert_eq!(
        code(store.put(env.verify(big.clone()), PutOptions::default())),
        Ok(Admission::Replace { previous_seq: 1 })
    );
    let got = get(&store, &target).unwrap();
    assert_eq!(got.item, big);
    // A replacement gets a fresh lifetime.
    assert_eq!(got.expires_at_ms, T0 + 10_000 + TTL_MS);
    let s = stats(&store);
    assert_eq!(s.items, 1);
    assert_eq!(s.bytes, bytes_small + 1000 - 5);

    assert_eq!(
        code(store.put(
            env.verify(MutableItem::sign(&k, pk, "tp", u64::MAX, &b"last"[..])),
            PutOptions::default()
        )),
        Ok(Admission::Replace { previous_seq: 7 })
    );
    assert_eq!(get(&store, &target).unwrap().item.seq, u64::MAX);
    assert_eq!(stats(&store).items, 1);
}

fn check_same_seq_identical_refresh_keeps_the_deadline<S: RecordStore>(
    make: impl Fn(StoreConfig) -> S,
) {
    let (cfg, env) = setup();
    let store = make(cfg);
    let k = SigningKey::generate_ed25519();
    let item = MutableItem::sign(&k, k.public_key(), "svc", 3, &b"v"[..]);
    let target = item.target();
    store
        .put(env.verify(item.clone()), PutOptions::default())
        .unwrap();
    assert_eq!(get(&store, &target).unwrap().expires_at_ms, T0 + TTL_MS);
    let before = stats(&store);
    let feed_before = changes(&store, 0);
    assert_eq!(feed_before.len(), 1);

    // Anyone re-posting the identical item, with no, the same, a later or an earlier
    // requested deadline, changes nothing: not the deadline, not the change feed.
    env.clock.advance_ms(60_000);
    for opts in [
        PutOptions::default(),
        opts_expiry(T0 + TTL_MS),
        opts_expiry(env.clock.now() + TTL_MS),
        opts_expiry(u64::MAX),
        opts_expiry(env.clock.now() + 5_000),
    ] {
        assert_eq!(
            code(store.put(env.verify(item.clone()), opts)),
            Ok(Admission::Refresh)
        );
        let got = get(&store, &target).unwrap();
        assert_eq!(got.item, item);
        assert_eq!(got.expires_at_ms, T0 + TTL_MS, "a refresh never moves it");
    }
    assert_eq!(stats(&store), before, "a refresh adds nothing");
    assert_eq!(changes(&store, 0), feed_before, "a refresh is not a change");

    // So the item lapses at its first deadline although it was re-posted since.
    env.clock.set(T0 + TTL_MS);
    assert_eq!(get(&store, &target), None);
    assert_eq!(
        code(store.put(env.verify(item.clone()), PutOptions::default())),
        Ok(Admission::Insert),
        "an expired leftover counts as absent"
    );
    assert_eq!(
        get(&store, &target).unwrap().expires_at_ms,
        T0 + TTL_MS + TTL_MS
    );

    // Only the publisher keeps an item alive: a new seq with a later signed expiry.
    let until = T0 + TTL_MS + 90_000;
    let republished = MutableItem::sign_until(&k, k.public_key(), "svc", 4, &b"v"[..], until);
    assert_eq!(
        code(store.put(env.verify(republished.clone()), PutOptions::default())),
        Ok(Admission::Replace { previous_seq: 3 })
    );
    let got = get(&store, &target).unwrap();
    assert_eq!(got.item, republished);
    assert_eq!(
        got.expires_at_ms, until,
        "the signed expiry caps the deadline"
    );
}

fn check_signed_expiry_bounds_the_deadline<S: RecordStore>(make: impl Fn(StoreConfig) -> S) {
    let (cfg, env) = setup();
    let store = make(cfg);
    let k = SigningKey::generate_secp256k1();
    let pk = k.public_key();
    // (salt, signed expiry, requested deadline, stored deadline)
    let cases = [
        ("signed", T0 + 10_000, None, T0 + 10_000),
        (
            "signed-below-requested",
            T0 + 10_000,
            Some(T0 + 20_000),
            T0 + 10_000,
        ),
        (
            "requested-below-signed",
            T0 + 10_000,
            Some(T0 + 5_000),
            T0 + 5_000,
        ),
        ("ttl-below-signed", T0 + 10 * TTL_MS, None, T0 + TTL_MS),
        ("one-ms", T0 + 1, Some(u64::MAX), T0 + 1),
    ];
    for (salt, until, requested, want) in cases {
        let item = MutableItem::sign_until(&k, pk, salt, 1, &b"v"[..], until);
        let opts = PutOptions {
            cas: None,
            expires_at_ms: requested,
        };
        assert_eq!(
            code(store.put(env.verify(item.clone()), opts)),
            Ok(Admission::Insert),
            "{salt}"
        );
        let got = get(&store, &item.target()).unwrap();
        assert_eq!(got.expires_at_ms, want, "{salt}");
        assert!(got.expires_at_ms <= got.item.expires_at_ms);
    }
    let items = stats(&store).items;

    // An item whose signed expiry passed is refused, whatever deadline is requested.
    for until in [1, T0 - 1, T0] {
        let item = MutableItem::sign_until(&k, pk, "late", 1, &b"v"[..], until);
        for requested in [None, Some(T0 + 1_000), Some(u64::MAX)] {
            let opts = PutOptions {
                cas: None,
                expires_at_ms: requested,
            };
            assert_eq!(
                code(store.put(env.verify(item.clone()), opts)),
                Err(ReasonCode::Expired),
                "{until} {requested:?}"
            );
        }
    }
    // ... also in place of a stored item, and as an update of one.
    let stored = MutableItem::sign_until(&k, pk, "signed", 2, &b"w"[..], T0);
    assert_eq!(
        code(store.put(env.verify(stored), PutOptions::default())),
        Err(ReasonCode::Expired)
    );
    assert_eq!(stats(&store).items, items);
    assert_eq!(
        get(&store, &Target::of(&pk, b"signed")).unwrap().item.seq,
        1
    );

    // At its signed expiry an item reads as absent, whatever the TTL.
    env.clock.set(T0 + 10_000);
    assert_eq!(get(&store, &Target::of(&pk, b"signed")), None);
    assert!(get(&store, &Target::of(&pk, b"ttl-below-signed")).is_some());
}

fn check_same_seq_conflict_supersedes_or_is_equivocation<S: RecordStore>(
    make: impl Fn(StoreConfig) -> S,
) {
    let k = SigningKey::generate_secp256k1();
    let pk = k.public_key();
    let a = MutableItem::sign(&k, pk, "tp", 5, &b"a"[..]);
    for other in [
        MutableItem::sign(&k, pk, "tp", 5, &b"b"[..]),
        MutableItem::sign(&k, pk, "tp", 5, &b""[..]),
        MutableItem::tombstone(&k, pk, "tp", 5),
        // Only the signed expiry differs.
        MutableItem::sign_until(&k, pk, "tp", 5, &b"a"[..], a.expires_at_ms + 1),
    ] {
        let other_wins = precedence(&other, &a) == std::cmp::Ordering::Greater;
        assert_eq!(
            other_wins,
            precedence(&a, &other) == std::cmp::Ordering::Less
        );
        if other.is_tombstone() {
            assert!(other_wins, "at equal seq a tombstone beats a value");
        }
        let (winner, loser) = if other_wins {
            (&other, &a)
        } else {
            (&a, &other)
        };
        // Whichever arrives first, the store ends up holding the winner.
        for (first, second) in [(&a, &other), (&other, &a)] {
            let (cfg, env) = setup();
            let store = make(cfg);
            store
                .put(env.verify(first.clone()), PutOptions::default())
                .unwrap();
            let before = stats(&store);
            let first_change = changes(&store, 0)[0].change_seq;
            env.clock.advance_ms(1_000);
            let r = code(store.put(env.verify(second.clone()), PutOptions::default()));
            if second == winner {
                assert_eq!(r, Ok(Admission::Supersede { seq: 5 }));
                // The winner replaced the stored item like a new seq does: indexes,
                // counters, deadline and change feed.
                let got = get(&store, &a.target()).unwrap();
                assert_eq!(got.expires_at_ms, T0 + 1_000 + TTL_MS);
                let feed = changes(&store, first_change);
                assert_eq!(feed.len(), 1);
                assert_eq!(&feed[0].stored.item, winner);
                assert_eq!(changes(&store, 0).len(), 1);
                let size = |i: &MutableItem| i.stored_size() as i64;
                assert_eq!(
                    stats(&store).bytes as i64,
                    before.bytes as i64 - size(loser) + size(winner)
                );
            } else {
                assert_eq!(r, Err(ReasonCode::Equivocation));
                assert_eq!(stats(&store), before);
                assert_eq!(get(&store, &a.target()).unwrap().expires_at_ms, T0 + TTL_MS);
            }
            assert_eq!(&get(&store, &a.target()).unwrap().item, winner);
            assert_eq!(stats(&store).items, 1);
            // The loser stays refused; the winner re-posted is a refresh.
            assert_eq!(
                code(store.put(env.verify(loser.clone()), PutOptions::default())),
                Err(ReasonCode::Equivocation)
            );
            assert_eq!(
                code(store.put(env.verify(winner.clone()), PutOptions::default())),
                Ok(Admission::Refresh)
            );
        }
    }
}

fn check_lower_seq_is_stale<S: RecordStore>(make: impl Fn(StoreConfig) -> S) {
    let (cfg, env) = setup();
    let store = make(cfg);
    let k = SigningKey::generate_ed25519();
    let pk = k.public_key();
    let current = MutableItem::sign(&k, pk, "tp", 5, &b"current"[..]);
    store
        .put(env.verify(current.clone()), PutOptions::default())
        .unwrap();
    for old in [
        MutableItem::sign(&k, pk, "tp", 4, &b"older"[..]),
        MutableItem::sign(&k, pk, "tp", 0, &b"oldest"[..]),
        MutableItem::tombstone(&k, pk, "tp", 4),
    ] {
        assert_eq!(
            code(store.put(env.verify(old), PutOptions::default())),
            Err(ReasonCode::Stale)
        );
    }
    assert_eq!(get(&store, &current.target()).unwrap().item, current);
    assert_eq!(stats(&store).items, 1);
}

fn check_compare_and_swap<S: RecordStore>(make: impl Fn(StoreConfig) -> S) {
    let (cfg, env) = setup();
    let store = make(cfg);
    let k = SigningKey::generate_ed25519();
    let pk = k.public_key();
    let target = Target::of(&pk, b"x");
    let put = |seq: u64, v: &'static str, cas: Cas| {
        code(store.put(
            env.verify(MutableItem::sign(&k, pk, "x", seq, v.as_bytes())),
            opts_cas(cas),
        ))
    };

    // Nothing stored: Seq(_) fails, Absent succeeds.
    assert_eq!(put(1, "a", Cas::Seq(0)), Err(ReasonCode::CasMismatch));
    assert_eq!(get(&store, &target), None);
    assert_eq!(put(1, "a", Cas::Absent), Ok(Admission::Insert));
    // Something stored: Absent fails, a wrong seq fails, the right seq succeeds.
    assert_eq!(put(2, "b", Cas::Absent), Err(ReasonCode::CasMismatch));
    assert_eq!(put(2, "b", Cas::Seq(7)), Err(ReasonCode::CasMismatch));
    assert_eq!(put(2, "b", Cas::Seq(0)), Err(ReasonCode::CasMismatch));
    assert_eq!(get(&store, &target).unwrap().item.seq, 1);
    assert_eq!(
        put(2, "b", Cas::Seq(1)),
        Ok(Admission::Replace { previous_seq: 1 })
    );
    assert_eq!(
        get(&store, &target).unwrap().item.value().unwrap().as_ref(),
        b"b"
    );
    // A matching CAS does not bypass the ordering rule.
    assert_eq!(put(1, "a", Cas::Seq(2)), Err(ReasonCode::Stale));
    // At equal seq with a matching CAS, the precedence rule decides.
    let stored_b = get(&store, &target).unwrap().item;
    let z = MutableItem::sign(&k, pk, "x", 2, &b"z"[..]);
    let want = if precedence(&z, &stored_b) == std::cmp::Ordering::Greater {
        Ok(Admission::Supersede { seq: 2 })
    } else {
        Err(ReasonCode::Equivocation)
    };
    assert_eq!(code(store.put(env.verify(z), opts_cas(Cas::Seq(2)))), want);
    assert_eq!(get(&store, &target).unwrap().item.seq, 2);
    // An expired item counts as absent.
    env.clock.advance_ms(TTL_MS);
    assert_eq!(put(1, "again", Cas::Absent), Ok(Admission::Insert));
    assert_eq!(get(&store, &target).unwrap().item.seq, 1);
}

fn check_tombstone_beats_stale<S: RecordStore>(make: impl Fn(StoreConfig) -> S) {
    let (cfg, env) = setup();
    let store = make(cfg);
    let k = SigningKey::generate_secp256k1();
    let pk = k.public_key();
    let target = Target::of(&pk, b"dmsg");
    let old_value = MutableItem::sign(&k, pk, "dmsg", 1, vec![1u8; 1000]);
    store
        .put(env.verify(old_value.clone()), PutOptions::default())
        .unwrap();
    let bytes_with_value = stats(&store).bytes;

    let tomb = MutableItem::tombstone(&k, pk, "dmsg", 2);
    assert_eq!(
        code(store.put(env.verify(tomb.clone()), PutOptions::default())),
        Ok(Admission::Replace { previous_seq: 1 })
    );
    let got = get(&store, &target).expect("a tombstone is stored, not a hole");
    assert!(got.item.is_tombstone());
    assert_eq!(got.item.value(), None);
    assert_eq!(got.item, tomb);
    // Stored without the value.
    assert_eq!(stats(&store).items, 1);
    assert_eq!(stats(&store).bytes, bytes_with_value - 1000);

    // The old value, replayed by a replica that missed the delete, cannot come back.
    assert_eq!(
        code(store.put(env.verify(old_value), PutOptions::default())),
        Err(ReasonCode::Stale)
    );
    assert_eq!(
        code(store.put(
            env.verify(MutableItem::sign(&k, pk, "dmsg", 2, &b"x"[..])),
            PutOptions::default()
        )),
        Err(ReasonCode::Equivocation)
    );
    assert_eq!(
        code(store.put(env.verify(tomb.clone()), PutOptions::default())),
        Ok(Admission::Refresh)
    );
    assert!(get(&store, &target).unwrap().item.is_tombstone());
    // The tombstone streams like any item, so replicas learn the delete.
    assert_eq!(all(&store).len(), 1);
    assert!(all(&store)[0].item.is_tombstone());
    assert!(changes(&store, 0)[0].stored.item.is_tombstone());

    // Deleted is distinct from never existed.
    assert_eq!(get(&store, &Target::of(&pk, b"never")), None);
    // A tombstone for a target never written is stored too.
    let fresh = MutableItem::tombstone(&k, pk, "svc", 1);
    assert_eq!(
        code(store.put(env.verify(fresh.clone()), PutOptions::default())),
        Ok(Admission::Insert)
    );
    assert!(get(&store, &fresh.target()).unwrap().item.is_tombstone());
    // The owner may publish again above the tombstone.
    assert_eq!(
        code(store.put(
            env.verify(MutableItem::sign(&k, pk, "dmsg", 3, &b"back"[..])),
            PutOptions::default()
        )),
        Ok(Admission::Replace { previous_seq: 2 })
    );
    assert_eq!(
        get(&store, &target).unwrap().item.value().unwrap().as_ref(),
        b"back"
    );
}

fn check_expiry_and_sweep<S: RecordStore>(make: impl Fn(StoreConfig) -> S) {
    let (cfg, env) = setup_with(Policy::default(), roomy());
    let store = make(cfg);
    let k = SigningKey::generate_ed25519();
    let pk = k.public_key();
    let put = |salt: String, seq: u64| {
        code(store.put(
            env.verify(MutableItem::sign(&k, pk, salt, seq, &b"v"[..])),
            PutOptions::default(),
        ))
    };
    for i in 0..5 {
        assert_eq!(put(format!("early{i}"), 5), Ok(Admission::Insert));
    }
    let bytes_early = stats(&store).bytes;
    env.clock.advance_ms(600_000);
    for i in 0..3 {
        assert_eq!(put(format!("late{i}"), 5), Ok(Admission::Insert));
    }
    let bytes_all = stats(&store).bytes;
    let early0 = Target::of(&pk, b"early0");
    let late0 = Target::of(&pk, b"late0");

    // One millisecond before the deadline everything is there.
    env.clock.set(T0 + TTL_MS - 1);
    assert!(get(&store, &early0).is_some());
    assert_eq!(all(&store).len(), 8);

    // At the deadline the early items read as absent everywhere, but stay counted until
    // swept.
    env.clock.set(T0 + TTL_MS);
    assert_eq!(get(&store, &early0), None);
    assert!(get(&store, &late0).is_some());
    assert_eq!(all(&store).len(), 3);
    assert_eq!(changes(&store, 0).len(), 3);
    assert_eq!(stats(&store).items, 8);

    // An expired leftover counts as absent: a lower seq is accepted in its place.
    assert_eq!(put("early0".into(), 1), Ok(Admission::Insert));
    assert_eq!(get(&store, &early0).unwrap().item.seq, 1);
    assert_eq!(stats(&store).items, 8);

    // The sweep removes the 4 remaining expired items, honouring its limit.
    assert_eq!(store.sweep_expired(3).unwrap(), 3);
    assert_eq!(store.sweep_expired(100).unwrap(), 1);
    assert_eq!(store.sweep_expired(100).unwrap(), 0);
    let s = stats(&store);
    assert_eq!(s.items, 4);
    // The 3 late items plus the re-put early0, which has the size of an early item.
    assert_eq!(s.bytes, bytes_all - bytes_early + bytes_early / 5);
    assert!(get(&store, &late0).is_some());
    assert!(get(&store, &early0).is_some());

    // After everything lapsed and was swept the store is empty.
    env.clock.advance_ms(10 * TTL_MS);
    assert_eq!(get(&store, &late0), None);
    assert_eq!(store.sweep_expired(usize::MAX).unwrap(), 4);
    assert_eq!(stats(&store), StoreStats::default());
    assert!(all(&store).is_empty());
}

fn check_put_with_past_expiry_is_expired<S: RecordStore>(make: impl Fn(StoreConfig) -> S) {
    let (cfg, env) = setup();
    let store = make(cfg);
    let k = SigningKey::generate_ed25519();
    let item = MutableItem::sign(&k, k.public_key(), "tp", 1, &b"v"[..]);
    for past in [0, 1, T0 - 1, T0] {
        assert_eq!(
            code(store.put(env.verify(item.clone()), opts_expiry(past))),
            Err(ReasonCode::Expired),
            "expiry {past}"
        );
    }
    assert_eq!(get(&store, &item.target()), None);
    assert_eq!(stats(&store), StoreStats::default());
    // One millisecond in the future is accepted, and lapses one millisecond later.
    assert_eq!(
        code(store.put(env.verify(item.clone()), opts_expiry(T0 + 1))),
        Ok(Admission::Insert)
    );
    assert_eq!(get(&store, &item.target()).unwrap().expires_at_ms, T0 + 1);
    env.clock.advance_ms(1);
    assert_eq!(get(&store, &item.target()), None);
}

fn check_requested_expiry_is_capped_at_ttl<S: RecordStore>(make: impl Fn(StoreConfig) -> S) {
    let (cfg, env) = setup();
    let store = make(cfg);
    let k = SigningKey::generate_ed25519();
    let pk = k.public_key();
    let cases = [
        ("far", T0 + 10 * TTL_MS, T0 + TTL_MS),
        ("max", u64::MAX, T0 + TTL_MS),
        ("cap", T0 + TTL_MS, T0 + TTL_MS),
        ("near", T0 + 5_000, T0 + 5_000),
    ];
    for (salt, requested, want) in cases {
        let item = MutableItem::sign(&k, pk, salt, 1, &b"v"[..]);
        assert_eq!(
            code(store.put(env.verify(item.clone()), opts_expiry(requested))),
            Ok(Admission::Insert)
        );
        assert_eq!(
            get(&store, &item.target()).unwrap().expires_at_ms,
            want,
            "{salt}"
        );
    }
    // The cap follows the clock.
    env.clock.advance_ms(7_000);
    let item = MutableItem::sign(&k, pk, "later", 1, &b"v"[..]);
    store
        .put(env.verify(item.clone()), opts_expiry(u64::MAX))
        .unwrap();
    assert_eq!(
        get(&store, &item.target()).unwrap().expires_at_ms,
        T0 + 7_000 + TTL_MS
    );
}

fn check_per_signer_quota<S: RecordStore>(make: impl Fn(StoreConfig) -> S) {
    let mirror = SigningKey::generate_secp256k1();
    let (cfg, env) = setup_with(
        Policy::default().authorize("tp", mirror.public_key()),
        StoreLimits {
            max_items_per_signer: 3,
            ..StoreLimits::default()
        },
    );
    let store = make(cfg);
    let k = SigningKey::generate_ed25519();
    let pk = k.public_key();
    for i in 0..3 {
        assert_eq!(
            code(store.put(
                env.verify(MutableItem::sign(&k, pk, format!("s{i}"), 1, &b"v"[..])),
                PutOptions::default()
            )),
            Ok(Admission::Insert)
        );
    }
    assert_eq!(
        code(store.put(
            env.verify(MutableItem::sign(&k, pk, "s3", 1, &b"v"[..])),
            PutOptions::default()
        )),
        Err(ReasonCode::QuotaExceeded)
    );
    assert_eq!(get(&store, &Target::of(&pk, b"s3")), None);
    // Updating or deleting an item already held is not a new item.
    assert_eq!(
        code(store.put(
            env.verify(MutableItem::sign(&k, pk, "s0", 2, &b"w"[..])),
            PutOptions::default()
        )),
        Ok(Admission::Replace { previous_seq: 1 })
    );
    assert_eq!(
        code(store.put(
            env.verify(MutableItem::tombstone(&k, pk, "s1", 2)),
            PutOptions::default()
        )),
        Ok(Admission::Replace { previous_seq: 1 })
    );
    // Another self-signed signer has its own quota.
    let k2 = SigningKey::generate_secp256k1();
    for i in 0..3 {
        store
            .put(
                env.verify(MutableItem::sign(
                    &k2,
                    k2.public_key(),
                    format!("s{i}"),
                    1,
                    &b"v"[..],
                )),
                PutOptions::default(),
            )
            .unwrap();
    }
    // The authorized publisher (validated by the same validator) is unaffected, even
    // when it publishes about the subject that is at its quota.
    let on_behalf = env.verify(MutableItem::sign(&mirror, pk, "tp", 1, &b"[]"[..]));
    assert!(on_behalf.by_authorized_publisher());
    assert_eq!(
        code(store.put(on_behalf, PutOptions::default())),
        Ok(Admission::Insert)
    );
    for i in 0..10u8 {
        let subject = ed25519(i).public_key();
        assert_eq!(
            code(store.put(
                env.verify(MutableItem::sign(&mirror, subject, "tp", 1, vec![i])),
                PutOptions::default()
            )),
            Ok(Admission::Insert)
        );
    }
    assert!(
        get(&store, &Target::of(&pk, b"tp"))
            .unwrap()
            .by_authorized_publisher
    );
    assert_eq!(stats(&store).items, 3 + 3 + 1 + 10);
    // The first signer is still capped.
    assert_eq!(
        code(store.put(
            env.verify(MutableItem::sign(&k, pk, "s9", 1, &b"v"[..])),
            PutOptions::default()
        )),
        Err(ReasonCode::QuotaExceeded)
    );
}

fn check_byte_quota_evicts_only_non_authorized<S: RecordStore>(make: impl Fn(StoreConfig) -> S) {
    const LIMIT: u64 = 10_000;
    let mirror = SigningKey::generate_secp256k1();
    let (cfg, env) = setup_with(
        Policy::default().authorize("tp", mirror.public_key()),
        StoreLimits {
            max_items_per_signer: 1000,
            max_total_bytes: LIMIT,
        },
    );
    let store = make(cfg);
    // Every item below is ~1.7 KB: exactly five fit in LIMIT.
    let value = vec![7u8; 1_500];
    let mut subject_seed = 0u8;
    let mut authorized_item = || {
        subject_seed += 1;
        MutableItem::sign(
            &mirror,
            ed25519(subject_seed).public_key(),
            "tp",
            1,
            value.clone(),
        )
    };
    let owner = SigningKey::generate_ed25519();
    let own_item =
        |salt: &'static str| MutableItem::sign(&owner, owner.public_key(), salt, 1, value.clone());
    let put = |item: &MutableItem, opts: PutOptions| {
        env.clock.advance_ms(1_000); // strictly increasing expiries
        let r = code(store.put(env.verify(item.clone()), opts));
        assert!(stats(&store).bytes <= LIMIT, "{:?}", stats(&store));
        r
    };
    let present = |item: &MutableItem| get(&store, &item.target()).is_some();

    // The authorized items expire soonest of all: expiry order alone would evict them.
    let a1 = authorized_item();
    let a2 = authorized_item();
    let (o0, o1, o2) = (own_item("o0"), own_item("o1"), own_item("o2"));
    for item in [&a1, &a2, &o0, &o1, &o2] {
        assert_eq!(put(item, PutOptions::default()), Ok(Admission::Insert));
    }
    assert_eq!(stats(&store).items, 5);

    // Full: an authorized item evicts the soonest-expiring non-authorized item.
    let a3 = authorized_item();
    assert_eq!(put(&a3, PutOptions::default()), Ok(Admission::Insert));
    assert!(!present(&o0), "soonest-expiring own item evicted");
    assert!([&a1, &a2, &a3, &o1, &o2].into_iter().all(present));

    // A non-authorized item evicts the next one (which expires sooner than itself).
    let other = SigningKey::generate_secp256k1();
    let n0 = MutableItem::sign(&other, other.public_key(), "n0", 1, value.clone());
    assert_eq!(put(&n0, PutOptions::default()), Ok(Admission::Insert));
    assert!(!present(&o1));
    assert!([&a1, &a2, &a3, &o2, &n0].into_iter().all(present));

    // ... but may not displace items that outlive it.
    let short = own_item("short");
    let soon = env.clock.now() + 2_000;
    assert_eq!(
        put(&short, opts_expiry(soon)),
        Err(ReasonCode::QuotaExceeded)
    );
    assert!(!present(&short));
    assert!(present(&o2));

    // Authorized items take the remaining room, then nothing is left to evict.
    let a4 = authorized_item();
    assert_eq!(put(&a4, PutOptions::default()), Ok(Admission::Insert));
    assert!(!present(&o2));
    let a5 = authorized_item();
    assert_eq!(put(&a5, PutOptions::default()), Ok(Admission::Insert));
    assert!(!present(&n0));
    let a6 = authorized_item();
    assert_eq!(
        put(&a6, PutOptions::default()),
        Err(ReasonCode::QuotaExceeded)
    );
    assert_eq!(
        put(&own_item("o3"), PutOptions::default()),
        Err(ReasonCode::QuotaExceeded)
    );
    let authorized = [&a1, &a2, &a3, &a4, &a5];
    assert!(authorized.into_iter().all(present), "never evicted");
    assert!(!present(&a6));
    assert_eq!(stats(&store).items, 5);
    assert!(all(&store).iter().all(|s| s.by_authorized_publisher));

    // An item larger than the whole store is refused outright.
    let huge = MutableItem::sign(
        &mirror,
        ed25519(200).public_key(),
        "tp",
        1,
        vec![0u8; LIMIT as usize],
    );
    assert_eq!(
        put(&huge, PutOptions::default()),
        Err(ReasonCode::QuotaExceeded)
    );

    // Expired items make room first, whoever signed them.
    env.clock.set(T0 + TTL_MS + 2_500); // a1 and a2 lapsed
    assert!(!present(&a1) && !present(&a2) && present(&a3));
    assert_eq!(put(&a6, PutOptions::default()), Ok(Admission::Insert));
    assert!(present(&a6));
    assert_eq!(stats(&store).items, 5);
}

fn check_iteration_streams_in_target_order<S: RecordStore>(make: impl Fn(StoreConfig) -> S) {
    const N: usize = 600;
    let (cfg, env) = setup_with(Policy::default(), roomy());
    let store = make(cfg);
    let keys = [
        SigningKey::generate_ed25519(),
        SigningKey::generate_secp256k1(),
    ];
    let items: Vec<MutableItem> = (0..N)
        .map(|i| {
            let k = &keys[i % 2];
            MutableItem::sign(k, k.public_key(), format!("salt-{i}"), i as u64, &b"v"[..])
        })
        .collect();
    for chunk in items.chunks(150) {
        let batch = chunk
            .iter()
            .map(|i| (env.verify(i.clone()), PutOptions::default()))
            .collect();
        let rs = codes(store.put_batch(batch).unwrap());
        assert!(rs.iter().all(|r| *r == Ok(Admission::Insert)));
    }
    const { assert!(N > 2 * PAGE_SIZE) };

    let mut want: Vec<MutableItem> = items.clone();
    want.sort_by_key(|i| i.target());
    let got: Vec<MutableItem> = all(&store).into_iter().map(|s| s.item).collect();
    assert_eq!(got.len(), N);
    assert_eq!(got, want, "every item once, ascending by target");
    let targets: Vec<Target> = want.iter().map(|i| i.target()).collect();

    // A sub-range spanning more than a page, inclusive at both ends.
    let sub: Vec<Target> = store
        .iter_range(targets[100], targets[450])
        .map(|r| r.unwrap().item.target())
        .collect();
    assert_eq!(sub, targets[100..=450]);
    // Bounds that are not item targets.
    let (from, to) = (Target([0x40; 32]), Target([0xbf; 32]));
    let sub: Vec<Target> = store
        .iter_range(from, to)
        .map(|r| r.unwrap().item.target())
        .collect();
    let expected: Vec<Target> = targets
        .iter()
        .copied()
        .filter(|t| *t >= from && *t <= to)
        .collect();
    assert!(expected.len() > PAGE_SIZE);
    assert_eq!(sub, expected);
    // An empty range and an inverted one.
    assert_eq!(
        store.iter_range(to, from).count(),
        0,
        "inverted range is empty"
    );
    let one = store.iter_range(targets[7], targets[7]).collect::<Vec<_>>();
    assert_eq!(one.len(), 1);
    // The trait-object flavour agrees.
    let dynamic: &dyn RecordStore = &store;
    assert_eq!(dht_core::store::iter_all(dynamic).count(), N);
}

fn check_iteration_at_exact_page_multiple<S: RecordStore>(make: impl Fn(StoreConfig) -> S) {
    let n = 2 * PAGE_SIZE;
    let (cfg, env) = setup_with(Policy::default(), roomy());
    let store = make(cfg);
    let k = SigningKey::generate_ed25519();
    let batch = (0..n)
        .map(|i| {
            (
                env.verify(MutableItem::sign(
                    &k,
                    k.public_key(),
                    format!("{i}"),
                    1,
                    &b"v"[..],
                )),
                PutOptions::default(),
            )
        })
        .collect();
    assert!(store.put_batch(batch).unwrap().iter().all(|r| r.is_ok()));
    let targets: BTreeSet<Target> = all(&store).iter().map(|s| s.item.target()).collect();
    assert_eq!(targets.len(), n);
    let ch = changes(&store, 0);
    assert_eq!(ch.len(), n);
    assert!(ch.windows(2).all(|w| w[0].change_seq < w[1].change_seq));
}

fn check_changed_since_streams_changes_in_order<S: RecordStore>(make: impl Fn(StoreConfig) -> S) {
    const N: usize = 600;
    let (cfg, env) = setup_with(Policy::default(), roomy());
    let store = make(cfg);
    let k = SigningKey::generate_ed25519();
    let pk = k.public_key();
    let salts: Vec<String> = (0..N).map(|i| format!("c{i}")).collect();
    // Put one by one in small batches so the change order is the put order.
    for chunk in salts.chunks(50) {
        let batch = chunk
            .iter()
            .map(|s| {
                (
                    env.verify(MutableItem::sign(&k, pk, s.clone(), 1, &b"v"[..])),
                    PutOptions::default(),
                )
            })
            .collect();
        assert!(store.put_batch(batch).unwrap().iter().all(|r| r.is_ok()));
    }
    let ch = changes(&store, 0);
    assert_eq!(ch.len(), N);
    assert!(ch.windows(2).all(|w| w[0].change_seq < w[1].change_seq));
    let order: Vec<Target> = ch.iter().map(|c| c.stored.item.target()).collect();
    let want: Vec<Target> = salts
        .iter()
        .map(|s| Target::of(&pk, s.as_bytes()))
        .collect();
    assert_eq!(order, want, "oldest change first");

    // A cursor taken mid-way only yields later changes.
    let cursor = ch[299].change_seq;
    let later = changes(&store, cursor);
    assert_eq!(later, ch[300..]);
    // Resuming an iterator that was stopped mid-way gives the same result.
    let mut it = store.changed_since(0);
    let first: Vec<ChangedItem> = it
        .by_ref()
        .take(PAGE_SIZE + 10)
        .map(|r| r.unwrap())
        .collect();
    let resumed = changes(&store, first.last().unwrap().change_seq);
    assert_eq!(first.len() + resumed.len(), N);
    assert_eq!(resumed, ch[PAGE_SIZE + 10..]);

    // Updates move items to the end of the change order; each item is listed once.
    let last = ch.last().unwrap().change_seq;
    assert!(changes(&store, last).is_empty());
    let updated = [5usize, 450, 0, 599, 300];
    for &i in &updated {
        store
            .put(
                env.verify(MutableItem::sign(&k, pk, salts[i].clone(), 2, &b"w"[..])),
                PutOptions::default(),
            )
            .unwrap();
    }
    let tail = changes(&store, last);
    let tail_targets: Vec<Target> = tail.iter().map(|c| c.stored.item.target()).collect();
    let want: Vec<Target> = updated.iter().map(|&i| want[i]).collect();
    assert_eq!(tail_targets, want);
    assert!(tail.iter().all(|c| c.stored.item.seq == 2));
    let everything = changes(&store, 0);
    assert_eq!(everything.len(), N);
    assert_eq!(everything[N - updated.len()..], tail[..]);
    // The trait-object flavour agrees.
    let dynamic: &dyn RecordStore = &store;
    let via_dyn: Vec<ChangedItem> = dht_core::store::changed_since(dynamic, cursor)
        .map(|r| r.unwrap())
        .collect();
    // 300 after the cursor, minus the 3 of them updated, plus the 5 updates.
    assert_eq!(via_dyn.len(), 302);
    assert_eq!(via_dyn, changes(&store, cursor));
}

fn check_streams_skip_expired_items<S: RecordStore>(make: impl Fn(StoreConfig) -> S) {
    let (cfg, env) = setup_with(Policy::default(), roomy());
    let store = make(cfg);
    let k = SigningKey::generate_ed25519();
    let pk = k.public_key();
    let batch = |prefix: &str, opts: PutOptions| {
        (0..300)
            .map(|i| {
                (
                    env.verify(MutableItem::sign(
                        &k,
                        pk,
                        format!("{prefix}{i}"),
                        1,
                        &b"v"[..],
                    )),
                    opts,
                )
            })
            .collect::<Vec<_>>()
    };
    // More than a page of short-lived items, changed before the long-lived ones.
    let short = store
        .put_batch(batch("s", opts_expiry(T0 + 1_000)))
        .unwrap();
    assert!(short.iter().all(|r| r.is_ok()));
    let long = store.put_batch(batch("l", PutOptions::default())).unwrap();
    assert!(long.iter().all(|r| r.is_ok()));
    assert_eq!(all(&store).len(), 600);
    env.clock.advance_ms(1_000);
    let live = all(&store);
    assert_eq!(live.len(), 300);
    assert!(live
        .iter()
        .all(|s| s.item.salt.starts_with(b"l") && s.expires_at_ms > env.clock.now()));
    let ch = changes(&store, 0);
    assert_eq!(ch.len(), 300);
    assert!(ch.iter().all(|c| c.stored.item.salt.starts_with(b"l")));
}

fn check_put_batch_mixed_outcomes<S: RecordStore>(make: impl Fn(StoreConfig) -> S) {
    let (cfg, env) = setup_with(
        Policy::default(),
        StoreLimits {
            max_items_per_signer: 4,
            ..StoreLimits::default()
        },
    );
    let store = make(cfg);
    let k = SigningKey::generate_ed25519();
    let pk = k.public_key();
    let v = |salt: &'static str, seq: u64, val: &'static str| {
        env.verify(MutableItem::sign(&k, pk, salt, seq, val.as_bytes()))
    };
    let d = PutOptions::default();
    assert!(store.put_batch(Vec::new()).unwrap().is_empty());
    let (bx, by) = (v("b", 1, "x"), v("b", 1, "y"));
    // The second "b" either supersedes the first (and the first, re-posted, is then an
    // equivocation) or is an equivocation (and the first, re-posted, a refresh).
    let y_wins = precedence(by.item(), bx.item()) == std::cmp::Ordering::Greater;
    let (b_second, b_third, b_value) = if y_wins {
        (
            Ok(Admission::Supersede { seq: 1 }),
            Err(ReasonCode::Equivocation),
            b"y",
        )
    } else {
        (Err(ReasonCode::Equivocation), Ok(Admission::Refresh), b"x")
    };
    let batch = vec![
        (v("a", 2, "x"), d),
        (v("a", 1, "old"), d),
        (bx.clone(), d),
        (by, d),
        (bx, d),
        (v("c", 1, "x"), opts_cas(Cas::Seq(3))),
        (v("d", 1, "x"), opts_expiry(T0 - 1)),
        (v("a", 3, "z"), d),
        (env.verify(MutableItem::tombstone(&k, pk, "e", 1)), d),
        (v("f", 1, "x"), opts_cas(Cas::Absent)),
        (v("g", 1, "x"), d),
    ];
    let rs = codes(store.put_batch(batch).unwrap());
    assert_eq!(
        rs,
        vec![
            Ok(Admission::Insert),
            Err(ReasonCode::Stale),
            Ok(Admission::Insert),
            b_second,
            b_third,
            Err(ReasonCode::CasMismatch),
            Err(ReasonCode::Expired),
            Ok(Admission::Replace { previous_seq: 2 }),
            Ok(Admission::Insert),
            Ok(Admission::Insert),
            Err(ReasonCode::QuotaExceeded),
        ]
    );
    // The accepted items are stored, the rejected ones are not.
    assert_eq!(stats(&store).items, 4);
    let at = |salt: &str| get(&store, &Target::of(&pk, salt.as_bytes()));
    assert_eq!(at("a").unwrap().item.seq, 3);
    assert_eq!(at("b").unwrap().item.value().unwrap().as_ref(), b_value);
    assert!(at("c").is_none() && at("d").is_none() && at("g").is_none());
    assert!(at("e").unwrap().item.is_tombstone());
    assert!(at("f").is_some());
}

fn check_concurrent_puts<S: RecordStore>(make: impl Fn(StoreConfig) -> S) {
    let (cfg, env) = setup_with(Policy::default(), roomy());
    let store = make(cfg);
    let k = SigningKey::generate_secp256k1();
    let pk = k.public_key();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (store, env, k) = (&store, &env, &k);
            s.spawn(move || {
                for i in 0..25u64 {
                    let own = MutableItem::sign(k, pk, format!("t{t}-{i}"), i, &b"v"[..]);
                    assert_eq!(
                        code(store.put(env.verify(own), PutOptions::default())),
                        Ok(Admission::Insert)
                    );
                    // Everyone races on one shared target.
                    let seq = i * 4 + t;
                    let shared =
                        MutableItem::sign(k, pk, "shared", seq, seq.to_be_bytes().to_vec());
                    match code(store.put(env.verify(shared), PutOptions::default())) {
                        Ok(_) | Err(ReasonCode::Stale) => {}
                        other => panic!("unexpected outcome {other:?}"),
                    }
                }
            });
        }
    });
    assert_eq!(stats(&store).items, 101);
    assert_eq!(all(&store).len(), 101);
    for t in 0..4u64 {
        for i in 0..25u64 {
            let got = get(&store, &Target::of(&pk, format!("t{t}-{i}").as_bytes()));
            assert_eq!(got.map(|s| s.item.seq), Some(i));
        }
    }
    let shared = get(&store, &Target::of(&pk, b"shared")).unwrap();
    assert_eq!(shared.item.seq, 24 * 4 + 3);
}

// ---------------------------------------------------------------------------------------
// Instantiation
// ---------------------------------------------------------------------------------------

macro_rules! conformance {
    ($($check:ident),+ $(,)?) => {
        mod memory {
            $( #[test] fn $check() { super::$check(super::memory_store) } )+
        }
        mod redb {
            $( #[test] fn $check() { super::$check(super::redb_store) } )+
        }
    };
}

conformance!(
    check_insert_get,
    check_higher_seq_replaces,
    check_same_seq_identical_refresh_keeps_the_deadline,
    check_signed_expiry_bounds_the_deadline,
    check_same_seq_conflict_supersedes_or_is_equivocation,
    check_lower_seq_is_stale,
    check_compare_and_swap,
    check_tombstone_beats_stale,
    check_expiry_and_sweep,
    check_put_with_past_expiry_is_expired,
    check_requested_expiry_is_capped_at_ttl,
    check_per_signer_quota,
    check_byte_quota_evicts_only_non_authorized,
    check_iteration_streams_in_target_order,
    check_iteration_at_exact_page_multiple,
    check_changed_since_streams_changes_in_order,
    check_streams_skip_expired_items,
    check_put_batch_mixed_outcomes,
    check_concurrent_puts,
);

// ---------------------------------------------------------------------------------------
// redb only: durability across close and reopen
// ---------------------------------------------------------------------------------------

#[test]
fn redb_items_survive_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let mirror = SigningKey::generate_secp256k1();
    let limits = StoreLimits {
        max_items_per_signer: 40,
        ..StoreLimits::default()
    };
    let (cfg, env) = setup_with(
        Policy::default().authorize("tp", mirror.public_key()),
        limits,
    );
    let k = SigningKey::generate_secp256k1();
    let pk = k.public_key();

    let store = RedbStore::open(&path, cfg.clone()).unwrap();
    let own: Vec<MutableItem> = (0..40u64)
        .map(|i| MutableItem::sign(&k, pk, format!("s{i}"), i, vec![i as u8; 100]))
        .collect();
    let mut batch = Vec::new();
    for item in &own {
        batch.push((env.verify(item.clone()), PutOptions::default()));
    }
    for i in 0..10u8 {
        batch.push((
            env.verify(MutableItem::sign(
                &mirror,
                ed25519(i).public_key(),
                "tp",
                7,
                vec![i; 10],
            )),
            opts_expiry(T0 + 1_000 * (u64::from(i) + 1)),
        ));
    }
    assert!(store.put_batch(batch).unwrap().iter().all(|r| r.is_ok()));
    env.clock.advance_ms(500);
    store
        .put(
            env.verify(MutableItem::tombstone(&k, pk, "s0", 99)),
            PutOptions::default(),
        )
        .unwrap();
    assert_eq!(
        code(store.put(env.verify(own[5].clone()), PutOptions::default())),
        Ok(Admission::Refresh)
    );

    let stats_before = stats(&store);
    let items_before = all(&store);
    let changes_before = changes(&store, 0);
    assert_eq!(stats_before.items, 50);
    assert_eq!(items_before.len(), 50);
    drop(store);

    let store = RedbStore::open(&path, cfg.clone()).unwrap();
    assert_eq!(stats(&store), stats_before, "stats identical");
    assert_eq!(
        all(&store),
        items_before,
        "every item, with its bookkeeping"
    );
    assert_eq!(changes(&store, 0), changes_before, "change log identical");
    for s in &items_before {
        assert_eq!(get(&store, &s.item.target()).as_ref(), Some(s));
    }
    assert!(get(&store, &Target::of(&pk, b"s0"))
        .unwrap()
        .item
        .is_tombstone());
    assert_eq!(
        get(&store, &Target::of(&pk, b"s5")).unwrap().expires_at_ms,
        T0 + TTL_MS,
        "the refresh did not move the deadline"
    );
    // The per-signer count survived: the signer is still at its quota.
    assert_eq!(
        code(store.put(
            env.verify(MutableItem::sign(&k, pk, "new", 1, &b"v"[..])),
            PutOptions::default()
        )),
        Err(ReasonCode::QuotaExceeded)
    );
    // The ordering rule still applies to what was stored before the restart.
    assert_eq!(
        code(store.put(
            env.verify(MutableItem::sign(&k, pk, "s0", 0, vec![0u8; 100])),
            PutOptions::default()
        )),
        Err(ReasonCode::Stale)
    );
    // The expiry index survived: the mirror items lapse and are swept on schedule.
    env.clock.set(T0 + 5_000);
    assert_eq!(store.sweep_expired(100).unwrap(), 5);
    assert_eq!(stats(&store).items, 45);
    // The change counter continues after the restart.
    let max_before = changes_before.iter().map(|c| c.change_seq).max().unwrap();
    let mirror_item = MutableItem::sign(&mirror, ed25519(99).public_key(), "tp", 1, &b"[]"[..]);
    store
        .put(env.verify(mirror_item.clone()), PutOptions::default())
        .unwrap();
    let new = changes(&store, max_before);
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].stored.item, mirror_item);

    // After close, puts fail with Closed rather than being lost silently.
    let after_close = env.verify(MutableItem::sign(
        &mirror,
        ed25519(98).public_key(),
        "tp",
        1,
        &b"[]"[..],
    ));
    store.close();
    assert!(matches!(
        store.put(after_close, PutOptions::default()),
        Err(StoreError::Closed)
    ));
    let final_stats = stats(&store);
    drop(store);
    let store = RedbStore::open(&path, cfg).unwrap();
    assert_eq!(stats(&store), final_stats);
    assert_eq!(
        get(&store, &mirror_item.target()).unwrap().item,
        mirror_item
    );
}
