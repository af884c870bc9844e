//! # dht-core
//!
//! The data model of the Skywire DHT: the salted [`MutableItem`] (a signed, versioned
//! value stored at `target = SHA256(subject || salt)`, with a signed expiry), the
//! [rules](validation) every path applies to it (one total order, [`precedence`]), its
//! [wire] and [JSON](json) encodings, the [value codec](codec) (zstd compression
//! and delta patches), and the [record stores](store) (in memory, and on disk with redb).
//!
//! ```
//! use dht_core::{MutableItem, SigningKey, Validator, store::{MemoryStore, RecordStore}};
//!
//! let key = SigningKey::generate_ed25519();
//! let item = MutableItem::sign(&key, key.public_key(), "tp", 1, &b"[]"[..]);
//! let verified = Validator::default().validate(item).expect("valid");
//! let store = MemoryStore::default();
//! store.put(verified.clone(), Default::default()).expect("stored");
//! assert!(store.get(&verified.target()).unwrap().is_some());
//! ```

#![deny(missing_docs)]

pub mod codec;
pub mod error;
pub mod item;
pub mod json;
pub mod keys;
pub mod store;
pub mod validation;
pub mod wire;

pub use error::{CodecError, DecodeError, KeyError, ReasonCode, Rejection, StoreError};
pub use item::{
    ItemBody, MutableItem, Target, MAX_SALT_LEN, SALT_DMSG, SALT_SERVICES, SALT_TRANSPORTS,
};
pub use keys::{PublicKey, Scheme, Signature, SigningKey};
pub use validation::{
    admit, now_ms, precedence, Admission, Cas, Policy, PutOptions, StoredItem, Validator,
    VerifiedItem,
};
