//! Damaged data directories: a damaged or vanished item store and a damaged node key
//! stop the node with an error naming the file and what to do, never a panic and never a
//! silent empty start; `repair_store` moves the damaged store aside and the node rebuilds
//! what it is responsible for from the live network.

use std::time::{Duration, Instant};

use bytes::Bytes;
use dht_core::{MutableItem, SigningKey, StoreError};
use dht_node::{Node, NodeError, Testnet};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_refused_by_name_and_repaired_from_the_network() {
    let net = Testnet::builder(4).on_disk(true).build().await.unwrap();
    assert!(net.wait_for_routing(3, Duration::from_secs(10)).await);
    let items: Vec<MutableItem> = (0..20)
        .map(|i| {
            let k = SigningKey::generate_ed25519();
            MutableItem::sign(&k, k.public_key(), "svc", 1, Bytes::from(format!("v{i}")))
        })
        .collect();
    for it in &items {
        assert!(net.nodes[0]
            .put(it.clone())
            .await
            .unwrap()
            .majority_stored());
    }
    let victim = 2;
    let config = net.nodes[victim].config().clone();
    let dir = config.data_dir.clone().unwrap();
    net.stop(victim).await;
    let store_file = dir.join("items.redb");

    // Truncated to half: a clear error naming the file.
    let len = std::fs::metadata(&store_file).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&store_file)
        .unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let err = Node::builder()
        .config(config.clone())
        .build()
        .await
        .expect_err("a damaged store must not start");
    match &err {
        NodeError::Store(StoreError::Damaged { path, .. }) => assert_eq!(path, &store_file),
        other => panic!("expected a damaged-store error, got {other}"),
    }
    assert!(err.to_string().contains("--repair-store"), "{err}");

    // Vanished where a store existed: refused too, not silently replaced.
    std::fs::rename(&store_file, dir.join("elsewhere.redb")).unwrap();
    let err = Node::builder()
        .config(config.clone())
        .build()
        .await
        .expect_err("a vanished store must not start silently");
    assert!(
        matches!(err, NodeError::Store(StoreError::Damaged { .. })),
        "{err}"
    );
    std::fs::rename(dir.join("elsewhere.redb"), &store_file).unwrap();

    // Repair: moved aside, started empty, rebuilt from the live network.
    let mut repair = config.clone();
    repair.repair_store = true;
    let node = Node::builder().config(repair).build().await.unwrap();
    let aside = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("items.redb.damaged-")
        });
    assert!(aside, "the damaged store is kept aside, never deleted");
    let store = node.store().unwrap();
    let started = Instant::now();
    while store.stats().unwrap().items < items.len() as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "rebuilt {} of {}",
            store.stats().unwrap().items,
            items.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.shutdown().await;
    net.shutdown().await;
}

#[tokio::test]
async fn a_damaged_node_key_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("node.key"), b"").unwrap();
    let err = dht_node::load_or_create_keypair(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("node.key") && err.contains("empty"), "{err}");
    std::fs::write(dir.path().join("node.key"), b"garbage bytes").unwrap();
    let err = dht_node::load_or_create_keypair(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not a node key") && !err.contains("rsa"),
        "{err}"
    );
}
