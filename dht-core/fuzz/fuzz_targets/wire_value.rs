#![no_main]
//! Decoding hostile wire values against a held base: the first byte picks the form and
//! the split between the held value and the payload; the base named is the held one (so
//! patches are applied) or not (so they need the base). Never panics, never more than
//! the limit.
use bytes::Bytes;
use dht_core::codec::{Base, Decoded, WireValue};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let (held, payload) = rest.split_at(usize::from(head >> 2).min(rest.len()));
    let payload = Bytes::copy_from_slice(payload);
    let wire = match head & 3 {
        0 => WireValue::Plain(payload),
        1 => WireValue::Zstd(payload),
        2 => WireValue::Patch {
            base_seq: 7,
            base_hash: Base::of(7, held).hash,
            patch: payload,
        },
        _ => WireValue::Patch {
            base_seq: 8,
            base_hash: Base::of(8, held).hash,
            patch: payload,
        },
    };
    match wire.decode(Some((7, held)), LIMIT) {
        Ok(Decoded::Value(value)) => assert!(value.len() <= LIMIT),
        Ok(Decoded::NeedBase(base)) => assert_eq!(Some(base), wire.base()),
        Err(_) => {}
    }
});
