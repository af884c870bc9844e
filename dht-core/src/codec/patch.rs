//! Delta values: a zstd frame of the new value compressed with the previous value as
//! raw-content dictionary (zstd's "patch from"), and the [`Base`] a patch names.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::codec::frame::{compress_with_prefix, decode_frame};
use crate::error::CodecError;

/// The value a patch was made from: its seq and the SHA-256 of its bytes (40 bytes on
/// the wire). A replica applies a patch only to a stored value that [`Base::matches`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Base {
    /// The seq of the base item.
    pub seq: u64,
    /// SHA-256 of the base value.
    pub hash: [u8; 32],
}

impl Base {
    /// The base identifier of a value held at `seq`.
    pub fn of(seq: u64, value: &[u8]) -> Self {
        Base {
            seq,
            hash: Sha256::digest(value).into(),
        }
    }

    /// Whether the value held at `seq` is this base: same seq and same bytes (a replica
    /// holding another item at the same seq, or a damaged copy, does not match).
    pub fn matches(&self, seq: u64, value: &[u8]) -> bool {
        self.seq == seq && self.hash == <[u8; 32]>::from(Sha256::digest(value))
    }
}

impl fmt::Debug for Base {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Base(seq {}, {})",
            self.seq,
            hex::encode(&self.hash[..8])
        )
    }
}

/// Whether the value a replica holds at `seq` is the base a patch names (see
/// [`Base::matches`]).
pub fn base_matches(base: &Base, seq: u64, value: &[u8]) -> bool {
    base.matches(seq, value)
}

/// A patch that turns `base` into `new`: one zstd frame of `new` with `base` as
/// raw-content dictionary, carrying the size of `new` and a checksum of it. Appending
/// one 230-byte entry to a 127 KB transport list gives a patch of about a hundred bytes.
///
/// # Panics
///
/// Only if zstd cannot allocate its context (out of memory); never on any input.
pub fn make_patch(base: &[u8], new: &[u8]) -> Vec<u8> {
    compress_with_prefix(base, new)
}

/// Applies an untrusted patch to `base`, producing at most `max_len` bytes (the same
/// guarantees as [`crate::codec::decompress`]).
///
/// A patch applied to another base than the one it was made from fails its checksum
/// ([`CodecError::Corrupt`]) or, rarely, yields other bytes: the result is never
/// trusted, only the publisher's signature over it is (see [`crate::codec::WireValue`]).
/// Never panics.
pub fn apply_patch(base: &[u8], patch: &[u8], max_len: usize) -> Result<Vec<u8>, CodecError> {
    decode_frame(patch, base, max_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_rebuilds_the_new_value_from_its_base() {
        let base: Vec<u8> = (0..4000u32).flat_map(|i| i.to_le_bytes()).collect();
        let mut new = base.clone();
        new.splice(5000..5000, b"an inserted entry".iter().copied());
        let patch = make_patch(&base, &new);
        assert!(patch.len() < 100, "patch of {} bytes", patch.len());
        assert_eq!(apply_patch(&base, &patch, new.len()).unwrap(), new);
        // Another base: refused by the checksum or the frame itself.
        let mut other = base.clone();
        other[100] ^= 1;
        assert!(apply_patch(&other, &patch, new.len()).is_err());
        assert!(apply_patch(&[], &patch, new.len()).is_err());
    }

    #[test]
    fn base_matches_seq_and_bytes() {
        let base = Base::of(7, b"[1]");
        assert!(base.matches(7, b"[1]"));
        assert!(base_matches(&base, 7, b"[1]"));
        assert!(!base.matches(8, b"[1]"));
        assert!(!base.matches(7, b"[2]"));
        assert!(format!("{base:?}").starts_with("Base(seq 7, "));
    }
}
