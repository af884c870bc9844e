//! The value codec: compression and patches round-trip for any bytes, bombs and hostile
//! frames are refused with typed errors (never a panic, never more than the limit), a
//! patch needs its base, and on a realistic hub transport list an appended entry costs a
//! patch of about a hundred bytes.

use bytes::Bytes;
use dht_core::codec::{
    apply_patch, base_matches, compress, decompress, make_patch, Base, CodecError, Decoded,
    WireValue, PATCH_OVERHEAD,
};
use dht_core::{ItemBody, MutableItem, ReasonCode, Rejection, SigningKey, Validator};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use zstd::zstd_safe::{CCtx, CParameter};

const MIB: usize = 1024 * 1024;

/// A zstd frame of `src` (with `prefix` as raw-content dictionary) that does not declare
/// its decoded size, as a streaming encoder writes it.
fn undeclared_frame(prefix: &[u8], src: &[u8]) -> Vec<u8> {
    let mut cctx = CCtx::create();
    cctx.set_parameter(CParameter::ContentSizeFlag(false))
        .unwrap();
    cctx.set_parameter(CParameter::WindowLog(20)).unwrap();
    if !prefix.is_empty() {
        cctx.ref_prefix(prefix).unwrap();
    }
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(src.len()));
    cctx.compress2(&mut out, src).unwrap();
    out
}

/// The byte range of a frame header's content size field (zstd format, section 3.1.1.1).
fn content_size_field(frame: &[u8]) -> std::ops::Range<usize> {
    let fhd = frame[4];
    let single_segment = fhd & 0x20 != 0;
    let dict_id_len = [0, 1, 2, 4][usize::from(fhd & 3)];
    let fcs_len = match fhd >> 6 {
        0 if single_segment => 1,
        0 => 0,
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let start = 5 + usize::from(!single_segment) + dict_id_len;
    start..start + fcs_len
}

/// Bytes that look like the values the DHT carries: runs of repeated text with random
/// bytes between them, of length `len`.
fn json_like(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        if rng.gen_bool(0.5) {
            out.extend_from_slice(br#"{"t_id":"","edges":["02","03"],"type":"dmsg"},"#);
        } else {
            let n = rng.gen_range(1..64);
            out.extend((0..n).map(|_| rng.gen::<u8>()));
        }
    }
    out.truncate(len);
    out
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..max),
        (any::<u64>(), 0..max).prop_map(|(seed, len)| json_like(seed, len)),
    ]
}

/// A base and a new value made from it by a few edits (what delta puts carry), or an
/// unrelated new value.
fn base_and_new() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let edits =
        proptest::collection::vec((any::<prop::sample::Index>(), 0usize..64, bytes(300)), 0..4);
    prop_oneof![
        (bytes(4096), bytes(4096)),
        (bytes(8192), edits).prop_map(|(base, edits)| {
            let mut new = base.clone();
            for (at, remove, insert) in edits {
                let at = at.index(new.len() + 1);
                let end = (at + remove).min(new.len());
                new.splice(at..end, insert);
            }
            (base, new)
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn compress_round_trips(value in bytes(8192)) {
        let frame = compress(&value);
        prop_assert_eq!(&decompress(&frame, value.len()).unwrap(), &value);
        prop_assert_eq!(&decompress(&frame, usize::MAX).unwrap(), &value);
        if !value.is_empty() {
            let refused = decompress(&frame, value.len() - 1);
            prop_assert!(
                matches!(refused, Err(CodecError::DeclaredTooLarge { .. })),
                "{:?}", refused
            );
        }
    }

    #[test]
    fn patches_round_trip((base, new) in base_and_new()) {
        let patch = make_patch(&base, &new);
        prop_assert_eq!(&apply_patch(&base, &patch, new.len()).unwrap(), &new);
        let wire = WireValue::encode_for(&new, Some((3, &base)));
        prop_assert!(wire.wire_len() <= new.len());
        prop_assert_eq!(
            wire.decode(Some((3, &base)), new.len()).unwrap(),
            Decoded::Value(Bytes::from(new.clone()))
        );
    }

    /// A patch applied to another base fails (its checksum) or, when it never reads the
    /// bytes that differ, still gives exactly the new value: never other bytes.
    #[test]
    fn a_patch_on_another_base_never_gives_other_bytes(
        (base, new) in base_and_new(),
        other in bytes(4096),
    ) {
        let patch = make_patch(&base, &new);
        if let Ok(value) = apply_patch(&other, &patch, MIB) {
            prop_assert_eq!(value, new.clone());
        }
        // Through WireValue, a base that does not match is never even tried.
        let wire = WireValue::Patch {
            base_seq: 9,
            base_hash: Base::of(9, &base).hash,
            patch: patch.into(),
        };
        if other != base {
            prop_assert_eq!(
                wire.decode(Some((9, &other)), MIB).unwrap(),
                Decoded::NeedBase(Base::of(9, &base))
            );
        }
    }

    /// Hostile bytes, with or without a zstd magic in front: typed errors, never a panic,
    /// never more than the limit.
    #[test]
    fn hostile_frames_never_panic(
        garbage in proptest::collection::vec(any::<u8>(), 0..512),
        magic in any::<bool>(),
        base in bytes(512),
        max_len in 0usize..4096,
    ) {
        let mut frame = if magic { vec![0x28, 0xb5, 0x2f, 0xfd] } else { Vec::new() };
        frame.extend_from_slice(&garbage);
        if let Ok(v) = decompress(&frame, max_len) {
            prop_assert!(v.len() <= max_len);
        }
        if let Ok(v) = apply_patch(&base, &frame, max_len) {
            prop_assert!(v.len() <= max_len);
        }
        let frame = Bytes::from(frame);
        for wire in [
            WireValue::Plain(frame.clone()),
            WireValue::Zstd(frame.clone()),
            WireValue::Patch { base_seq: 1, base_hash: Base::of(1, &base).hash, patch: frame },
        ] {
            if let Ok(Decoded::Value(v)) = wire.decode(Some((1, &base)), max_len) {
                prop_assert!(v.len() <= max_len);
            }
        }
    }

    /// Every truncation and single-byte change of a valid frame or patch is refused or
    /// (checksum permitting) decodes within the limit: never a panic.
    #[test]
    fn damaged_frames_are_refused((base, new) in base_and_new(), at in any::<prop::sample::Index>(), xor in 1u8..) {
        for frame in [compress(&new), make_patch(&base, &new)] {
            let decode = |f: &[u8]| apply_patch(&base, f, new.len() + 100)
                .or_else(|_| decompress(f, new.len() + 100));
            let cuts = (0..frame.len().min(24)).chain([frame.len() / 2, frame.len() - 1]);
            for cut in cuts.chain([at.index(frame.len())]) {
                prop_assert!(decode(&frame[..cut]).is_err(), "truncated at {}", cut);
            }
            let mut damaged = frame.clone();
            damaged[at.index(frame.len())] ^= xor;
            if let Ok(v) = decode(&damaged) {
                prop_assert!(v.len() <= new.len() + 100);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3))]

    /// Values near the 1 MiB default limit, and the limit exactly.
    #[test]
    fn large_values_round_trip(seed in any::<u64>(), len in (MIB - 4096)..=MIB, at in 0usize..MIB) {
        let base = json_like(seed, len);
        let mut new = base.clone();
        new.splice(at.min(len)..at.min(len), json_like(seed ^ 1, 230));
        new.truncate(MIB);
        prop_assert_eq!(&decompress(&compress(&new), new.len()).unwrap(), &new);
        let patch = make_patch(&base, &new);
        prop_assert!(patch.len() < 2048, "patch of {} bytes", patch.len());
        prop_assert_eq!(&apply_patch(&base, &patch, new.len()).unwrap(), &new);
        let refused = apply_patch(&base, &patch, new.len() - 1);
        prop_assert!(matches!(refused, Err(CodecError::DeclaredTooLarge { .. })), "{:?}", refused);
    }
}

#[test]
fn empty_values_round_trip() {
    let some = b"[{\"t_id\":\"x\"}]".to_vec();
    for (base, new) in [
        (&[][..], &[][..]),
        (&some[..], &[][..]),
        (&[][..], &some[..]),
    ] {
        assert_eq!(decompress(&compress(new), new.len()).unwrap(), new);
        assert_eq!(
            apply_patch(base, &make_patch(base, new), new.len()).unwrap(),
            new
        );
        let wire = WireValue::encode_for(new, Some((1, base)));
        assert_eq!(
            wire.decode(Some((1, base)), new.len()).unwrap(),
            Decoded::Value(Bytes::copy_from_slice(new))
        );
    }
    // An empty limit takes only empty values.
    assert!(decompress(&compress(b"a"), 0).is_err());
    assert_eq!(decompress(&compress(b""), 0).unwrap(), b"");
}

#[test]
fn a_bomb_that_declares_its_size_is_refused_from_the_header() {
    let four_mib = vec![0u8; 4 * MIB];
    let bomb = compress(&four_mib);
    assert!(bomb.len() < 1024, "{} bytes", bomb.len());
    assert_eq!(
        decompress(&bomb, MIB),
        Err(CodecError::DeclaredTooLarge {
            declared: 4 * MIB as u64,
            limit: MIB
        })
    );
    let patch_bomb = make_patch(b"[]", &four_mib);
    assert!(matches!(
        apply_patch(b"[]", &patch_bomb, MIB),
        Err(CodecError::DeclaredTooLarge { .. })
    ));
    let wire = WireValue::Zstd(bomb.into());
    let err = wire.decode(None, MIB).unwrap_err();
    let rejection = Rejection::from(err);
    assert_eq!(rejection.code(), ReasonCode::TooLarge);
    // A header lying about the size: it declares more than the limit, so it is refused,
    // even if the content would have been small.
    let mut frame = compress(b"tiny");
    let field = content_size_field(&frame);
    assert_eq!(field.len(), 1);
    frame[field.start] = 200;
    assert!(matches!(
        decompress(&frame, 100),
        Err(CodecError::DeclaredTooLarge { declared: 200, .. })
    ));
}

#[test]
fn a_bomb_without_a_declared_size_is_stopped_at_the_limit() {
    let four_mib = vec![0u8; 4 * MIB];
    let bomb = undeclared_frame(&[], &four_mib);
    assert!(bomb.len() < 1024, "{} bytes", bomb.len());
    assert!(
        matches!(zstd::zstd_safe::get_frame_content_size(&bomb), Ok(None)),
        "the frame declares no size"
    );
    assert_eq!(
        decompress(&bomb, MIB),
        Err(CodecError::TooLarge { limit: MIB })
    );
    assert_eq!(
        decompress(&bomb, 4 * MIB - 1),
        Err(CodecError::TooLarge { limit: 4 * MIB - 1 })
    );
    // Exactly at the limit, and above it, the same frame decodes.
    assert_eq!(decompress(&bomb, 4 * MIB).unwrap(), four_mib);
    assert_eq!(decompress(&bomb, 5 * MIB).unwrap(), four_mib);
    // The same through a patch.
    let base = json_like(1, 10_000);
    let patch_bomb = undeclared_frame(&base, &four_mib);
    assert_eq!(
        apply_patch(&base, &patch_bomb, MIB),
        Err(CodecError::TooLarge { limit: MIB })
    );
    // A frame without a declared size whose window is over what the limit needs.
    let mut cctx = CCtx::create();
    cctx.set_parameter(CParameter::ContentSizeFlag(false))
        .unwrap();
    cctx.set_parameter(CParameter::WindowLog(24)).unwrap();
    let mut wide = Vec::with_capacity(1 << 20);
    cctx.compress2(&mut wide, &vec![0u8; 20 << 20]).unwrap();
    assert_eq!(
        decompress(&wide, MIB),
        Err(CodecError::WindowTooLarge { limit: MIB })
    );
    assert_eq!(
        Rejection::from(CodecError::WindowTooLarge { limit: MIB }).code(),
        ReasonCode::TooLarge
    );
    // Streamed frames round-trip at any size, including nothing.
    for len in [0, 1, 65_535, 65_536, 65_537, 300_000] {
        let v = json_like(len as u64, len);
        assert_eq!(decompress(&undeclared_frame(&[], &v), len).unwrap(), v);
        assert_eq!(
            apply_patch(&base, &undeclared_frame(&base, &v), len).unwrap(),
            v
        );
    }
}

#[test]
fn a_header_declaring_less_than_the_content_is_refused() {
    let value = json_like(2, 50_000);
    let mut frame = compress(&value);
    let field = content_size_field(&frame);
    assert!(field.len() >= 2, "{field:?}");
    // Declare 1,000 bytes less than there are (the field is little-endian).
    let mut declared = [0u8; 8];
    declared[..field.len()].copy_from_slice(&frame[field.clone()]);
    let lie = u64::from_le_bytes(declared) - 1000;
    frame[field.clone()].copy_from_slice(&lie.to_le_bytes()[..field.len()]);
    let err = decompress(&frame, value.len()).unwrap_err();
    assert!(matches!(err, CodecError::Corrupt(_)), "{err:?}");
}

#[test]
fn truncated_and_corrupt_input_is_a_typed_error() {
    let value = json_like(3, 20_000);
    let frame = compress(&value);
    assert!(matches!(decompress(&[], 10), Err(CodecError::NotZstd(_))));
    assert!(matches!(
        decompress(b"[1,2,3]", 10),
        Err(CodecError::NotZstd(_))
    ));
    for cut in [4, 5, 6, 10, frame.len() / 2, frame.len() - 1] {
        let err = decompress(&frame[..cut], value.len()).unwrap_err();
        assert!(
            matches!(err, CodecError::Corrupt(_) | CodecError::NotZstd(_)),
            "{cut}: {err:?}"
        );
    }
    // A flipped byte in the body: refused (the frame checksums its content).
    let mut flipped = frame.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    assert!(decompress(&flipped, value.len()).is_err());
    // Trailing bytes and a second frame are refused: one value, one frame.
    let mut trailing = frame.clone();
    trailing.push(0);
    assert!(matches!(
        decompress(&trailing, value.len() + 10),
        Err(CodecError::NotZstd(_))
    ));
    // A skippable frame is not a value.
    let skippable = [0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
    assert!(matches!(
        decompress(&skippable, 10),
        Err(CodecError::NotZstd(_))
    ));
    assert_eq!(
        Rejection::from(CodecError::Corrupt("x")).code(),
        ReasonCode::Malformed
    );
}

#[test]
fn a_patch_against_the_wrong_base_is_refused_or_needs_the_base() {
    let base = json_like(4, 30_000);
    let mut new = base.clone();
    new.splice(12_345..12_345, json_like(5, 230));
    let patch = make_patch(&base, &new);
    // Another value at the same seq (or a damaged copy): refused by the checksum.
    let mut other = base.clone();
    other[20_000] ^= 0x01;
    let mut other_near_edit = base.clone();
    other_near_edit[12_000] ^= 0x01;
    assert!(apply_patch(&other_near_edit, &patch, MIB).is_err());
    assert!(apply_patch(&[], &patch, MIB).is_err());
    assert!(apply_patch(&new, &patch, MIB).is_err());
    // Through WireValue: NeedBase, whatever is held.
    let wire = WireValue::encode_for(&new, Some((10, &base)));
    let wanted = Base::of(10, &base);
    assert_eq!(wire.base(), Some(wanted));
    for held in [None, Some((10, &other[..])), Some((9, &base[..]))] {
        assert_eq!(wire.decode(held, MIB).unwrap(), Decoded::NeedBase(wanted));
    }
    assert!(base_matches(&wanted, 10, &base));
    assert!(!base_matches(&wanted, 10, &other));
}

// --- A realistic value: a hub's transport list ---------------------------------------

fn random_key(rng: &mut StdRng) -> String {
    let mut key = [0u8; 33];
    rng.fill(&mut key[1..]);
    key[0] = 2 + (rng.gen::<u8>() & 1);
    hex::encode(key)
}

/// One transport entry as the transport discovery serves it (dmsg-plugin's
/// `TransportEntry`), with its t_id: a name-based UUID from the edges and type.
fn transport_entry(a: &str, b: &str, transport_type: &str, label: &str) -> (String, String) {
    let mut edges = [a, b];
    edges.sort();
    let mut h = Sha256::new();
    h.update([0u8; 16]);
    h.update(hex::decode(edges[0]).unwrap());
    h.update(hex::decode(edges[1]).unwrap());
    h.update(transport_type.as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&h.finalize()[..16]);
    id[6] &= 0x0f;
    id[8] = (id[8] & 0x3f) | 0x80;
    let x = hex::encode(id);
    let t_id = format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    );
    let json = format!(
        r#"{{"t_id":"{t_id}","edges":["{}","{}"],"type":"{transport_type}","label":"{label}"}}"#,
        edges[0], edges[1]
    );
    (t_id, json)
}

/// The canonical list: entries ordered by t_id, as dmsg-plugin encodes it.
fn transport_list(entries: &[(String, String)]) -> Vec<u8> {
    let mut sorted: Vec<&(String, String)> = entries.iter().collect();
    sorted.sort();
    let body: Vec<&str> = sorted.iter().map(|(_, json)| json.as_str()).collect();
    format!("[{}]", body.join(",")).into_bytes()
}

/// A hub edge's list of 552 transports (~127 KB) and the same list with one more.
fn hub_lists() -> (Vec<u8>, Vec<u8>) {
    let mut rng = StdRng::seed_from_u64(0x5ca1ab1e);
    let hub = random_key(&mut rng);
    let types = ["dmsg", "stcpr", "sudph"];
    let labels = ["automatic", "user"];
    let mut entries: Vec<(String, String)> = (0..552)
        .map(|i| {
            let other = random_key(&mut rng);
            transport_entry(&hub, &other, types[i % 3], labels[i % 2])
        })
        .collect();
    let before = transport_list(&entries);
    let other = random_key(&mut rng);
    entries.push(transport_entry(&hub, &other, "dmsg", "automatic"));
    (before, transport_list(&entries))
}

#[test]
fn one_appended_transport_is_a_patch_of_about_a_hundred_bytes() {
    let (old, new) = hub_lists();
    assert!((120_000..135_000).contains(&old.len()), "{}", old.len());
    let entry = new.len() - old.len();
    assert!((200..260).contains(&entry), "{entry}");
    let zstd = compress(&new);
    let patch = make_patch(&old, &new);
    let wire = WireValue::encode_for(&new, Some((41, &old)));
    println!(
        "hub transport list: plain {} B (old {} B, entry {entry} B), zstd {} B ({:.1}x), \
         patch {} B (+{PATCH_OVERHEAD} B base id), wire form {:?}",
        new.len(),
        old.len(),
        zstd.len(),
        new.len() as f64 / zstd.len() as f64,
        patch.len(),
        wire,
    );
    assert!(zstd.len() < new.len() / 2, "zstd {} B", zstd.len());
    assert!(patch.len() < 2048, "patch {} B", patch.len());
    assert!(matches!(wire, WireValue::Patch { base_seq: 41, .. }));
    assert_eq!(wire.wire_len(), patch.len() + PATCH_OVERHEAD);
    assert_eq!(decompress(&zstd, new.len()).unwrap(), new);
    assert_eq!(apply_patch(&old, &patch, new.len()).unwrap(), new);
    // Without the base the sender falls back to the compressed value.
    assert_eq!(
        WireValue::encode_for(&new, None),
        WireValue::Zstd(zstd.into())
    );
}

/// The whole path a replica takes: rebuild the value from the patch, then validate the
/// item as any other. A forged patch rebuilds bytes that the signature refuses.
#[test]
fn a_rebuilt_value_is_only_trusted_after_validation() {
    let (old, new) = hub_lists();
    let key = SigningKey::generate_secp256k1();
    let stored = MutableItem::sign(&key, key.public_key(), "tp", 41, old.clone());
    let update = MutableItem::sign(&key, key.public_key(), "tp", 42, new.clone());
    let validator = Validator::default();
    let limit = validator.policy().max_value_len;
    let held = (stored.seq, stored.body.value_bytes());

    // The publisher sends the update as a patch against what the replica holds.
    let wire = WireValue::encode_for(update.body.value_bytes(), Some(held));
    let Decoded::Value(value) = wire.decode(Some(held), limit).unwrap() else {
        panic!("base held");
    };
    let mut received = update.clone();
    received.body = ItemBody::Value(value);
    let verified = validator
        .validate(received)
        .expect("the rebuilt value is signed");
    assert_eq!(verified.item(), &update);

    // Anyone can make a patch from the same base to other bytes: it decodes, and the
    // signature refuses it.
    let mut forged_value = new.clone();
    forged_value[100] ^= 0x20;
    let forged = WireValue::Patch {
        base_seq: 41,
        base_hash: Base::of(41, &old).hash,
        patch: make_patch(&old, &forged_value).into(),
    };
    let Decoded::Value(value) = forged.decode(Some(held), limit).unwrap() else {
        panic!("base held");
    };
    let mut received = update.clone();
    received.body = ItemBody::Value(value);
    let err = validator.validate(received).unwrap_err();
    assert_eq!(err.code(), ReasonCode::BadSignature);
}
