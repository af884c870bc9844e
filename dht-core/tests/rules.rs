//! The rules as user stories: replay, Go-DHT-style signatures, Skywire-format secp256k1,
//! authorization, sizes.

use bytes::Bytes;
use dht_core::{
    ItemBody, MutableItem, Policy, PublicKey, ReasonCode, Signature, SigningKey, Target, Validator,
};
use sha2::{Digest, Sha256};

#[test]
fn a_mirror_item_replayed_under_another_subject_is_rejected() {
    let mirror = SigningKey::generate_secp256k1();
    let validator = Validator::new(Policy::default().authorize("tp", mirror.public_key()));
    let a = SigningKey::generate_secp256k1().public_key();
    let b = SigningKey::generate_secp256k1().public_key();
    let honest = MutableItem::sign(&mirror, a, "tp", 7, &b"[{\"t_id\":\"x\"}]"[..]);
    assert!(validator.validate(honest.clone()).is_ok());
    // The captured value, seq and signature pushed under B's target.
    let replay = MutableItem {
        subject: b,
        ..honest.clone()
    };
    assert_eq!(
        validator.validate(replay).unwrap_err().code(),
        ReasonCode::BadSignature
    );
    // And A's item offered for B's target.
    let err = validator
        .validate_for(&Target::of(&b, b"tp"), honest)
        .unwrap_err();
    assert_eq!(err.code(), ReasonCode::TargetMismatch);
}

#[test]
fn a_signature_made_the_go_dht_way_does_not_verify() {
    // The Go DHT signs seq || len(v) || v || len(salt) || salt: no subject, no domain.
    let key = SigningKey::generate_secp256k1();
    let SigningKey::Secp256k1(sk) = &key else {
        unreachable!()
    };
    let (value, salt, seq) = (b"[]".to_vec(), b"tp".to_vec(), 3u64);
    let mut payload = seq.to_be_bytes().to_vec();
    payload.extend((value.len() as u64).to_be_bytes());
    payload.extend(&value);
    payload.extend((salt.len() as u64).to_be_bytes());
    payload.extend(&salt);
    let digest: [u8; 32] = Sha256::digest(&payload).into();
    let sig = dht_core::keys::sign_skywire(sk, &digest);
    let item = MutableItem {
        subject: key.public_key(),
        salt: Bytes::from(salt),
        seq,
        body: ItemBody::Value(Bytes::from(value)),
        signer: key.public_key(),
        signature: Signature::Secp256k1(sig),
    };
    assert_eq!(
        Validator::default().validate(item).unwrap_err().code(),
        ReasonCode::BadSignature
    );
}

/// Signs exactly as Skywire's `cipher.SignPayload`: SHA256 of the payload, recoverable
/// ECDSA, compact R || S then the recovery id byte.
fn skywire_sign(sk: &secp256k1::SecretKey, payload: &[u8]) -> [u8; 65] {
    let digest: [u8; 32] = Sha256::digest(payload).into();
    let msg = secp256k1::Message::from_digest(digest);
    let sig = secp256k1::Secp256k1::new().sign_ecdsa_recoverable(&msg, sk);
    let (recid, compact) = sig.serialize_compact();
    let mut out = [0u8; 65];
    out[..64].copy_from_slice(&compact);
    out[64] = recid.to_i32() as u8;
    out
}

#[test]
fn items_signed_the_way_skywire_signs_verify() {
    let secp = secp256k1::Secp256k1::new();
    let (sk, pk) = secp.generate_keypair(&mut rand::rngs::OsRng);
    // The key as Skywire writes it: 66 lowercase hex characters.
    let subject: PublicKey = hex::encode(pk.serialize()).parse().unwrap();
    let mut item = MutableItem {
        subject,
        salt: Bytes::from_static(b"svc"),
        seq: 1,
        body: ItemBody::Value(Bytes::from_static(b"[]")),
        signer: subject,
        signature: Signature::Secp256k1([0; 65]),
    };
    let sig = skywire_sign(&sk, &item.signing_payload());
    item.signature = Signature::Secp256k1(sig);
    // The 130-hex form parses too.
    assert_eq!(
        hex::encode(sig).parse::<Signature>().unwrap(),
        item.signature
    );
    Validator::default().validate(item.clone()).unwrap();

    let mut bad_recid = sig;
    bad_recid[64] = 4;
    let mut flipped = sig;
    flipped[10] ^= 1;
    for bad in [bad_recid, flipped] {
        let mut i = item.clone();
        i.signature = Signature::Secp256k1(bad);
        assert_eq!(
            Validator::default().validate(i).unwrap_err().code(),
            ReasonCode::BadSignature
        );
    }
}

#[test]
fn only_the_subject_or_an_authorized_publisher_for_that_salt_may_write() {
    let mirror = SigningKey::generate_secp256k1();
    let validator = Validator::new(Policy::default().authorize("tp", mirror.public_key()));
    let subject = SigningKey::generate_secp256k1().public_key();
    let stranger = SigningKey::generate_ed25519();
    let err = validator
        .validate(MutableItem::sign(&stranger, subject, "tp", 1, &b"x"[..]))
        .unwrap_err();
    assert_eq!(err.code(), ReasonCode::Unauthorized);
    let err = validator
        .validate(MutableItem::sign(&mirror, subject, "svc", 1, &b"x"[..]))
        .unwrap_err();
    assert_eq!(
        err.code(),
        ReasonCode::Unauthorized,
        "authorized for tp only"
    );
    let v = validator
        .validate(MutableItem::sign(&mirror, subject, "tp", 1, &b"x"[..]))
        .unwrap();
    assert!(v.by_authorized_publisher());
    let own = validator
        .validate(MutableItem::sign(
            &stranger,
            stranger.public_key(),
            "any",
            1,
            &b"x"[..],
        ))
        .unwrap();
    assert!(!own.by_authorized_publisher());
}

#[test]
fn sizes() {
    let key = SigningKey::generate_ed25519();
    let pk = key.public_key();
    let default = Validator::default();
    let mib = dht_core::validation::DEFAULT_MAX_VALUE_LEN;
    assert!(mib >= 1024 * 1024);
    default
        .validate(MutableItem::sign(&key, pk, "tp", 1, vec![b'a'; mib]))
        .unwrap();
    let err = default
        .validate(MutableItem::sign(&key, pk, "tp", 1, vec![b'a'; mib + 1]))
        .unwrap_err();
    assert_eq!(err.code(), ReasonCode::TooLarge);
    let small = Validator::new(Policy {
        max_value_len: 100,
        ..Policy::default()
    });
    assert_eq!(
        small
            .validate(MutableItem::sign(&key, pk, "tp", 1, vec![0u8; 101]))
            .unwrap_err()
            .code(),
        ReasonCode::TooLarge
    );
    let err = default
        .validate(MutableItem::sign(&key, pk, vec![b's'; 65], 1, &b"x"[..]))
        .unwrap_err();
    assert_eq!(err.code(), ReasonCode::TooLarge);
    default
        .validate(MutableItem::sign(&key, pk, vec![b's'; 64], 1, &b"x"[..]))
        .unwrap();
}
