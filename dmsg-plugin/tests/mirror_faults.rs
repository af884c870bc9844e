//! The mirror under faults, on real sockets: it answers the discovery once a majority of
//! the responsible replicas holds a key, brings a replica that was down up to date from
//! its background queue (which survives a restart of the mirror), and never retries an
//! item its own node refuses.

use std::time::{Duration, Instant};

use dht_core::{Policy, SigningKey, Target};
use dht_node::{NodeConfig, Testnet};
use dmsg_plugin::{Mirror, MirrorAction};

async fn wait_for<F: FnMut() -> bool>(what: &str, timeout: Duration, mut f: F) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn config(mirror: &SigningKey) -> NodeConfig {
    NodeConfig {
        policy: Policy::default().authorize("tp", mirror.public_key()),
        // Down, not dead, for the whole test: the replica stays in the responsible set.
        dead_after: Duration::from_secs(600),
        ..NodeConfig::local()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_the_node_itself_refuses_is_answered_at_once_and_never_retried() {
    let mirror_key = SigningKey::generate_secp256k1();
    let net = Testnet::builder(3)
        .config(config(&mirror_key))
        .build()
        .await
        .unwrap();
    let mirror = Mirror::new(net.nodes[0].clone(), mirror_key, "tp");
    let edge = SigningKey::generate_secp256k1().public_key();
    let started = Instant::now();
    let outcome = mirror
        .mirror(edge, MirrorAction::Publish(vec![b'x'; 2 * 1024 * 1024]))
        .await;
    assert!(!outcome.ok);
    assert_eq!(outcome.attempts, 1, "{outcome:?}");
    assert!(
        outcome.rejected.iter().any(|r| r.contains("too_large")),
        "{outcome:?}"
    );
    eprintln!("refused in {:?}", started.elapsed());
    assert_eq!(mirror.laggards(), 0);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_was_down_is_brought_up_to_date_from_the_queue() {
    let mirror_key = SigningKey::generate_secp256k1();
    let mut net = Testnet::builder(5)
        .config(config(&mirror_key))
        .on_disk(true)
        .build()
        .await
        .unwrap();
    assert!(net.wait_for_routing(4, Duration::from_secs(10)).await);
    net.stop(4).await;

    let mirror = Mirror::new(net.nodes[0].clone(), mirror_key.clone(), "tp");
    let edges: Vec<_> = (0..5)
        .map(|_| SigningKey::generate_secp256k1().public_key())
        .collect();
    for (i, edge) in edges.iter().enumerate() {
        let outcome = mirror
            .mirror(*edge, MirrorAction::Publish(format!("[{i}]").into_bytes()))
            .await;
        // Four of five responsible replicas: a majority, answered at once.
        assert!(outcome.ok, "{outcome:?}");
        assert_eq!(outcome.attempts, 1, "{outcome:?}");
    }
    // Every key after the first failure to reach the dead replica is queued (the first
    // may have returned while that request was still pending).
    let queued = mirror.laggards();
    assert!(queued >= edges.len() - 1, "queued {queued}");
    // The queue is in the data directory: a mirror started again resumes it.
    drop(mirror);
    let mirror = Mirror::new(net.nodes[0].clone(), mirror_key, "tp");
    assert_eq!(mirror.laggards(), queued);

    // The replica comes back: the queue (and hand-back) bring it up to date.
    let back = net.restart(4).await.unwrap();
    let store = back.store().unwrap();
    wait_for(
        "the returning replica holds every key",
        Duration::from_secs(30),
        || {
            edges
                .iter()
                .all(|e| store.get(&Target::of(e, b"tp")).ok().flatten().is_some())
        },
    )
    .await;
    wait_for("the queue drains", Duration::from_secs(60), || {
        mirror.laggards() == 0
    })
    .await;
    net.shutdown().await;
}
