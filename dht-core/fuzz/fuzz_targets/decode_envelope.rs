#![no_main]
//! The envelope decoder on hostile bytes.
use dht_core::wire::{decode_envelope, encode_envelope, DecodeLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits { max_value_len: 64 * 1024 };
    if let Ok(env) = decode_envelope(data, &limits) {
        let again = decode_envelope(&encode_envelope(&env.item, env.expires_at_ms), &limits)
            .expect("re-encoded envelope decodes");
        assert_eq!(again, env);
    }
});
