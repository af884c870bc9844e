//! User stories of the node on real sockets (TCP + noise + yamux on 127.0.0.1, ports
//! chosen by the OS).

mod common;

use common::wait_for;
use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dht_core::{MutableItem, Policy, PutOptions, ReasonCode, SigningKey, Target};
use dht_node::{
    GetMode, GetOutcome as Lookup, NodeConfig, NodeEvent, NodeMode, ReplicaResult, Testnet,
};

fn value_of(report: &dht_node::GetReport) -> Option<Vec<u8>> {
    report.value().map(<[u8]>::to_vec)
}

/// A transport entry of an edge, as the transport discovery's v3 endpoint serves it.
fn transport_list(edge: &str, n: usize) -> Vec<u8> {
    let entries: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let other = format!("03{:064x}", i + 1);
            let mut edges = [edge.to_string(), other];
            edges.sort();
            serde_json::json!({
                "t_id": format!("{:08x}-0000-4000-8000-{:012x}", i, i),
                "edges": edges,
                "type": "stcpr",
                "label": "automatic",
            })
        })
        .collect();
    serde_json::to_vec(&entries).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_five_nodes_read_what_one_wrote_and_then_the_update() {
    let net = Testnet::builder(25).build().await.unwrap();
    assert!(net.wait_for_routing(20, Duration::from_secs(20)).await);
    let key = SigningKey::generate_secp256k1();
    let pk = key.public_key();

    let report = net.nodes[3]
        .put(MutableItem::sign(&key, pk, "svc", 1, &b"v1"[..]))
        .await
        .unwrap();
    // The report names the replicas: the 20 closest other nodes (or 19 and this node),
    // stored or still pending; any other peer that stored it is a stand-in asked in
    // place of a replica that was slow to answer.
    let stored = report.stored_on();
    let local_stored = matches!(report.local, Some(ReplicaResult::Stored(_)));
    assert!(!local_stored || report.responsible.contains(&net.nodes[3].peer_id()));
    let responsible_pending = report
        .pending
        .iter()
        .filter(|p| report.responsible.contains(p))
        .count();
    assert_eq!(
        report.responsible_stored() + responsible_pending,
        20,
        "{}",
        report.to_json()
    );
    for p in stored.iter().chain(&report.pending) {
        assert!(
            report.responsible.contains(p) || report.stand_ins.contains(p),
            "{}",
            report.to_json()
        );
    }
    assert!(report.rejected_by().is_empty() && report.failed().is_empty());
    let all: HashSet<_> = net.nodes.iter().map(|n| n.peer_id()).collect();
    assert!(stored.iter().all(|p| all.contains(p)));

    for n in &net.nodes {
        let got = n.get(pk, b"svc", GetMode::First).await.unwrap();
        assert_eq!(
            value_of(&got).as_deref(),
            Some(&b"v1"[..]),
            "from {}",
            n.peer_id()
        );
    }

    // The update, published from another node, is what everyone reads next.
    let report = net.nodes[17]
        .put(MutableItem::sign(&key, pk, "svc", 2, &b"v2"[..]))
        .await
        .unwrap();
    assert!(report.majority_stored());
    // A best-of-quorum read sees it at once (its quorum meets the put's majority)...
    for n in &net.nodes {
        let got = n.get(pk, b"svc", GetMode::Quorum(0)).await.unwrap();
        assert_eq!(got.seq(), Some(2), "quorum from {}", n.peer_id());
        assert_eq!(value_of(&got).as_deref(), Some(&b"v2"[..]));
    }
    // ... and a first-valid read once the replicas still answering when the put
    // returned hold it too (a replica serves its own copy first).
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in &net.nodes {
        loop {
            let got = n.get(pk, b"svc", GetMode::First).await.unwrap();
            if got.seq() == Some(2) {
                assert_eq!(value_of(&got).as_deref(), Some(&b"v2"[..]));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "first from {}: {:?}",
                n.peer_id(),
                got.seq()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_rejects_bad_items_and_the_report_says_why() {
    let mirror = SigningKey::generate_secp256k1();
    // The publishing node trusts `mirror` and allows larger values; the replicas do not.
    let net = Testnet::builder(6).build().await.unwrap();
    assert!(net.wait_for_routing(5, Duration::from_secs(10)).await);
    let mut lenient = NodeConfig::local();
    lenient.policy = Policy {
        max_value_len: 4 * 1024 * 1024,
        ..Policy::default()
    }
    .authorize("tp", mirror.public_key());
    let publisher = {
        let mut net = net;
        let mut config = lenient;
        config.bootstrap = net.bootstrap_addr().into_iter().collect();
        let node = dht_node::Node::builder()
            .config(config)
            .mode(NodeMode::Client)
            .build()
            .await
            .unwrap();
        // It knows all six replicas (the assertions below count them).
        wait_for("publisher joined", Duration::from_secs(10), || {
            node.routing_table().len() >= 6
        })
        .await;
        net.nodes.push(node.clone());
        (net, node)
    };
    let (net, publisher) = publisher;
    let replicas = 6;
    let expect_all = |report: &dht_node::PutReport, code: ReasonCode| {
        let rejected = report.rejected_by();
        assert_eq!(rejected.len(), replicas, "{}", report.to_json());
        assert!(
            rejected.iter().all(|(_, c)| *c == code),
            "{}",
            report.to_json()
        );
        assert!(report.stored_on().is_empty());
    };

    let owner = SigningKey::generate_ed25519();
    let pk = owner.public_key();
    let five = MutableItem::sign(&owner, pk, "tp", 5, &b"five"[..]);
    let first = publisher.put(five.clone()).await.unwrap();
    // Stored, or still being answered when the put returned with its majority.
    assert_eq!(
        first.stored_on().len() + first.pending.len(),
        replicas,
        "{}",
        first.to_json()
    );

    // Stale: a lower seq.
    let r = publisher
        .put(MutableItem::sign(&owner, pk, "tp", 4, &b"four"[..]))
        .await
        .unwrap();
    expect_all(&r, ReasonCode::Stale);
    // Equivocation: the same seq with another value. The total order decides: a value
    // that loses to the stored one is refused by every replica...
    let mut candidates =
        (0..).map(|i| MutableItem::sign(&owner, pk, "tp", 5, format!("other {i}")));
    let loser = candidates
        .find(|c| dht_core::precedence(c, &five).is_lt())
        .unwrap();
    let r = publisher.put(loser).await.unwrap();
    expect_all(&r, ReasonCode::Equivocation);
    // ... and one that wins supersedes it on every replica (they converge, never split).
    let winner = candidates
        .find(|c| dht_core::precedence(c, &five).is_gt())
        .unwrap();
    let r = publisher.put(winner.clone()).await.unwrap();
    // Every replica that answered before the put returned superseded; the rest were
    // still being answered (a loaded machine).
    assert!(
        r.replicas.iter().all(|o| matches!(
            o.result,
            ReplicaResult::Stored(dht_core::Admission::Supersede { seq: 5 })
        )) && r.replicas.len() + r.pending.len() == replicas,
        "{}",
        r.to_json()
    );
    // Unauthorized: a mirror key the replicas do not trust.
    let victim = SigningKey::generate_secp256k1().public_key();
    let r = publisher
        .put(MutableItem::sign(&mirror, victim, "tp", 1, &b"[]"[..]))
        .await
        .unwrap();
    expect_all(&r, ReasonCode::Unauthorized);
    // Oversized: 2 MiB, above the replicas' 1 MiB default.
    let big = vec![b'x'; 2 * 1024 * 1024];
    let r = publisher
        .put(MutableItem::sign(&owner, pk, "big", 1, big))
        .await
        .unwrap();
    expect_all(&r, ReasonCode::TooLarge);

    // Cross-subject replay: a value signed for one subject, re-targeted at another. The
    // publisher's own validation refuses it; sent raw, every replica refuses it too.
    let honest = MutableItem::sign(&owner, pk, "svc", 9, &b"mine"[..]);
    let other = SigningKey::generate_ed25519().public_key();
    let replay = MutableItem {
        subject: other,
        ..honest.clone()
    };
    assert!(matches!(
        publisher.put(replay.clone()).await,
        Err(dht_node::NodeError::Rejected(r)) if r.code() == ReasonCode::Unauthorized
    ));
    // Same signer as subject, re-targeted: a signature that no longer verifies.
    let self_replay = MutableItem {
        subject: other,
        signer: other,
        ..honest
    };
    for n in net
        .nodes
        .iter()
        .filter(|n| n.config().mode == NodeMode::Full)
    {
        match publisher
            .send_item_to(n.peer_id(), &self_replay, PutOptions::default())
            .await
        {
            ReplicaResult::Rejected { code, .. } => assert_eq!(code, ReasonCode::BadSignature),
            other => panic!("replay accepted or lost: {other:?}"),
        }
    }
    // And nobody serves anything at the replayed target.
    let got = net.nodes[0]
        .get(other, b"svc", GetMode::Quorum(0))
        .await
        .unwrap();
    assert_eq!(got.lookup, Lookup::NotFound);
    let got = net.nodes[1]
        .get(pk, b"tp", GetMode::Quorum(0))
        .await
        .unwrap();
    assert_eq!(value_of(&got), winner.value().map(|v| v.to_vec()));
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_transport_list_of_1000_entries_round_trips() {
    let net = Testnet::builder(5).build().await.unwrap();
    assert!(net.wait_for_routing(4, Duration::from_secs(10)).await);
    let mirror = SigningKey::generate_secp256k1();
    let edge = SigningKey::generate_secp256k1();
    let list = transport_list(&edge.public_key().to_hex(), 1000);
    assert!(list.len() > 200_000, "{} bytes", list.len());
    let report = net.nodes[0]
        .put(MutableItem::sign(
            &edge,
            edge.public_key(),
            "tp",
            1,
            list.clone(),
        ))
        .await
        .unwrap();
    assert_eq!(
        report.stored_on().len() + report.pending.len(),
        4,
        "{}",
        report.to_json()
    );
    for n in &net.nodes[1..] {
        let got = n
            .get(edge.public_key(), b"tp", GetMode::Quorum(0))
            .await
            .unwrap();
        assert_eq!(value_of(&got).as_deref(), Some(&list[..]));
    }
    let _ = mirror;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_holds_even_against_a_node_that_was_offline() {
    let mut net = Testnet::builder(6).on_disk(true).build().await.unwrap();
    assert!(net.wait_for_routing(5, Duration::from_secs(10)).await);
    let key = SigningKey::generate_ed25519();
    let pk = key.public_key();
    let r = net.nodes[0]
        .put(MutableItem::sign(&key, pk, "dmsg", 1, &b"entry"[..]))
        .await
        .unwrap();
    assert_eq!(r.stored_on().len() + r.pending.len(), 5);

    // Node 4 goes offline holding the value.
    let target = Target::of(&pk, b"dmsg");
    let store4 = net.nodes[4].store().unwrap();
    wait_for("node 4 holds the value", Duration::from_secs(10), || {
        store4.get(&target).ok().flatten().is_some()
    })
    .await;
    // Let go of its store, so that it can be opened again on restart.
    drop(store4);
    net.stop(4).await;

    let report = net.nodes[1].delete(&key, pk, b"dmsg").await.unwrap();
    assert_eq!(report.seq, 2);
    assert!(
        report.stored_on().len() + report.pending.len() >= 4,
        "{}",
        report.to_json()
    );
    for (i, n) in net.nodes.iter().enumerate() {
        if i == 4 {
            continue;
        }
        let got = n.get(pk, b"dmsg", GetMode::First).await.unwrap();
        assert!(got.is_deleted(), "node {i}: {got:?}");
        assert_eq!(got.seq(), Some(2));
    }

    // It comes back with its old copy, rejoining from its saved routing table only.
    let back = net.restart(4).await.unwrap();
    let mut events = back.subscribe();
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Ok(NodeEvent::CatchUpFinished { .. }) = events.recv().await {
                break;
            }
        }
    })
    .await
    .expect("catch-up finished");
    assert!(!back.routing_table().is_empty());
    for (i, n) in net.nodes.iter().enumerate() {
        for mode in [GetMode::First, GetMode::Quorum(0)] {
            let got = n.get(pk, b"dmsg", mode).await.unwrap();
            assert!(got.is_deleted(), "node {i} {mode:?}: {got:?}");
        }
    }
    // The tombstone is kept without the value.
    let stored = back.store().unwrap().get(&target).unwrap().unwrap();
    assert!(stored.item.is_tombstone() && stored.item.value().is_none());
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_its_items_and_a_late_joiner_catches_up() {
    let mut net = Testnet::builder(5).on_disk(true).build().await.unwrap();
    assert!(net.wait_for_routing(4, Duration::from_secs(10)).await);
    let key = SigningKey::generate_ed25519();
    let pk = key.public_key();
    let salts: Vec<String> = (0..40).map(|i| format!("s{i}")).collect();
    for s in &salts {
        let r = net.nodes[0]
            .put(MutableItem::sign(
                &key,
                pk,
                Bytes::from(s.clone()),
                1,
                &b"x"[..],
            ))
            .await
            .unwrap();
        assert!(r.majority_stored());
    }
    // Puts return at their majority: the last replicas may still be storing.
    let store2 = net.nodes[2].store().unwrap();
    wait_for("node 2 holding all 40", Duration::from_secs(10), || {
        store2.stats().is_ok_and(|s| s.items == 40)
    })
    .await;
    drop(store2);

    net.stop(2).await;
    let back = net.restart(2).await.unwrap();
    assert_eq!(back.store().unwrap().stats().unwrap().items, 40);
    wait_for("restarted node rejoined", Duration::from_secs(10), || {
        back.routing_table().len() >= 4
    })
    .await;
    let got = back.get(pk, b"s7", GetMode::First).await.unwrap();
    assert_eq!(value_of(&got).as_deref(), Some(&b"x"[..]));

    // A node that joins late holds what it is responsible for within seconds.
    let started = std::time::Instant::now();
    let late = net.add_node(NodeMode::Full).await.unwrap();
    let store = late.store().unwrap();
    wait_for(
        "late joiner holds every item",
        Duration::from_secs(10),
        || store.stats().map(|s| s.items).unwrap_or(0) == 40,
    )
    .await;
    eprintln!("late joiner complete after {:?}", started.elapsed());
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reads_and_writes_but_is_in_no_routing_table() {
    let mut net = Testnet::builder(5).build().await.unwrap();
    assert!(net.wait_for_routing(4, Duration::from_secs(10)).await);
    let client = net.add_node(NodeMode::Client).await.unwrap();
    wait_for("client joined", Duration::from_secs(10), || {
        client.routing_table().len() >= 4
    })
    .await;
    assert!(client.store().is_none());

    let key = SigningKey::generate_secp256k1();
    let pk = key.public_key();
    let r = client
        .put(MutableItem::sign(&key, pk, "svc", 1, &b"[]"[..]))
        .await
        .unwrap();
    assert_eq!(r.stored_on().len() + r.pending.len(), 5);
    assert!(r.local.is_none());
    let got = client.get(pk, b"svc", GetMode::First).await.unwrap();
    assert_eq!(value_of(&got).as_deref(), Some(&b"[]"[..]));
    let got = net.nodes[2].get(pk, b"svc", GetMode::First).await.unwrap();
    assert_eq!(value_of(&got).as_deref(), Some(&b"[]"[..]));

    // Give identify and kad time to (not) add it anywhere.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in &net.nodes[..5] {
        assert!(!n.routing_table().contains_key(&client.peer_id()));
        assert!(n
            .closest_peers(Target([1; 32]))
            .await
            .unwrap()
            .iter()
            .all(|p| *p != client.peer_id()));
    }
    net.shutdown().await;
}
