//! Property tests: the encodings round-trip, hostile input never panics a decoder, any
//! single-byte tampering of a signed item fails validation, the ordering rule keeps the
//! highest seq, and stores converge on the [`precedence`] maximum in any order.

use std::cmp::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use dht_core::store::{MemoryStore, RecordStore, RedbStore, StoreConfig};
use dht_core::wire::{
    decode_envelope, decode_item, encode_envelope, encode_item, DecodeLimits, ItemProto,
};
use dht_core::{
    json, precedence, Admission, DecodeError, ItemBody, MutableItem, Policy, PublicKey, ReasonCode,
    Scheme, Signature, SigningKey, Validator,
};
use proptest::prelude::*;

fn keys() -> impl Strategy<Value = SigningKey> {
    prop_oneof![
        any::<[u8; 32]>().prop_map(|b| SigningKey::from_bytes(Scheme::Ed25519, &b).unwrap()),
        any::<[u8; 32]>().prop_filter_map("valid secp256k1 secret", |b| {
            SigningKey::from_bytes(Scheme::Secp256k1, &b).ok()
        }),
    ]
}

fn salts() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..=64)
}

fn bodies() -> impl Strategy<Value = ItemBody> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..4096)
            .prop_map(|v| ItemBody::Value(Bytes::from(v))),
        1 => Just(ItemBody::Tombstone),
    ]
}

/// Signed expiries: any (non-zero) unix ms.
fn expiries() -> impl Strategy<Value = u64> {
    prop_oneof![1u64..=u64::from(u32::MAX), 1u64..]
}

/// Self-signed items of both schemes.
fn self_signed() -> impl Strategy<Value = MutableItem> {
    (keys(), salts(), any::<u64>(), expiries(), bodies()).prop_map(|(k, salt, seq, until, body)| {
        MutableItem::sign_body_until(&k, k.public_key(), Bytes::from(salt), seq, body, until)
    })
}

/// Any item the encodings must carry: self-signed, or signed by another key (of either
/// scheme) for the subject, as authorized publishers do.
fn items() -> impl Strategy<Value = MutableItem> {
    (
        keys(),
        proptest::option::of(keys()),
        salts(),
        any::<u64>(),
        expiries(),
        bodies(),
    )
        .prop_map(|(k, subject, salt, seq, until, body)| {
            let subject = subject.map_or(k.public_key(), |s| s.public_key());
            MutableItem::sign_body_until(&k, subject, Bytes::from(salt), seq, body, until)
        })
}

fn code(r: Result<dht_core::VerifiedItem, dht_core::Rejection>) -> Option<ReasonCode> {
    r.err().map(|e| e.code())
}

/// Replaces one byte of `bytes` at `pos` by a different byte.
fn mutate_byte(bytes: &[u8], pos: usize, delta: u8) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let i = pos % b.len();
    b[i] ^= delta.max(1);
    b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn wire_round_trip(item in items(), exp in proptest::option::of(1u64..)) {
        let limits = DecodeLimits::default();
        let bytes = encode_item(&item);
        prop_assert_eq!(decode_item(&bytes, &limits).unwrap(), item.clone());
        let env = decode_envelope(&encode_envelope(&item, exp), &limits).unwrap();
        // The replica deadline never exceeds the signed expiry.
        prop_assert_eq!(env.expires_at_ms, exp.map(|e| e.min(item.expires_at_ms)));
        prop_assert_eq!(&env.item, &item);
        prop_assert_eq!(env.item.expires_at_ms, item.expires_at_ms);
        // The decoded item still verifies (with the signer authorized when it is not
        // the subject).
        let policy = Policy::default().authorize(item.salt.clone(), item.signer);
        prop_assert!(Validator::new(policy).validate(env.item).is_ok());
    }

    #[test]
    fn an_item_without_a_signed_expiry_never_decodes(item in items()) {
        use prost::Message as _;
        let limits = DecodeLimits::default();
        let mut p = ItemProto::from(&item);
        p.expires_at_ms = 0;
        prop_assert_eq!(
            decode_item(&p.encode_to_vec(), &limits),
            Err(DecodeError::MissingExpiry)
        );
        let mut j: serde_json::Value = serde_json::from_str(&json::to_json(&item)).unwrap();
        j.as_object_mut().unwrap().remove("expires_at_ms");
        prop_assert!(json::from_json(&j.to_string()).is_err());
        j["expires_at_ms"] = 0.into();
        prop_assert_eq!(json::from_json(&j.to_string()), Err(DecodeError::MissingExpiry));
    }

    #[test]
    fn json_round_trip(item in items()) {
        let text = json::to_json(&item);
        prop_assert_eq!(json::from_json(&text).unwrap(), item.clone());
        let field = format!("\"expires_at_ms\":{}", item.expires_at_ms);
        prop_assert!(text.contains(&field));
        // The JSON carries the target, which is checked on the way in.
        prop_assert!(text.contains(&item.target().to_string()));
    }

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        for limits in [DecodeLimits::default(), DecodeLimits { max_value_len: 100 }] {
            let _ = decode_item(&bytes, &limits);
            let _ = decode_envelope(&bytes, &limits);
        }
        let _ = json::from_json(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_strings_never_panic_the_json_parser(text in any::<String>()) {
        prop_assert!(json::from_json(&text).is_err());
    }

    #[test]
    fn mutated_encodings_never_panic_and_never_validate_as_something_else(
        item in self_signed(),
        pos in any::<usize>(),
        delta in 1u8..,
        cut in any::<usize>(),
    ) {
        let limits = DecodeLimits::default();
        let v = Validator::default();
        let mut bytes = encode_item(&item);
        let i = pos % bytes.len();
        bytes[i] ^= delta;
        // Whatever decodes either fails validation or is the original item (a flip
        // in a byte the decoder ignores cannot change what was signed).
        if let Ok(decoded) = decode_item(&bytes, &limits) {
            if let Ok(ok) = v.validate(decoded) {
                prop_assert!(ok.item().same_content(&item));
            }
        }
        let env = encode_envelope(&item, Some(5));
        let _ = decode_envelope(&env[..cut % (env.len() + 1)], &limits);
        // Mutated JSON text.
        let text = json::to_json(&item);
        let mut chars: Vec<char> = text.chars().collect();
        let j = pos % chars.len();
        chars[j] = char::from(b' ' + delta % 95);
        let mutated: String = chars.into_iter().collect();
        if let Ok(parsed) = json::from_json(&mutated) {
            if let Ok(ok) = v.validate(parsed) {
                prop_assert!(ok.item().same_content(&item));
            }
        }
        let _ = json::from_json(&text[..text.len() * (cut % 8) / 8]);
    }

    #[test]
    fn malformed_kinds_are_refused(
        item in self_signed(),
        extra in proptest::collection::vec(any::<u8>(), 1..64),
        kind in 2u32..,
    ) {
        use prost::Message as _;
        let limits = DecodeLimits::default();
        let tomb = MutableItem { body: ItemBody::Tombstone, ..item.clone() };
        // On the wire: a tombstone that carries a value, an unknown kind.
        let mut p = ItemProto::from(&tomb);
        p.value = Bytes::from(extra);
        prop_assert!(decode_item(&p.encode_to_vec(), &limits).is_err());
        let mut p = ItemProto::from(&item);
        p.kind = kind;
        prop_assert!(decode_item(&p.encode_to_vec(), &limits).is_err());
        // In JSON: a tombstone with a value, a value item without one, an unknown kind.
        let mut j: serde_json::Value = serde_json::from_str(&json::to_json(&tomb)).unwrap();
        j["value"] = "AAE=".into();
        prop_assert!(json::from_json(&j.to_string()).is_err());
        let value_item = MutableItem {
            body: ItemBody::Value(Bytes::from_static(b"v")),
            ..item
        };
        let mut j: serde_json::Value = serde_json::from_str(&json::to_json(&value_item)).unwrap();
        j.as_object_mut().unwrap().remove("value");
        prop_assert!(json::from_json(&j.to_string()).is_err());
        j["value"] = "dg==".into();
        prop_assert_eq!(json::from_json(&j.to_string()).unwrap(), value_item);
        j["kind"] = "deleted".into();
        prop_assert!(json::from_json(&j.to_string()).is_err());
    }

    #[test]
    fn signed_items_validate(item in self_signed()) {
        let ok = Validator::default().validate(item.clone()).unwrap();
        prop_assert!(!ok.by_authorized_publisher());
        prop_assert_eq!(ok.target(), item.target());
    }

    #[test]
    fn mutating_value_salt_seq_or_expiry_breaks_the_signature(
        item in self_signed(),
        which in 0usize..4,
        pos in any::<usize>(),
        delta in 1u8..,
    ) {
        let v = Validator::default();
        let mut t = item.clone();
        match which {
            0 => {
                let value = t.body.value_bytes();
                t.body = ItemBody::Value(Bytes::from(if value.is_empty() {
                    vec![delta]
                } else {
                    mutate_byte(value, pos, delta)
                }));
            }
            1 => {
                t.salt = Bytes::from(if t.salt.is_empty() {
                    vec![delta]
                } else {
                    mutate_byte(&t.salt, pos, delta)
                });
            }
            2 => {
                let shift = 8 * (pos % 8);
                t.seq ^= u64::from(delta) << shift;
            }
            _ => {
                let shift = 8 * (pos % 8);
                t.expires_at_ms ^= u64::from(delta) << shift;
            }
        }
        prop_assert_ne!(&t, &item);
        prop_assert_eq!(code(v.validate(t)), Some(ReasonCode::BadSignature));
    }

    #[test]
    fn mutating_the_signature_breaks_it(item in self_signed(), pos in any::<usize>(), delta in 1u8..) {
        let mut t = item.clone();
        t.signature = Signature::from_bytes(&mutate_byte(item.signature.as_bytes(), pos, delta)).unwrap();
        prop_assert_eq!(code(Validator::default().validate(t)), Some(ReasonCode::BadSignature));
    }

    #[test]
    fn an_empty_value_and_a_tombstone_are_not_interchangeable(k in keys(), seq in any::<u64>()) {
        let v = Validator::default();
        let empty = MutableItem::sign(&k, k.public_key(), "tp", seq, Bytes::new());
        let tomb = MutableItem::tombstone(&k, k.public_key(), "tp", seq);
        let as_tomb = MutableItem { body: ItemBody::Tombstone, ..empty };
        let as_empty = MutableItem { body: ItemBody::Value(Bytes::new()), ..tomb };
        prop_assert_eq!(code(v.validate(as_tomb)), Some(ReasonCode::BadSignature));
        prop_assert_eq!(code(v.validate(as_empty)), Some(ReasonCode::BadSignature));
    }

    #[test]
    fn mutating_the_subject_is_refused(
        item in self_signed(),
        mirror in keys(),
        pos in any::<usize>(),
        delta in 1u8..,
    ) {
        // One byte of the subject key changes; a secp256k1 key keeps its 0x02/0x03
        // prefix form (byte 0 toggles between the two).
        let bytes = item.subject.as_bytes();
        let mut m = bytes.to_vec();
        match item.subject.scheme() {
            Scheme::Ed25519 => m = mutate_byte(bytes, pos, delta),
            Scheme::Secp256k1 => {
                let i = pos % m.len();
                if i == 0 { m[0] ^= 1 } else { m[i] ^= delta }
            }
        }
        let subject = PublicKey::from_bytes(&m).unwrap();
        prop_assert_ne!(subject, item.subject);

        // A self-signed item moved to another subject: its signer is now a stranger.
        let moved = MutableItem { subject, ..item.clone() };
        prop_assert_eq!(code(Validator::default().validate(moved)), Some(ReasonCode::Unauthorized));

        // An authorized publisher's item moved to another subject: the publisher may
        // write there, but its signature does not cover that subject.
        let policy = Policy::default().authorize(item.salt.clone(), mirror.public_key());
        let v = Validator::new(policy);
        let honest = MutableItem::sign_body_until(
            &mirror,
            item.subject,
            item.salt.clone(),
            item.seq,
            item.body.clone(),
            item.expires_at_ms,
        );
        prop_assert!(v.validate(honest.clone()).is_ok());
        let replay = MutableItem { subject, ..honest };
        prop_assert_eq!(code(v.validate(replay)), Some(ReasonCode::BadSignature));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_store_keeps_the_highest_seq(
        k in keys(),
        a in prop_oneof![0u64..4, any::<u64>()],
        b in prop_oneof![0u64..4, any::<u64>()],
        va in bodies(),
        vb_same in any::<bool>(),
        vb in bodies(),
        ea in 0u64..3,
        eb in 0u64..3,
    ) {
        let pk = k.public_key();
        let v = Validator::default();
        let store = MemoryStore::default();
        let vb = if vb_same { va.clone() } else { vb };
        // Signed expiries from a small set, so that identical payloads occur.
        let until = |e: u64| dht_core::now_ms() + 3_600_000 + e;
        let first = MutableItem::sign_body_until(&k, pk, Bytes::from_static(b"tp"), a, va, until(ea));
        let second = MutableItem::sign_body_until(&k, pk, Bytes::from_static(b"tp"), b, vb, until(eb));
        prop_assert_eq!(
            store.put(v.validate(first.clone()).unwrap(), Default::default()).unwrap(),
            Admission::Insert
        );
        let r = store
            .put(v.validate(second.clone()).unwrap(), Default::default())
            .map_err(|e| e.rejection().expect("a rejection").code());
        let winner = match b.cmp(&a) {
            Ordering::Greater => {
                prop_assert_eq!(r, Ok(Admission::Replace { previous_seq: a }));
                &second
            }
            Ordering::Less => {
                prop_assert_eq!(r, Err(ReasonCode::Stale));
                &first
            }
            Ordering::Equal if first.same_signed_bytes(&second) => {
                prop_assert_eq!(r, Ok(Admission::Refresh));
                &first
            }
            Ordering::Equal if precedence(&second, &first) == Ordering::Greater => {
                prop_assert_eq!(r, Ok(Admission::Supersede { seq: a }));
                &second
            }
            Ordering::Equal => {
                prop_assert_eq!(r, Err(ReasonCode::Equivocation));
                &first
            }
        };
        let stored = store.get(&first.target()).unwrap().unwrap();
        prop_assert_eq!(stored.item.seq, a.max(b));
        prop_assert_eq!(&stored.item, winner);
        prop_assert_eq!(store.stats().unwrap().items, 1);
    }
}

/// Start of the manual clock of the convergence test (unix ms).
const T0: u64 = 1_700_000_000_000;

/// A set of valid items of one target: seqs 0..3, values from a small set or
/// tombstones, signed expiries from a small set, signed by the subject or by an
/// authorized publisher. Equal-seq conflicts (different values, a value and a
/// tombstone, only the expiry differing, the same payload signed by both keys) are
/// frequent.
fn conflicting_items(
    owner: SigningKey,
    mirror: SigningKey,
) -> impl Strategy<Value = Vec<MutableItem>> {
    let one =
        (0u64..3, 0u8..4, 1u64..4, any::<bool>()).prop_map(move |(seq, body, e, by_mirror)| {
            let body = match body {
                0 => ItemBody::Tombstone,
                b => ItemBody::Value(Bytes::from(vec![b])),
            };
            let signer = if by_mirror { &mirror } else { &owner };
            MutableItem::sign_body_until(
                signer,
                owner.public_key(),
                Bytes::from_static(b"tp"),
                seq,
                body,
                T0 + e * 1_000,
            )
        });
    proptest::collection::vec(one, 1..10)
}

fn convergence_config(validator: &Validator) -> StoreConfig {
    StoreConfig {
        validator: validator.clone(),
        clock: Arc::new(|| T0),
        ..StoreConfig::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn stores_converge_on_the_precedence_maximum_in_any_order(
        (items, order_a, order_b) in conflicting_items(
            SigningKey::from_bytes(Scheme::Ed25519, &[7; 32]).unwrap(),
            SigningKey::from_bytes(Scheme::Secp256k1, &[9; 32]).unwrap(),
        )
        .prop_flat_map(|items| {
            let idx: Vec<usize> = (0..items.len()).collect();
            (Just(items), Just(idx.clone()).prop_shuffle(), Just(idx).prop_shuffle())
        })
    ) {
        let mirror = SigningKey::from_bytes(Scheme::Secp256k1, &[9; 32]).unwrap();
        let validator = Validator::new(Policy::default().authorize("tp", mirror.public_key()));
        let best = items
            .iter()
            .max_by(|a, b| precedence(a, b))
            .expect("at least one item")
            .clone();
        // The order is total: only identical items compare equal.
        for a in &items {
            for b in &items {
                prop_assert_eq!(precedence(a, b) == Ordering::Equal, a == b);
                prop_assert_eq!(precedence(a, b), precedence(b, a).reverse());
            }
        }
        let target = best.target();
        let dir = tempfile::tempdir().unwrap();
        let memory_a = MemoryStore::new(convergence_config(&validator));
        let memory_b = MemoryStore::new(convergence_config(&validator));
        let redb_a = RedbStore::open(dir.path().join("a.redb"), convergence_config(&validator)).unwrap();
        let redb_b = RedbStore::open(dir.path().join("b.redb"), convergence_config(&validator)).unwrap();
        let verified = |i: usize| validator.validate(items[i].clone()).unwrap();
        for (order, stores) in [
            (&order_a, [&memory_a as &dyn RecordStore, &redb_a]),
            (&order_b, [&memory_b as &dyn RecordStore, &redb_b]),
        ] {
            for store in stores {
                for &i in order {
                    match store.put(verified(i), Default::default()) {
                        Ok(_) => {}
                        Err(e) => {
                            let code = e.rejection().expect("a rejection").code();
                            prop_assert!(
                                matches!(code, ReasonCode::Stale | ReasonCode::Equivocation),
                                "unexpected {:?}", code
                            );
                        }
                    }
                }
            }
        }
        // One put of the whole set as a batch converges too.
        let redb_batch = RedbStore::open(dir.path().join("c.redb"), convergence_config(&validator)).unwrap();
        redb_batch
            .put_batch(order_a.iter().map(|&i| (verified(i), Default::default())).collect())
            .unwrap();
        for store in [&memory_a as &dyn RecordStore, &memory_b, &redb_a, &redb_b, &redb_batch] {
            let stored = store.get(&target).unwrap().expect("stored");
            prop_assert_eq!(&stored.item, &best);
            // The stored deadline is the winner's signed expiry (below the TTL cap).
            prop_assert_eq!(stored.expires_at_ms, best.expires_at_ms);
            prop_assert_eq!(store.stats().unwrap().items, 1);
            let feed: Vec<_> = dht_core::store::changed_since(store, 0).map(|c| c.unwrap()).collect();
            prop_assert_eq!(feed.len(), 1);
            prop_assert_eq!(&feed[0].stored.item, &best);
        }
    }
}
