//! Typed errors. Every rejection of an item carries a stable [`ReasonCode`] so that
//! callers and remote peers can report exactly why an item was refused.

use std::fmt;

/// A problem with a key or signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text is not valid hex.
    #[error("key or signature is not valid hex")]
    BadHex,
    /// The key has a length no scheme uses.
    #[error("key of {0} bytes: expected 32 (ed25519) or 33 (secp256k1)")]
    BadLength(usize),
    /// A 33-byte key that does not start with 0x02 or 0x03.
    #[error("secp256k1 key is not in compressed form")]
    NotCompressed,
    /// The signature has a length no scheme uses.
    #[error("signature of {0} bytes: expected 64 (ed25519) or 65 (secp256k1)")]
    BadSignatureLength(usize),
    /// An unknown scheme tag.
    #[error("unknown key scheme tag {0}")]
    UnknownScheme(u32),
    /// A key file names a scheme other than ed25519 or secp256k1.
    #[error("unknown key scheme: expected ed25519:<hex> or secp256k1:<hex>")]
    UnknownSchemeName,
    /// Key and signature (or declared scheme) are of different schemes.
    #[error("key and signature are of different schemes")]
    SchemeMismatch,
    /// The bytes are not a point on the curve / a valid secret.
    #[error("invalid key: not a point of its curve (or not a valid secret key)")]
    InvalidKey,
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
}

/// The stable, machine-readable reason an item was rejected.
///
/// The string forms (see [`ReasonCode::as_str`]) are part of the wire protocol and the
/// HTTP API and never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReasonCode {
    /// The value (or another field) exceeds its limit.
    TooLarge,
    /// The signature does not verify under the signer's key.
    BadSignature,
    /// The item does not belong at the target it was sent for.
    TargetMismatch,
    /// The signer is neither the subject nor an authorized publisher for the salt.
    Unauthorized,
    /// A newer item is already stored.
    Stale,
    /// A different item with the same seq, which wins [`crate::precedence`], is already
    /// stored.
    Equivocation,
    /// Compare-and-swap failed: the stored seq is not the expected one.
    CasMismatch,
    /// The item's expiry has passed.
    Expired,
    /// The bytes or fields are malformed.
    Malformed,
    /// A storage quota is exhausted.
    QuotaExceeded,
}

impl ReasonCode {
    /// All codes, in wire-tag order.
    pub const ALL: [ReasonCode; 10] = [
        ReasonCode::TooLarge,
        ReasonCode::BadSignature,
        ReasonCode::TargetMismatch,
        ReasonCode::Unauthorized,
        ReasonCode::Stale,
        ReasonCode::Equivocation,
        ReasonCode::CasMismatch,
        ReasonCode::Expired,
        ReasonCode::Malformed,
        ReasonCode::QuotaExceeded,
    ];

    /// The stable snake_case name of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::TooLarge => "too_large",
            ReasonCode::BadSignature => "bad_signature",
            ReasonCode::TargetMismatch => "target_mismatch",
            ReasonCode::Unauthorized => "unauthorized",
            ReasonCode::Stale => "stale",
            ReasonCode::Equivocation => "equivocation",
            ReasonCode::CasMismatch => "cas_mismatch",
            ReasonCode::Expired => "expired",
            ReasonCode::Malformed => "malformed",
            ReasonCode::QuotaExceeded => "quota_exceeded",
        }
    }

    /// The stable wire tag of the code (1-based; 0 is reserved for "no error").
    pub fn tag(self) -> u32 {
        ReasonCode::ALL
            .iter()
            .position(|c| *c == self)
            .map_or(0, |i| i as u32 + 1)
    }

    /// The code of a wire tag, if known.
    pub fn from_tag(tag: u32) -> Option<Self> {
        (tag as usize)
            .checked_sub(1)
            .and_then(|i| ReasonCode::ALL.get(i).copied())
    }

    /// The code of a snake_case name, if known.
    pub fn from_name(name: &str) -> Option<Self> {
        ReasonCode::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an item was rejected, with the detail a human needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A field exceeds its limit.
    #[error("{what} is {size} bytes, limit {limit}")]
    TooLarge {
        /// Which field.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The signature does not verify.
    #[error("bad signature: {0}")]
    BadSignature(KeyError),
    /// The item is not for the target it was sent or stored under.
    #[error("item target {actual} does not match {expected}")]
    TargetMismatch {
        /// The target the item was sent for.
        expected: crate::Target,
        /// The target the item's subject and salt give.
        actual: crate::Target,
    },
    /// The signer may not write this subject/salt.
    #[error("signer {signer} may not publish salt {salt:?} for subject {subject}")]
    Unauthorized {
        /// The signer.
        signer: crate::PublicKey,
        /// The subject.
        subject: crate::PublicKey,
        /// The salt, lossily as text.
        salt: String,
    },
    /// A newer item is stored.
    #[error("seq {incoming} is older than the stored seq {stored}")]
    Stale {
        /// Seq of the refused item.
        incoming: u64,
        /// Seq already stored.
        stored: u64,
    },
    /// A different item at the stored seq, which wins [`crate::precedence`] over this one.
    #[error("a different item with seq {seq} is already stored")]
    Equivocation {
        /// The seq both items claim.
        seq: u64,
    },
    /// The stored seq is not the expected one.
    #[error("compare-and-swap expected seq {expected:?}, stored seq is {stored:?}")]
    CasMismatch {
        /// The seq the caller expected (None: expected nothing stored).
        expected: Option<u64>,
        /// The seq actually stored (None: nothing stored).
        stored: Option<u64>,
    },
    /// The item's expiry (its signed one, or the deadline requested for it) lies in the
    /// past.
    #[error("item expired at {expires_at_ms} ms (now {now_ms} ms)")]
    Expired {
        /// The expiry, unix milliseconds.
        expires_at_ms: u64,
        /// The current time, unix milliseconds.
        now_ms: u64,
    },
    /// Malformed bytes or fields.
    #[error("malformed: {0}")]
    Malformed(String),
    /// A storage quota is exhausted.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
}

impl Rejection {
    /// The stable reason code of this rejection.
    pub fn code(&self) -> ReasonCode {
        match self {
            Rejection::TooLarge { .. } => ReasonCode::TooLarge,
            Rejection::BadSignature(_) => ReasonCode::BadSignature,
            Rejection::TargetMismatch { .. } => ReasonCode::TargetMismatch,
            Rejection::Unauthorized { .. } => ReasonCode::Unauthorized,
            Rejection::Stale { .. } => ReasonCode::Stale,
            Rejection::Equivocation { .. } => ReasonCode::Equivocation,
            Rejection::CasMismatch { .. } => ReasonCode::CasMismatch,
            Rejection::Expired { .. } => ReasonCode::Expired,
            Rejection::Malformed(_) => ReasonCode::Malformed,
            Rejection::QuotaExceeded(_) => ReasonCode::QuotaExceeded,
        }
    }
}

/// A failure to decode bytes from the wire or from disk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// More bytes than the configured limit.
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Input size.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// Not a valid protobuf message.
    #[error("invalid protobuf: {0}")]
    Protobuf(String),
    /// Valid protobuf, invalid fields.
    #[error("invalid field: {0}")]
    Field(String),
    /// An item without a signed expiry: signed under the v1 rules (expiry not covered
    /// by the signature), which are refused.
    #[error(
        "item has no signed expiry (expires_at_ms is 0 or absent): a v1 item, no longer accepted"
    )]
    MissingExpiry,
}

impl From<DecodeError> for Rejection {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::TooLarge { size, limit } => Rejection::TooLarge {
                what: "message",
                size,
                limit,
            },
            other => Rejection::Malformed(other.to_string()),
        }
    }
}

/// A failure to decode a compressed value or a patch (see [`crate::codec`]).
///
/// Every variant is a refusal of untrusted bytes: none of them can be caused by a value
/// that [`crate::codec`] itself encoded with the same base.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The frame header declares a decoded size over the limit (a decompression bomb),
    /// or a plain value is over it: refused before anything was decoded or allocated.
    #[error("compressed value declares {declared} bytes, limit {limit}")]
    DeclaredTooLarge {
        /// The size the frame header declares.
        declared: u64,
        /// The limit.
        limit: usize,
    },
    /// Decoding would produce more than the limit (the header gave no size): decoding
    /// stopped at the limit and everything was dropped.
    #[error("compressed value expands past the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// A frame without a declared size asks for a decoding window larger than the limit
    /// needs (zstd keeps that much history while decoding): refused before decoding.
    #[error("compressed value needs a decoding window over what the limit of {limit} bytes needs")]
    WindowTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The bytes are not one standard zstd frame (wrong magic, a skippable or legacy
    /// frame, or bytes after the frame).
    #[error("not a zstd frame: {0}")]
    NotZstd(&'static str),
    /// A zstd frame that does not decode: truncated, corrupt, failing its checksum, or a
    /// patch applied to another base than the one it was made from.
    #[error("corrupt zstd frame: {0}")]
    Corrupt(&'static str),
}

impl From<CodecError> for Rejection {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::DeclaredTooLarge { declared, limit } => Rejection::TooLarge {
                what: "decoded value",
                size: usize::try_from(declared).unwrap_or(usize::MAX),
                limit,
            },
            CodecError::TooLarge { limit } | CodecError::WindowTooLarge { limit } => {
                Rejection::TooLarge {
                    what: "decoded value",
                    size: limit.saturating_add(1),
                    limit,
                }
            }
            other => Rejection::Malformed(other.to_string()),
        }
    }
}

/// A failure of a record store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The item was refused by the rules.
    #[error("rejected: {0}")]
    Rejected(#[from] Rejection),
    /// The on-disk database failed.
    #[error("database error: {0}")]
    Database(String),
    /// A stored record could not be decoded (corruption).
    #[error("corrupt stored record: {0}")]
    Corrupt(#[from] DecodeError),
    /// The on-disk store was written in another format (by another version).
    #[error(
        "store {} has on-disk format {}, this version needs format {expected}: \
         the format changed; move the file aside (its items come back from the network)",
        path.display(),
        found.map_or_else(|| "1 (unversioned)".to_owned(), |v| v.to_string())
    )]
    IncompatibleFormat {
        /// The database file.
        path: std::path::PathBuf,
        /// The format version found (`None`: the unversioned format 1).
        found: Option<u64>,
        /// The format version this build reads and writes.
        expected: u64,
    },
    /// The on-disk store file is damaged (truncated, overwritten, failing redb's
    /// checksums, or holding records that do not decode). Nothing was changed to hide
    /// it: the operator moves the file aside ([`crate::store::move_aside`]) and the
    /// node starts empty and refills from the network.
    #[error(
        "{}: the item store is damaged ({detail}); move it aside to start empty and \
         rebuild from the network (dht-node run --repair-store does this)",
        path.display()
    )]
    Damaged {
        /// The database file.
        path: std::path::PathBuf,
        /// What was found wrong.
        detail: String,
    },
    /// The store was closed.
    #[error("store is closed")]
    Closed,
}

impl StoreError {
    /// The rejection, when the error is one.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            StoreError::Rejected(r) => Some(r),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_round_trip_through_tags_and_names() {
        for code in ReasonCode::ALL {
            assert_eq!(ReasonCode::from_tag(code.tag()), Some(code));
            assert_eq!(ReasonCode::from_name(code.as_str()), Some(code));
        }
        assert_eq!(ReasonCode::from_tag(0), None);
        assert_eq!(ReasonCode::from_tag(999), None);
    }
}
