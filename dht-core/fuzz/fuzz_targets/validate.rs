#![no_main]
//! Decoding then validating hostile items: never panics, whatever the keys and signatures.
use dht_core::wire::{decode_item, DecodeLimits};
use dht_core::Validator;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(item) = decode_item(data, &DecodeLimits { max_value_len: 64 * 1024 }) {
        let _ = Validator::default().validate(item);
    }
});
