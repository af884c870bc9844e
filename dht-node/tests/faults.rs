//! Faults on real sockets: a replica that died, a network cut in two and healed, a node
//! restarted after deletes it missed, a third of the network killed at once. Each test
//! asserts what a user would observe: truthful put reports, one winner everywhere, no
//! deleted list ever served, every replica slot filled again.

mod common;

use common::wait_for;
use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dht_core::{precedence, MutableItem, SigningKey, Target};
use dht_node::{GetMode, Node, NodeConfig, NodeEvent, PeerId, Testnet};

fn fast_failure_config() -> NodeConfig {
    NodeConfig {
        dead_after: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        lookup_timeout: Duration::from_secs(4),
        ..NodeConfig::local()
    }
}

/// A testnet of `n` nodes with [`fast_failure_config`], every routing table complete.
async fn fast_failure_testnet(n: usize) -> Testnet {
    let net = Testnet::builder(n)
        .config(fast_failure_config())
        .build()
        .await
        .unwrap();
    assert!(net.wait_for_routing(n - 1, Duration::from_secs(20)).await);
    net
}

/// Which of `nodes` hold exactly `item` in their local store.
fn holders(nodes: &[&Node], item: &MutableItem) -> Vec<PeerId> {
    let target = item.target();
    nodes
        .iter()
        .filter(|n| {
            n.store()
                .and_then(|s| s.get(&target).ok().flatten())
                .is_some_and(|s| s.item == *item)
        })
        .map(|n| n.peer_id())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_is_skipped_and_named_in_the_report() {
    let net = fast_failure_testnet(5).await;
    let dead = net.nodes[4].peer_id();
    net.stop(4).await;

    let key = SigningKey::generate_ed25519();
    let pk = key.public_key();
    for seq in 1..=5u64 {
        let item = MutableItem::sign(&key, pk, "svc", seq, Bytes::from(vec![seq as u8; 64]));
        let report = net.nodes[0].put(item).await.unwrap();
        // Five nodes: all five are responsible, the dead one included, so the majority
        // is counted over five.
        assert_eq!(report.responsible.len(), 5, "{}", report.to_json());
        assert!(report.majority_stored(), "{}", report.to_json());
        // Named unreachable (or, on the first put, possibly still pending when the put
        // returned with its majority).
        assert!(
            report.unreachable.contains(&dead) || (seq == 1 && report.pending.contains(&dead)),
            "{}",
            report.to_json()
        );
        if seq > 1 {
            // Suspected after the first failure: never asked again.
            assert!(
                report.replicas.iter().all(|r| r.peer != dead),
                "{}",
                report.to_json()
            );
        }
    }
    assert!(net.nodes[0].peers_down().contains(&dead));
    // Declared dead after `dead_after`: it leaves the routing table.
    wait_for(
        "the dead peer leaves the table",
        Duration::from_secs(10),
        || !net.nodes[0].routing_table().contains_key(&dead),
    )
    .await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_during_a_partition_report_the_majority_truthfully() {
    let config = NodeConfig {
        // Keep the other side merely suspected for the whole test: declared dead, it
        // would leave the responsible set.
        dead_after: Duration::from_secs(600),
        ..fast_failure_config()
    };
    let net = Testnet::builder(24).config(config).build().await.unwrap();
    assert!(net.wait_for_routing(20, Duration::from_secs(30)).await);
    let side_a: Vec<usize> = (0..12).collect();
    let side_b: Vec<usize> = (12..24).collect();
    net.partition(&side_a, &side_b).await.unwrap();
    let b_ids: HashSet<PeerId> = side_b.iter().map(|&i| net.nodes[i].peer_id()).collect();

    let all: Vec<&Node> = net.nodes.iter().collect();
    let mut with_majority = 0;
    let mut without = 0;
    for i in 0..20 {
        let key = SigningKey::generate_ed25519();
        let item = MutableItem::sign(&key, key.public_key(), "tp", 1, &b"[]"[..]);
        let report = net.nodes[i % 12].put(item.clone()).await.unwrap();
        // The majority is over the 20 responsible nodes of all 24, never over those that
        // answered.
        assert_eq!(report.responsible.len(), 20, "{}", report.to_json());
        // Ground truth: which responsible nodes hold it, read from their stores.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let held: HashSet<PeerId> = holders(&all, &item).into_iter().collect();
        let truly = report
            .responsible
            .iter()
            .filter(|p| held.contains(p))
            .count();
        assert!(truly <= 12);
        assert_eq!(
            report.majority_stored(),
            truly * 2 > 20,
            "report claims {} of 20, truth {truly}: {}",
            report.responsible_stored(),
            report.to_json()
        );
        // Every responsible replica across the cut is named unreachable (or still
        // pending when the put returned with a majority).
        for p in &report.responsible {
            if b_ids.contains(p) {
                assert!(
                    report.unreachable.contains(p) || report.pending.contains(p),
                    "{}",
                    report.to_json()
                );
            }
        }
        if report.majority_stored() {
            with_majority += 1;
        } else {
            without += 1;
        }
    }
    eprintln!("partition: {with_majority} puts with a majority, {without} without");
    assert!(
        without > 0,
        "12 of 24 nodes can rarely hold 11 of 20 replicas"
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_equal_seq_conflict_converges_after_the_heal() {
    let config = NodeConfig {
        dead_after: Duration::from_secs(600),
        ..fast_failure_config()
    };
    let net = Testnet::builder(8).config(config).build().await.unwrap();
    assert!(net.wait_for_routing(7, Duration::from_secs(10)).await);
    let key = SigningKey::generate_ed25519();
    let pk = key.public_key();
    let v1 = MutableItem::sign(&key, pk, "svc", 1, &b"v1"[..]);
    assert!(net.nodes[0].put(v1).await.unwrap().majority_stored());

    let side_a = [0, 1, 2, 3];
    let side_b = [4, 5, 6, 7];
    net.partition(&side_a, &side_b).await.unwrap();
    wait_for("the cut is seen", Duration::from_secs(20), || {
        net.nodes[0].peers_down().len() >= 4 && net.nodes[4].peers_down().len() >= 4
    })
    .await;
    // Seq 2 on both sides: a value on one, a tombstone on the other; both acknowledged.
    let value = MutableItem::sign(&key, pk, "svc", 2, &b"v2"[..]);
    let tomb = MutableItem::tombstone(&key, pk, "svc", 2);
    let ra = net.nodes[1].put(value.clone()).await.unwrap();
    let rb = net.nodes[5].put(tomb.clone()).await.unwrap();
    assert!(!ra.stored_on().is_empty() || ra.local.is_some());
    assert!(!rb.stored_on().is_empty() || rb.local.is_some());

    let healed = Instant::now();
    net.heal(&side_a, &side_b).await.unwrap();
    let winner = if precedence(&value, &tomb).is_gt() {
        value.clone()
    } else {
        tomb.clone()
    };
    let all: Vec<&Node> = net.nodes.iter().collect();
    let took = wait_for(
        "every replica holds the winner",
        Duration::from_secs(20),
        || holders(&all, &winner).len() == 8,
    )
    .await;
    eprintln!(
        "equal-seq conflict converged {:?} after the heal",
        healed.elapsed().min(took)
    );
    for n in &net.nodes {
        for mode in [GetMode::First, GetMode::Quorum(0)] {
            let got = n.get(pk, b"svc", mode).await.unwrap();
            assert_eq!(got.seq(), Some(2));
            assert_eq!(got.is_deleted(), winner.is_tombstone(), "{mode:?}");
        }
    }
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_never_serves_a_list_deleted_while_it_was_down() {
    let mut net = Testnet::builder(6)
        .config(fast_failure_config())
        .on_disk(true)
        .build()
        .await
        .unwrap();
    assert!(net.wait_for_routing(5, Duration::from_secs(10)).await);
    let key = SigningKey::generate_ed25519();
    let subjects: Vec<SigningKey> = (0..30).map(|_| SigningKey::generate_ed25519()).collect();
    let policy_key = key; // subjects sign their own items
    let _ = policy_key;
    for s in &subjects {
        let item = MutableItem::sign(s, s.public_key(), "tp", 1, &b"[old list]"[..]);
        assert!(net.nodes[0].put(item).await.unwrap().majority_stored());
    }
    wait_for("node 3 holds every list", Duration::from_secs(10), || {
        net.nodes[3].store().unwrap().stats().unwrap().items == 30
    })
    .await;
    net.stop(3).await;
    for s in &subjects {
        let r = net.nodes[1].delete(s, s.public_key(), b"tp").await.unwrap();
        assert!(r.majority_stored(), "{}", r.to_json());
    }
    let back = net.restart(3).await.unwrap();
    assert!(!back.caught_up(), "a node with a store starts catching up");
    let mut events = back.subscribe();
    // Read every list from the restarted node, again and again, from the moment it is
    // up until well after its catch-up: not once may an old list come back.
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut reads = 0;
    let mut caught_up_seen = false;
    while Instant::now() < deadline || !caught_up_seen {
        for s in &subjects {
            let got = back
                .get(s.public_key(), b"tp", GetMode::First)
                .await
                .unwrap();
            assert!(
                got.value().is_none(),
                "read {reads}: the restarted node served a deleted list: {got:?}"
            );
            reads += 1;
        }
        while let Ok(ev) = events.try_recv() {
            if let NodeEvent::CatchUpFinished { items, .. } = ev {
                caught_up_seen = true;
                assert!(items <= 30, "counts are of distinct items: {items}");
            }
        }
        caught_up_seen |= back.caught_up();
        assert!(
            Instant::now() < deadline + Duration::from_secs(15),
            "catch-up never ended"
        );
    }
    eprintln!("{reads} reads from the restarted node, none stale");
    // After catch-up its own store holds the tombstones.
    for s in &subjects {
        let stored = back
            .store()
            .unwrap()
            .get(&Target::of(&s.public_key(), b"tp"))
            .unwrap();
        assert!(stored.is_some_and(|s| s.item.is_tombstone()));
    }
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_third_of_the_network_refills_every_replica_slot() {
    let config = NodeConfig {
        replication: 8,
        ..fast_failure_config()
    };
    let net = Testnet::builder(15).config(config).build().await.unwrap();
    assert!(net.wait_for_routing(8, Duration::from_secs(20)).await);
    let items: Vec<MutableItem> = (0..40)
        .map(|i| {
            let k = SigningKey::generate_ed25519();
            MutableItem::sign(&k, k.public_key(), "svc", 1, Bytes::from(format!("v{i}")))
        })
        .collect();
    for (i, item) in items.iter().enumerate() {
        assert!(net.nodes[i % 15]
            .put(item.clone())
            .await
            .unwrap()
            .majority_stored());
    }
    let killed: Vec<usize> = vec![2, 5, 8, 11, 14];
    for &i in &killed {
        net.stop(i).await;
    }
    let live: Vec<&Node> = net
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| !killed.contains(i))
        .map(|(_, n)| n)
        .collect();
    let started = Instant::now();
    // Live nodes notice when they next talk to the dead (the re-dial after the closed
    // connection): nothing else is needed to start re-replication.
    let took = wait_for(
        "8 copies of every item on live nodes",
        Duration::from_secs(30),
        || items.iter().all(|it| holders(&live, it).len() >= 8),
    )
    .await;
    eprintln!(
        "every replica slot refilled {:?} after the kill",
        started.elapsed().min(took)
    );
    net.shutdown().await;
}

/// The peers a members answer of `asked` names (asked by `asker`).
async fn members_of(asker: &Node, asked: PeerId) -> Vec<PeerId> {
    use dht_node::test_util::{request_proto, response_proto, MembersRequestProto, RequestProto};
    let request = RequestProto {
        kind: Some(request_proto::Kind::Members(MembersRequestProto {})),
    };
    match asker.request(asked, request).await.unwrap().kind {
        Some(response_proto::Kind::Members(m)) => m
            .members
            .iter()
            .map(|m| PeerId::from_bytes(&m.peer_id).unwrap())
            .collect(),
        other => panic!("not a members answer: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_held_down_is_left_out_of_members_answers_and_stays_out_of_tables() {
    let net = fast_failure_testnet(6).await;
    let gone = net.nodes[5].peer_id();
    assert!(members_of(&net.nodes[0], net.nodes[1].peer_id())
        .await
        .contains(&gone));
    // SIGKILL-like: the node's connections drop; every live node suspects it at once
    // and declares it dead `dead_after` (2 s) later.
    net.stop(5).await;
    let live = &net.nodes[..5];
    // While suspected (still in the routing table, not yet declared dead), nobody
    // names it: a members answer is what an asker adds to its table.
    wait_for(
        "node 1 suspecting the stopped node",
        Duration::from_secs(5),
        || live[1].peers_down().contains(&gone),
    )
    .await;
    assert!(
        live[1].routing_table().contains_key(&gone),
        "declared dead already"
    );
    assert!(!members_of(&live[0], live[1].peer_id())
        .await
        .contains(&gone));
    wait_for(
        "every live node dropping it from its table",
        Duration::from_secs(10),
        || live.iter().all(|n| !n.routing_table().contains_key(&gone)),
    )
    .await;
    // The joining rounds' members exchanges go on (up to 12 s after the start): the
    // dead node must not come back into any table by hearsay.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        for n in live {
            assert!(!n.routing_table().contains_key(&gone), "back in a table");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    net.shutdown().await;
}
