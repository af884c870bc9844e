//! Items as standard kad records, so that any libp2p Kademlia implementation (js-libp2p's
//! `@libp2p/kad-dht`, go-libp2p-kad-dht) can read them with `GET_VALUE` under
//! [`crate::protocol::KAD_PROTOCOL`].
//!
//! - Record key: the ASCII prefix [`RECORD_KEY_PREFIX`] (`/skywire-dht/item/`) followed
//!   by the 32 raw bytes of the item's target, `SHA256(subject || salt)`: 50 bytes in
//!   all. Any other key is refused.
//! - Record value: the signed item in its wire encoding
//!   ([`dht_core::wire::encode_item`], the `ItemProto` message).
//!
//! [`ItemRecordStore`] is the kad record store of a node: it answers `get` from the
//! node's item store and stores no record itself (an inbound `PUT_VALUE` is validated
//! with the [`dht_core`] rules and stored through the item store by the swarm task, see
//! [`check_record`]).

use std::borrow::Cow;
use std::sync::Arc;

use dht_core::store::RecordStore as ItemStore;
use dht_core::wire::{decode_item, encode_item};
use dht_core::{MutableItem, Rejection, Target, Validator, VerifiedItem};
use libp2p::kad::store::{self as kad_store, MemoryStore, RecordStore};
use libp2p::kad::{ProviderRecord, Record, RecordKey};
use libp2p::PeerId;
use tracing::debug;

use crate::protocol::decode_limits;

/// The ASCII prefix of every item record key; the 32 raw target bytes follow it.
pub const RECORD_KEY_PREFIX: &[u8] = b"/skywire-dht/item/";

/// Length of an item record key: the prefix and 32 target bytes.
pub const RECORD_KEY_LEN: usize = RECORD_KEY_PREFIX.len() + 32;

/// Why a record key is not an item record key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordKeyError {
    /// The key does not start with [`RECORD_KEY_PREFIX`].
    #[error("record key does not start with /skywire-dht/item/")]
    BadPrefix,
    /// The prefix is followed by other than 32 bytes.
    #[error("record key carries {0} target bytes, expected 32")]
    BadTargetLength(usize),
}

impl From<RecordKeyError> for Rejection {
    fn from(e: RecordKeyError) -> Self {
        Rejection::Malformed(e.to_string())
    }
}

/// The record key of an item target.
pub fn record_key(target: &Target) -> RecordKey {
    let mut key = Vec::with_capacity(RECORD_KEY_LEN);
    key.extend_from_slice(RECORD_KEY_PREFIX);
    key.extend_from_slice(target.as_bytes());
    RecordKey::from(key)
}

/// The target named by an item record key.
pub fn parse_record_key(key: &[u8]) -> Result<Target, RecordKeyError> {
    let rest = key
        .strip_prefix(RECORD_KEY_PREFIX)
        .ok_or(RecordKeyError::BadPrefix)?;
    Target::from_slice(rest).ok_or(RecordKeyError::BadTargetLength(rest.len()))
}

/// The kad record of an item: its key and its wire encoding, no publisher, no expiry
/// (the item carries its own signed expiry).
pub fn item_record(item: &MutableItem) -> Record {
    Record {
        key: record_key(&item.target()),
        value: encode_item(item),
        publisher: None,
        expires: None,
    }
}

/// Checks an inbound record with the same rules as the item protocol: the key must be
/// an item record key, the value a well-formed item (at most the policy's value limit),
/// validly signed and belonging at the key's target.
pub fn check_record(validator: &Validator, record: &Record) -> Result<VerifiedItem, Rejection> {
    let target = parse_record_key(record.key.as_ref())?;
    let item = decode_item(&record.value, &decode_limits(validator.policy()))?;
    validator.validate_for(&target, item)
}

/// Where [`ItemRecordStore`] reads items from.
struct ItemSource {
    store: Arc<dyn ItemStore>,
    /// Whether the node serves reads now (not while its start-up catch-up runs).
    serving: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// The kad record store of a node. Value records are the node's items, read from its
/// item store; nothing is stored here ([`RecordStore::put`] refuses, `records()` is
/// empty, so kad's own replication has nothing to republish). Provider records, which
/// this DHT does not use, are kept in an inner [`MemoryStore`].
pub struct ItemRecordStore {
    providers: MemoryStore,
    items: Option<ItemSource>,
}

impl ItemRecordStore {
    /// A store that serves nothing until [`ItemRecordStore::attach`] (client nodes
    /// never attach one).
    pub fn new(local: PeerId) -> Self {
        ItemRecordStore {
            providers: MemoryStore::new(local),
            items: None,
        }
    }

    /// Serves `store`'s items as records, while `serving()` is true.
    pub fn attach(
        &mut self,
        store: Arc<dyn ItemStore>,
        serving: Arc<dyn Fn() -> bool + Send + Sync>,
    ) {
        self.items = Some(ItemSource { store, serving });
    }
}

impl RecordStore for ItemRecordStore {
    type RecordsIter<'a> = std::iter::Empty<Cow<'a, Record>>;
    type ProvidedIter<'a> = <MemoryStore as RecordStore>::ProvidedIter<'a>;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        let source = self.items.as_ref()?;
        if !(source.serving)() {
            return None;
        }
        let target = parse_record_key(k.as_ref()).ok()?;
        match source.store.get(&target) {
            // The store never returns an expired item; the check costs nothing.
            Ok(Some(stored)) if !stored.is_expired(dht_core::validation::now_ms()) => {
                Some(Cow::Owned(item_record(&stored.item)))
            }
            Ok(_) => None,
            Err(e) => {
                debug!(%target, error = %e, "kad get: item store failed");
                None
            }
        }
    }

    fn put(&mut self, _: Record) -> kad_store::Result<()> {
        // Inbound records are validated and stored through the item store by the swarm
        // task; kad never stores one here.
        Err(kad_store::Error::MaxRecords)
    }

    fn remove(&mut self, _: &RecordKey) {}

    fn records(&self) -> Self::RecordsIter<'_> {
        std::iter::empty()
    }

    fn add_provider(&mut self, record: ProviderRecord) -> kad_store::Result<()> {
        self.providers.add_provider(record)
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.providers.providers(key)
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.providers.provided()
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        self.providers.remove_provider(k, p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dht_core::store::{MemoryStore as ItemMemoryStore, StoreConfig};
    use dht_core::{PutOptions, SigningKey};

    #[test]
    fn record_keys_are_the_prefix_and_32_target_bytes() {
        let target = Target([7u8; 32]);
        let key = record_key(&target);
        assert_eq!(key.as_ref().len(), RECORD_KEY_LEN);
        assert_eq!(&key.as_ref()[..18], b"/skywire-dht/item/");
        assert_eq!(parse_record_key(key.as_ref()), Ok(target));
        assert_eq!(
            parse_record_key(b"/skywire-dht/item/abc"),
            Err(RecordKeyError::BadTargetLength(3))
        );
        assert_eq!(
            parse_record_key(&[b"/pk/".as_slice(), &[0u8; 32]].concat()),
            Err(RecordKeyError::BadPrefix)
        );
    }

    #[test]
    fn the_store_serves_items_and_stores_nothing() {
        let items: Arc<dyn ItemStore> = Arc::new(ItemMemoryStore::new(StoreConfig::default()));
        let key = SigningKey::generate_ed25519();
        let item = MutableItem::sign(&key, key.public_key(), "svc", 3, &b"[]"[..]);
        let validator = Validator::default();
        items
            .put(
                validator.validate(item.clone()).unwrap(),
                PutOptions::default(),
            )
            .unwrap();
        let mut store = ItemRecordStore::new(PeerId::random());
        let rk = record_key(&item.target());
        // Nothing attached: nothing served.
        assert!(store.get(&rk).is_none());
        store.attach(items, Arc::new(|| true));
        let record = store.get(&rk).unwrap().into_owned();
        let limits = dht_core::wire::DecodeLimits::default();
        assert_eq!(decode_item(&record.value, &limits).unwrap(), item);
        assert!(check_record(&validator, &record).is_ok());
        // Another key format, or an unknown target: nothing.
        assert!(store.get(&RecordKey::new(&item.target().0)).is_none());
        assert!(store.get(&record_key(&Target([1; 32]))).is_none());
        // Put refuses; records() is empty.
        assert!(store.put(record.clone()).is_err());
        assert_eq!(store.records().count(), 0);
        // Under another target, the same item is a target mismatch.
        let moved = Record {
            key: record_key(&Target([1; 32])),
            ..record
        };
        assert_eq!(
            check_record(&validator, &moved).unwrap_err().code(),
            dht_core::ReasonCode::TargetMismatch
        );
    }
}
