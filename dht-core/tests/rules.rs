//! The rules as user stories: cross-subject replay, Go-DHT-style signatures,
//! Skywire-format secp256k1 signatures, authorization, sizes, deletes end to end,
//! partitions that heal, and expiry that only the publisher controls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dht_core::store::{MemoryStore, RecordStore, RedbStore, StoreConfig};
use dht_core::validation::DEFAULT_MAX_VALUE_LEN;
use dht_core::wire::{decode_envelope, decode_item, encode_envelope, encode_item, DecodeLimits};
use dht_core::{
    json, Admission, ItemBody, KeyError, MutableItem, Policy, PublicKey, PutOptions, ReasonCode,
    Rejection, Signature, SigningKey, Target, Validator,
};
use sha2::{Digest, Sha256};

fn code(r: Result<dht_core::VerifiedItem, Rejection>) -> Option<ReasonCode> {
    r.err().map(|e| e.code())
}

fn secp_secret(key: &SigningKey) -> secp256k1::SecretKey {
    match key {
        SigningKey::Secp256k1(sk) => *sk,
        SigningKey::Ed25519(_) => panic!("not a secp256k1 key"),
    }
}

// ---------------------------------------------------------------------------------------
// (a) cross-subject replay
// ---------------------------------------------------------------------------------------

#[test]
fn a_mirror_item_replayed_under_another_subject_is_rejected() {
    let mirror = SigningKey::generate_secp256k1();
    let validator = Validator::new(
        Policy::default()
            .authorize("tp", mirror.public_key())
            .authorize("svc", mirror.public_key()),
    );
    let a = SigningKey::generate_secp256k1().public_key();
    let b = SigningKey::generate_secp256k1().public_key();
    let honest = MutableItem::sign(&mirror, a, "tp", 7, &b"[{\"t_id\":\"x\"}]"[..]);
    let ok = validator.validate(honest.clone()).unwrap();
    assert!(ok.by_authorized_publisher());
    validator
        .validate_for(&Target::of(&a, b"tp"), honest.clone())
        .unwrap();

    // The captured value, seq and signature pushed under B's target (same salt): the
    // mirror may publish for B, but it never signed this for B.
    let replay = MutableItem {
        subject: b,
        ..honest.clone()
    };
    assert_eq!(
        code(validator.validate(replay.clone())),
        Some(ReasonCode::BadSignature)
    );
    assert_eq!(
        code(validator.validate_for(&Target::of(&b, b"tp"), replay)),
        Some(ReasonCode::BadSignature)
    );
    // ... nor under another salt the mirror is authorized for.
    let other_salt = MutableItem {
        salt: Bytes::from_static(b"svc"),
        ..honest.clone()
    };
    assert_eq!(
        code(validator.validate(other_salt)),
        Some(ReasonCode::BadSignature)
    );
    // A's genuine item offered for B's target.
    let err = validator
        .validate_for(&Target::of(&b, b"tp"), honest)
        .unwrap_err();
    assert_eq!(err.code(), ReasonCode::TargetMismatch);
    assert!(matches!(
        err,
        Rejection::TargetMismatch { expected, actual }
            if expected == Target::of(&b, b"tp") && actual == Target::of(&a, b"tp")
    ));
}

// ---------------------------------------------------------------------------------------
// (b) signatures made the Go DHT way
// ---------------------------------------------------------------------------------------

/// The Go DHT's signed bytes: seq || len(v) || v || len(salt) || salt (no subject, no
/// domain), with 8-byte big- or little-endian integers.
fn go_payload(seq: u64, value: &[u8], salt: &[u8], big_endian: bool) -> Vec<u8> {
    let enc = |n: u64| {
        if big_endian {
            n.to_be_bytes()
        } else {
            n.to_le_bytes()
        }
    };
    let mut p = enc(seq).to_vec();
    p.extend(enc(value.len() as u64));
    p.extend(value);
    p.extend(enc(salt.len() as u64));
    p.extend(salt);
    p
}

#[test]
fn a_signature_made_the_go_dht_way_is_rejected() {
    let owner = SigningKey::generate_secp256k1();
    let mirror = SigningKey::generate_secp256k1();
    let validator = Validator::new(Policy::default().authorize("tp", mirror.public_key()));
    let (value, salt, seq) = (b"[]".to_vec(), b"tp".to_vec(), 3u64);
    for signer in [&owner, &mirror] {
        for big_endian in [true, false] {
            let payload = go_payload(seq, &value, &salt, big_endian);
            // A perfectly good Skywire signature over the Go payload ...
            let digest: [u8; 32] = Sha256::digest(&payload).into();
            let sig =
                Signature::Secp256k1(dht_core::keys::sign_skywire(&secp_secret(signer), &digest));
            signer.public_key().verify(&payload, &sig).unwrap();
            assert_eq!(signer.sign(&payload), sig);
            // ... is not a signature over the item.
            let item = MutableItem {
                subject: owner.public_key(),
                salt: Bytes::from(salt.clone()),
                seq,
                expires_at_ms: dht_core::now_ms() + 60_000,
                body: ItemBody::Value(Bytes::from(value.clone())),
                signer: signer.public_key(),
                signature: sig,
            };
            assert_eq!(
                code(validator.validate(item.clone())),
                Some(ReasonCode::BadSignature)
            );
            // The same item signed our way is accepted.
            let ours = MutableItem::sign(signer, owner.public_key(), "tp", seq, value.clone());
            assert!(ours.same_content(&item));
            validator.validate(ours).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------
// (c) Skywire-format secp256k1
// ---------------------------------------------------------------------------------------

/// A signed expiry far in the future (unix ms, year 2100).
const SIGNED_EXPIRY: u64 = 4_102_444_800_000;

/// Signs exactly as Skywire's `cipher.SignPayload`: SHA256 of the payload, recoverable
/// ECDSA, compact R || S then the recovery id byte.
fn skywire_sign(sk: &secp256k1::SecretKey, payload: &[u8]) -> [u8; 65] {
    let digest: [u8; 32] = Sha256::digest(payload).into();
    let msg = secp256k1::Message::from_digest(digest);
    let sig = secp256k1::Secp256k1::new().sign_ecdsa_recoverable(&msg, sk);
    let (recid, compact) = sig.serialize_compact();
    let mut out = [0u8; 65];
    out[..64].copy_from_slice(&compact);
    out[64] = u8::try_from(recid.to_i32()).unwrap();
    out
}

#[test]
fn items_signed_the_way_skywire_signs_verify() {
    let secp = secp256k1::Secp256k1::new();
    let (sk, pk) = secp.generate_keypair(&mut rand::rngs::OsRng);
    // The key as Skywire writes it: 66 lowercase hex characters.
    let pk_hex = hex::encode(pk.serialize());
    assert_eq!(pk_hex.len(), 66);
    let subject: PublicKey = pk_hex.parse().unwrap();
    assert_eq!(subject, PublicKey::Secp256k1(pk.serialize()));
    assert_eq!(subject.to_hex(), pk_hex);

    let mut item = MutableItem {
        subject,
        salt: Bytes::from_static(b"svc"),
        seq: 1,
        expires_at_ms: SIGNED_EXPIRY,
        body: ItemBody::Value(Bytes::from_static(b"[]")),
        signer: subject,
        signature: Signature::Secp256k1([0; 65]),
    };
    let sig = skywire_sign(&sk, &item.signing_payload());
    assert!(sig[64] <= 3);
    item.signature = Signature::Secp256k1(sig);
    // The 130-hex form parses to the same signature.
    let sig_hex = hex::encode(sig);
    assert_eq!(sig_hex.len(), 130);
    assert_eq!(sig_hex.parse::<Signature>().unwrap(), item.signature);
    let ok = Validator::default().validate(item.clone()).unwrap();
    assert_eq!(ok.item(), &item);
    // Our own signer produces the identical (deterministic, low-S) bytes.
    assert_eq!(
        MutableItem::sign_until(
            &SigningKey::Secp256k1(sk),
            subject,
            "svc",
            1,
            &b"[]"[..],
            SIGNED_EXPIRY
        ),
        item
    );

    let with = |sig: [u8; 65]| MutableItem {
        signature: Signature::Secp256k1(sig),
        ..item.clone()
    };
    let mut bad = Vec::new();
    let mut recid4 = sig;
    recid4[64] = 4;
    bad.push(recid4);
    let mut other_recid = sig;
    other_recid[64] ^= 1; // a valid id that recovers another key
    bad.push(other_recid);
    for bit in [0usize, 100, 255, 256, 300, 511] {
        let mut flipped = sig;
        flipped[bit / 8] ^= 1 << (bit % 8);
        bad.push(flipped);
    }
    // The high-S twin (S -> n - S, recovery parity flipped) is a valid ECDSA signature
    // Skywire never produces; it is refused.
    let s = secp256k1::SecretKey::from_slice(&sig[32..64]).unwrap();
    let mut twin = sig;
    twin[32..64].copy_from_slice(&s.negate().secret_bytes());
    twin[64] ^= 1;
    bad.push(twin);
    for b in bad {
        assert_eq!(
            code(Validator::default().validate(with(b))),
            Some(ReasonCode::BadSignature),
            "{}",
            hex::encode(b)
        );
    }
    // A secp256k1 signature claimed by an ed25519 signer is a scheme mismatch.
    let ed = SigningKey::generate_ed25519();
    let mixed = MutableItem {
        subject: ed.public_key(),
        signer: ed.public_key(),
        ..item.clone()
    };
    assert_eq!(
        Validator::default().validate(mixed).unwrap_err(),
        Rejection::BadSignature(KeyError::SchemeMismatch)
    );
}

#[test]
fn skywire_key_text_forms() {
    let key = SigningKey::generate_secp256k1();
    let hex66 = key.public_key().to_hex();
    assert_eq!(hex66.len(), 66);
    assert!(hex66.starts_with("02") || hex66.starts_with("03"));
    assert_eq!(hex66.parse::<PublicKey>().unwrap(), key.public_key());
    // Surrounding whitespace (as in copied config values) is tolerated; case is not
    // significant in hex.
    assert_eq!(
        format!(" {} ", hex66.to_uppercase())
            .parse::<PublicKey>()
            .unwrap(),
        key.public_key()
    );
    // Skywire's all-zero "null" key, an uncompressed prefix, bad lengths, not hex.
    assert_eq!(
        "00".repeat(33).parse::<PublicKey>(),
        Err(KeyError::NotCompressed)
    );
    assert_eq!(
        format!("04{}", &hex66[2..]).parse::<PublicKey>(),
        Err(KeyError::NotCompressed)
    );
    assert_eq!(
        hex66[..64].parse::<PublicKey>().map(|k| k.scheme()),
        Ok(dht_core::Scheme::Ed25519),
        "64 hex characters are an ed25519 key"
    );
    assert_eq!(
        hex66[..62].parse::<PublicKey>(),
        Err(KeyError::BadLength(31))
    );
    assert_eq!(hex66[..65].parse::<PublicKey>(), Err(KeyError::BadHex));
    assert_eq!(
        format!("zz{}", &hex66[2..]).parse::<PublicKey>(),
        Err(KeyError::BadHex)
    );
    // The JSON form of an item names keys in the same 66-hex form.
    let item = MutableItem::sign(&key, key.public_key(), "svc", 1, &b"[]"[..]);
    let text = json::to_json(&item);
    assert!(text.contains(&format!("\"subject\":\"{hex66}\"")), "{text}");
    assert!(text.contains(&format!("\"signature\":\"{}\"", item.signature.to_hex())));
    assert_eq!(item.signature.to_hex().len(), 130);
}

// ---------------------------------------------------------------------------------------
// (d) authorization
// ---------------------------------------------------------------------------------------

#[test]
fn only_the_subject_or_an_authorized_publisher_for_that_salt_may_write() {
    let mirror = SigningKey::generate_secp256k1();
    let validator = Validator::new(Policy::default().authorize("tp", mirror.public_key()));
    let owner = SigningKey::generate_secp256k1();
    let subject = owner.public_key();
    let stranger = SigningKey::generate_ed25519();

    // A third key, neither the subject nor authorized.
    let err = validator
        .validate(MutableItem::sign(&stranger, subject, "tp", 1, &b"x"[..]))
        .unwrap_err();
    assert_eq!(err.code(), ReasonCode::Unauthorized);
    assert_eq!(
        err,
        Rejection::Unauthorized {
            signer: stranger.public_key(),
            subject,
            salt: "tp".into()
        }
    );
    // Authorized for "tp" but publishing "svc".
    assert_eq!(
        code(validator.validate(MutableItem::sign(&mirror, subject, "svc", 1, &b"x"[..]))),
        Some(ReasonCode::Unauthorized)
    );
    // ... or a tombstone for "svc": a mirror cannot delete what it may not write.
    assert_eq!(
        code(validator.validate(MutableItem::tombstone(&mirror, subject, "svc", 9))),
        Some(ReasonCode::Unauthorized)
    );
    // Another validator without the authorization refuses the mirror everywhere.
    assert_eq!(
        code(Validator::default().validate(MutableItem::sign(
            &mirror,
            subject,
            "tp",
            1,
            &b"x"[..]
        ))),
        Some(ReasonCode::Unauthorized)
    );
    // Authorization is checked before the (costlier) signature: a stranger's item with
    // a garbage signature is Unauthorized, not BadSignature.
    let mut garbage = MutableItem::sign(&stranger, subject, "tp", 1, &b"x"[..]);
    garbage.signature = Signature::Ed25519([0; 64]);
    assert_eq!(
        code(validator.validate(garbage)),
        Some(ReasonCode::Unauthorized)
    );

    // What is allowed.
    let v = validator
        .validate(MutableItem::sign(&mirror, subject, "tp", 1, &b"x"[..]))
        .unwrap();
    assert!(v.by_authorized_publisher());
    for salt in ["tp", "svc", "anything"] {
        let own = validator
            .validate(MutableItem::sign(&owner, subject, salt, 1, &b"x"[..]))
            .unwrap();
        assert!(!own.by_authorized_publisher());
    }
    // The mirror publishing about itself is just a self-signed item.
    let own = validator
        .validate(MutableItem::sign(
            &mirror,
            mirror.public_key(),
            "svc",
            1,
            &b"x"[..],
        ))
        .unwrap();
    assert!(!own.by_authorized_publisher());
}

// ---------------------------------------------------------------------------------------
// (e) sizes
// ---------------------------------------------------------------------------------------

#[test]
fn size_limits() {
    let key = SigningKey::generate_ed25519();
    let pk = key.public_key();
    let small = Validator::new(Policy {
        max_value_len: 100,
        ..Policy::default()
    });
    small
        .validate(MutableItem::sign(&key, pk, "tp", 1, vec![0u8; 100]))
        .unwrap();
    assert_eq!(
        small
            .validate(MutableItem::sign(&key, pk, "tp", 1, vec![0u8; 101]))
            .unwrap_err(),
        Rejection::TooLarge {
            what: "value",
            size: 101,
            limit: 100
        }
    );
    // A tombstone carries no value, whatever the limit.
    Validator::new(Policy {
        max_value_len: 0,
        ..Policy::default()
    })
    .validate(MutableItem::tombstone(&key, pk, "tp", 1))
    .unwrap();

    // Salts: 64 bytes is the limit.
    let default = Validator::default();
    default
        .validate(MutableItem::sign(&key, pk, vec![b's'; 64], 1, &b"x"[..]))
        .unwrap();
    let salt65 = MutableItem::sign(&key, pk, vec![b's'; 65], 1, &b"x"[..]);
    assert_eq!(
        default.validate(salt65.clone()).unwrap_err(),
        Rejection::TooLarge {
            what: "salt",
            size: 65,
            limit: 64
        }
    );
    // ... and the decoders refuse it too.
    assert!(decode_item(&encode_item(&salt65), &DecodeLimits::default()).is_err());
    assert!(json::from_json(&json::to_json(&salt65)).is_err());
}

#[test]
fn the_default_policy_accepts_a_one_mib_value() {
    assert_eq!(DEFAULT_MAX_VALUE_LEN, 1024 * 1024);
    let key = SigningKey::generate_secp256k1();
    let pk = key.public_key();
    let default = Validator::default();
    // A hub edge's full transport list: about 1,000 entries of ~180 bytes.
    let list: Vec<u8> = b"["
        .iter()
        .chain(&[b'x'; 180_000])
        .chain(b"]")
        .copied()
        .collect();
    default
        .validate(MutableItem::sign(&key, pk, "tp", 1, list))
        .unwrap();
    // Exactly 1 MiB, with the longest salt, is accepted and travels the wire ...
    let mib = MutableItem::sign(&key, pk, vec![b's'; 64], 2, vec![0xabu8; 1024 * 1024]);
    let verified = default.validate(mib.clone()).unwrap();
    let limits = DecodeLimits::default();
    assert_eq!(decode_item(&encode_item(&mib), &limits).unwrap(), mib);
    let env = decode_envelope(&encode_envelope(&mib, Some(u64::MAX)), &limits).unwrap();
    assert_eq!(env.item, mib);
    // ... and is stored.
    let store = MemoryStore::default();
    assert_eq!(
        store.put(verified, PutOptions::default()).unwrap(),
        Admission::Insert
    );
    assert_eq!(
        store
            .get(&mib.target())
            .unwrap()
            .unwrap()
            .item
            .value()
            .unwrap()
            .len(),
        1024 * 1024
    );
    // One byte more is TooLarge.
    let over = MutableItem::sign(&key, pk, "tp", 3, vec![0u8; 1024 * 1024 + 1]);
    assert_eq!(code(default.validate(over)), Some(ReasonCode::TooLarge));
}

// ---------------------------------------------------------------------------------------
// (f) deletes end to end
// ---------------------------------------------------------------------------------------

const T0: u64 = 1_700_000_000_000;
const TTL: Duration = Duration::from_secs(3600);

/// A node: a validator and a store, sharing a manual clock with the other nodes.
struct Node<S> {
    validator: Validator,
    store: S,
}

impl<S: RecordStore> Node<S> {
    /// Receives an item from the wire, as a handler would: decode, validate for the
    /// target it was sent for, store with the deadline it carries.
    fn receive(&self, target: &Target, bytes: &[u8]) -> Result<Admission, ReasonCode> {
        let env = decode_envelope(bytes, &DecodeLimits::default())
            .map_err(|e| Rejection::from(e).code())?;
        let verified = self
            .validator
            .validate_for(target, env.item)
            .map_err(|e| e.code())?;
        self.store
            .put(
                verified,
                PutOptions {
                    cas: None,
                    expires_at_ms: env.expires_at_ms,
                },
            )
            .map_err(|e| e.rejection().expect("a rejection").code())
    }

    /// The item as another node receives it: with its deadline.
    fn send(&self, target: &Target) -> Vec<u8> {
        let s = self.store.get(target).unwrap().expect("stored");
        encode_envelope(&s.item, Some(s.expires_at_ms))
    }
}

#[test]
fn a_delete_propagates_and_the_old_value_cannot_come_back() {
    let clock = Arc::new(AtomicU64::new(T0));
    let mirror = SigningKey::generate_secp256k1();
    let validator = Validator::new(Policy {
        ttl: TTL,
        ..Policy::default().authorize("tp", mirror.public_key())
    });
    let config = || {
        let c = clock.clone();
        StoreConfig {
            validator: validator.clone(),
            clock: Arc::new(move || c.load(Ordering::SeqCst)),
            ..StoreConfig::default()
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let a = Node {
        validator: validator.clone(),
        store: MemoryStore::new(config()),
    };
    let b = Node {
        validator: validator.clone(),
        store: RedbStore::open(dir.path().join("b.redb"), config()).unwrap(),
    };
    let lagging = Node {
        validator: validator.clone(),
        store: MemoryStore::new(config()),
    };

    let visor = SigningKey::generate_secp256k1();
    let pk = visor.public_key();
    let target = Target::of(&pk, b"dmsg");
    let never = Target::of(&SigningKey::generate_secp256k1().public_key(), b"dmsg");

    // The visor publishes its entry; all three nodes store it.
    let entry = MutableItem::sign(&visor, pk, "dmsg", 1, &b"{\"sequence\":1}"[..]);
    let wire = encode_envelope(&entry, None);
    for n in [&a.store as &dyn RecordStore, &b.store, &lagging.store] {
        let v = validator.validate_for(&target, entry.clone()).unwrap();
        assert_eq!(n.put(v, PutOptions::default()).unwrap(), Admission::Insert);
    }
    assert_eq!(a.receive(&target, &wire), Ok(Admission::Refresh));

    // Later the visor deletes it, at node A only.
    clock.fetch_add(10_000, Ordering::SeqCst);
    let tomb = MutableItem::tombstone(&visor, pk, "dmsg", 2);
    assert_eq!(
        a.receive(&target, &encode_envelope(&tomb, None)),
        Ok(Admission::Replace { previous_seq: 1 })
    );
    // A's change feed carries the tombstone to B, with its deadline.
    let feed: Vec<_> = a.store.changed_since(0).map(|c| c.unwrap()).collect();
    assert_eq!(feed.len(), 1);
    assert!(feed[0].stored.item.is_tombstone());
    assert_eq!(
        b.receive(&target, &a.send(&target)),
        Ok(Admission::Replace { previous_seq: 1 })
    );
    let at_b = b.store.get(&target).unwrap().unwrap();
    assert!(at_b.item.is_tombstone());
    assert_eq!(at_b.expires_at_ms, T0 + 10_000 + TTL.as_millis() as u64);

    // The lagging replica still serves the old value and pushes it around: refused.
    let old = lagging.send(&target);
    assert_eq!(a.receive(&target, &old), Err(ReasonCode::Stale));
    assert_eq!(b.receive(&target, &old), Err(ReasonCode::Stale));
    // It learns the delete instead.
    assert_eq!(
        lagging.receive(&target, &b.send(&target)),
        Ok(Admission::Replace { previous_seq: 1 })
    );

    // Readers see "deleted" (a tombstone), distinct from "never existed" (nothing).
    for n in [&a.store as &dyn RecordStore, &b.store, &lagging.store] {
        let got = n.get(&target).unwrap().expect("the tombstone");
        assert!(got.item.is_tombstone());
        assert_eq!(got.item.value(), None);
        assert_eq!(n.get(&never).unwrap(), None);
    }
    // In JSON a tombstone has a kind and no value.
    let text = json::to_json(&at_b.item);
    assert!(text.contains("\"kind\":\"tombstone\"") && !text.contains("\"value\""));
    assert_eq!(json::from_json(&text).unwrap(), tomb);

    // Nobody else can delete or overwrite the visor's entry.
    let stranger = SigningKey::generate_secp256k1();
    let forged = MutableItem::tombstone(&stranger, pk, "dmsg", 3);
    assert_eq!(
        a.receive(&target, &encode_envelope(&forged, None)),
        Err(ReasonCode::Unauthorized)
    );
    // ... except an authorized publisher, for its own salt.
    let tp_target = Target::of(&pk, b"tp");
    let tp = MutableItem::sign(&mirror, pk, "tp", 1, &b"[]"[..]);
    assert_eq!(
        a.receive(&tp_target, &encode_envelope(&tp, None)),
        Ok(Admission::Insert)
    );
    let tp_del = MutableItem::tombstone(&mirror, pk, "tp", 2);
    assert_eq!(
        a.receive(&tp_target, &encode_envelope(&tp_del, None)),
        Ok(Admission::Replace { previous_seq: 1 })
    );
    assert!(a
        .store
        .get(&tp_target)
        .unwrap()
        .unwrap()
        .item
        .is_tombstone());

    // The owner publishes again above the tombstone.
    let again = MutableItem::sign(&visor, pk, "dmsg", 3, &b"{\"sequence\":3}"[..]);
    assert_eq!(
        lagging.receive(&target, &encode_envelope(&again, None)),
        Ok(Admission::Replace { previous_seq: 2 })
    );
    assert_eq!(lagging.store.get(&target).unwrap().unwrap().item, again);

    // A tombstone need not live forever: the old value's deadline is older than the
    // tombstone's, so once the tombstone lapses the old value, relayed with its own
    // deadline, has lapsed too.
    clock.store(T0 + 10_000 + TTL.as_millis() as u64, Ordering::SeqCst);
    assert_eq!(b.store.get(&target).unwrap(), None);
    assert_eq!(
        b.receive(
            &target,
            &encode_envelope(&entry, Some(T0 + TTL.as_millis() as u64))
        ),
        Err(ReasonCode::Expired)
    );
    assert_eq!(b.store.get(&target).unwrap(), None);
}

// ---------------------------------------------------------------------------------------
// (g) a partition heals: conflicting items at one seq converge
// ---------------------------------------------------------------------------------------

#[test]
fn replicas_split_by_a_partition_converge_on_one_item() {
    let clock = Arc::new(AtomicU64::new(T0));
    let validator = Validator::new(Policy {
        ttl: TTL,
        ..Policy::default()
    });
    let config = || {
        let c = clock.clone();
        StoreConfig {
            validator: validator.clone(),
            clock: Arc::new(move || c.load(Ordering::SeqCst)),
            ..StoreConfig::default()
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let a = Node {
        validator: validator.clone(),
        store: MemoryStore::new(config()),
    };
    let b = Node {
        validator: validator.clone(),
        store: RedbStore::open(dir.path().join("b.redb"), config()).unwrap(),
    };
    let visor = SigningKey::generate_secp256k1();
    let pk = visor.public_key();
    let target = Target::of(&pk, b"dmsg");
    let until = T0 + 600_000;

    // During the partition the visor (restored from an old backup, say) publishes a
    // value at seq 4 on A's side and deletes at seq 4 on B's side.
    let value = MutableItem::sign_until(&visor, pk, "dmsg", 4, &b"{}"[..], until);
    let tomb = MutableItem::tombstone_until(&visor, pk, "dmsg", 4, until);
    assert_eq!(
        a.receive(&target, &encode_envelope(&value, None)),
        Ok(Admission::Insert)
    );
    assert_eq!(
        b.receive(&target, &encode_envelope(&tomb, None)),
        Ok(Admission::Insert)
    );
    // The partition heals and they sync both ways: the tombstone wins everywhere.
    assert_eq!(
        a.receive(&target, &b.send(&target)),
        Ok(Admission::Supersede { seq: 4 })
    );
    assert_eq!(
        b.receive(&target, &a.send(&target)),
        Ok(Admission::Refresh),
        "A already holds B's item"
    );
    let old_value = encode_envelope(&value, None);
    assert_eq!(
        b.receive(&target, &old_value),
        Err(ReasonCode::Equivocation),
        "the loser stays visible as an equivocation"
    );
    for n in [&a.store as &dyn RecordStore, &b.store] {
        let got = n.get(&target).unwrap().unwrap();
        assert_eq!(got.item, tomb);
        assert_eq!(got.expires_at_ms, until);
    }
    assert_eq!(
        dht_core::precedence(&tomb, &value),
        std::cmp::Ordering::Greater
    );
}

// ---------------------------------------------------------------------------------------
// (h) expiry belongs to the publisher
// ---------------------------------------------------------------------------------------

#[test]
fn nobody_but_the_publisher_keeps_an_entry_alive() {
    let clock = Arc::new(AtomicU64::new(T0));
    let validator = Validator::new(Policy {
        ttl: TTL,
        ..Policy::default()
    });
    let c = clock.clone();
    let node = Node {
        validator: validator.clone(),
        store: MemoryStore::new(StoreConfig {
            validator: validator.clone(),
            clock: Arc::new(move || c.load(Ordering::SeqCst)),
            ..StoreConfig::default()
        }),
    };
    let visor = SigningKey::generate_ed25519();
    let pk = visor.public_key();
    let target = Target::of(&pk, b"dmsg");
    let until = T0 + 60_000;
    let entry = MutableItem::sign_until(&visor, pk, "dmsg", 1, &b"{}"[..], until);
    let wire = encode_envelope(&entry, None);
    assert_eq!(node.receive(&target, &wire), Ok(Admission::Insert));

    // The visor goes offline; a third party keeps re-posting its last entry, even with
    // a far replica deadline. Nothing moves the deadline the visor signed.
    for t in [10_000, 30_000, 59_999] {
        clock.store(T0 + t, Ordering::SeqCst);
        assert_eq!(node.receive(&target, &wire), Ok(Admission::Refresh));
        assert_eq!(
            node.receive(&target, &encode_envelope(&entry, Some(u64::MAX))),
            Ok(Admission::Refresh)
        );
        assert_eq!(
            node.store.get(&target).unwrap().unwrap().expires_at_ms,
            until
        );
    }
    // Re-signing with a later expiry needs the visor's key.
    let mut forged = entry.clone();
    forged.expires_at_ms = until + TTL.as_millis() as u64;
    assert_eq!(
        node.receive(&target, &encode_envelope(&forged, None)),
        Err(ReasonCode::BadSignature)
    );
    // At the signed expiry the entry is gone, and re-posting it is refused.
    clock.store(until, Ordering::SeqCst);
    assert_eq!(node.store.get(&target).unwrap(), None);
    assert_eq!(node.receive(&target, &wire), Err(ReasonCode::Expired));
    assert_eq!(node.store.get(&target).unwrap(), None);
}
