//! The adapters coalesce a key's updates within the mirror's window: on real local
//! networks, batches touching the same edge within the window are put once with the
//! latest list, deletes and re-registrations are neither lost nor reordered, a queued
//! edge is published within its window without a flush, and `on_batch` still returns the
//! outcome of a put that includes its batch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dht_core::{Policy, PublicKey, SigningKey};
use dht_node::{GetMode, NodeConfig, Testnet};
use dmsg_plugin::fakes::MemoryTransportStore;
use dmsg_plugin::formats::{encode_transport_list, TransportEntry};
use dmsg_plugin::{Mirror, TransportMirror};

fn key(i: usize) -> String {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&(i as u64).to_be_bytes());
    h[8] = 0x7c;
    use sha2::Digest;
    format!("02{}", hex::encode(sha2::Sha256::digest(h)))
}

fn pk(i: usize) -> PublicKey {
    key(i).parse().unwrap()
}

fn transport(a: usize, b: usize) -> TransportEntry {
    TransportEntry::new(&key(a), &key(b), "stcpr", "automatic")
}

struct Setup {
    net: Testnet,
    store: Arc<MemoryTransportStore>,
    mirror: TransportMirror<Arc<MemoryTransportStore>>,
}

async fn setup(nodes: usize, window: Duration) -> Setup {
    let tpd_key = SigningKey::generate_secp256k1();
    let mut config = NodeConfig::local();
    config.policy = Policy::default().authorize("tp", tpd_key.public_key());
    let net = Testnet::builder(nodes)
        .config(config)
        .build()
        .await
        .unwrap();
    assert!(
        net.wait_for_routing(nodes - 1, Duration::from_secs(10))
            .await
    );
    let store = Arc::new(MemoryTransportStore::default());
    let mirror = TransportMirror::new(
        store.clone(),
        Mirror::new(net.nodes[0].clone(), tpd_key, "tp").with_coalesce_window(window),
    );
    Setup { net, store, mirror }
}

/// What every node reads for `edge`: its list, or `None` for nothing or a tombstone.
async fn read_everywhere(net: &Testnet, edge: PublicKey) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::new();
    for n in &net.nodes {
        let got = n.get(edge, b"tp", GetMode::First).await;
        out.push(got.ok().and_then(|g| g.value().map(<[u8]>::to_vec)));
    }
    out
}

/// Polls until every node reads `want` for `edge`, up to `within`; returns how long.
async fn until_read(
    net: &Testnet,
    edge: PublicKey,
    want: Option<Vec<u8>>,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let got = read_everywhere(net, edge).await;
        if got.iter().all(|g| *g == want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{edge}: wanted {:?}, nodes read {:?}",
            want.as_ref().map(Vec::len),
            got.iter()
                .map(|g| g.as_ref().map(Vec::len))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_within_the_window_put_each_edge_once_with_its_latest_list() {
    let s = setup(5, Duration::from_millis(300)).await;
    let hub = 0;
    // Ten batches back to back, each adding a transport to the hub edge.
    let batches: Vec<Vec<TransportEntry>> = (1..=10).map(|i| vec![transport(hub, i)]).collect();
    let reads_before = s.store.reads();
    for b in &batches {
        s.store.register(b);
        let queued = s.mirror.enqueue_batch(b);
        assert_eq!(queued.touched, 2);
        assert!(
            queued.keys.is_empty(),
            "enqueue_batch returns before any put"
        );
    }
    // 11 distinct edges: the hub and ten others.
    assert_eq!(s.mirror.pending(), 11);
    let out = s.mirror.flush().await;
    assert_eq!(out.touched, 11);
    assert_eq!(out.keys.len(), 11, "one put per edge: {:?}", out.keys);
    assert!(out.failed().is_empty(), "{:?}", out.failed());
    // One read of the store per edge, not one per batch.
    assert_eq!(s.store.reads() - reads_before, 11);
    assert_eq!(s.mirror.pending(), 0);
    let hub_list = encode_transport_list(&s.store.list(&pk(hub)));
    until_read(&s.net, pk(hub), Some(hub_list), Duration::from_secs(5)).await;
    s.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_and_republishes_within_the_window_keep_their_order() {
    let s = setup(4, Duration::from_millis(300)).await;
    let (a, b, c) = (100, 101, 102);
    let ab = transport(a, b);
    let bc = transport(b, c);
    s.store.register(&[ab.clone(), bc.clone()]);
    assert!(s.mirror.on_batch([&ab, &bc]).await.failed().is_empty());
    let a_list = encode_transport_list(&s.store.list(&pk(a)));
    until_read(&s.net, pk(a), Some(a_list.clone()), Duration::from_secs(5)).await;

    // Within one window: a's only transport is deregistered (a delete) ...
    s.store.deregister(std::slice::from_ref(&ab));
    s.mirror.enqueue_batch([&ab]);
    // ... and c's is registered, deregistered and registered again (a publish wins).
    s.store.deregister(std::slice::from_ref(&bc));
    s.mirror.enqueue_batch([&bc]);
    s.store.register(std::slice::from_ref(&bc));
    s.mirror.enqueue_batch([&bc]);
    let out = s.mirror.flush().await;
    assert!(out.failed().is_empty(), "{:?}", out.failed());
    let action = |edge: usize| {
        let hex = pk(edge).to_hex();
        out.keys.iter().find(|k| k.subject == hex).map(|k| k.action)
    };
    assert_eq!(
        action(a),
        Some("delete"),
        "the delete after the publish wins"
    );
    assert_eq!(
        action(c),
        Some("publish"),
        "the publish after the delete wins"
    );
    assert_eq!(out.keys.len(), 3, "a, b and c once each: {:?}", out.keys);
    until_read(&s.net, pk(a), None, Duration::from_secs(5)).await;
    let c_list = encode_transport_list(&s.store.list(&pk(c)));
    until_read(&s.net, pk(c), Some(c_list), Duration::from_secs(5)).await;
    for n in &s.net.nodes {
        let got = n.get(pk(a), b"tp", GetMode::First).await.unwrap();
        assert!(got.is_deleted(), "a is a tombstone on every node");
    }
    s.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_edge_is_published_within_its_window_without_a_flush() {
    let window = Duration::from_millis(400);
    let s = setup(4, window).await;
    let t = transport(200, 201);
    s.store.register(std::slice::from_ref(&t));
    let queued_at = Instant::now();
    s.mirror.enqueue_batch([&t]);
    let list = encode_transport_list(&s.store.list(&pk(200)));
    // Not before its window ...
    tokio::time::sleep(window / 4).await;
    assert_eq!(read_everywhere(&s.net, pk(200)).await[1], None);
    // ... and soon after it, by itself.
    until_read(&s.net, pk(200), Some(list), Duration::from_secs(5)).await;
    assert!(queued_at.elapsed() >= window);
    // Nothing left queued once published.
    let started = Instant::now();
    while s.mirror.pending() > 0 {
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_on_batch_calls_share_one_put_that_includes_both() {
    let s = Arc::new(setup(4, Duration::from_millis(300)).await);
    let (hub, x, y) = (300, 301, 302);
    let hx = transport(hub, x);
    let hy = transport(hub, y);
    s.store.register(std::slice::from_ref(&hx));
    let first = {
        let s = s.clone();
        let hx = hx.clone();
        tokio::spawn(async move { s.mirror.on_batch([&hx]).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.store.register(std::slice::from_ref(&hy));
    let second = s.mirror.on_batch([&hy]).await;
    let first = first.await.unwrap();
    let seq_of = |out: &dmsg_plugin::BatchOutcome, edge: usize| {
        let hex = pk(edge).to_hex();
        out.keys.iter().find(|k| k.subject == hex).map(|k| k.seq)
    };
    // Both callers were answered with the hub's one put, which holds both transports.
    assert!(first.failed().is_empty() && second.failed().is_empty());
    assert_eq!(first.reads, 2);
    assert_eq!(second.reads, 2);
    assert_eq!(seq_of(&first, hub), seq_of(&second, hub));
    let got = s.net.nodes[2]
        .get(pk(hub), b"tp", GetMode::First)
        .await
        .unwrap();
    assert_eq!(got.seq(), seq_of(&first, hub));
    let hub_list = encode_transport_list(&s.store.list(&pk(hub)));
    assert_eq!(s.store.list(&pk(hub)).len(), 2);
    until_read(&s.net, pk(hub), Some(hub_list), Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_touched_while_its_put_is_in_flight_is_put_again_after_it() {
    let s = setup(4, Duration::ZERO).await;
    let hub = 400;
    // Zero window: each batch is published at once; the edge is in flight when the next
    // batches touch it, so they wait for the put in flight and are put after it, with a
    // higher seq and the newer list: the last list is what every node reads.
    let mut handles = Vec::new();
    let s = Arc::new(s);
    for i in 1..=5 {
        let t = transport(hub, hub + i);
        s.store.register(std::slice::from_ref(&t));
        let s = s.clone();
        handles.push(tokio::spawn(async move { s.mirror.on_batch([&t]).await }));
    }
    let hex = pk(hub).to_hex();
    for h in handles {
        let out = h.await.unwrap();
        assert!(out.failed().is_empty(), "{:?}", out.failed());
        assert!(out.keys.iter().any(|k| k.subject == hex));
    }
    let hub_list = encode_transport_list(&s.store.list(&pk(hub)));
    assert_eq!(s.store.list(&pk(hub)).len(), 5);
    until_read(&s.net, pk(hub), Some(hub_list), Duration::from_secs(5)).await;
}
