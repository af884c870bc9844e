//! Visor fleets on real sockets (127.0.0.1): a client-mode node keeps connections to a
//! few full nodes and reads from them, full nodes never route to visors, and visors do
//! not count against (nor get trimmed by) the full nodes' peer budget.

mod common;

use common::wait_for;
use std::time::Duration;

use dht_core::{MutableItem, SigningKey, Target};
use dht_node::{GetMode, Node, NodeConfig, NodeMode, Testnet};

/// A client-mode node joining `net` with at most `connections` full nodes connected.
async fn visor(net: &Testnet, connections: usize) -> Node {
    let mut config = NodeConfig::local();
    config.mode = NodeMode::Client;
    config.client_connections = connections;
    config.bootstrap = net.bootstrap_addr().into_iter().collect();
    Node::builder().config(config).build().await.unwrap()
}

async fn connected(n: &Node) -> usize {
    n.stats().await.unwrap().connected_peers
}

/// Waits until visor `v` knows the 7 full nodes, then until its budget has closed all
/// but 2 of its connections.
async fn learned_seven_and_kept_two(v: &Node) {
    wait_for(
        "the visor learned the full nodes",
        Duration::from_secs(20),
        || v.routing_table().len() >= 7,
    )
    .await;
    let started = std::time::Instant::now();
    while connected(v).await > 2 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the visor kept {} connections",
            connected(v).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visor_holds_at_most_its_connections_and_reads_through_them() {
    let net = Testnet::builder(8).build().await.unwrap();
    assert!(net.wait_for_routing(7, Duration::from_secs(20)).await);
    let keys: Vec<SigningKey> = (0..30).map(|_| SigningKey::generate_ed25519()).collect();
    for k in &keys {
        let item = MutableItem::sign(k, k.public_key(), "tp", 1, &b"[]"[..]);
        assert!(net.nodes[0].put(item).await.unwrap().majority_stored());
    }
    let v = visor(&net, 2).await;
    // Its join dialled every full node; the budget closes the extra ones.
    learned_seven_and_kept_two(&v).await;
    // Reads of many targets go to the full nodes already connected (each holds every
    // item: 8 nodes, k = 20), so no new connection opens.
    for k in &keys {
        let got = v.get(k.public_key(), b"tp", GetMode::First).await.unwrap();
        assert!(got.value().is_some());
        assert!(connected(&v).await <= 2);
    }
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_nodes_never_route_to_visors_and_do_not_trim_them() {
    // A peer budget of 4 among 4 full nodes: the visors must not count against it.
    let mut config = NodeConfig::local();
    config.max_connected_peers = 4;
    let net = Testnet::builder(4).config(config).build().await.unwrap();
    assert!(net.wait_for_routing(3, Duration::from_secs(20)).await);
    let mut visors = Vec::new();
    for _ in 0..10 {
        visors.push(visor(&net, 3).await);
    }
    let key = SigningKey::generate_ed25519();
    let item = MutableItem::sign(&key, key.public_key(), "tp", 1, &b"[]"[..]);
    assert!(visors[0].put(item).await.unwrap().majority_stored());
    for v in &visors {
        let got = v
            .get(key.public_key(), b"tp", GetMode::First)
            .await
            .unwrap();
        assert!(got.value().is_some());
    }
    // Past the connection grace and several budget checks.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut visor_connections = 0;
    for v in &visors {
        let c = connected(v).await;
        assert!((1..=3).contains(&c), "a visor holds {c} connections");
        visor_connections += c;
    }
    // Every visor connection is still open on the full nodes' side: none was trimmed,
    // although they hold more than their budget of 4 peers.
    let mut full_connections = Vec::new();
    for n in &net.nodes {
        full_connections.push(connected(n).await);
    }
    assert!(
        full_connections.iter().sum::<usize>() >= visor_connections,
        "full nodes hold {full_connections:?}, visors {visor_connections}"
    );
    assert!(full_connections.iter().any(|&c| c > 4));
    for n in &net.nodes {
        for v in &visors {
            assert!(!n.routing_table().contains_key(&v.peer_id()));
        }
        let closest = n.closest_peers(Target([7; 32])).await.unwrap();
        assert!(visors.iter().all(|v| !closest.contains(&v.peer_id())));
    }
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visor_joins_dialling_each_full_node_once_then_opens_nothing_while_idle() {
    let net = Testnet::builder(8).build().await.unwrap();
    assert!(net.wait_for_routing(7, Duration::from_secs(20)).await);
    let v = visor(&net, 2).await;
    // Its join is one lookup of its own id: it asks every full node (k = 20 > 8), over
    // one connection each, kept until the lookup ends.
    // Then the budget closes all but two (after the connections' grace).
    learned_seven_and_kept_two(&v).await;
    let opened = v.metrics().connections_opened.get();
    assert!(
        (1..=8).contains(&opened),
        "the visor's join opened {opened} connections to 8 full nodes"
    );
    // Idle: no lookup, no re-dial, no connection opened.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(v.metrics().connections_opened.get(), opened);
    assert!(connected(&v).await <= 2);
    net.shutdown().await;
}
