//! Fewer bytes on the wire: values compressed with zstd, and delta puts (a patch from
//! the value a replica already holds to the new one).
//!
//! - [`compress`] / [`decompress`]: one zstd frame of a value. A 127 KB transport list
//!   compresses about 4x.
//! - [`make_patch`] / [`apply_patch`]: the new value compressed with the previous one
//!   as raw-content dictionary (zstd's "patch from"); appending one 230-byte transport to
//!   a 127 KB list is a patch of about a hundred bytes. A patch names its [`Base`] (seq
//!   and SHA-256 of the base value) so a replica knows whether it holds it.
//! - [`WireValue`]: the form a value travels in, picked by [`WireValue::encode_for`]
//!   (smallest of plain, compressed, patch) and undone by [`WireValue::decode`], which
//!   answers [`Decoded::NeedBase`] when a patch's base is not held: the sender then
//!   sends the full value.
//!
//! Every decoder takes untrusted bytes and a `max_len`: it never panics, never produces
//! more than `max_len` bytes and never allocates an output larger than that; failures are
//! a typed [`CodecError`]. What decoding gives back is still untrusted: signatures,
//! validation and stores always work on the full value, which must pass
//! [`crate::Validator::validate`] inside its item like any other received value.
//!
//! ```
//! use dht_core::codec::{Decoded, WireValue};
//!
//! let entry = |i: u64| format!(r#"{{"t_id":"{:016x}","type":"dmsg"}},"#, i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
//! let old: Vec<u8> = (0..500).flat_map(|i| entry(i).into_bytes()).collect();
//! let mut new = old.clone();
//! new.extend_from_slice(entry(500).as_bytes());
//! let wire = WireValue::encode_for(&new, Some((6, &old)));
//! assert!(matches!(wire, WireValue::Patch { base_seq: 6, .. }));
//! assert!(wire.wire_len() < 100, "{wire:?}");
//! // A replica holding seq 6 rebuilds the value (then validates the item as always);
//! // one without it is told to ask for the full value.
//! assert_eq!(wire.decode(Some((6, &old)), 1 << 20), Ok(Decoded::Value(new.into())));
//! assert!(matches!(wire.decode(None, 1 << 20), Ok(Decoded::NeedBase(_))));
//! ```

mod frame;
mod patch;
mod wire_value;

pub use crate::error::CodecError;
pub use frame::{compress, decompress, LEVEL};
pub use patch::{apply_patch, base_matches, make_patch, Base};
pub use wire_value::{Decoded, WireValue, PATCH_OVERHEAD};
