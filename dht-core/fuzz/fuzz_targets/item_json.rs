#![no_main]
//! The JSON item parser (HTTP gateway input) on hostile text.
use dht_core::json::{from_json, to_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(item) = from_json(&text) {
        assert_eq!(from_json(&to_json(&item)).expect("round trip"), item);
    }
});
