//! Public keys, signatures and signing keys of the two supported schemes.
//!
//! * ed25519 (32-byte keys, 64-byte signatures), signing the payload itself;
//! * secp256k1 in Skywire's "cipher" format: 33-byte compressed keys and 65-byte
//!   recoverable signatures `R || S || recovery_id` over SHA256 of the payload. A
//!   signature verifies when the key recovered from it equals the claimed key.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::error::KeyError;

/// Length of an ed25519 public key.
pub const ED25519_KEY_LEN: usize = 32;
/// Length of a compressed secp256k1 public key.
pub const SECP256K1_KEY_LEN: usize = 33;
/// Length of an ed25519 signature.
pub const ED25519_SIG_LEN: usize = 64;
/// Length of a Skywire secp256k1 recoverable signature.
pub const SECP256K1_SIG_LEN: usize = 65;

/// The signature scheme of a key or signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    /// ed25519 (RFC 8032).
    Ed25519,
    /// secp256k1 as Skywire's cipher package uses it.
    Secp256k1,
}

impl Scheme {
    /// The wire tag of the scheme.
    pub fn tag(self) -> u32 {
        match self {
            Scheme::Ed25519 => 1,
            Scheme::Secp256k1 => 2,
        }
    }

    /// The scheme of a wire tag.
    pub fn from_tag(tag: u32) -> Result<Self, KeyError> {
        match tag {
            1 => Ok(Scheme::Ed25519),
            2 => Ok(Scheme::Secp256k1),
            other => Err(KeyError::UnknownScheme(other)),
        }
    }
}

/// A public key: the subject of an item or the signer of one.
///
/// Keys are kept as raw bytes and only parsed into curve points when a signature is
/// checked, so a malformed key is a verification failure, never a panic.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PublicKey {
    /// An ed25519 public key.
    Ed25519([u8; ED25519_KEY_LEN]),
    /// A compressed secp256k1 public key (Skywire visor and service keys).
    Secp256k1([u8; SECP256K1_KEY_LEN]),
}

impl PublicKey {
    /// Builds a key from its raw bytes; the scheme follows from the length
    /// (32 bytes: ed25519, 33 bytes: secp256k1).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        match bytes.len() {
            ED25519_KEY_LEN => Ok(PublicKey::Ed25519(
                bytes.try_into().expect("length checked"),
            )),
            SECP256K1_KEY_LEN => {
                if bytes[0] != 0x02 && bytes[0] != 0x03 {
                    return Err(KeyError::NotCompressed);
                }
                Ok(PublicKey::Secp256k1(
                    bytes.try_into().expect("length checked"),
                ))
            }
            n => Err(KeyError::BadLength(n)),
        }
    }

    /// Builds a key of a given scheme from raw bytes.
    pub fn from_scheme_bytes(scheme: Scheme, bytes: &[u8]) -> Result<Self, KeyError> {
        let key = Self::from_bytes(bytes)?;
        if key.scheme() != scheme {
            return Err(KeyError::SchemeMismatch);
        }
        Ok(key)
    }

    /// Parses 64 (ed25519) or 66 (secp256k1) hex characters, refusing a key that is not
    /// a point of its curve ([`PublicKey::check_point`]): what interfaces taking a key from
    /// a user (HTTP, command line, configuration) accept.
    pub fn parse_strict(s: &str) -> Result<Self, KeyError> {
        if s.trim() != s {
            return Err(KeyError::BadHex);
        }
        let key: PublicKey = s.parse()?;
        key.check_point()?;
        Ok(key)
    }

    /// Whether the key is a point of its curve (a secp256k1 key that decompresses, an
    /// ed25519 key that decodes). An off-curve key can sign nothing; parsing from the wire
    /// stays lenient (such a key fails verification) but user input is refused.
    pub fn check_point(&self) -> Result<(), KeyError> {
        match self {
            PublicKey::Ed25519(b) => ed25519_dalek::VerifyingKey::from_bytes(b)
                .map(drop)
                .map_err(|_| KeyError::InvalidKey),
            PublicKey::Secp256k1(b) => secp256k1::PublicKey::from_slice(b)
                .map(drop)
                .map_err(|_| KeyError::InvalidKey),
        }
    }

    /// The raw key bytes (32 or 33).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            PublicKey::Ed25519(b) => b,
            PublicKey::Secp256k1(b) => b,
        }
    }

    /// The scheme of this key.
    pub fn scheme(&self) -> Scheme {
        match self {
            PublicKey::Ed25519(_) => Scheme::Ed25519,
            PublicKey::Secp256k1(_) => Scheme::Secp256k1,
        }
    }

    /// Lowercase hex of the raw key bytes, as Skywire writes keys in JSON.
    pub fn to_hex(&self) -> String {
        hex::encode(self.as_bytes())
    }

    /// Checks `signature` over `payload` under this key.
    pub fn verify(&self, payload: &[u8], signature: &Signature) -> Result<(), KeyError> {
        match (self, signature) {
            (PublicKey::Ed25519(key), Signature::Ed25519(sig)) => {
                let key = ed25519_dalek::VerifyingKey::from_bytes(key)
                    .map_err(|_| KeyError::InvalidKey)?;
                let sig = ed25519_dalek::Signature::from_bytes(sig);
                key.verify_strict(payload, &sig)
                    .map_err(|_| KeyError::BadSignature)
            }
            (PublicKey::Secp256k1(key), Signature::Secp256k1(sig)) => {
                let digest: [u8; 32] = Sha256::digest(payload).into();
                let recovered = recover_skywire(&digest, sig)?;
                if recovered.serialize() == *key {
                    Ok(())
                } else {
                    Err(KeyError::BadSignature)
                }
            }
            _ => Err(KeyError::SchemeMismatch),
        }
    }
}

/// Recovers the signer of a Skywire signature over a 32-byte digest.
fn recover_skywire(
    digest: &[u8; 32],
    sig: &[u8; SECP256K1_SIG_LEN],
) -> Result<secp256k1::PublicKey, KeyError> {
    use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
    let recid = RecoveryId::from_i32(i32::from(sig[64])).map_err(|_| KeyError::BadSignature)?;
    let rsig = RecoverableSignature::from_compact(&sig[..64], recid)
        .map_err(|_| KeyError::BadSignature)?;
    // Skywire (like Ethereum) only produces low-S signatures; reject the malleable twin.
    let mut normal = rsig.to_standard();
    normal.normalize_s();
    if normal.serialize_compact()[..] != sig[..64] {
        return Err(KeyError::BadSignature);
    }
    let msg = secp256k1::Message::from_digest(*digest);
    secp256k1::SECP256K1
        .recover_ecdsa(&msg, &rsig)
        .map_err(|_| KeyError::BadSignature)
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}({})", self.scheme(), self.to_hex())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    /// Parses 64 (ed25519) or 66 (secp256k1) hex characters.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s.trim()).map_err(|_| KeyError::BadHex)?;
        Self::from_bytes(&bytes)
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A signature of one of the two schemes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signature {
    /// An ed25519 signature.
    Ed25519([u8; ED25519_SIG_LEN]),
    /// A Skywire secp256k1 recoverable signature (R || S || recovery id).
    Secp256k1([u8; SECP256K1_SIG_LEN]),
}

impl Signature {
    /// Builds a signature from raw bytes; the scheme follows from the length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        match bytes.len() {
            ED25519_SIG_LEN => Ok(Signature::Ed25519(
                bytes.try_into().expect("length checked"),
            )),
            SECP256K1_SIG_LEN => Ok(Signature::Secp256k1(
                bytes.try_into().expect("length checked"),
            )),
            n => Err(KeyError::BadSignatureLength(n)),
        }
    }

    /// The raw signature bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Signature::Ed25519(b) => b,
            Signature::Secp256k1(b) => b,
        }
    }

    /// Lowercase hex of the signature.
    pub fn to_hex(&self) -> String {
        hex::encode(self.as_bytes())
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", self.to_hex())
    }
}

impl FromStr for Signature {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s.trim()).map_err(|_| KeyError::BadHex)?;
        Self::from_bytes(&bytes)
    }
}

/// A secret key able to sign items, of either scheme.
#[derive(Clone)]
pub enum SigningKey {
    /// An ed25519 secret key.
    Ed25519(ed25519_dalek::SigningKey),
    /// A secp256k1 secret key (a Skywire visor or service key).
    Secp256k1(secp256k1::SecretKey),
}

impl SigningKey {
    /// A fresh random ed25519 key.
    pub fn generate_ed25519() -> Self {
        SigningKey::Ed25519(ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// A fresh random secp256k1 key.
    pub fn generate_secp256k1() -> Self {
        SigningKey::Secp256k1(secp256k1::SecretKey::new(&mut rand::rngs::OsRng))
    }

    /// Parses a secret key from its 32 raw bytes and the scheme it is for.
    pub fn from_bytes(scheme: Scheme, bytes: &[u8]) -> Result<Self, KeyError> {
        let raw: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::BadLength(bytes.len()))?;
        match scheme {
            Scheme::Ed25519 => Ok(SigningKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(
                &raw,
            ))),
            Scheme::Secp256k1 => secp256k1::SecretKey::from_slice(&raw)
                .map(SigningKey::Secp256k1)
                .map_err(|_| KeyError::InvalidKey),
        }
    }

    /// Parses the text of a key file: `ed25519:<64 hex>` or `secp256k1:<64 hex>`; a bare
    /// 64-hex secret is taken as secp256k1, the form Skywire keeps its secret keys in.
    pub fn from_key_file(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let (scheme, hex_part) = match text.split_once(':') {
            Some(("ed25519", h)) => (Scheme::Ed25519, h),
            Some(("secp256k1", h)) => (Scheme::Secp256k1, h),
            Some(_) => return Err(KeyError::UnknownSchemeName),
            None => (Scheme::Secp256k1, text),
        };
        let bytes = hex::decode(hex_part).map_err(|_| KeyError::BadHex)?;
        Self::from_bytes(scheme, &bytes)
    }

    /// The text of a key file (see [`SigningKey::from_key_file`]).
    pub fn to_key_file(&self) -> String {
        let scheme = match self.scheme() {
            Scheme::Ed25519 => "ed25519",
            Scheme::Secp256k1 => "secp256k1",
        };
        format!("{scheme}:{}\n", hex::encode(self.to_bytes()))
    }

    /// The 32 raw secret bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        match self {
            SigningKey::Ed25519(k) => k.to_bytes(),
            SigningKey::Secp256k1(k) => k.secret_bytes(),
        }
    }

    /// The scheme of this key.
    pub fn scheme(&self) -> Scheme {
        match self {
            SigningKey::Ed25519(_) => Scheme::Ed25519,
            SigningKey::Secp256k1(_) => Scheme::Secp256k1,
        }
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        match self {
            SigningKey::Ed25519(k) => PublicKey::Ed25519(k.verifying_key().to_bytes()),
            SigningKey::Secp256k1(k) => {
                PublicKey::Secp256k1(k.public_key(secp256k1::SECP256K1).serialize())
            }
        }
    }

    /// Signs `payload`: ed25519 signs it directly, secp256k1 signs SHA256(payload) the
    /// way Skywire's `cipher.SignPayload` does (65 bytes, low-S, recovery id last).
    pub fn sign(&self, payload: &[u8]) -> Signature {
        match self {
            SigningKey::Ed25519(k) => {
                use ed25519_dalek::Signer;
                Signature::Ed25519(k.sign(payload).to_bytes())
            }
            SigningKey::Secp256k1(k) => {
                let digest: [u8; 32] = Sha256::digest(payload).into();
                Signature::Secp256k1(sign_skywire(k, &digest))
            }
        }
    }
}

/// Signs a digest in Skywire's format: compact R || S (low-S) followed by the recovery id.
pub fn sign_skywire(key: &secp256k1::SecretKey, digest: &[u8; 32]) -> [u8; SECP256K1_SIG_LEN] {
    let msg = secp256k1::Message::from_digest(*digest);
    let sig = secp256k1::SECP256K1.sign_ecdsa_recoverable(&msg, key);
    let (recid, compact) = sig.serialize_compact();
    let mut out = [0u8; SECP256K1_SIG_LEN];
    out[..64].copy_from_slice(&compact);
    out[64] = recid.to_i32() as u8;
    out
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({:?}, {})", self.scheme(), self.public_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_schemes_sign_and_verify() {
        for key in [
            SigningKey::generate_ed25519(),
            SigningKey::generate_secp256k1(),
        ] {
            let sig = key.sign(b"payload");
            key.public_key().verify(b"payload", &sig).unwrap();
            assert_eq!(
                key.public_key().verify(b"other", &sig),
                Err(KeyError::BadSignature)
            );
        }
    }

    #[test]
    fn secp256k1_high_s_twin_is_rejected() {
        let key = SigningKey::generate_secp256k1();
        let Signature::Secp256k1(mut sig) = key.sign(b"x") else {
            unreachable!()
        };
        // Negate S modulo n to produce the malleable twin, flipping the recovery parity.
        let n = secp256k1::constants::CURVE_ORDER;
        let mut s = [0u8; 32];
        s.copy_from_slice(&sig[32..64]);
        let mut borrow = 0i16;
        let mut neg = [0u8; 32];
        for i in (0..32).rev() {
            let d = i16::from(n[i]) - i16::from(s[i]) - borrow;
            borrow = i16::from(d < 0);
            neg[i] = (d + if d < 0 { 256 } else { 0 }) as u8;
        }
        sig[32..64].copy_from_slice(&neg);
        sig[64] ^= 1;
        assert!(key
            .public_key()
            .verify(b"x", &Signature::Secp256k1(sig))
            .is_err());
    }

    #[test]
    fn key_files_round_trip() {
        for key in [
            SigningKey::generate_ed25519(),
            SigningKey::generate_secp256k1(),
        ] {
            let back = SigningKey::from_key_file(&key.to_key_file()).unwrap();
            assert_eq!(back.public_key(), key.public_key());
        }
        let bare = hex::encode([7u8; 32]);
        assert_eq!(
            SigningKey::from_key_file(&bare).unwrap().scheme(),
            Scheme::Secp256k1
        );
        assert_eq!(
            SigningKey::from_key_file("rsa:00").unwrap_err(),
            KeyError::UnknownSchemeName
        );
        assert_eq!(
            SigningKey::from_key_file("ed25519:zz").unwrap_err(),
            KeyError::BadHex
        );
    }

    #[test]
    fn key_parsing_rejects_garbage() {
        assert_eq!("zz".parse::<PublicKey>(), Err(KeyError::BadHex));
        assert_eq!("00".parse::<PublicKey>(), Err(KeyError::BadLength(1)));
        let mut bad = [0u8; 33];
        bad[0] = 0x04;
        assert_eq!(PublicKey::from_bytes(&bad), Err(KeyError::NotCompressed));
        // A well-formed but off-curve secp256k1 key fails verification, not a panic.
        let off = PublicKey::Secp256k1([2u8; 33]);
        let sig = SigningKey::generate_secp256k1().sign(b"x");
        assert!(off.verify(b"x", &sig).is_err());
    }
}
