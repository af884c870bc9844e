//! The in-memory store: for tests and for visors without a disk.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use parking_lot::RwLock;

use super::{
    apply_put, apply_sweep, ChangedItem, Entry, IndexedTxn, PutOutcome, RecordStore, StoreConfig,
    StoreStats,
};
use crate::error::{Rejection, StoreError};
use crate::item::Target;
use crate::keys::PublicKey;
use crate::validation::{PutOptions, StoredItem, VerifiedItem};

/// A [`RecordStore`] in memory, with the same indices as the disk store.
#[derive(Debug)]
pub struct MemoryStore {
    config: StoreConfig,
    inner: RwLock<Indexed>,
}

#[derive(Debug, Default)]
struct Indexed {
    items: BTreeMap<Target, Entry>,
    by_change: BTreeMap<u64, Target>,
    by_expiry: BTreeSet<(u64, Target)>,
    evictable: BTreeSet<(u64, Target)>,
    per_signer: HashMap<PublicKey, u64>,
    total_bytes: u64,
    next_change: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new(config: StoreConfig) -> Self {
        MemoryStore {
            config,
            inner: RwLock::new(Indexed::default()),
        }
    }

    fn now(&self) -> u64 {
        (self.config.clock)()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(StoreConfig::default())
    }
}

impl IndexedTxn for Indexed {
    fn entry(&mut self, target: &Target) -> Result<Option<Entry>, StoreError> {
        Ok(self.items.get(target).cloned())
    }

    fn write_entry(&mut self, new: &Entry, old: Option<&Entry>) -> Result<(), StoreError> {
        if let Some(old) = old {
            self.unindex(old);
        }
        let target = new.stored.item.target();
        self.by_change.insert(new.change_seq, target);
        self.by_expiry.insert((new.stored.expires_at_ms, target));
        if let Some(signer) = new.quota_signer() {
            self.evictable.insert((new.stored.expires_at_ms, target));
            *self.per_signer.entry(*signer).or_default() += 1;
        }
        self.total_bytes += new.size();
        self.items.insert(target, new.clone());
        Ok(())
    }

    fn remove_entry(&mut self, old: &Entry) -> Result<(), StoreError> {
        self.unindex(old);
        self.items.remove(&old.stored.item.target());
        Ok(())
    }

    fn signer_count(&mut self, signer: &PublicKey) -> Result<u64, StoreError> {
        Ok(self.per_signer.get(signer).copied().unwrap_or(0))
    }

    fn total_bytes(&mut self) -> Result<u64, StoreError> {
        Ok(self.total_bytes)
    }

    fn next_change_seq(&mut self) -> Result<u64, StoreError> {
        self.next_change += 1;
        Ok(self.next_change)
    }

    fn soonest_evictable(&mut self, except: &Target) -> Result<Option<Target>, StoreError> {
        Ok(self.evictable.iter().map(|(_, t)| *t).find(|t| t != except))
    }

    fn soonest_expiring(&mut self) -> Result<Option<(u64, Target)>, StoreError> {
        Ok(self.by_expiry.first().copied())
    }
}

impl Indexed {
    fn unindex(&mut self, old: &Entry) {
        let target = old.stored.item.target();
        self.by_change.remove(&old.change_seq);
        self.by_expiry.remove(&(old.stored.expires_at_ms, target));
        if let Some(signer) = old.quota_signer() {
            self.evictable.remove(&(old.stored.expires_at_ms, target));
            if let Some(n) = self.per_signer.get_mut(signer) {
                *n -= 1;
                if *n == 0 {
                    self.per_signer.remove(signer);
                }
            }
        }
        self.total_bytes -= old.size();
    }
}

impl RecordStore for MemoryStore {
    fn get(&self, target: &Target) -> Result<Option<StoredItem>, StoreError> {
        let now = self.now();
        Ok(self
            .inner
            .read()
            .items
            .get(target)
            .filter(|e| !e.stored.is_expired(now))
            .map(|e| e.stored.clone()))
    }

    fn put_batch(
        &self,
        items: Vec<(VerifiedItem, PutOptions)>,
    ) -> Result<Vec<Result<PutOutcome, Rejection>>, StoreError> {
        let now = self.now();
        let mut inner = self.inner.write();
        items
            .into_iter()
            .map(|(item, opts)| apply_put(&mut *inner, &self.config, item, opts, now))
            .collect()
    }

    fn range_page(
        &self,
        from: Target,
        to: Target,
        limit: usize,
    ) -> Result<Vec<StoredItem>, StoreError> {
        if from > to {
            return Ok(Vec::new());
        }
        let now = self.now();
        Ok(self
            .inner
            .read()
            .items
            .range(from..=to)
            .map(|(_, e)| &e.stored)
            .filter(|s| !s.is_expired(now))
            .take(limit)
            .cloned()
            .collect())
    }

    fn changes_page(&self, since: u64, limit: usize) -> Result<Vec<ChangedItem>, StoreError> {
        let now = self.now();
        let inner = self.inner.read();
        Ok(inner
            .by_change
            .range(since.saturating_add(1)..)
            .filter_map(|(seq, t)| {
                inner.items.get(t).map(|e| ChangedItem {
                    change_seq: *seq,
                    stored: e.stored.clone(),
                })
            })
            .filter(|c| !c.stored.is_expired(now))
            .take(limit)
            .collect())
    }

    fn sweep_expired(&self, limit: usize) -> Result<usize, StoreError> {
        let now = self.now();
        apply_sweep(&mut *self.inner.write(), now, limit)
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        let inner = self.inner.read();
        Ok(StoreStats {
            items: inner.items.len() as u64,
            bytes: inner.total_bytes,
        })
    }
}
