//! Micro-benchmarks of dht-core, side by side in one run: raw signature verification of
//! both schemes, full validation, and validate + store into each store.
//!
//! `cargo bench -p dht-benches --bench core`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dht_core::store::{MemoryStore, RecordStore, RedbStore, StoreConfig, StoreLimits};
use dht_core::{MutableItem, PutOptions, SigningKey, Validator, VerifiedItem};

const VALUE_LEN: usize = 1024;

fn item(key: &SigningKey, seq: u64) -> MutableItem {
    MutableItem::sign(key, key.public_key(), "tp", seq, vec![0x5a; VALUE_LEN])
}

/// Items for many distinct subjects (so every put is an insert).
fn fresh_items(n: u64) -> Vec<MutableItem> {
    (0..n)
        .map(|_| {
            let k = SigningKey::generate_ed25519();
            item(&k, 1)
        })
        .collect()
}

fn big_store_config() -> StoreConfig {
    StoreConfig {
        limits: StoreLimits {
            max_items_per_signer: u64::MAX,
            max_total_bytes: u64::MAX,
        },
        ..StoreConfig::default()
    }
}

fn verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(1));
    for (name, key) in [
        ("ed25519_raw", SigningKey::generate_ed25519()),
        ("secp256k1_raw", SigningKey::generate_secp256k1()),
    ] {
        let it = item(&key, 1);
        let payload = it.signing_payload();
        g.bench_function(name, |b| {
            b.iter(|| it.signer.verify(&payload, &it.signature).unwrap())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("validate");
    g.throughput(Throughput::Elements(1));
    let v = Validator::default();
    for (name, key) in [
        ("ed25519", SigningKey::generate_ed25519()),
        ("secp256k1", SigningKey::generate_secp256k1()),
    ] {
        let it = item(&key, 1);
        g.bench_function(name, |b| b.iter(|| v.validate(it.clone()).unwrap()));
    }
    g.finish();
}

fn stores(c: &mut Criterion) {
    let v = Validator::default();
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    g.bench_function("memory_validate_put_1kb", |b| {
        b.iter_custom(|iters| {
            let store = MemoryStore::new(big_store_config());
            let items = fresh_items(iters);
            let start = Instant::now();
            for it in items {
                let verified = v.validate(it).unwrap();
                store.put(verified, PutOptions::default()).unwrap();
            }
            start.elapsed()
        })
    });

    let dir = tempfile::tempdir().unwrap();
    const BATCH: u64 = 256;
    g.throughput(Throughput::Elements(BATCH));
    g.sample_size(10);
    g.bench_function("redb_put_batch_256x1kb", |b| {
        let store =
            RedbStore::open(dir.path().join("batch-only.redb"), big_store_config()).unwrap();
        b.iter_custom(|iters| {
            let batches: Vec<Vec<(VerifiedItem, PutOptions)>> = (0..iters)
                .map(|_| {
                    fresh_items(BATCH)
                        .into_iter()
                        .map(|it| (v.validate(it).unwrap(), PutOptions::default()))
                        .collect()
                })
                .collect();
            let start = Instant::now();
            for batch in batches {
                for r in store.put_batch(batch).unwrap() {
                    r.unwrap();
                }
            }
            start.elapsed()
        })
    });
    g.bench_function("redb_validate_put_batch_256x1kb", |b| {
        let store = RedbStore::open(dir.path().join("batch.redb"), big_store_config()).unwrap();
        b.iter_custom(|iters| {
            let batches: Vec<Vec<MutableItem>> = (0..iters).map(|_| fresh_items(BATCH)).collect();
            let start = Instant::now();
            for batch in batches {
                let verified: Vec<(VerifiedItem, PutOptions)> = batch
                    .into_iter()
                    .map(|it| (v.validate(it).unwrap(), PutOptions::default()))
                    .collect();
                for r in store.put_batch(verified).unwrap() {
                    r.unwrap();
                }
            }
            start.elapsed()
        })
    });

    const THREADS: u64 = 64;
    g.throughput(Throughput::Elements(THREADS));
    g.bench_function("redb_concurrent_put_64_threads_1kb", |b| {
        let store = Arc::new(
            RedbStore::open(dir.path().join("concurrent.redb"), big_store_config()).unwrap(),
        );
        b.iter_custom(|iters| {
            let rounds: Vec<Vec<VerifiedItem>> = (0..iters)
                .map(|_| {
                    fresh_items(THREADS)
                        .into_iter()
                        .map(|i| v.validate(i).unwrap())
                        .collect()
                })
                .collect();
            let mut total = Duration::ZERO;
            for round in rounds {
                let start = Instant::now();
                std::thread::scope(|s| {
                    for it in round {
                        let store = store.clone();
                        s.spawn(move || store.put(it, PutOptions::default()).unwrap());
                    }
                });
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
}

/// The value codec on a hub's transport list (552 entries, ~127 KB) and the same list
/// with one more transport: compress, make the patch, apply it (decompress for scale).
fn codec(c: &mut Criterion) {
    use dht_core::codec::{apply_patch, compress, decompress, make_patch};
    use dmsg_plugin::formats::{encode_transport_list, TransportEntry};

    let hub = SigningKey::generate_secp256k1().public_key().to_hex();
    let types = ["dmsg", "stcpr", "sudph"];
    let mut entries: Vec<TransportEntry> = (0..553)
        .map(|i| {
            let other = SigningKey::generate_secp256k1().public_key().to_hex();
            TransportEntry::new(&hub, &other, types[i % 3], "automatic")
        })
        .collect();
    let new = encode_transport_list(&entries);
    entries.pop();
    let old = encode_transport_list(&entries);
    let frame = compress(&new);
    let patch = make_patch(&old, &new);
    let limit = dht_core::validation::DEFAULT_MAX_VALUE_LEN;

    let mut g = c.benchmark_group("codec_hub_list_append_one");
    g.throughput(Throughput::Bytes(new.len() as u64));
    g.bench_function("compress", |b| b.iter(|| compress(&new)));
    g.bench_function("decompress", |b| {
        b.iter(|| decompress(&frame, limit).unwrap())
    });
    g.bench_function("make_patch", |b| b.iter(|| make_patch(&old, &new)));
    g.bench_function("apply_patch", |b| {
        b.iter(|| apply_patch(&old, &patch, limit).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = verify, stores, codec
}
criterion_main!(benches);
