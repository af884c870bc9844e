//! The JSON form of an item, for HTTP and tooling.
//!
//! ```json
//! {
//!   "target": "<64 hex>",            // informative on output; checked if given on input
//!   "subject": "<64 or 66 hex>",
//!   "salt": "tp",                    // UTF-8 salts as text ...
//!   "salt_hex": "ff00",              // ... any other salt as hex, instead of "salt"
//!   "seq": 5,
//!   "expires_at_ms": 1700000000000,  // the publisher's signed expiry, unix ms (required)
//!   "kind": "value",                 // or "tombstone"
//!   "value": "<base64, standard alphabet, padded>",   // absent for a tombstone
//!   "signer": "<64 or 66 hex>",
//!   "signature": "<128 or 130 hex>"
//! }
//! ```
//!
//! Keys and signatures are lowercase hex, as Skywire writes them. The value is base64
//! because it is opaque bytes (for "tp", "svc" and "dmsg" it is itself JSON; the gateway
//! serves it decoded in the discoveries' shapes). Unknown fields are ignored.

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::DecodeError;
use crate::item::{ItemBody, MutableItem, Target, MAX_SALT_LEN};
use crate::keys::{PublicKey, Signature};

/// Kind of an item in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KindJson {
    /// A value.
    Value,
    /// A signed delete.
    Tombstone,
}

/// The serde form of an item; see the module docs for the field choices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemJson {
    /// Target, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Subject key, hex.
    pub subject: PublicKey,
    /// UTF-8 salt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// Non-UTF-8 salt, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt_hex: Option<String>,
    /// Sequence number.
    pub seq: u64,
    /// The publisher's signed expiry, unix ms (required, not 0).
    pub expires_at_ms: u64,
    /// Value or tombstone.
    pub kind: KindJson,
    /// Base64 value (absent for tombstones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Signer key, hex.
    pub signer: PublicKey,
    /// Signature, hex.
    pub signature: String,
}

impl From<&MutableItem> for ItemJson {
    fn from(item: &MutableItem) -> Self {
        let (salt, salt_hex) = match std::str::from_utf8(&item.salt) {
            Ok(s) => (Some(s.to_owned()), None),
            Err(_) => (None, Some(hex::encode(&item.salt))),
        };
        ItemJson {
            target: Some(item.target().to_string()),
            subject: item.subject,
            salt,
            salt_hex,
            seq: item.seq,
            expires_at_ms: item.expires_at_ms,
            kind: if item.is_tombstone() {
                KindJson::Tombstone
            } else {
                KindJson::Value
            },
            value: item
                .value()
                .map(|v| base64::engine::general_purpose::STANDARD.encode(v)),
            signer: item.signer,
            signature: item.signature.to_hex(),
        }
    }
}

impl TryFrom<ItemJson> for MutableItem {
    type Error = DecodeError;

    fn try_from(j: ItemJson) -> Result<Self, Self::Error> {
        let bad = |m: String| DecodeError::Field(m);
        if j.expires_at_ms == 0 {
            return Err(DecodeError::MissingExpiry);
        }
        let salt = match (j.salt, j.salt_hex) {
            (Some(s), None) => Bytes::from(s.into_bytes()),
            (None, Some(h)) => {
                Bytes::from(hex::decode(h).map_err(|_| bad("salt_hex is not hex".into()))?)
            }
            (None, None) => Bytes::new(),
            (Some(_), Some(_)) => return Err(bad("give either salt or salt_hex, not both".into())),
        };
        if salt.len() > MAX_SALT_LEN {
            return Err(bad(format!(
                "salt of {} bytes, limit {MAX_SALT_LEN}",
                salt.len()
            )));
        }
        let body = match (j.kind, j.value) {
            (KindJson::Value, Some(v)) => ItemBody::Value(Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map_err(|e| bad(format!("value is not base64: {e}")))?,
            )),
            (KindJson::Value, None) => return Err(bad("value item without value".into())),
            (KindJson::Tombstone, None) => ItemBody::Tombstone,
            (KindJson::Tombstone, Some(_)) => return Err(bad("tombstone carries a value".into())),
        };
        let signature: Signature = j
            .signature
            .parse()
            .map_err(|e| bad(format!("signature: {e}")))?;
        let item = MutableItem {
            subject: j.subject,
            salt,
            seq: j.seq,
            expires_at_ms: j.expires_at_ms,
            body,
            signer: j.signer,
            signature,
        };
        if let Some(t) = j.target {
            let given: Target = t.parse().map_err(|e| bad(format!("target: {e}")))?;
            if given != item.target() {
                return Err(bad("target does not match subject and salt".into()));
            }
        }
        Ok(item)
    }
}

/// Serialises an item to JSON.
pub fn to_json(item: &MutableItem) -> String {
    serde_json::to_string(&ItemJson::from(item)).expect("ItemJson always serialises")
}

/// Parses an item from untrusted JSON. Never panics.
pub fn from_json(text: &str) -> Result<MutableItem, DecodeError> {
    let j: ItemJson =
        serde_json::from_str(text).map_err(|e| DecodeError::Field(format!("json: {e}")))?;
    MutableItem::try_from(j)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;

    #[test]
    fn round_trips_utf8_and_binary_salts_and_tombstones() {
        let key = SigningKey::generate_ed25519();
        for item in [
            MutableItem::sign(&key, key.public_key(), "tp", 1, "[]"),
            MutableItem::sign(&key, key.public_key(), vec![0xffu8, 0], 2, vec![0u8, 1, 2]),
            MutableItem::tombstone(&key, key.public_key(), "svc", 3),
        ] {
            assert_eq!(from_json(&to_json(&item)).unwrap(), item);
        }
        let text = to_json(&MutableItem::sign(&key, key.public_key(), "tp", 1, "[]"));
        assert!(text.contains("\"salt\":\"tp\""), "{text}");
        let until = MutableItem::sign_until(&key, key.public_key(), "tp", 1, "[]", 77);
        let text = to_json(&until);
        assert!(text.contains("\"expires_at_ms\":77"), "{text}");
        assert_eq!(from_json(&text).unwrap(), until);
    }

    #[test]
    fn the_signed_expiry_is_required() {
        let key = SigningKey::generate_ed25519();
        let item = MutableItem::sign(&key, key.public_key(), "tp", 1, "[]");
        let mut j: serde_json::Value = serde_json::from_str(&to_json(&item)).unwrap();
        j.as_object_mut().unwrap().remove("expires_at_ms");
        let err = from_json(&j.to_string()).unwrap_err();
        assert!(err.to_string().contains("expires_at_ms"), "{err}");
        j["expires_at_ms"] = 0.into();
        assert_eq!(from_json(&j.to_string()), Err(DecodeError::MissingExpiry));
    }

    #[test]
    fn wrong_target_is_refused() {
        let key = SigningKey::generate_ed25519();
        let item = MutableItem::sign(&key, key.public_key(), "tp", 1, "[]");
        let mut j = ItemJson::from(&item);
        j.target = Some("00".repeat(32));
        assert!(MutableItem::try_from(j).is_err());
        assert!(from_json("{not json").is_err());
        assert!(from_json("{}").is_err());
    }
}
