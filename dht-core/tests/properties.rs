//! Property tests: encodings round-trip, hostile bytes never panic, any tampering fails
//! validation, and the ordering rule keeps the highest seq.

use bytes::Bytes;
use dht_core::store::{MemoryStore, RecordStore};
use dht_core::wire::{decode_envelope, decode_item, encode_envelope, encode_item, DecodeLimits};
use dht_core::{json, Admission, ItemBody, MutableItem, ReasonCode, SigningKey, Validator};
use proptest::prelude::*;

fn keys() -> impl Strategy<Value = SigningKey> {
    prop_oneof![
        any::<[u8; 32]>()
            .prop_map(|b| SigningKey::from_bytes(dht_core::Scheme::Ed25519, &b).unwrap()),
        any::<[u8; 32]>().prop_filter_map("valid secp256k1 secret", |b| SigningKey::from_bytes(
            dht_core::Scheme::Secp256k1,
            &b
        )
        .ok()),
    ]
}

fn items() -> impl Strategy<Value = MutableItem> {
    (
        keys(),
        proptest::collection::vec(any::<u8>(), 0..=64),
        any::<u64>(),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..4096)),
    )
        .prop_map(|(k, salt, seq, value)| {
            let body = match value {
                Some(v) => ItemBody::Value(Bytes::from(v)),
                None => ItemBody::Tombstone,
            };
            MutableItem::sign_body(&k, k.public_key(), Bytes::from(salt), seq, body)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn wire_round_trip(item in items(), exp in proptest::option::of(1u64..)) {
        let limits = DecodeLimits::default();
        prop_assert_eq!(decode_item(&encode_item(&item), &limits).unwrap(), item.clone());
        let env = decode_envelope(&encode_envelope(&item, exp), &limits).unwrap();
        prop_assert_eq!(env.item, item);
        prop_assert_eq!(env.expires_at_ms, exp);
    }

    #[test]
    fn json_round_trip(item in items()) {
        prop_assert_eq!(json::from_json(&json::to_json(&item)).unwrap(), item);
    }

    #[test]
    fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let limits = DecodeLimits { max_value_len: 1024 };
        let _ = decode_item(&bytes, &limits);
        let _ = decode_envelope(&bytes, &limits);
        let _ = json::from_json(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn valid_items_validate_and_any_tampering_fails(item in items(), which in 0usize..4, pos in any::<usize>()) {
        let v = Validator::default();
        prop_assert!(v.validate(item.clone()).is_ok());
        let mut t = item.clone();
        match which {
            0 => {
                let mut value = t.body.value_bytes().to_vec();
                if value.is_empty() { value.push(1) } else { let i = pos % value.len(); value[i] ^= 0x01; }
                t.body = ItemBody::Value(Bytes::from(value));
            }
            1 => {
                let mut salt = t.salt.to_vec();
                if salt.is_empty() { salt.push(b'x') } else { let i = pos % salt.len(); salt[i] ^= 0x80; }
                t.salt = Bytes::from(salt);
            }
            2 => t.seq ^= 1 << (pos % 64),
            _ => t.subject = SigningKey::generate_ed25519().public_key(),
        }
        prop_assume!(t != item);
        let code = v.validate(t).unwrap_err().code();
        prop_assert!(matches!(code, ReasonCode::BadSignature | ReasonCode::Unauthorized | ReasonCode::TooLarge), "{code}");
    }

    #[test]
    fn the_store_keeps_the_highest_seq(a in 0u64..5, b in 0u64..5, same in any::<bool>()) {
        let key = SigningKey::generate_ed25519();
        let pk = key.public_key();
        let v = Validator::default();
        let store = MemoryStore::default();
        let first = v.validate(MutableItem::sign(&key, pk, "tp", a, &b"first"[..])).unwrap();
        let second_value: &[u8] = if same && a == b { b"first" } else { b"second" };
        let second = v.validate(MutableItem::sign(&key, pk, "tp", b, second_value)).unwrap();
        store.put(first.clone(), Default::default()).unwrap();
        let r = store.put(second, Default::default());
        match b.cmp(&a) {
            std::cmp::Ordering::Greater => prop_assert_eq!(r.unwrap(), Admission::Replace { previous_seq: a }),
            std::cmp::Ordering::Less => prop_assert_eq!(r.unwrap_err().rejection().unwrap().code(), ReasonCode::Stale),
            std::cmp::Ordering::Equal if same => prop_assert_eq!(r.unwrap(), Admission::Refresh),
            std::cmp::Ordering::Equal => prop_assert_eq!(r.unwrap_err().rejection().unwrap().code(), ReasonCode::Equivocation),
        }
        prop_assert_eq!(store.get(&first.target()).unwrap().unwrap().item.seq, a.max(b));
    }
}
