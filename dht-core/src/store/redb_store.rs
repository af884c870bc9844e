//! The on-disk store on redb: the default for full nodes.
//!
//! Crash safety: a put returns only after the write transaction holding it committed
//! with `Durability::Immediate` (fsync), so every acknowledged put survives a crash.
//! Group commit: puts from many threads are queued to one writer thread, which applies
//! everything queued in a single transaction and a single fsync, then answers each
//! caller. Under load that turns thousands of fsyncs into a handful.
//!
//! Format: items are stored in their wire encoding, and the `meta` table records the
//! on-disk format version ([`FORMAT_VERSION`]). A store written in another format
//! (format 1 had no version marker and items without a signed expiry) is refused on
//! open with [`StoreError::IncompatibleFormat`], never misread.
//!
//! Damage: [`RedbStore::open`] verifies the whole store before using it (redb's
//! integrity check, then every record and index row decoded once) and refuses a
//! damaged file (truncated, 0 bytes, overwritten pages or header) with
//! [`StoreError::Damaged`] naming it. redb 2.x panics on some damaged files instead of
//! returning an error; those panics are contained (see [`contain`]) here and on every
//! later read or write, so damage is an error, never a crash. A 0-byte file is damage,
//! not a new store: a store is created only where no file exists. [`move_aside`]
//! renames a damaged file so that the next open starts empty.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;
use prost::Message;
use redb::{Database, ReadableTable, Table, TableDefinition, WriteTransaction};

use super::{
    apply_put, apply_sweep, ChangedItem, Entry, IndexedTxn, PutOutcome, RecordStore, StoreConfig,
    StoreStats,
};
use crate::error::{DecodeError, Rejection, StoreError};
use crate::item::Target;
use crate::keys::PublicKey;
use crate::validation::{PutOptions, StoredItem, VerifiedItem};
use crate::wire::{DecodeLimits, ItemProto};

/// target -> encoded [`RecordProto`].
const ITEMS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("items");
/// change seq -> target.
const BY_CHANGE: TableDefinition<u64, &[u8]> = TableDefinition::new("by_change");
/// expiry (u64 BE) || target -> ().
const BY_EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("by_expiry");
/// expiry (u64 BE) || target -> (), only items of non-authorized signers.
const EVICTABLE: TableDefinition<&[u8], ()> = TableDefinition::new("evictable");
/// signer key -> items counted for it.
const SIGNERS: TableDefinition<&[u8], u64> = TableDefinition::new("signers");
/// counters.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The on-disk format this build reads and writes. 2: items carry a signed expiry.
/// (Format 1 had no marker.)
pub const FORMAT_VERSION: u64 = 2;

const META_FORMAT: &str = "format_version";
const META_TOTAL_BYTES: &str = "total_bytes";
const META_ITEMS: &str = "items";
const META_NEXT_CHANGE: &str = "next_change";

/// Most items applied in one group commit.
const MAX_GROUP: usize = 4096;

/// A stored record on disk.
#[derive(Clone, PartialEq, Message)]
struct RecordProto {
    #[prost(message, optional, tag = "1")]
    item: Option<ItemProto>,
    #[prost(uint64, tag = "2")]
    expires_at_ms: u64,
    #[prost(bool, tag = "3")]
    by_authorized_publisher: bool,
    #[prost(uint64, tag = "4")]
    change_seq: u64,
}

/// Disk records were validated when stored; only the shape is checked on the way back.
const DISK_LIMITS: DecodeLimits = DecodeLimits {
    max_value_len: usize::MAX / 4,
};

fn encode_entry(e: &Entry) -> Vec<u8> {
    RecordProto {
        item: Some(ItemProto::from(&e.stored.item)),
        expires_at_ms: e.stored.expires_at_ms,
        by_authorized_publisher: e.stored.by_authorized_publisher,
        change_seq: e.change_seq,
    }
    .encode_to_vec()
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, StoreError> {
    let rec = RecordProto::decode(bytes).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    let item = rec
        .item
        .ok_or_else(|| DecodeError::Field("record without item".into()))?
        .into_item(&DISK_LIMITS)?;
    Ok(Entry {
        stored: StoredItem {
            item,
            expires_at_ms: rec.expires_at_ms,
            by_authorized_publisher: rec.by_authorized_publisher,
        },
        change_seq: rec.change_seq,
    })
}

fn expiry_key(expires_at_ms: u64, target: &Target) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&expires_at_ms.to_be_bytes());
    k[8..].copy_from_slice(target.as_bytes());
    k
}

fn parse_expiry_key(k: &[u8]) -> Result<(u64, Target), StoreError> {
    let corrupt = || StoreError::Corrupt(DecodeError::Field("bad expiry index key".into()));
    let exp = u64::from_be_bytes(
        k.get(..8)
            .ok_or_else(corrupt)?
            .try_into()
            .map_err(|_| corrupt())?,
    );
    let target = Target::from_slice(k.get(8..).ok_or_else(corrupt)?).ok_or_else(corrupt)?;
    Ok((exp, target))
}

/// A redb failure as a [`StoreError`]. What says the file is damaged (redb's
/// `Corrupted`, or an I/O error of kind `InvalidData` / `UnexpectedEof`: not a redb
/// file, or one that ends early) is [`StoreError::Damaged`] with an empty path, which
/// [`at_path`] fills in where the error leaves the store; anything else (the file is
/// locked by another process, permissions, a full disk) is [`StoreError::Database`].
fn db_err(e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    match &e {
        redb::Error::Corrupted(_) => damaged(format!("redb: {e}")),
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => damaged(format!(
            "redb: {e}: its header or a page is not valid redb data"
        )),
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            damaged(format!("redb: {e}: the file ends early"))
        }
        _ => StoreError::Database(e.to_string()),
    }
}

/// [`StoreError::Damaged`] with the path still to be filled in by [`at_path`].
fn damaged(detail: impl Into<String>) -> StoreError {
    StoreError::Damaged {
        path: PathBuf::new(),
        detail: detail.into(),
    }
}

/// Names `path` in a [`StoreError::Damaged`] made without one (see [`db_err`]).
fn at_path(path: &Path) -> impl Fn(StoreError) -> StoreError + '_ {
    move |e| match e {
        StoreError::Damaged { path: p, detail } if p.as_os_str().is_empty() => {
            StoreError::Damaged {
                path: path.to_path_buf(),
                detail,
            }
        }
        other => other,
    }
}

/// Runs `f`, which works on the database at `path`, containing a panic.
///
/// Why: redb 2.x trusts its file. On a truncated file it fails an `assert!` while
/// opening (`TransactionalMemory::new`: file shorter than its recorded layout), and on
/// garbage pages it reaches `unreachable!()` while walking a B-tree
/// (`RangeIterState::next`): there is no error path to ask for, so the panic is caught
/// here and reported as [`StoreError::Damaged`]. A panic inside redb while reading is
/// taken as damage: redb panics on page contents it did not write. The default panic
/// hook still prints redb's message to stderr before the error is returned.
///
/// Unwind safety: whatever `f` creates (a `Database` while opening, transactions,
/// tables) is dropped during the unwind, inside this call, so nothing half-initialised
/// escapes; redb's shared state, if poisoned, reports `LockPoisoned` errors afterwards
/// rather than wrong data.
fn contain<R>(path: &Path, f: impl FnOnce() -> Result<R, StoreError>) -> Result<R, StoreError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(at_path(path)),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            Err(StoreError::Damaged {
                path: path.to_path_buf(),
                detail: format!("redb panicked on its contents: {msg}"),
            })
        }
    }
}

/// Smallest possible store file: redb 2.x writes whole 4 KiB pages, and even an empty
/// database spans many. An existing file shorter than this (0 bytes included) is a
/// damaged store, never a new one.
const MIN_FILE_LEN: u64 = 4096;

/// Opens the database at `path` and verifies it (see [`RedbStore::open`]); `existing`
/// says whether the file existed. Runs inside [`contain`].
fn open_verified(path: &Path, existing: bool) -> Result<Database, StoreError> {
    let mut builder = redb::Builder::new();
    builder.set_cache_size(REDB_CACHE_BYTES);
    // `open`, never `create`, for an existing file: `create` initialises an empty file.
    let mut db = if existing {
        builder.open(path)
    } else {
        builder.create(path)
    }
    .map_err(db_err)?;
    if existing && !db.check_integrity().map_err(db_err)? {
        // Open already recovered from any crash, so a failed check right after it is
        // damage. redb has repaired what it could in place; a rolled-back commit would
        // lose items silently, so the store is refused rather than used.
        return Err(damaged(
            "redb's integrity check failed; redb repaired its bookkeeping in place, \
             committed items may be missing",
        ));
    }
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut t = RedbTxn::open(&txn)?;
        t.check_format(path)?;
    }
    txn.commit().map_err(db_err)?;
    verify_entries(&db)?;
    Ok(db)
}

/// Reads every row of every table once: each item is decoded with [`decode_entry`]
/// and must sit under its own target, index keys must parse, and the item count, both
/// indices and the `items` counter must agree. Damage is [`StoreError::Damaged`].
fn verify_entries(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_read().map_err(db_err)?;
    let mut items = 0u64;
    for row in txn
        .open_table(ITEMS)
        .map_err(db_err)?
        .iter()
        .map_err(db_err)?
    {
        let (k, v) = row.map_err(db_err)?;
        let e = decode_entry(v.value()).map_err(|e| {
            damaged(format!(
                "the record at {} does not decode: {e}",
                hex::encode(k.value())
            ))
        })?;
        if e.stored.item.target().as_bytes()[..] != *k.value() {
            return Err(damaged(format!(
                "the record at {} holds the item of another target",
                hex::encode(k.value())
            )));
        }
        items += 1;
    }
    let mut by_change = 0u64;
    for row in txn
        .open_table(BY_CHANGE)
        .map_err(db_err)?
        .iter()
        .map_err(db_err)?
    {
        let (_, t) = row.map_err(db_err)?;
        Target::from_slice(t.value())
            .ok_or_else(|| damaged("a change index row does not hold a target"))?;
        by_change += 1;
    }
    let mut by_expiry = 0u64;
    for (def, counts) in [(BY_EXPIRY, true), (EVICTABLE, false)] {
        for row in txn
            .open_table(def)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, _) = row.map_err(db_err)?;
            parse_expiry_key(k.value())
                .map_err(|_| damaged("an expiry index key does not parse"))?;
            by_expiry += u64::from(counts);
        }
    }
    for row in txn
        .open_table(SIGNERS)
        .map_err(db_err)?
        .iter()
        .map_err(db_err)?
    {
        row.map_err(db_err)?;
    }
    let meta = txn.open_table(META).map_err(db_err)?;
    for row in meta.iter().map_err(db_err)? {
        row.map_err(db_err)?;
    }
    let counted = meta
        .get(META_ITEMS)
        .map_err(db_err)?
        .map_or(0, |v| v.value());
    if by_change != items || by_expiry != items || counted != items {
        return Err(damaged(format!(
            "{items} items, but {by_change} change index rows, {by_expiry} expiry index \
             rows and an item counter of {counted}"
        )));
    }
    Ok(())
}

type BatchReply = Result<Vec<Result<PutOutcome, Rejection>>, StoreError>;

struct WriteRequest {
    items: Vec<(VerifiedItem, PutOptions)>,
    reply: SyncSender<BatchReply>,
}

/// A [`RecordStore`] on disk (redb), with group commit.
pub struct RedbStore {
    db: Arc<Database>,
    /// The database file, named in [`StoreError::Damaged`].
    path: PathBuf,
    config: StoreConfig,
    writer: Mutex<Option<Sender<WriteRequest>>>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// redb's page cache. Its default (1 GiB) let a node's memory grow to the size of its
/// store after one full read (a republish pass, a neighbour's catch-up sync); the store
/// is read sequentially in those passes, so a small cache costs little.
pub const REDB_CACHE_BYTES: usize = 32 * 1024 * 1024;

impl RedbStore {
    /// Opens the store at `path`, creating it only if the file does not exist, with a
    /// page cache of `REDB_CACHE_BYTES`, and verifies it before it is used.
    ///
    /// Errors: a store written in another on-disk format is
    /// [`StoreError::IncompatibleFormat`]; a damaged file (0 bytes or shorter than a
    /// store can be, truncated, overwritten pages, a bad header, records that do not
    /// decode) is [`StoreError::Damaged`] naming `path`, never a panic and never a
    /// silently empty store ([`move_aside`] clears the way for a new one); other
    /// failures (file locked by another process, permissions) are
    /// [`StoreError::Database`].
    ///
    /// Cost: opening an existing store reads all of it twice, once for redb's
    /// `check_integrity` (every page's checksum) and once to decode every record and
    /// index row; time and I/O grow linearly with the file (roughly the time to read
    /// the file twice, plus one SHA-256 per item). Opening also writes: redb marks the
    /// file open, and its integrity check repairs redb's own bookkeeping in place.
    pub fn open(path: impl AsRef<Path>, config: StoreConfig) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let existing = match std::fs::metadata(path) {
            Ok(m) if m.len() < MIN_FILE_LEN => {
                return Err(StoreError::Damaged {
                    path: path.to_path_buf(),
                    detail: format!(
                        "the file is {} bytes, shorter than any store ({MIN_FILE_LEN} bytes)",
                        m.len()
                    ),
                })
            }
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(StoreError::Database(format!("{}: {e}", path.display()))),
        };
        let db = Arc::new(contain(path, || open_verified(path, existing))?);
        let (tx, rx) = mpsc::channel();
        let thread = {
            let db = db.clone();
            let config = config.clone();
            let path = path.to_path_buf();
            std::thread::Builder::new()
                .name("redb-writer".into())
                .spawn(move || writer_loop(&db, &config, &path, rx))
                .map_err(|e| StoreError::Database(format!("starting the writer thread: {e}")))?
        };
        Ok(RedbStore {
            db,
            path: path.to_path_buf(),
            config,
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(thread)),
        })
    }

    fn now(&self) -> u64 {
        (self.config.clock)()
    }

    fn read<R>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        contain(&self.path, || {
            let txn = self.db.begin_read().map_err(db_err)?;
            f(&txn)
        })
    }

    /// Stops the writer thread after it finished what is queued.
    pub fn close(&self) {
        self.writer.lock().take();
        if let Some(t) = self.writer_thread.lock().take() {
            let _ = t.join();
        }
    }
}

/// Moves a (damaged) store file aside: renames `path` to `<name>.damaged-<unix seconds>`
/// in the same directory, adding `-1`, `-2`, ... when that name is taken, and returns
/// the new path. Nothing is deleted or overwritten; a later [`RedbStore::open`] of
/// `path` creates a new, empty store.
pub fn move_aside(path: &Path) -> std::io::Result<PathBuf> {
    // Fail early (NotFound) rather than invent a name for nothing.
    std::fs::symlink_metadata(path)?;
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}: not a file name", path.display()),
        )
    })?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = format!("{}.damaged-{secs}", name.to_string_lossy());
    for n in 0u32.. {
        let candidate = if n == 0 {
            path.with_file_name(&base)
        } else {
            path.with_file_name(format!("{base}-{n}"))
        };
        // Never replace an existing file (rename would). Checking first leaves a race
        // only with someone creating that very name at the same moment.
        match std::fs::symlink_metadata(&candidate) {
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::rename(path, &candidate)?;
                return Ok(candidate);
            }
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(
        "no free name to move the store aside",
    ))
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn writer_loop(db: &Database, config: &StoreConfig, path: &Path, rx: Receiver<WriteRequest>) {
    while let Ok(first) = rx.recv() {
        let mut queued = first.items.len();
        let mut batch = vec![first];
        while queued < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => {
                    queued += r.items.len();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        let now = (config.clock)();
        let mut replies = Vec::with_capacity(batch.len());
        let mut work = Vec::with_capacity(batch.len());
        for req in batch {
            replies.push(req.reply);
            work.push(req.items);
        }
        match contain(path, || commit_group(db, config, work, now)) {
            Ok(results) => {
                for (reply, r) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(r));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "redb group commit failed");
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

fn commit_group(
    db: &Database,
    config: &StoreConfig,
    work: Vec<Vec<(VerifiedItem, PutOptions)>>,
    now: u64,
) -> Result<Vec<Vec<Result<PutOutcome, Rejection>>>, StoreError> {
    let txn = db.begin_write().map_err(db_err)?;
    let mut results = Vec::with_capacity(work.len());
    {
        let mut t = RedbTxn::open(&txn)?;
        for items in work {
            let mut rs = Vec::with_capacity(items.len());
            for (item, opts) in items {
                rs.push(apply_put(&mut t, config, item, opts, now)?);
            }
            results.push(rs);
        }
    }
    txn.commit().map_err(db_err)?;
    Ok(results)
}

/// The tables of one write transaction.
struct RedbTxn<'t> {
    items: Table<'t, &'static [u8], &'static [u8]>,
    by_change: Table<'t, u64, &'static [u8]>,
    by_expiry: Table<'t, &'static [u8], ()>,
    evictable: Table<'t, &'static [u8], ()>,
    signers: Table<'t, &'static [u8], u64>,
    meta: Table<'t, &'static str, u64>,
}

impl<'t> RedbTxn<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(RedbTxn {
            items: txn.open_table(ITEMS).map_err(db_err)?,
            by_change: txn.open_table(BY_CHANGE).map_err(db_err)?,
            by_expiry: txn.open_table(BY_EXPIRY).map_err(db_err)?,
            evictable: txn.open_table(EVICTABLE).map_err(db_err)?,
            signers: txn.open_table(SIGNERS).map_err(db_err)?,
            meta: txn.open_table(META).map_err(db_err)?,
        })
    }

    /// Checks the format marker; stamps it on a new (empty) store.
    fn check_format(&mut self, path: &Path) -> Result<(), StoreError> {
        let found = self
            .meta
            .get(META_FORMAT)
            .map_err(db_err)?
            .map(|v| v.value());
        let incompatible = |found| StoreError::IncompatibleFormat {
            path: path.to_path_buf(),
            found,
            expected: FORMAT_VERSION,
        };
        match found {
            Some(FORMAT_VERSION) => Ok(()),
            Some(other) => Err(incompatible(Some(other))),
            None => {
                let empty = self.items.first().map_err(db_err)?.is_none()
                    && self.meta(META_NEXT_CHANGE)? == 0;
                if !empty {
                    return Err(incompatible(None));
                }
                self.meta
                    .insert(META_FORMAT, FORMAT_VERSION)
                    .map_err(db_err)?;
                Ok(())
            }
        }
    }

    fn meta(&self, key: &str) -> Result<u64, StoreError> {
        Ok(self.meta.get(key).map_err(db_err)?.map_or(0, |v| v.value()))
    }

    fn add_meta(&mut self, key: &str, delta: i64) -> Result<(), StoreError> {
        let v = self.meta(key)?.saturating_add_signed(delta);
        self.meta.insert(key, v).map_err(db_err)?;
        Ok(())
    }

    fn add_signer(&mut self, signer: &PublicKey, delta: i64) -> Result<(), StoreError> {
        let k = signer.as_bytes();
        let v = self
            .signers
            .get(k)
            .map_err(db_err)?
            .map_or(0, |v| v.value());
        let n = v.saturating_add_signed(delta);
        if n == 0 {
            self.signers.remove(k).map_err(db_err)?;
        } else {
            self.signers.insert(k, n).map_err(db_err)?;
        }
        Ok(())
    }

    fn unindex(&mut self, old: &Entry) -> Result<(), StoreError> {
        let target = old.stored.item.target();
        let ek = expiry_key(old.stored.expires_at_ms, &target);
        self.by_change.remove(old.change_seq).map_err(db_err)?;
        self.by_expiry.remove(&ek[..]).map_err(db_err)?;
        if let Some(signer) = old.quota_signer() {
            self.evictable.remove(&ek[..]).map_err(db_err)?;
            self.add_signer(signer, -1)?;
        }
        self.add_meta(META_TOTAL_BYTES, -(old.size() as i64))?;
        self.add_meta(META_ITEMS, -1)?;
        Ok(())
    }
}

fn first_key(table: &Table<'_, &'static [u8], ()>) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(table
        .first()
        .map_err(db_err)?
        .map(|(k, _)| k.value().to_vec()))
}

impl IndexedTxn for RedbTxn<'_> {
    fn entry(&mut self, target: &Target) -> Result<Option<Entry>, StoreError> {
        match self.items.get(&target.as_bytes()[..]).map_err(db_err)? {
            Some(v) => decode_entry(v.value()).map(Some),
            None => Ok(None),
        }
    }

    fn write_entry(&mut self, new: &Entry, old: Option<&Entry>) -> Result<(), StoreError> {
        if let Some(old) = old {
            self.unindex(old)?;
        }
        let target = new.stored.item.target();
        let ek = expiry_key(new.stored.expires_at_ms, &target);
        self.by_change
            .insert(new.change_seq, &target.as_bytes()[..])
            .map_err(db_err)?;
        self.by_expiry.insert(&ek[..], ()).map_err(db_err)?;
        if let Some(signer) = new.quota_signer() {
            self.evictable.insert(&ek[..], ()).map_err(db_err)?;
            self.add_signer(signer, 1)?;
        }
        self.add_meta(META_TOTAL_BYTES, new.size() as i64)?;
        self.add_meta(META_ITEMS, 1)?;
        self.items
            .insert(&target.as_bytes()[..], &encode_entry(new)[..])
            .map_err(db_err)?;
        Ok(())
    }

    fn remove_entry(&mut self, old: &Entry) -> Result<(), StoreError> {
        self.unindex(old)?;
        self.items
            .remove(&old.stored.item.target().as_bytes()[..])
            .map_err(db_err)?;
        Ok(())
    }

    fn signer_count(&mut self, signer: &PublicKey) -> Result<u64, StoreError> {
        Ok(self
            .signers
            .get(signer.as_bytes())
            .map_err(db_err)?
            .map_or(0, |v| v.value()))
    }

    fn total_bytes(&mut self) -> Result<u64, StoreError> {
        self.meta(META_TOTAL_BYTES)
    }

    fn next_change_seq(&mut self) -> Result<u64, StoreError> {
        let n = self.meta(META_NEXT_CHANGE)? + 1;
        self.meta.insert(META_NEXT_CHANGE, n).map_err(db_err)?;
        Ok(n)
    }

    fn soonest_evictable(&mut self, except: &Target) -> Result<Option<Target>, StoreError> {
        for row in self.evictable.iter().map_err(db_err)?.take(2) {
            let (k, _) = row.map_err(db_err)?;
            let (_, t) = parse_expiry_key(k.value())?;
            if t != *except {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }

    fn soonest_expiring(&mut self) -> Result<Option<(u64, Target)>, StoreError> {
        first_key(&self.by_expiry)?
            .map(|k| parse_expiry_key(&k))
            .transpose()
    }
}

impl RecordStore for RedbStore {
    fn get(&self, target: &Target) -> Result<Option<StoredItem>, StoreError> {
        let now = self.now();
        self.read(|txn| {
            let table = txn.open_table(ITEMS).map_err(db_err)?;
            let Some(v) = table.get(&target.as_bytes()[..]).map_err(db_err)? else {
                return Ok(None);
            };
            let e = decode_entry(v.value())?;
            Ok((!e.stored.is_expired(now)).then_some(e.stored))
        })
    }

    fn put_batch(
        &self,
        items: Vec<(VerifiedItem, PutOptions)>,
    ) -> Result<Vec<Result<PutOutcome, Rejection>>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = mpsc::sync_channel(1);
        {
            let writer = self.writer.lock();
            let writer = writer.as_ref().ok_or(StoreError::Closed)?;
            writer
                .send(WriteRequest { items, reply })
                .map_err(|_| StoreError::Closed)?;
        }
        answer.recv().map_err(|_| StoreError::Closed)?
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
        self.read(|txn| {
            let table = txn.open_table(ITEMS).map_err(db_err)?;
            let mut out = Vec::new();
            for row in table
                .range(&from.as_bytes()[..]..=&to.as_bytes()[..])
                .map_err(db_err)?
            {
                let (_, v) = row.map_err(db_err)?;
                let e = decode_entry(v.value())?;
                if !e.stored.is_expired(now) {
                    out.push(e.stored);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
    }

    fn changes_page(&self, since: u64, limit: usize) -> Result<Vec<ChangedItem>, StoreError> {
        let now = self.now();
        self.read(|txn| {
            let changes = txn.open_table(BY_CHANGE).map_err(db_err)?;
            let items = txn.open_table(ITEMS).map_err(db_err)?;
            let mut out = Vec::new();
            for row in changes.range(since.saturating_add(1)..).map_err(db_err)? {
                let (seq, target) = row.map_err(db_err)?;
                if let Some(v) = items.get(target.value()).map_err(db_err)? {
                    let e = decode_entry(v.value())?;
                    if !e.stored.is_expired(now) {
                        out.push(ChangedItem {
                            change_seq: seq.value(),
                            stored: e.stored,
                        });
                        if out.len() >= limit {
                            break;
                        }
                    }
                }
            }
            Ok(out)
        })
    }

    fn sweep_expired(&self, limit: usize) -> Result<usize, StoreError> {
        let now = self.now();
        contain(&self.path, || {
            let txn = self.db.begin_write().map_err(db_err)?;
            let removed = {
                let mut t = RedbTxn::open(&txn)?;
                apply_sweep(&mut t, now, limit)?
            };
            txn.commit().map_err(db_err)?;
            Ok(removed)
        })
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        self.read(|txn| {
            let meta = txn.open_table(META).map_err(db_err)?;
            let get = |k| -> Result<u64, StoreError> {
                Ok(meta.get(k).map_err(db_err)?.map_or(0, |v| v.value()))
            };
            Ok(StoreStats {
                items: get(META_ITEMS)?,
                bytes: get(META_TOTAL_BYTES)?,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;
    use crate::MutableItem;

    /// Writes a store the way format 1 did: no marker, items without a signed expiry.
    fn write_format_1(path: &Path) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let key = SigningKey::generate_ed25519();
            let item = MutableItem::sign(&key, key.public_key(), "tp", 1, "v");
            let mut proto = ItemProto::from(&item);
            proto.expires_at_ms = 0;
            let rec = RecordProto {
                item: Some(proto),
                expires_at_ms: 5,
                by_authorized_publisher: false,
                change_seq: 1,
            };
            let mut items = txn.open_table(ITEMS).unwrap();
            items
                .insert(&item.target().as_bytes()[..], &rec.encode_to_vec()[..])
                .unwrap();
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(META_NEXT_CHANGE, 1).unwrap();
            meta.insert(META_ITEMS, 1).unwrap();
        }
        txn.commit().unwrap();
    }

    #[test]
    fn a_store_in_the_old_format_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        write_format_1(&path);
        let err = RedbStore::open(&path, StoreConfig::default()).unwrap_err();
        assert!(
            matches!(
                &err,
                StoreError::IncompatibleFormat { path: p, found: None, expected: FORMAT_VERSION }
                    if p == &path
            ),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(
            text.contains("format changed") && text.contains("move"),
            "{text}"
        );
        // Refusing did not touch the file: it is refused again, and nothing was stamped.
        assert!(matches!(
            RedbStore::open(&path, StoreConfig::default()),
            Err(StoreError::IncompatibleFormat { found: None, .. })
        ));
    }

    /// A store of one item, closed; returns its path.
    fn one_item_store(dir: &Path) -> PathBuf {
        let path = dir.join("items.redb");
        let store = RedbStore::open(&path, StoreConfig::default()).unwrap();
        let key = SigningKey::generate_ed25519();
        let item = MutableItem::sign(&key, key.public_key(), "tp", 1, "v");
        let verified = crate::Validator::default().validate(item).unwrap();
        store.put(verified, PutOptions::default()).unwrap();
        drop(store);
        path
    }

    /// Damage redb's checksums cannot see (the rows are well-formed redb data) is found
    /// by decoding every record on open.
    #[test]
    fn a_record_that_does_not_decode_is_damage_found_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = one_item_store(dir.path());
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(ITEMS)
                .unwrap()
                .insert(&[7u8; 32][..], &b"\xff\xff not a record"[..])
                .unwrap();
            txn.commit().unwrap();
        }
        let err = RedbStore::open(&path, StoreConfig::default()).unwrap_err();
        match &err {
            StoreError::Damaged { path: p, detail } => {
                assert_eq!(p, &path);
                assert!(detail.contains("does not decode"), "{detail}");
            }
            other => panic!("expected Damaged, got {other:?}"),
        }
    }

    #[test]
    fn an_index_that_disagrees_with_the_items_is_damage_found_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = one_item_store(dir.path());
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(BY_CHANGE)
                .unwrap()
                .insert(99, &[1u8; 32][..])
                .unwrap();
            txn.commit().unwrap();
        }
        let err = RedbStore::open(&path, StoreConfig::default()).unwrap_err();
        match &err {
            StoreError::Damaged { path: p, detail } => {
                assert_eq!(p, &path);
                assert!(detail.contains("2 change index rows"), "{detail}");
            }
            other => panic!("expected Damaged, got {other:?}"),
        }
    }

    #[test]
    fn a_store_of_a_future_format_is_refused_and_a_new_one_is_stamped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.redb");
        drop(RedbStore::open(&path, StoreConfig::default()).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_read().unwrap();
            let meta = txn.open_table(META).unwrap();
            assert_eq!(
                meta.get(META_FORMAT).unwrap().map(|v| v.value()),
                Some(FORMAT_VERSION)
            );
        }
        // An empty store reopens fine.
        drop(RedbStore::open(&path, StoreConfig::default()).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(META_FORMAT, FORMAT_VERSION + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        assert!(matches!(
            RedbStore::open(&path, StoreConfig::default()),
            Err(StoreError::IncompatibleFormat { found: Some(v), .. }) if v == FORMAT_VERSION + 1
        ));
    }
}
