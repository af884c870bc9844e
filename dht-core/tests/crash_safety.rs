//! Every acknowledged put survives kill -9.
//!
//! The test binary re-executes itself: `crash_child_writer`, when `DHT_CRASH_CHILD_DB`
//! is set, opens a [`RedbStore`] there and puts items from several threads at once
//! (so the writer thread groups them into shared commits), printing `ACK <id>` after
//! each put returned. The parent reads acknowledgements, kills the child with SIGKILL
//! mid-stream, reopens the database and checks that every acknowledged item is there,
//! exactly as it was put, and that the store's indices are consistent.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dht_core::store::{RecordStore, RedbStore, StoreConfig, StoreLimits};
use dht_core::{MutableItem, PutOptions, Scheme, SigningKey, Target, Validator};

const CHILD_ENV: &str = "DHT_CRASH_CHILD_DB";
const CHILD_TEST: &str = "crash_child_writer";
const THREADS: u64 = 6;
/// Acknowledged distinct items the parent waits for before killing the child.
const WANT_ACKS: usize = 200;

fn key() -> SigningKey {
    SigningKey::from_bytes(Scheme::Ed25519, &[42u8; 32]).unwrap()
}

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

/// The signed expiry of every item (unix ms, year 2100): fixed, so that parent and
/// child sign identical items.
const SIGNED_EXPIRY: u64 = 4_102_444_800_000;

/// The item with id `id`: its own salt, a seq and a value derived from the id.
fn item(id: u64) -> MutableItem {
    let k = key();
    let len = 64 + (id as usize * 37) % 2000;
    let value: Vec<u8> = (0..len).map(|i| (id as usize + i) as u8).collect();
    MutableItem::sign_until(
        &k,
        k.public_key(),
        format!("item-{id}"),
        id * 3 + 1,
        value,
        SIGNED_EXPIRY,
    )
}

/// The item a thread overwrites again and again at one target.
fn counter(thread: u64, seq: u64) -> MutableItem {
    let k = key();
    MutableItem::sign_until(
        &k,
        k.public_key(),
        format!("counter-{thread}"),
        seq,
        seq.to_be_bytes().to_vec(),
        SIGNED_EXPIRY,
    )
}

/// The child: writes until killed. Returns at once when not started as the child.
#[test]
fn crash_child_writer() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = Arc::new(RedbStore::open(path, config()).unwrap());
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let v = Validator::default();
                for i in 0..100_000u64 {
                    let id = i * THREADS + t;
                    store
                        .put(v.validate(item(id)).unwrap(), PutOptions::default())
                        .unwrap();
                    // Acknowledge only after the put returned (= committed).
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {id}").unwrap();
                    out.flush().unwrap();
                    drop(out);
                    if i % 4 == 0 {
                        store
                            .put(
                                v.validate(counter(t, i + 1)).unwrap(),
                                PutOptions::default(),
                            )
                            .unwrap();
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "CTR {t} {}", i + 1).unwrap();
                        out.flush().unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn acknowledged_puts_survive_kill_minus_nine() {
    if std::env::var(CHILD_ENV).is_ok() {
        return; // we are the child; only crash_child_writer runs there anyway
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    // Read lines on a thread so a hung child cannot hang the test.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut acked: BTreeSet<u64> = BTreeSet::new();
    let mut counters: BTreeMap<u64, u64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < WANT_ACKS {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            panic!(
                "child stopped or stalled after {} acknowledgements",
                acked.len()
            );
        };
        let mut parts = line.split_whitespace();
        match parts.next() {
            Some("ACK") => {
                let id: u64 = parts.next().unwrap().parse().unwrap();
                assert!(acked.insert(id), "id {id} acknowledged twice");
            }
            Some("CTR") => {
                let t: u64 = parts.next().unwrap().parse().unwrap();
                let seq: u64 = parts.next().unwrap().parse().unwrap();
                let prev = counters.insert(t, seq);
                assert!(prev < Some(seq), "counter went backwards");
            }
            _ => {} // the test harness's own output
        }
    }
    child.kill().unwrap(); // SIGKILL on unix: no destructor, no flush, no clean close
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed, not finished");
    // The child wrote from several threads.
    let threads: BTreeSet<u64> = acked.iter().map(|id| id % THREADS).collect();
    assert_eq!(threads.len() as u64, THREADS);

    let store = RedbStore::open(&path, config()).unwrap();
    let validator = Validator::default();
    for &id in &acked {
        let want = item(id);
        let stored = store
            .get(&want.target())
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged item {id} lost"));
        assert_eq!(stored.item.seq, id * 3 + 1, "item {id}");
        assert_eq!(stored.item, want, "item {id}");
        // What came back from disk still carries a valid signature.
        validator.validate(stored.item).unwrap();
    }
    let pk = key().public_key();
    for (&t, &seq) in &counters {
        let stored = store
            .get(&Target::of(&pk, format!("counter-{t}").as_bytes()))
            .unwrap()
            .unwrap_or_else(|| panic!("counter {t} lost"));
        assert!(
            stored.item.seq >= seq,
            "counter {t}: acknowledged seq {seq}, found {}",
            stored.item.seq
        );
    }

    // The store's counters and indices agree with its contents after the crash.
    let live: Vec<_> = store.iter_all().map(|r| r.unwrap()).collect();
    let stats = store.stats().unwrap();
    assert_eq!(stats.items, live.len() as u64);
    assert!(live.len() >= acked.len());
    let changed: Vec<_> = store.changed_since(0).map(|r| r.unwrap()).collect();
    assert_eq!(changed.len(), live.len());
    // ... and it accepts writes again.
    let next = validator.validate(item(10_000_000)).unwrap();
    store.put(next.clone(), PutOptions::default()).unwrap();
    assert_eq!(store.stats().unwrap().items, stats.items + 1);
    assert!(store.get(&next.target()).unwrap().is_some());
}
