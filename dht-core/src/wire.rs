//! Protobuf (prost) wire encoding of items.
//!
//! Decoding checks the input length against the configured limit before parsing, so
//! hostile bytes can neither panic the decoder nor make it allocate more than the limit
//! (prost only allocates for length-delimited fields that fit in the input).

use bytes::Bytes;
use prost::Message;

use crate::error::DecodeError;
use crate::item::{ItemBody, MutableItem, MAX_SALT_LEN};
use crate::keys::{PublicKey, Scheme, Signature};
use crate::validation::DEFAULT_MAX_VALUE_LEN;

/// Room for everything in an encoded item besides the value.
pub const ITEM_OVERHEAD: usize = 512;

/// Current envelope version.
pub const ENVELOPE_VERSION: u32 = 1;

/// A MutableItem on the wire.
#[derive(Clone, PartialEq, Message)]
pub struct ItemProto {
    /// Scheme tag of the subject key (1 ed25519, 2 secp256k1).
    #[prost(uint32, tag = "1")]
    pub subject_scheme: u32,
    /// Raw subject key.
    #[prost(bytes = "bytes", tag = "2")]
    pub subject: Bytes,
    /// Salt.
    #[prost(bytes = "bytes", tag = "3")]
    pub salt: Bytes,
    /// Sequence number.
    #[prost(uint64, tag = "4")]
    pub seq: u64,
    /// 0 value, 1 tombstone.
    #[prost(uint32, tag = "5")]
    pub kind: u32,
    /// Value bytes (empty for a tombstone).
    #[prost(bytes = "bytes", tag = "6")]
    pub value: Bytes,
    /// Scheme tag of the signer key.
    #[prost(uint32, tag = "7")]
    pub signer_scheme: u32,
    /// Raw signer key.
    #[prost(bytes = "bytes", tag = "8")]
    pub signer: Bytes,
    /// Raw signature.
    #[prost(bytes = "bytes", tag = "9")]
    pub signature: Bytes,
}

/// An item with the metadata that travels with it; room for future fields.
#[derive(Clone, PartialEq, Message)]
pub struct EnvelopeProto {
    /// Envelope version ([`ENVELOPE_VERSION`]).
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The item.
    #[prost(message, optional, tag = "2")]
    pub item: Option<ItemProto>,
    /// Wall-clock expiry the item carries (unix ms, 0 = none given).
    #[prost(uint64, tag = "3")]
    pub expires_at_ms: u64,
}

/// An item and its expiry, as carried by an [`EnvelopeProto`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The item.
    pub item: MutableItem,
    /// Wall-clock expiry, if given.
    pub expires_at_ms: Option<u64>,
}

/// Size limits applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted value.
    pub max_value_len: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_value_len: DEFAULT_MAX_VALUE_LEN,
        }
    }
}

impl DecodeLimits {
    /// Largest accepted encoded message.
    pub fn max_message_len(&self) -> usize {
        self.max_value_len.saturating_add(ITEM_OVERHEAD)
    }

    fn check_len(&self, len: usize) -> Result<(), DecodeError> {
        let limit = self.max_message_len();
        if len > limit {
            return Err(DecodeError::TooLarge { size: len, limit });
        }
        Ok(())
    }
}

impl From<&MutableItem> for ItemProto {
    fn from(item: &MutableItem) -> Self {
        ItemProto {
            subject_scheme: item.subject.scheme().tag(),
            subject: Bytes::copy_from_slice(item.subject.as_bytes()),
            salt: item.salt.clone(),
            seq: item.seq,
            kind: u32::from(item.body.kind_tag()),
            value: match &item.body {
                ItemBody::Value(v) => v.clone(),
                ItemBody::Tombstone => Bytes::new(),
            },
            signer_scheme: item.signer.scheme().tag(),
            signer: Bytes::copy_from_slice(item.signer.as_bytes()),
            signature: Bytes::copy_from_slice(item.signature.as_bytes()),
        }
    }
}

impl ItemProto {
    /// Converts to an item, checking every field's shape and the limits.
    pub fn into_item(self, limits: &DecodeLimits) -> Result<MutableItem, DecodeError> {
        let field = |what: &str, e: crate::KeyError| DecodeError::Field(format!("{what}: {e}"));
        let subject_scheme =
            Scheme::from_tag(self.subject_scheme).map_err(|e| field("subject", e))?;
        let subject = PublicKey::from_scheme_bytes(subject_scheme, &self.subject)
            .map_err(|e| field("subject", e))?;
        let signer_scheme = Scheme::from_tag(self.signer_scheme).map_err(|e| field("signer", e))?;
        let signer = PublicKey::from_scheme_bytes(signer_scheme, &self.signer)
            .map_err(|e| field("signer", e))?;
        let signature =
            Signature::from_bytes(&self.signature).map_err(|e| field("signature", e))?;
        if self.salt.len() > MAX_SALT_LEN {
            return Err(DecodeError::Field(format!(
                "salt of {} bytes, limit {MAX_SALT_LEN}",
                self.salt.len()
            )));
        }
        if self.value.len() > limits.max_value_len {
            return Err(DecodeError::TooLarge {
                size: self.value.len(),
                limit: limits.max_value_len,
            });
        }
        let body = match self.kind {
            0 => ItemBody::Value(self.value),
            1 if self.value.is_empty() => ItemBody::Tombstone,
            1 => return Err(DecodeError::Field("tombstone carries a value".into())),
            k => return Err(DecodeError::Field(format!("unknown item kind {k}"))),
        };
        Ok(MutableItem {
            subject,
            salt: self.salt,
            seq: self.seq,
            body,
            signer,
            signature,
        })
    }
}

impl EnvelopeProto {
    /// Converts to an [`Envelope`], checking every field.
    pub fn into_envelope(self, limits: &DecodeLimits) -> Result<Envelope, DecodeError> {
        if self.version != ENVELOPE_VERSION {
            return Err(DecodeError::Field(format!(
                "unsupported envelope version {}",
                self.version
            )));
        }
        let item = self
            .item
            .ok_or_else(|| DecodeError::Field("envelope without item".into()))?
            .into_item(limits)?;
        Ok(Envelope {
            item,
            expires_at_ms: (self.expires_at_ms != 0).then_some(self.expires_at_ms),
        })
    }
}

/// Encodes an item.
pub fn encode_item(item: &MutableItem) -> Vec<u8> {
    ItemProto::from(item).encode_to_vec()
}

/// Decodes an item from untrusted bytes. Never panics.
pub fn decode_item(bytes: &[u8], limits: &DecodeLimits) -> Result<MutableItem, DecodeError> {
    limits.check_len(bytes.len())?;
    ItemProto::decode(bytes)
        .map_err(|e| DecodeError::Protobuf(e.to_string()))?
        .into_item(limits)
}

/// Encodes an item with its expiry.
pub fn encode_envelope(item: &MutableItem, expires_at_ms: Option<u64>) -> Vec<u8> {
    EnvelopeProto {
        version: ENVELOPE_VERSION,
        item: Some(ItemProto::from(item)),
        expires_at_ms: expires_at_ms.unwrap_or(0),
    }
    .encode_to_vec()
}

/// Decodes an envelope from untrusted bytes. Never panics.
pub fn decode_envelope(bytes: &[u8], limits: &DecodeLimits) -> Result<Envelope, DecodeError> {
    limits.check_len(bytes.len())?;
    EnvelopeProto::decode(bytes)
        .map_err(|e| DecodeError::Protobuf(e.to_string()))?
        .into_envelope(limits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;

    #[test]
    fn round_trip_value_and_tombstone() {
        let key = SigningKey::generate_secp256k1();
        let item = MutableItem::sign(&key, key.public_key(), "tp", 7, vec![1u8; 3000]);
        let limits = DecodeLimits::default();
        assert_eq!(decode_item(&encode_item(&item), &limits).unwrap(), item);
        let tomb = MutableItem::tombstone(&key, key.public_key(), "tp", 8);
        let env = decode_envelope(&encode_envelope(&tomb, Some(42)), &limits).unwrap();
        assert_eq!(env.item, tomb);
        assert_eq!(env.expires_at_ms, Some(42));
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let limits = DecodeLimits { max_value_len: 10 };
        let big = vec![0u8; 10_000];
        assert!(matches!(
            decode_item(&big, &limits),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_is_an_error() {
        let limits = DecodeLimits::default();
        for bytes in [&b"\xff\xff\xff"[..], b"", b"\x0a\x05abc"] {
            assert!(decode_item(bytes, &limits).is_err());
            assert!(decode_envelope(bytes, &limits).is_err());
        }
    }
}
