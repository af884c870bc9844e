//! How a value travels: as is, compressed, or as a patch against a base the receiver is
//! believed to hold.

use std::fmt;

use bytes::Bytes;

use crate::codec::frame::{compress, decompress};
use crate::codec::patch::{apply_patch, make_patch, Base};
use crate::error::CodecError;

/// Bytes a patch carries besides the patch itself: the base's seq and hash.
pub const PATCH_OVERHEAD: usize = 8 + 32;

/// An item's value as sent on the wire.
///
/// **Never trusted.** Decoding only turns it back into bytes: a patch or a compressed
/// frame can come from anyone and rebuild anything (within the limit). The rebuilt value
/// must go, inside its [`crate::MutableItem`], through [`crate::Validator::validate`]
/// like any received item, which checks the publisher's signature over the full value;
/// only the resulting [`crate::VerifiedItem`] may be stored or served. Signatures,
/// ordering and stores always see the full value, never its wire form.
#[derive(Clone, PartialEq, Eq)]
pub enum WireValue {
    /// The value itself.
    Plain(Bytes),
    /// One zstd frame of the value (see [`crate::codec::compress`]).
    Zstd(Bytes),
    /// A patch (see [`crate::codec::make_patch`]) from the value at `base_seq` whose
    /// SHA-256 is `base_hash`.
    Patch {
        /// The seq of the base.
        base_seq: u64,
        /// SHA-256 of the base value.
        base_hash: [u8; 32],
        /// The zstd frame of the new value against the base.
        patch: Bytes,
    },
}

/// What decoding a [`WireValue`] gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The full value, still to be validated with its item.
    Value(Bytes),
    /// A patch against a base this replica does not hold (no value, another seq, or
    /// other bytes at that seq): the sender must send the full value.
    NeedBase(Base),
}

impl WireValue {
    /// The smallest wire form of `new_value`: plain, compressed, or, when the receiver is
    /// known to hold `known_base` (its seq and value), a patch from it. On a tie the form
    /// cheaper to decode wins (plain, then compressed, then patch).
    pub fn encode_for(new_value: &[u8], known_base: Option<(u64, &[u8])>) -> WireValue {
        let mut best = WireValue::Plain(Bytes::copy_from_slice(new_value));
        let zstd = WireValue::Zstd(Bytes::from(compress(new_value)));
        if zstd.wire_len() < best.wire_len() {
            best = zstd;
        }
        if let Some((seq, base)) = known_base {
            let patch = WireValue::Patch {
                base_seq: seq,
                base_hash: Base::of(seq, base).hash,
                patch: Bytes::from(make_patch(base, new_value)),
            };
            if patch.wire_len() < best.wire_len() {
                best = patch;
            }
        }
        best
    }

    /// Decodes the value, producing at most `max_len` bytes, given what this replica
    /// holds at the target (`stored_base`: its seq and value, `None` if nothing). A
    /// patch whose base is not held is [`Decoded::NeedBase`], not an error. Never panics.
    ///
    /// Checking the base hashes the held value (SHA-256, about 0.2 ms for 127 KB); a node
    /// that keeps the [`Base`] of what it stores can compare [`WireValue::base`] itself
    /// and call [`crate::codec::apply_patch`].
    ///
    /// The result is untrusted: see the type's documentation.
    pub fn decode(
        &self,
        stored_base: Option<(u64, &[u8])>,
        max_len: usize,
    ) -> Result<Decoded, CodecError> {
        match self {
            WireValue::Plain(value) if value.len() > max_len => Err(CodecError::DeclaredTooLarge {
                declared: value.len() as u64,
                limit: max_len,
            }),
            WireValue::Plain(value) => Ok(Decoded::Value(value.clone())),
            WireValue::Zstd(frame) => decompress(frame, max_len).map(|v| Decoded::Value(v.into())),
            WireValue::Patch {
                base_seq,
                base_hash,
                patch,
            } => {
                let wanted = Base {
                    seq: *base_seq,
                    hash: *base_hash,
                };
                match stored_base {
                    Some((seq, base)) if wanted.matches(seq, base) => {
                        apply_patch(base, patch, max_len).map(|v| Decoded::Value(v.into()))
                    }
                    _ => Ok(Decoded::NeedBase(wanted)),
                }
            }
        }
    }

    /// The base a patch names (`None` for the other forms).
    pub fn base(&self) -> Option<Base> {
        match self {
            WireValue::Patch {
                base_seq,
                base_hash,
                ..
            } => Some(Base {
                seq: *base_seq,
                hash: *base_hash,
            }),
            _ => None,
        }
    }

    /// The bytes this form puts on the wire for the value (payload and base identifier,
    /// not the framing around them).
    pub fn wire_len(&self) -> usize {
        match self {
            WireValue::Plain(value) => value.len(),
            WireValue::Zstd(frame) => frame.len(),
            WireValue::Patch { patch, .. } => patch.len() + PATCH_OVERHEAD,
        }
    }
}

impl fmt::Debug for WireValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireValue::Plain(v) => write!(f, "Plain({} bytes)", v.len()),
            WireValue::Zstd(v) => write!(f, "Zstd({} bytes)", v.len()),
            WireValue::Patch { patch, .. } => {
                write!(f, "Patch({:?}, {} bytes)", self.base(), patch.len())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn small_values_stay_plain() {
        let w = WireValue::encode_for(b"[]", Some((1, b"[1]")));
        assert_eq!(w, WireValue::Plain(Bytes::from_static(b"[]")));
        assert_eq!(
            w.decode(None, 2).unwrap(),
            Decoded::Value(Bytes::from_static(b"[]"))
        );
        assert!(matches!(
            w.decode(None, 1),
            Err(CodecError::DeclaredTooLarge { .. })
        ));
    }

    #[test]
    fn a_patch_needs_its_base() {
        // Incompressible bytes (a hash chain), so only a patch makes them small.
        let base: Vec<u8> = (0..300u32)
            .flat_map(|i| <[u8; 32]>::from(sha2::Sha256::digest(i.to_le_bytes())))
            .collect();
        let mut new = base.clone();
        new.extend_from_slice(b"bcdefgh");
        let w = WireValue::encode_for(&new, Some((4, &base)));
        assert!(matches!(w, WireValue::Patch { base_seq: 4, .. }), "{w:?}");
        let need = Decoded::NeedBase(Base::of(4, &base));
        assert_eq!(w.decode(None, 1 << 20).unwrap(), need);
        assert_eq!(w.decode(Some((3, &base)), 1 << 20).unwrap(), need);
        assert_eq!(w.decode(Some((4, &new)), 1 << 20).unwrap(), need);
        assert_eq!(
            w.decode(Some((4, &base)), 1 << 20).unwrap(),
            Decoded::Value(new.into())
        );
    }
}
