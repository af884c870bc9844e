#![no_main]
//! zstd frame decoding on hostile bytes: never panics, never more than the limit; and any
//! bytes compress and come back.
use dht_core::codec::{compress, decompress};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = decompress(data, LIMIT) {
        assert!(value.len() <= LIMIT);
    }
    assert_eq!(
        decompress(&compress(data), data.len()).expect("round trip"),
        data
    );
});
