#![no_main]
//! Patches on hostile bytes: the first byte splits the input into a base and a patch.
//! Applying never panics and never gives more than the limit; a patch made from the base
//! to the rest gives the rest back.
use dht_core::codec::{apply_patch, make_patch};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (base, patch) = rest.split_at(usize::from(split).min(rest.len()));
    if let Ok(value) = apply_patch(base, patch, LIMIT) {
        assert!(value.len() <= LIMIT);
    }
    let made = make_patch(base, patch);
    assert_eq!(
        apply_patch(base, &made, patch.len()).expect("round trip"),
        patch
    );
});
