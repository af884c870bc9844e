#![no_main]
//! The prost item decoder on hostile bytes: never panics; whatever decodes re-encodes to
//! an item that decodes to itself.
use dht_core::wire::{decode_item, encode_item, DecodeLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits { max_value_len: 64 * 1024 };
    if let Ok(item) = decode_item(data, &limits) {
        let again = decode_item(&encode_item(&item), &limits).expect("re-encoded item decodes");
        assert_eq!(again, item);
    }
});
