//! Record stores: one trait, an in-memory and an on-disk (redb) implementation.
//!
//! Both implementations keep the same indices (by target, by change sequence, by expiry,
//! evictable items by expiry, per-signer counts, total bytes), so every operation is
//! O(log n): nothing scans the whole store on a put. The put algorithm itself, which
//! applies the rules of [`crate::validation::admit`], the expiry and the quotas, is
//! written once in `apply_put` over the `IndexedTxn` both stores provide.
//!
//! An item's stored deadline is the earliest of its signed expiry, the deadline a
//! replica passed on ([`PutOptions::expires_at_ms`]) and `now + ttl`; it is set when the
//! item is stored and never extended by re-posting the same item.

mod memory;
mod redb_store;

use std::sync::Arc;

pub use memory::MemoryStore;
pub use redb_store::{move_aside, RedbStore, FORMAT_VERSION as REDB_FORMAT_VERSION};

use crate::error::{Rejection, StoreError};
use crate::item::Target;
use crate::keys::PublicKey;
use crate::validation::{
    admit, now_ms, Admission, PutOptions, StoredItem, Validator, VerifiedItem,
};

/// What a successful put did (see [`Admission`]).
pub type PutOutcome = Admission;

/// Page size of the streaming iterators.
pub const PAGE_SIZE: usize = 256;

/// Fixed per-item bookkeeping counted against the byte quota.
const ENTRY_OVERHEAD: u64 = 96;

/// Storage quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Most live items one non-authorized signer may hold in this store.
    pub max_items_per_signer: u64,
    /// Most bytes the store holds. When a put would exceed it, items of non-authorized
    /// signers are evicted, soonest-expiring first; authorized publishers' items never are.
    pub max_total_bytes: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_items_per_signer: 64,
            max_total_bytes: 4 * 1024 * 1024 * 1024,
        }
    }
}

/// Size and content counters of a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Items held (including tombstones and not yet swept expired items).
    pub items: u64,
    /// Bytes counted against the quota.
    pub bytes: u64,
}

/// A stored item with the store-local sequence number of its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedItem {
    /// Store-local, strictly increasing per change (insert, replace, supersede; a
    /// refresh changes nothing).
    pub change_seq: u64,
    /// The item.
    pub stored: StoredItem,
}

/// A source of wall-clock time in unix milliseconds (replaceable in tests).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(now_ms)
}

/// Configuration shared by both stores.
#[derive(Clone)]
pub struct StoreConfig {
    /// Applies the TTL when computing expiries.
    pub validator: Validator,
    /// Quotas.
    pub limits: StoreLimits,
    /// Time source.
    pub clock: Clock,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            validator: Validator::default(),
            limits: StoreLimits::default(),
            clock: system_clock(),
        }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("validator", &self.validator)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A record store of verified items.
///
/// Methods are synchronous and fast (memory) or durable (redb: a put returns once the
/// item is committed to disk); async callers use `spawn_blocking` for the disk store.
pub trait RecordStore: Send + Sync {
    /// The live item at `target` (expired items read as absent).
    fn get(&self, target: &Target) -> Result<Option<StoredItem>, StoreError>;

    /// Stores a verified item under the ordering rules, expiry and quotas.
    fn put(&self, item: VerifiedItem, opts: PutOptions) -> Result<PutOutcome, StoreError> {
        let mut results = self.put_batch(vec![(item, opts)])?;
        results
            .pop()
            .ok_or(StoreError::Closed)?
            .map_err(StoreError::Rejected)
    }

    /// Stores several items in one step (one durable commit on disk). Each item gets its
    /// own outcome; the outer error is a failure of the store itself.
    fn put_batch(
        &self,
        items: Vec<(VerifiedItem, PutOptions)>,
    ) -> Result<Vec<Result<PutOutcome, Rejection>>, StoreError>;

    /// Up to `limit` live items with target in `[from, to]`, ascending by target.
    fn range_page(
        &self,
        from: Target,
        to: Target,
        limit: usize,
    ) -> Result<Vec<StoredItem>, StoreError>;

    /// Up to `limit` live items changed after `since` (exclusive), oldest change first.
    fn changes_page(&self, since: u64, limit: usize) -> Result<Vec<ChangedItem>, StoreError>;

    /// Removes up to `limit` items whose expiry has passed; returns how many.
    fn sweep_expired(&self, limit: usize) -> Result<usize, StoreError>;

    /// Counters.
    fn stats(&self) -> Result<StoreStats, StoreError>;

    /// Streams live items with target in `[from, to]` page by page, never holding more
    /// than one page in memory.
    fn iter_range(&self, from: Target, to: Target) -> RangeIter<'_, Self>
    where
        Self: Sized,
    {
        RangeIter {
            store: self,
            next_from: Some(from),
            to,
            page: Vec::new().into_iter(),
        }
    }

    /// Streams every live item, ascending by target.
    fn iter_all(&self) -> RangeIter<'_, Self>
    where
        Self: Sized,
    {
        self.iter_range(Target([0; 32]), Target([0xff; 32]))
    }

    /// Streams live items changed after `since`, oldest change first, page by page.
    fn changed_since(&self, since: u64) -> ChangesIter<'_, Self>
    where
        Self: Sized,
    {
        ChangesIter {
            store: self,
            cursor: since,
            done: false,
            page: Vec::new().into_iter(),
        }
    }
}

impl<S: RecordStore + ?Sized> RecordStore for Arc<S> {
    fn get(&self, target: &Target) -> Result<Option<StoredItem>, StoreError> {
        (**self).get(target)
    }
    fn put(&self, item: VerifiedItem, opts: PutOptions) -> Result<PutOutcome, StoreError> {
        (**self).put(item, opts)
    }
    fn put_batch(
        &self,
        items: Vec<(VerifiedItem, PutOptions)>,
    ) -> Result<Vec<Result<PutOutcome, Rejection>>, StoreError> {
        (**self).put_batch(items)
    }
    fn range_page(
        &self,
        from: Target,
        to: Target,
        limit: usize,
    ) -> Result<Vec<StoredItem>, StoreError> {
        (**self).range_page(from, to, limit)
    }
    fn changes_page(&self, since: u64, limit: usize) -> Result<Vec<ChangedItem>, StoreError> {
        (**self).changes_page(since, limit)
    }
    fn sweep_expired(&self, limit: usize) -> Result<usize, StoreError> {
        (**self).sweep_expired(limit)
    }
    fn stats(&self) -> Result<StoreStats, StoreError> {
        (**self).stats()
    }
}

/// [`RecordStore::changed_since`] for any store, trait objects included.
pub fn changed_since<S: RecordStore + ?Sized>(store: &S, since: u64) -> ChangesIter<'_, S> {
    ChangesIter {
        store,
        cursor: since,
        done: false,
        page: Vec::new().into_iter(),
    }
}

/// [`RecordStore::iter_range`] for any store, trait objects included.
pub fn iter_range<S: RecordStore + ?Sized>(
    store: &S,
    from: Target,
    to: Target,
) -> RangeIter<'_, S> {
    RangeIter {
        store,
        next_from: Some(from),
        to,
        page: Vec::new().into_iter(),
    }
}

/// Every live item of any store, trait objects included, ascending by target.
pub fn iter_all<S: RecordStore + ?Sized>(store: &S) -> RangeIter<'_, S> {
    iter_range(store, Target([0; 32]), Target([0xff; 32]))
}

/// Streaming iterator over a target range (see [`RecordStore::iter_range`]).
pub struct RangeIter<'a, S: RecordStore + ?Sized> {
    store: &'a S,
    next_from: Option<Target>,
    to: Target,
    page: std::vec::IntoIter<StoredItem>,
}

impl<S: RecordStore + ?Sized> Iterator for RangeIter<'_, S> {
    type Item = Result<StoredItem, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.page.next() {
                return Some(Ok(item));
            }
            let from = self.next_from.take()?;
            if from > self.to {
                return None;
            }
            match self.store.range_page(from, self.to, PAGE_SIZE) {
                Err(e) => return Some(Err(e)),
                Ok(page) => {
                    if page.len() == PAGE_SIZE {
                        let last = page.last().map(|s| s.item.target());
                        self.next_from = last.and_then(successor);
                    }
                    if page.is_empty() {
                        return None;
                    }
                    self.page = page.into_iter();
                }
            }
        }
    }
}

/// The next target after `t`, if any.
fn successor(t: Target) -> Option<Target> {
    let mut b = t.0;
    for i in (0..32).rev() {
        if b[i] == 0xff {
            b[i] = 0;
        } else {
            b[i] += 1;
            return Some(Target(b));
        }
    }
    None
}

/// Streaming iterator over changes (see [`RecordStore::changed_since`]).
pub struct ChangesIter<'a, S: RecordStore + ?Sized> {
    store: &'a S,
    cursor: u64,
    done: bool,
    page: std::vec::IntoIter<ChangedItem>,
}

impl<S: RecordStore + ?Sized> Iterator for ChangesIter<'_, S> {
    type Item = Result<ChangedItem, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(c) = self.page.next() {
                self.cursor = c.change_seq;
                return Some(Ok(c));
            }
            if self.done {
                return None;
            }
            match self.store.changes_page(self.cursor, PAGE_SIZE) {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(page) => {
                    self.done = page.len() < PAGE_SIZE;
                    if page.is_empty() {
                        return None;
                    }
                    self.page = page.into_iter();
                }
            }
        }
    }
}

/// One stored entry with its bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub stored: StoredItem,
    pub change_seq: u64,
}

impl Entry {
    /// Bytes counted against the quota.
    pub fn size(&self) -> u64 {
        self.stored.item.stored_size() as u64 + ENTRY_OVERHEAD
    }

    /// The signer whose per-signer quota this entry counts against, if any.
    pub fn quota_signer(&self) -> Option<&PublicKey> {
        (!self.stored.by_authorized_publisher).then_some(&self.stored.item.signer)
    }
}

/// The primitive, index-maintaining operations a store offers inside one write
/// transaction. [`apply_put`] and [`apply_sweep`] are written once over these.
pub(crate) trait IndexedTxn {
    /// The entry at `target`, expired or not.
    fn entry(&mut self, target: &Target) -> Result<Option<Entry>, StoreError>;
    /// Writes `new` at its target, replacing `old` and updating every index.
    fn write_entry(&mut self, new: &Entry, old: Option<&Entry>) -> Result<(), StoreError>;
    /// Removes `old` and its index rows.
    fn remove_entry(&mut self, old: &Entry) -> Result<(), StoreError>;
    /// Live-or-not items counted for `signer`.
    fn signer_count(&mut self, signer: &PublicKey) -> Result<u64, StoreError>;
    /// Bytes counted against the quota.
    fn total_bytes(&mut self) -> Result<u64, StoreError>;
    /// Allocates the next change sequence number.
    fn next_change_seq(&mut self) -> Result<u64, StoreError>;
    /// The evictable (non-authorized) entry expiring soonest, other than `except`.
    fn soonest_evictable(&mut self, except: &Target) -> Result<Option<Target>, StoreError>;
    /// The entry expiring soonest: (expiry, target).
    fn soonest_expiring(&mut self) -> Result<Option<(u64, Target)>, StoreError>;
}

/// The put algorithm: ordering rules, expiry, quotas and eviction, in one transaction.
pub(crate) fn apply_put<T: IndexedTxn>(
    txn: &mut T,
    config: &StoreConfig,
    item: VerifiedItem,
    opts: PutOptions,
    now: u64,
) -> Result<Result<PutOutcome, Rejection>, StoreError> {
    let target = item.target();
    let expires_at_ms = match config
        .validator
        .deadline_for(item.item(), opts.expires_at_ms, now)
    {
        Ok(t) => t,
        Err(r) => return Ok(Err(r)),
    };
    let old = txn.entry(&target)?;
    let admission = match admit(old.as_ref().map(|e| &e.stored), &item, opts.cas, now) {
        Ok(a) => a,
        Err(r) => return Ok(Err(r)),
    };
    // A refresh changes nothing: the stored item, its deadline (which only the
    // publisher's signature moves) and its place in the change feed stay.
    if admission == Admission::Refresh {
        return Ok(Ok(admission));
    }
    // An expired leftover is replaced as if absent. Insert, Replace and Supersede all
    // store the incoming item with its own deadline.
    let live_old = old.as_ref().filter(|e| !e.stored.is_expired(now));
    let new = Entry {
        stored: StoredItem {
            item: item.item().clone(),
            expires_at_ms,
            by_authorized_publisher: item.by_authorized_publisher(),
        },
        change_seq: 0,
    };

    // Per-signer quota: counts only non-authorized signers' items.
    if let Some(signer) = new.quota_signer() {
        let already_counted = old.as_ref().and_then(|e| e.quota_signer()) == Some(signer);
        if !already_counted && txn.signer_count(signer)? >= config.limits.max_items_per_signer {
            return Ok(Err(Rejection::QuotaExceeded(format!(
                "signer {signer} already holds {} items",
                config.limits.max_items_per_signer
            ))));
        }
    }

    // Byte quota: evict soonest-expiring non-authorized items (never authorized ones).
    let old_size = old.as_ref().map_or(0, Entry::size);
    let new_size = new.size();
    if new_size > config.limits.max_total_bytes {
        return Ok(Err(Rejection::QuotaExceeded(format!(
            "item of {new_size} bytes exceeds the store's {} bytes",
            config.limits.max_total_bytes
        ))));
    }
    while txn.total_bytes()? - old_size + new_size > config.limits.max_total_bytes {
        // Expired items go first, whoever signed them.
        if let Some((exp, t)) = txn.soonest_expiring()? {
            if exp <= now && t != target {
                if let Some(e) = txn.entry(&t)? {
                    txn.remove_entry(&e)?;
                    continue;
                }
            }
        }
        let Some(victim) = txn.soonest_evictable(&target)? else {
            return Ok(Err(Rejection::QuotaExceeded(format!(
                "store full ({} bytes) of items that may not be evicted",
                config.limits.max_total_bytes
            ))));
        };
        if !new.stored.by_authorized_publisher {
            // A non-authorized item may only displace items expiring sooner than itself.
            let victim_entry = txn.entry(&victim)?;
            if let Some(v) = &victim_entry {
                if v.stored.expires_at_ms >= new.stored.expires_at_ms {
                    return Ok(Err(Rejection::QuotaExceeded("store full".into())));
                }
            }
        }
        match txn.entry(&victim)? {
            Some(e) => txn.remove_entry(&e)?,
            None => break,
        }
    }

    let mut new = new;
    new.change_seq = txn.next_change_seq()?;
    txn.write_entry(&new, old.as_ref())?;
    Ok(Ok(if live_old.is_some() {
        admission
    } else {
        Admission::Insert
    }))
}

/// Removes up to `limit` expired entries.
pub(crate) fn apply_sweep<T: IndexedTxn>(
    txn: &mut T,
    now: u64,
    limit: usize,
) -> Result<usize, StoreError> {
    let mut removed = 0;
    while removed < limit {
        match txn.soonest_expiring()? {
            Some((exp, t)) if exp <= now => match txn.entry(&t)? {
                Some(e) => {
                    txn.remove_entry(&e)?;
                    removed += 1;
                }
                None => break,
            },
            _ => break,
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::successor;
    use crate::Target;

    #[test]
    fn successor_carries() {
        let mut t = [0u8; 32];
        t[31] = 0xff;
        let mut want = [0u8; 32];
        want[30] = 1;
        assert_eq!(successor(Target(t)), Some(Target(want)));
        assert_eq!(successor(Target([0xff; 32])), None);
    }
}
