//! Puts bound for the same replicas at once share requests (real sockets, 127.0.0.1):
//! every item is stored on every replica, each put learns what became of its own item,
//! and a put a replica refuses is refused alone.

mod common;

use std::time::Duration;

use common::metric;
use dht_core::{MutableItem, Policy, SigningKey};
use dht_node::{GetMode, NodeConfig, ReplicaResult, Testnet};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_puts_shares_requests_and_every_put_gets_its_own_answer() {
    let mirror = SigningKey::generate_secp256k1();
    let mut config = NodeConfig::local();
    config.policy = Policy::default().authorize("tp", mirror.public_key());
    let net = Testnet::builder(4).config(config).build().await.unwrap();
    assert!(net.wait_for_routing(3, Duration::from_secs(10)).await);
    let publisher = &net.nodes[0];
    // 60 items at once from the authorized mirror, and among them 4 signed by a key
    // that is not authorized for the salt (each replica refuses those alone).
    let stranger = SigningKey::generate_secp256k1();
    let items: Vec<(MutableItem, bool)> = (0..64u64)
        .map(|i| {
            let subject = SigningKey::generate_secp256k1().public_key();
            let value = format!("[{{\"n\":{i},\"pad\":\"{}\"}}]", "x".repeat(300)).into_bytes();
            let key = if i % 16 == 5 { &stranger } else { &mirror };
            (
                MutableItem::sign(key, subject, "tp", 1 + i, value),
                i % 16 != 5,
            )
        })
        .collect();
    let reports =
        futures::future::join_all(items.iter().map(|(item, _)| publisher.put(item.clone()))).await;
    for ((item, authorized), report) in items.iter().zip(&reports) {
        match report {
            Ok(r) if *authorized => {
                assert!(r.majority_stored(), "{}", r.to_json());
                assert!(r.rejected_by().is_empty(), "{}", r.to_json());
            }
            // Refused here already, or by every replica: never stored.
            Ok(r) => assert!(!r.majority_stored(), "{}", r.to_json()),
            Err(_) => assert!(!authorized, "{}", item.subject),
        }
    }
    // More than 4 requests in flight to each replica: items shared requests.
    let batched = metric(publisher, "dht_put_items_batched_total");
    eprintln!("{batched} put items shared a request");
    assert!(batched > 0, "no item shared a request");
    for n in &net.nodes {
        for (item, authorized) in &items {
            let got = n.get(item.subject, b"tp", GetMode::First).await;
            if *authorized {
                assert_eq!(got.unwrap().value(), item.value().map(|v| &v[..]));
            }
        }
    }
    // A replica refuses an unauthorized item alone, sent directly in a burst too.
    let peer = net.nodes[1].peer_id();
    let direct = futures::future::join_all(
        items
            .iter()
            .map(|(item, _)| publisher.send_item_to(peer, item, Default::default())),
    )
    .await;
    for ((_, authorized), r) in items.iter().zip(direct) {
        if *authorized {
            assert!(matches!(r, ReplicaResult::Stored(_)), "{r:?}");
        } else {
            assert!(matches!(r, ReplicaResult::Rejected { .. }), "{r:?}");
        }
    }
    net.shutdown().await;
}
