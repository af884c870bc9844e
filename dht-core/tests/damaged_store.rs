//! A damaged `items.redb` is refused with [`StoreError::Damaged`] naming the file, and
//! never panics.
//!
//! One real store of a few hundred signed items is written once per test and closed;
//! each case damages a copy of it (truncation to half and to nothing, a run of zeroed
//! pages, scattered garbage pages, an overwritten header page) and opens the copy
//! inside `catch_unwind`, requiring `Ok(Err(Damaged))`. Also: [`move_aside`] renames a
//! damaged file and a fresh open there starts an empty, working store; an undamaged
//! store opens and returns every item.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use dht_core::store::{move_aside, RecordStore, RedbStore, StoreConfig, StoreLimits};
use dht_core::{MutableItem, PutOptions, Scheme, SigningKey, StoreError, Target, Validator};

/// Items in the store under test.
const ITEMS: u64 = 300;
/// redb's page size.
const PAGE: u64 = 4096;

fn config() -> StoreConfig {
    StoreConfig {
        // One signer writes all items: lift the per-signer quota.
        limits: StoreLimits {
            max_items_per_signer: u64::MAX,
            ..StoreLimits::default()
        },
        ..StoreConfig::default()
    }
}

fn item(id: u64) -> MutableItem {
    let key = SigningKey::from_bytes(Scheme::Ed25519, &[7u8; 32]).unwrap();
    // Values of 1-3 KiB, so that the items fill many pages.
    let len = 1024 + (id as usize * 53) % 2048;
    let value: Vec<u8> = (0..len).map(|i| (id as usize * 31 + i) as u8).collect();
    MutableItem::sign(&key, key.public_key(), format!("item-{id}"), id + 1, value)
}

/// Writes a closed store of [`ITEMS`] items at `dir/items.redb`; returns its path and
/// the items by target.
fn make_store(dir: &Path) -> (PathBuf, BTreeMap<Target, MutableItem>) {
    let path = dir.join("items.redb");
    let validator = Validator::default();
    let store = RedbStore::open(&path, config()).unwrap();
    let mut all = BTreeMap::new();
    let mut batch = Vec::new();
    for id in 0..ITEMS {
        let it = item(id);
        all.insert(it.target(), it.clone());
        batch.push((validator.validate(it).unwrap(), PutOptions::default()));
    }
    for r in store.put_batch(batch).unwrap() {
        r.unwrap();
    }
    drop(store);
    (path, all)
}

/// A copy of the store at `src`, in its own directory under `dir`, named `items.redb`.
fn copy_of(src: &Path, dir: &Path, case: &str) -> PathBuf {
    let d = dir.join(case);
    fs::create_dir_all(&d).unwrap();
    let p = d.join("items.redb");
    fs::copy(src, &p).unwrap();
    p
}

fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    let mut f = OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

fn truncate(path: &Path, len: u64) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len).unwrap();
    f.sync_all().unwrap();
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Opens `path` inside `catch_unwind`; requires that it did not panic and returned
/// `Damaged` naming `path`. Returns the error's text.
fn assert_damaged(path: &Path) -> String {
    let outcome = catch_unwind(AssertUnwindSafe(|| RedbStore::open(path, config())));
    let result = match outcome {
        Ok(r) => r,
        Err(_) => panic!("opening the damaged store at {} panicked", path.display()),
    };
    match result {
        Err(StoreError::Damaged { path: p, detail }) => {
            assert_eq!(p, path, "the error names the damaged file");
            assert!(!detail.is_empty());
            let err = StoreError::Damaged { path: p, detail };
            let text = err.to_string();
            eprintln!("{text}");
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(
                text.contains("damaged") && text.contains("move it aside"),
                "{text}"
            );
            text
        }
        Err(other) => panic!("expected Damaged for {}, got {other:?}", path.display()),
        Ok(store) => {
            let items = store.iter_all().count();
            panic!(
                "the damaged store at {} opened ({items} items readable)",
                path.display()
            )
        }
    }
}

#[test]
fn a_store_truncated_to_half_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = make_store(dir.path());
    let p = copy_of(&src, dir.path(), "half");
    truncate(&p, file_len(&p) / 2);
    assert_damaged(&p);
}

#[test]
fn a_store_truncated_to_nothing_is_damaged_not_new() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = make_store(dir.path());
    let p = copy_of(&src, dir.path(), "empty");
    truncate(&p, 0);
    let text = assert_damaged(&p);
    assert!(text.contains("dht-node run --repair-store"), "{text}");
    // Refusing did not touch the file: still 0 bytes, refused again.
    assert_eq!(file_len(&p), 0);
    assert_damaged(&p);
}

#[test]
fn a_store_shorter_than_its_header_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = make_store(dir.path());
    let p = copy_of(&src, dir.path(), "short");
    truncate(&p, 100);
    assert_damaged(&p);
}

#[test]
fn a_store_with_a_run_of_zeroed_pages_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = make_store(dir.path());
    let p = copy_of(&src, dir.path(), "zeroed");
    // The middle of the data: redb preallocates, so the middle of the file may be
    // unused space, where zeroes change nothing. Take the longest run of pages that
    // hold data and zero 8 pages at its centre.
    let bytes = fs::read(&p).unwrap();
    let used: Vec<bool> = bytes
        .chunks(PAGE as usize)
        .map(|c| c.iter().any(|b| *b != 0))
        .collect();
    let (mut best, mut run_start) = ((0, 0), 0);
    for (i, u) in used.iter().chain([&false]).enumerate() {
        if !*u {
            if i - run_start > best.1 - best.0 {
                best = (run_start, i);
            }
            run_start = i + 1;
        }
    }
    assert!(
        best.1 - best.0 >= 32,
        "the store holds a long run of data pages"
    );
    let start = (best.0 + best.1) / 2 - 4;
    overwrite(&p, start as u64 * PAGE, &vec![0u8; 8 * PAGE as usize]);
    assert_damaged(&p);
}

#[test]
fn a_store_with_scattered_garbage_pages_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = make_store(dir.path());
    let p = copy_of(&src, dir.path(), "garbage");
    let pages = file_len(&p) / PAGE;
    for (i, spot) in [0.15, 0.3, 0.45, 0.6, 0.75, 0.9].into_iter().enumerate() {
        let page = ((pages as f64 * spot) as u64).max(1);
        overwrite(&p, page * PAGE, &garbage(i as u64 + 1, PAGE as usize));
    }
    assert_damaged(&p);
}

#[test]
fn a_store_with_an_overwritten_header_page_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = make_store(dir.path());
    let p = copy_of(&src, dir.path(), "header");
    overwrite(&p, 0, &garbage(99, PAGE as usize));
    assert_damaged(&p);
}

#[test]
fn a_damaged_store_moved_aside_leaves_room_for_a_fresh_one() {
    let dir = tempfile::tempdir().unwrap();
    let (src, all) = make_store(dir.path());
    let p = copy_of(&src, dir.path(), "aside");
    truncate(&p, file_len(&p) / 2);
    let damaged_len = file_len(&p);
    assert_damaged(&p);

    let moved = move_aside(&p).unwrap();
    assert!(!p.exists());
    assert_eq!(moved.parent(), p.parent());
    let name = moved.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("items.redb.damaged-"), "{name}");
    assert_eq!(
        file_len(&moved),
        damaged_len,
        "the damaged file is kept as it was"
    );

    // A fresh store at the original path: empty, and it works.
    let store = RedbStore::open(&p, config()).unwrap();
    assert_eq!(store.iter_all().count(), 0);
    let it = all.values().next().unwrap().clone();
    let target = it.target();
    store
        .put(
            Validator::default().validate(it.clone()).unwrap(),
            PutOptions::default(),
        )
        .unwrap();
    assert_eq!(store.get(&target).unwrap().map(|s| s.item), Some(it));
    drop(store);

    // Moving aside twice within one second does not overwrite the first.
    let second = move_aside(&p).unwrap();
    assert_ne!(second, moved);
    assert!(moved.exists() && second.exists() && !p.exists());
}

#[test]
fn a_store_open_elsewhere_is_not_called_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = make_store(dir.path());
    let first = RedbStore::open(&src, config()).unwrap();
    // redb locks the file: a second open fails, but that is no reason to move it aside.
    match RedbStore::open(&src, config()) {
        Err(StoreError::Database(_)) => {}
        other => panic!("expected a Database error, got {other:?}"),
    }
    assert_eq!(first.iter_all().count() as u64, ITEMS);
}

#[test]
fn move_aside_of_a_missing_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = move_aside(&dir.path().join("nothing.redb")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
}

#[test]
fn an_undamaged_store_opens_with_every_item() {
    let dir = tempfile::tempdir().unwrap();
    let (src, all) = make_store(dir.path());
    let store = RedbStore::open(&src, config()).unwrap();
    let read: BTreeMap<Target, MutableItem> = store
        .iter_all()
        .map(|r| {
            let s = r.unwrap();
            (s.item.target(), s.item)
        })
        .collect();
    assert_eq!(read.len() as u64, ITEMS);
    assert_eq!(read, all);
    drop(store);
    // And again: verification on open changed nothing.
    let store = RedbStore::open(&src, config()).unwrap();
    assert_eq!(store.iter_all().count() as u64, ITEMS);
}
