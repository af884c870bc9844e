use std::time::Duration;

use dht_core::{MutableItem, SigningKey};
use dht_node::{GetMode, GetOutcome as Lookup, Testnet};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_put_and_get() {
    let net = Testnet::builder(5).build().await.unwrap();
    assert!(net.wait_for_routing(4, Duration::from_secs(10)).await);
    let key = SigningKey::generate_ed25519();
    let item = MutableItem::sign(&key, key.public_key(), "tp", 1, &b"[1]"[..]);
    let report = net.nodes[1].put(item).await.unwrap();
    println!("{}", report.to_json());
    assert_eq!(report.stored_on().len() + report.pending.len(), 4);
    for n in &net.nodes {
        let got = n
            .get(key.public_key(), b"tp", GetMode::First)
            .await
            .unwrap();
        assert!(matches!(got.lookup, Lookup::Found(_)), "{:?}", got);
        let got = n
            .get(key.public_key(), b"tp", GetMode::Quorum(0))
            .await
            .unwrap();
        assert_eq!(got.value(), Some(&b"[1]"[..]));
    }
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_know_each_other() {
    let net = Testnet::builder(3).build().await.unwrap();
    let ok = net.wait_for_routing(2, Duration::from_secs(10)).await;
    for n in &net.nodes {
        eprintln!(
            "{} knows {:?}",
            n.peer_id(),
            n.routing_table().keys().collect::<Vec<_>>()
        );
    }
    assert!(ok);
    net.shutdown().await;
}
