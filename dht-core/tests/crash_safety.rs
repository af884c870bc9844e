//! Every acknowledged put survives kill -9: a child process puts items from several
//! threads (exercising group commit) and prints each acknowledgement; the parent kills it
//! with SIGKILL mid-stream, reopens the database and finds every acknowledged item.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use dht_core::store::{RecordStore, RedbStore, StoreConfig};
use dht_core::{MutableItem, PutOptions, Scheme, SigningKey, Target, Validator};

const CHILD_ENV: &str = "DHT_CRASH_CHILD_DB";
const THREADS: u64 = 8;

fn key() -> SigningKey {
    SigningKey::from_bytes(Scheme::Ed25519, &[42u8; 32]).unwrap()
}

/// In the child: write forever, acknowledging each durable put on stdout.
#[test]
fn crash_child_writer() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = std::sync::Arc::new(RedbStore::open(path, StoreConfig::default()).unwrap());
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let k = key();
                let v = Validator::default();
                for seq in 1u64.. {
                    let item = MutableItem::sign(
                        &k,
                        k.public_key(),
                        format!("t{t}"),
                        seq,
                        vec![7u8; 1024],
                    );
                    store
                        .put(v.validate(item).unwrap(), PutOptions::default())
                        .unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {t} {seq}").unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

#[test]
fn acknowledged_puts_survive_kill_minus_nine() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked: HashMap<u64, u64> = HashMap::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut count = 0;
    while count < 400 {
        let Some(Ok(line)) = lines.next() else { break };
        let mut parts = line.split_whitespace();
        if parts.next() != Some("ACK") {
            continue;
        }
        let t: u64 = parts.next().unwrap().parse().unwrap();
        let seq: u64 = parts.next().unwrap().parse().unwrap();
        acked.insert(t, seq);
        count += 1;
    }
    assert_eq!(count, 400, "child stopped early");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let store = RedbStore::open(&path, StoreConfig::default()).unwrap();
    let pk = key().public_key();
    for (t, seq) in acked {
        let stored = store
            .get(&Target::of(&pk, format!("t{t}").as_bytes()))
            .unwrap()
            .unwrap_or_else(|| panic!("thread {t}: acknowledged item lost"));
        assert!(
            stored.item.seq >= seq,
            "thread {t}: acked seq {seq}, found {}",
            stored.item.seq
        );
    }
}
