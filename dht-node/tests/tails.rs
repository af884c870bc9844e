//! Tails by design: replicas that are slow (stalled, not dead: their connections, pings
//! and kad answers stay prompt, their item answers take seconds) are hedged around and
//! never waited on for a request timeout. Bounds are generous (this runs on loaded
//! machines): each is well under the stall and the request timeout, never a latency
//! target.

mod common;

use common::wait_for;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dht_core::{MutableItem, SigningKey};
use dht_node::{closest_of, target_key, GetMode, Node, NodeConfig, NodeEvent, PeerId, Testnet};
use tokio::sync::broadcast::error::RecvError;

/// How long a stalled replica holds every item request.
const STALL: Duration = Duration::from_secs(4);
/// Every query below must return well before the stall ends.
const BOUND: Duration = Duration::from_millis(2_500);

fn config() -> NodeConfig {
    NodeConfig {
        // Five responsible replicas out of ten nodes: spares exist to hedge with.
        replication: 5,
        request_timeout: Duration::from_secs(5),
        ..NodeConfig::local()
    }
}

/// The nodes responsible for `item` (nearest first) and the others.
fn split(net: &Testnet, item: &MutableItem) -> (Vec<usize>, Vec<usize>) {
    let ids: Vec<PeerId> = net.nodes.iter().map(Node::peer_id).collect();
    let responsible = closest_of(&target_key(&item.target()), ids.iter().copied(), 5);
    let index = |p: &PeerId| ids.iter().position(|x| x == p).unwrap();
    let others = (0..ids.len())
        .filter(|i| !responsible.contains(&ids[*i]))
        .collect();
    (responsible.iter().map(index).collect(), others)
}

fn holds(node: &Node, item: &MutableItem) -> bool {
    node.store()
        .and_then(|s| s.get(&item.target()).ok().flatten())
        .is_some_and(|s| s.item == *item)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_whose_replicas_stall_returns_within_deadlines_with_an_honest_report() {
    let net = Testnet::builder(10).config(config()).build().await.unwrap();
    assert!(net.wait_for_routing(9, Duration::from_secs(20)).await);
    let key = SigningKey::generate_ed25519();
    let item = MutableItem::sign(&key, key.public_key(), "svc", 1, Bytes::from_static(b"[]"));
    let (responsible, others) = split(&net, &item);
    let writer = &net.nodes[others[0]];

    // One responsible replica stalls: the other four make the majority at once.
    net.nodes[responsible[0]].set_answer_delay(STALL);
    let t = Instant::now();
    let report = writer.put(item.clone()).await.unwrap();
    let took = t.elapsed();
    assert!(report.majority_stored(), "{}", report.to_json());
    assert!(took < BOUND, "put took {took:?}: {}", report.to_json());

    // Three of five stall: no majority is possible without them. The put does not wait
    // for them (nor claims them): it returns after their deadlines, names them pending,
    // and hedges them with spares outside the responsible set.
    let stalled: Vec<PeerId> = responsible[..3]
        .iter()
        .map(|&i| net.nodes[i].peer_id())
        .collect();
    for &i in &responsible[..3] {
        net.nodes[i].set_answer_delay(STALL);
    }
    let v2 = MutableItem::sign(&key, key.public_key(), "svc", 2, Bytes::from_static(b"[2]"));
    let mut events = writer.subscribe();
    let t = Instant::now();
    let report = writer.put(v2.clone()).await.unwrap();
    let took = t.elapsed();
    assert!(took < BOUND, "put took {took:?}: {}", report.to_json());
    assert!(!report.majority_stored(), "{}", report.to_json());
    assert_eq!(report.responsible_stored(), 2, "{}", report.to_json());
    for p in &stalled {
        assert!(report.pending.contains(p), "{}", report.to_json());
    }
    assert!(!report.stand_ins.is_empty(), "{}", report.to_json());
    for s in &report.stand_ins {
        assert!(!report.responsible.contains(s), "{}", report.to_json());
    }

    // The stalled replicas still get the item: the put finishes in the background and
    // says so.
    let finished = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match events.recv().await {
                Ok(NodeEvent::PutFinished {
                    target,
                    seq: 2,
                    responsible_stored,
                    majority,
                }) if target == v2.target() => break (responsible_stored, majority),
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => panic!("node stopped"),
            }
        }
    })
    .await
    .expect("a PutFinished event");
    assert_eq!(finished, (5, true));
    let stalled_nodes: Vec<&Node> = responsible[..3].iter().map(|&i| &net.nodes[i]).collect();
    assert!(stalled_nodes.iter().all(|n| holds(n, &v2)));
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_hedge_around_stalled_replicas() {
    let net = Testnet::builder(10).config(config()).build().await.unwrap();
    assert!(net.wait_for_routing(9, Duration::from_secs(20)).await);
    let key = SigningKey::generate_ed25519();
    let item = MutableItem::sign(&key, key.public_key(), "svc", 1, Bytes::from_static(b"[]"));
    let (responsible, others) = split(&net, &item);
    let report = net.nodes[others[0]].put(item.clone()).await.unwrap();
    assert!(report.majority_stored(), "{}", report.to_json());
    let all: Vec<&Node> = responsible.iter().map(|&i| &net.nodes[i]).collect();
    wait_for(
        "every replica holds the item",
        Duration::from_secs(10),
        || all.iter().all(|n| holds(n, &item)),
    )
    .await;

    // The three nearest replicas stall: the first-valid get's alpha peers, and a
    // majority of answers needs spares.
    for &i in &responsible[..3] {
        net.nodes[i].set_answer_delay(STALL);
    }
    let reader = &net.nodes[others[1]];
    let t = Instant::now();
    let got = reader
        .get(key.public_key(), b"svc", GetMode::Quorum(0))
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!(got.value(), Some(&b"[]"[..]), "{got:?}");
    assert!(took < BOUND, "best-of-quorum took {took:?}: {got:?}");

    let t = Instant::now();
    let got = reader
        .get(key.public_key(), b"svc", GetMode::First)
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!(got.value(), Some(&b"[]"[..]), "{got:?}");
    assert!(took < BOUND, "first-valid took {took:?}: {got:?}");
    net.shutdown().await;
}
