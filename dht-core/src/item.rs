//! The salted MutableItem: a signed, versioned value stored at
//! `target = SHA256(subject || salt)`, with an expiry its publisher signed.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::keys::{PublicKey, Signature, SigningKey};
use crate::validation::{now_ms, DEFAULT_TTL};

/// Maximum salt length in bytes (as in BEP44).
pub const MAX_SALT_LEN: usize = 64;

/// The salt of a transport list item: the full transport list of one edge.
pub const SALT_TRANSPORTS: &[u8] = b"tp";
/// The salt of a service list item: the full service list of one visor.
pub const SALT_SERVICES: &[u8] = b"svc";
/// The salt of a DMSG discovery entry.
pub const SALT_DMSG: &[u8] = b"dmsg";

/// Domain separator prefixed to every signed payload, so that item signatures can never
/// be confused with signatures the same key makes for anything else.
///
/// Version 2 binds the publisher's expiry (see [`signing_payload`]). Items signed under
/// v1 (`skywire-dht/mutable-item/v1\0`, no signed expiry) are refused: their
/// signatures do not verify, and their encodings lack the expiry field.
pub const SIGNING_DOMAIN: &[u8] = b"skywire-dht/mutable-item/v2\0";

/// A 32-byte DHT key: `SHA256(subject || salt)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target(pub [u8; 32]);

impl Target {
    /// The target of a subject and salt.
    pub fn of(subject: &PublicKey, salt: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(subject.as_bytes());
        h.update(salt);
        Target(h.finalize().into())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Builds a target from a 32-byte slice.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Target)
    }

    /// The XOR distance to another target (Kademlia metric), as big-endian bytes.
    pub fn distance(&self, other: &Target) -> [u8; 32] {
        let mut d = [0u8; 32];
        for (i, b) in d.iter_mut().enumerate() {
            *b = self.0[i] ^ other.0[i];
        }
        d
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Target({})", hex::encode(self.0))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl FromStr for Target {
    type Err = crate::KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v = hex::decode(s.trim()).map_err(|_| crate::KeyError::BadHex)?;
        Target::from_slice(&v).ok_or(crate::KeyError::BadLength(v.len()))
    }
}

/// What an item carries: a value, or a tombstone (a signed delete).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum ItemBody {
    /// An opaque value.
    Value(Bytes),
    /// The subject's value under this salt was deleted at this seq.
    Tombstone,
}

impl ItemBody {
    /// The wire tag of the kind (0 value, 1 tombstone).
    pub fn kind_tag(&self) -> u8 {
        match self {
            ItemBody::Value(_) => 0,
            ItemBody::Tombstone => 1,
        }
    }

    /// The value bytes (empty for a tombstone).
    pub fn value_bytes(&self) -> &[u8] {
        match self {
            ItemBody::Value(v) => v,
            ItemBody::Tombstone => &[],
        }
    }

    /// Whether this is a tombstone.
    pub fn is_tombstone(&self) -> bool {
        matches!(self, ItemBody::Tombstone)
    }
}

impl fmt::Debug for ItemBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ItemBody::Value(v) => write!(f, "Value({} bytes)", v.len()),
            ItemBody::Tombstone => f.write_str("Tombstone"),
        }
    }
}

/// A signed, versioned value about `subject`, namespaced by `salt`.
///
/// Construct one with [`MutableItem::sign`] (or [`MutableItem::tombstone`]); items
/// received from elsewhere are checked with [`crate::Validator::validate`].
///
/// The expiry is the publisher's: it is signed, so no replica or third party can extend
/// an item's life by re-posting it. To keep an item alive the publisher signs it again
/// with a higher seq and a later expiry.
#[derive(Clone, PartialEq, Eq)]
pub struct MutableItem {
    /// The key the item is about.
    pub subject: PublicKey,
    /// The namespace, at most [`MAX_SALT_LEN`] bytes.
    pub salt: Bytes,
    /// Version, ordered per target (see [`crate::precedence`]).
    pub seq: u64,
    /// The publisher's expiry, unix milliseconds, covered by the signature. No store
    /// keeps or serves the item past it.
    pub expires_at_ms: u64,
    /// A value or a tombstone.
    pub body: ItemBody,
    /// Who signed: the subject itself or an authorized publisher for the salt.
    pub signer: PublicKey,
    /// Signature by `signer` over [`MutableItem::signing_payload`].
    pub signature: Signature,
}

impl MutableItem {
    /// Signs a value for `subject` under `salt` at `seq` with `key`, expiring
    /// [`DEFAULT_TTL`] from now.
    pub fn sign(
        key: &SigningKey,
        subject: PublicKey,
        salt: impl Into<Bytes>,
        seq: u64,
        value: impl Into<Bytes>,
    ) -> Self {
        Self::sign_until(key, subject, salt, seq, value, default_expiry())
    }

    /// Signs a value for `subject` under `salt` at `seq`, expiring at `expires_at_ms`
    /// (unix ms).
    pub fn sign_until(
        key: &SigningKey,
        subject: PublicKey,
        salt: impl Into<Bytes>,
        seq: u64,
        value: impl Into<Bytes>,
        expires_at_ms: u64,
    ) -> Self {
        Self::sign_body_until(
            key,
            subject,
            salt.into(),
            seq,
            ItemBody::Value(value.into()),
            expires_at_ms,
        )
    }

    /// Signs a tombstone (a delete) for `subject` under `salt` at `seq`, expiring
    /// [`DEFAULT_TTL`] from now.
    pub fn tombstone(
        key: &SigningKey,
        subject: PublicKey,
        salt: impl Into<Bytes>,
        seq: u64,
    ) -> Self {
        Self::tombstone_until(key, subject, salt, seq, default_expiry())
    }

    /// Signs a tombstone for `subject` under `salt` at `seq`, expiring at
    /// `expires_at_ms` (unix ms).
    pub fn tombstone_until(
        key: &SigningKey,
        subject: PublicKey,
        salt: impl Into<Bytes>,
        seq: u64,
        expires_at_ms: u64,
    ) -> Self {
        Self::sign_body_until(
            key,
            subject,
            salt.into(),
            seq,
            ItemBody::Tombstone,
            expires_at_ms,
        )
    }

    /// Signs any body, expiring [`DEFAULT_TTL`] from now.
    pub fn sign_body(
        key: &SigningKey,
        subject: PublicKey,
        salt: Bytes,
        seq: u64,
        body: ItemBody,
    ) -> Self {
        Self::sign_body_until(key, subject, salt, seq, body, default_expiry())
    }

    /// Signs any body, expiring at `expires_at_ms` (unix ms).
    pub fn sign_body_until(
        key: &SigningKey,
        subject: PublicKey,
        salt: Bytes,
        seq: u64,
        body: ItemBody,
        expires_at_ms: u64,
    ) -> Self {
        let payload = signing_payload(&subject, &salt, seq, expires_at_ms, &body);
        MutableItem {
            subject,
            salt,
            seq,
            expires_at_ms,
            body,
            signer: key.public_key(),
            signature: key.sign(&payload),
        }
    }

    /// The target this item is stored at.
    pub fn target(&self) -> Target {
        Target::of(&self.subject, &self.salt)
    }

    /// The bytes the signature covers (see [`signing_payload`]).
    pub fn signing_payload(&self) -> Vec<u8> {
        signing_payload(
            &self.subject,
            &self.salt,
            self.seq,
            self.expires_at_ms,
            &self.body,
        )
    }

    /// The value, or `None` for a tombstone.
    pub fn value(&self) -> Option<&Bytes> {
        match &self.body {
            ItemBody::Value(v) => Some(v),
            ItemBody::Tombstone => None,
        }
    }

    /// Whether the item is a tombstone.
    pub fn is_tombstone(&self) -> bool {
        self.body.is_tombstone()
    }

    /// Whether two items carry the same content (subject, salt, seq, kind, value),
    /// regardless of expiry, of who signed or how.
    pub fn same_content(&self, other: &MutableItem) -> bool {
        self.subject == other.subject
            && self.salt == other.salt
            && self.seq == other.seq
            && self.body == other.body
    }

    /// Whether two items have the same signing payload (content and expiry), regardless
    /// of who signed or how.
    pub fn same_signed_bytes(&self, other: &MutableItem) -> bool {
        self.same_content(other) && self.expires_at_ms == other.expires_at_ms
    }

    /// Approximate bytes this item occupies in a store (for quotas).
    pub fn stored_size(&self) -> usize {
        self.subject.as_bytes().len()
            + self.salt.len()
            + 16
            + self.body.value_bytes().len()
            + self.signer.as_bytes().len()
            + self.signature.as_bytes().len()
    }
}

impl fmt::Debug for MutableItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutableItem")
            .field("subject", &self.subject)
            .field("salt", &String::from_utf8_lossy(&self.salt))
            .field("seq", &self.seq)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("body", &self.body)
            .field("signer", &self.signer)
            .finish()
    }
}

/// The domain-separated bytes an item signature covers. Every field that decides what
/// the item means is bound, length-prefixed:
///
/// ```text
/// SIGNING_DOMAIN
/// || scheme(subject): u8 || len(subject): u8 || subject
/// || len(salt): u8 || salt
/// || seq: u64 big-endian
/// || expires_at_ms: u64 big-endian
/// || kind: u8 (0 value, 1 tombstone)
/// || len(value): u64 big-endian || value
/// ```
///
/// Because the subject is inside, an item signed for one subject never verifies under
/// another (the replay the Go DHT allows); because the expiry is inside, nobody but the
/// publisher can change how long the item lives.
pub fn signing_payload(
    subject: &PublicKey,
    salt: &[u8],
    seq: u64,
    expires_at_ms: u64,
    body: &ItemBody,
) -> Vec<u8> {
    let value = body.value_bytes();
    let mut p =
        Vec::with_capacity(SIGNING_DOMAIN.len() + 2 + 33 + 1 + salt.len() + 25 + value.len());
    p.extend_from_slice(SIGNING_DOMAIN);
    p.push(subject.scheme().tag() as u8);
    p.push(subject.as_bytes().len() as u8);
    p.extend_from_slice(subject.as_bytes());
    // Salt length is bounded by validation; saturate rather than wrap for oversize salts
    // (which validation rejects before any signature is checked).
    p.push(u8::try_from(salt.len()).unwrap_or(u8::MAX));
    p.extend_from_slice(salt);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&expires_at_ms.to_be_bytes());
    p.push(body.kind_tag());
    p.extend_from_slice(&(value.len() as u64).to_be_bytes());
    p.extend_from_slice(value);
    p
}

/// The expiry the constructors without an explicit one sign: [`DEFAULT_TTL`] from now.
fn default_expiry() -> u64 {
    now_ms().saturating_add(DEFAULT_TTL.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_is_sha256_of_subject_and_salt() {
        let key = SigningKey::generate_secp256k1();
        let pk = key.public_key();
        let mut h = Sha256::new();
        h.update(pk.as_bytes());
        h.update(b"tp");
        let expected: [u8; 32] = h.finalize().into();
        assert_eq!(Target::of(&pk, b"tp").0, expected);
        assert_ne!(Target::of(&pk, b"tp"), Target::of(&pk, b"svc"));
    }

    #[test]
    fn payload_binds_every_field() {
        let a = SigningKey::generate_ed25519().public_key();
        let b = SigningKey::generate_ed25519().public_key();
        let v = ItemBody::Value(Bytes::from_static(b"v"));
        let base = signing_payload(&a, b"tp", 1, 9, &v);
        assert!(base.starts_with(b"skywire-dht/mutable-item/v2\0"));
        assert_ne!(base, signing_payload(&b, b"tp", 1, 9, &v));
        assert_ne!(base, signing_payload(&a, b"svc", 1, 9, &v));
        assert_ne!(base, signing_payload(&a, b"tp", 2, 9, &v));
        assert_ne!(base, signing_payload(&a, b"tp", 1, 10, &v));
        assert_ne!(base, signing_payload(&a, b"tp", 1, 9, &ItemBody::Tombstone));
        assert_ne!(
            base,
            signing_payload(&a, b"tp", 1, 9, &ItemBody::Value(Bytes::from_static(b"w")))
        );
        // An empty value and a tombstone differ too.
        assert_ne!(
            signing_payload(&a, b"tp", 1, 9, &ItemBody::Value(Bytes::new())),
            signing_payload(&a, b"tp", 1, 9, &ItemBody::Tombstone)
        );
    }

    #[test]
    fn the_expiry_follows_the_seq_big_endian() {
        let a = SigningKey::generate_ed25519().public_key();
        let p = signing_payload(&a, b"tp", 7, 0x0102_0304_0506_0708, &ItemBody::Tombstone);
        let at = SIGNING_DOMAIN.len() + 2 + a.as_bytes().len() + 1 + 2;
        assert_eq!(&p[at..at + 8], &7u64.to_be_bytes());
        assert_eq!(&p[at + 8..at + 16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(p[at + 16], 1, "then the kind");
    }

    #[test]
    fn changing_the_expiry_breaks_the_signature() {
        let key = SigningKey::generate_secp256k1();
        let item = MutableItem::sign_until(&key, key.public_key(), "tp", 1, "v", 1_000);
        assert_eq!(item.expires_at_ms, 1_000);
        key.public_key()
            .verify(&item.signing_payload(), &item.signature)
            .unwrap();
        let later = MutableItem {
            expires_at_ms: 2_000,
            ..item.clone()
        };
        assert!(!later.same_signed_bytes(&item));
        assert!(later.same_content(&item));
        assert!(key
            .public_key()
            .verify(&later.signing_payload(), &later.signature)
            .is_err());
    }
}
