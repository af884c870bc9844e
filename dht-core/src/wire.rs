//! Protobuf (prost) wire encoding of items.
//!
//! Decoding checks the input length against the configured limit before parsing, so
//! hostile bytes can neither panic the decoder nor make it allocate more than the limit
//! (prost only allocates for length-delimited fields that fit in the input).
//!
//! Version 2: an item carries its signed expiry (field 10, required); items without it
//! (v1, whose expiry was not signed) are refused with [`DecodeError::MissingExpiry`].

use bytes::Bytes;
use prost::Message;

use crate::error::DecodeError;
use crate::item::{ItemBody, MutableItem, MAX_SALT_LEN};
use crate::keys::{PublicKey, Scheme, Signature};
use crate::validation::DEFAULT_MAX_VALUE_LEN;

/// Room for everything in an encoded item besides the value.
pub const ITEM_OVERHEAD: usize = 512;

/// Current envelope version (2: items carry a signed expiry).
pub const ENVELOPE_VERSION: u32 = 2;

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
    /// The publisher's signed expiry, unix ms (required: 0 is refused).
    #[prost(uint64, tag = "10")]
    pub expires_at_ms: u64,
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
    /// The sending replica's deadline for the item (unix ms, 0 = none given); never
    /// later than the item's signed expiry.
    #[prost(uint64, tag = "3")]
    pub expires_at_ms: u64,
}

/// An item and a replica's deadline for it, as carried by an [`EnvelopeProto`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The item.
    pub item: MutableItem,
    /// The replica's deadline, if given; at most the item's signed expiry (a later one
    /// is lowered to it on encoding and decoding).
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
            expires_at_ms: item.expires_at_ms,
        }
    }
}

impl ItemProto {
    /// Converts to an item, checking every field's shape and the limits. An item
    /// without a signed expiry is [`DecodeError::MissingExpiry`].
    pub fn into_item(self, limits: &DecodeLimits) -> Result<MutableItem, DecodeError> {
        if self.expires_at_ms == 0 {
            return Err(DecodeError::MissingExpiry);
        }
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
            expires_at_ms: self.expires_at_ms,
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
        let expires_at_ms =
            (self.expires_at_ms != 0).then(|| self.expires_at_ms.min(item.expires_at_ms));
        Ok(Envelope {
            item,
            expires_at_ms,
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

/// Encodes an item with a replica's deadline for it (lowered to the item's signed
/// expiry if later).
pub fn encode_envelope(item: &MutableItem, expires_at_ms: Option<u64>) -> Vec<u8> {
    EnvelopeProto {
        version: ENVELOPE_VERSION,
        item: Some(ItemProto::from(item)),
        expires_at_ms: expires_at_ms.map_or(0, |t| t.min(item.expires_at_ms)),
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
        // The signed expiry travels; a replica deadline past it is lowered to it.
        let until = MutableItem::sign_until(&key, key.public_key(), "tp", 9, "v", 1_234);
        let decoded = decode_item(&encode_item(&until), &limits).unwrap();
        assert_eq!(decoded.expires_at_ms, 1_234);
        let env = decode_envelope(&encode_envelope(&until, Some(5_000)), &limits).unwrap();
        assert_eq!(env.expires_at_ms, Some(1_234));
        let mut proto = EnvelopeProto::decode(&encode_envelope(&until, None)[..]).unwrap();
        proto.expires_at_ms = 9_999;
        let env = decode_envelope(&proto.encode_to_vec(), &limits).unwrap();
        assert_eq!(env.expires_at_ms, Some(1_234));
    }

    #[test]
    fn an_item_without_a_signed_expiry_is_refused() {
        let key = SigningKey::generate_ed25519();
        let item = MutableItem::sign(&key, key.public_key(), "tp", 1, "v");
        let mut proto = ItemProto::from(&item);
        proto.expires_at_ms = 0;
        let limits = DecodeLimits::default();
        let err = decode_item(&proto.encode_to_vec(), &limits).unwrap_err();
        assert_eq!(err, DecodeError::MissingExpiry);
        assert!(err.to_string().contains("expir"), "{err}");
        let env = EnvelopeProto {
            version: ENVELOPE_VERSION,
            item: Some(proto),
            expires_at_ms: 0,
        };
        assert_eq!(
            decode_envelope(&env.encode_to_vec(), &limits),
            Err(DecodeError::MissingExpiry)
        );
        // A version 1 envelope is refused outright.
        let v1 = EnvelopeProto {
            version: 1,
            item: Some(ItemProto::from(&item)),
            expires_at_ms: 0,
        };
        assert!(matches!(
            decode_envelope(&v1.encode_to_vec(), &limits),
            Err(DecodeError::Field(_))
        ));
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
