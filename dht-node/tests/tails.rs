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

/// Connected peers of `node`.
async fn connected(node: &Node) -> usize {
    node.stats().await.map_or(0, |s| s.connected_peers)
}

/// A full node of a small network keeps a connection to every other one (a read or a
/// put is then one round trip, never a dial), and stops dialling one that went down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_nodes_of_a_small_network_keep_every_connection_warm() {
    let config = NodeConfig {
        dead_after: Duration::from_secs(2),
        ..NodeConfig::local()
    };
    let net = Testnet::builder(10).config(config).build().await.unwrap();
    assert!(net.wait_for_routing(9, Duration::from_secs(20)).await);
    let started = Instant::now();
    loop {
        let mut counts = Vec::new();
        for n in &net.nodes {
            counts.push(connected(n).await);
        }
        if counts.iter().all(|c| *c == 9) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "connected peers per node: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Reads from every node open no connection: the replicas are all connected.
    let key = SigningKey::generate_ed25519();
    let item = MutableItem::sign(&key, key.public_key(), "tp", 1, &b"[]"[..]);
    assert!(net.nodes[0].put(item).await.unwrap().majority_stored());
    for n in &net.nodes {
        let got = n
            .get(key.public_key(), b"tp", GetMode::First)
            .await
            .unwrap();
        assert!(got.value().is_some());
        assert_eq!(connected(n).await, 9);
    }
    // A node goes down: the others are declared to have lost it and do not keep
    // dialling it; the nine left stay connected to each other.
    let gone = net.nodes[9].peer_id();
    net.stop(9).await;
    wait_for(
        "the stopped node declared down by every other",
        Duration::from_secs(20),
        || {
            net.nodes[..9]
                .iter()
                .all(|n| n.peers_down().contains(&gone))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in &net.nodes[..9] {
        assert_eq!(connected(n).await, 8);
    }
    net.shutdown().await;
}

/// A full node answers a members request with every full node it knows, with dialable
/// addresses: how a node of a small network learns the whole membership in one request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_request_lists_every_full_node_the_responder_knows() {
    use dht_node::test_util::{request_proto, response_proto, MembersRequestProto, RequestProto};
    let net = Testnet::builder(8).build().await.unwrap();
    assert!(net.wait_for_routing(7, Duration::from_secs(20)).await);
    let asked = &net.nodes[1];
    let request = RequestProto {
        kind: Some(request_proto::Kind::Members(MembersRequestProto {})),
    };
    let answer = net.nodes[0]
        .request(asked.peer_id(), request)
        .await
        .unwrap();
    let Some(response_proto::Kind::Members(m)) = answer.kind else {
        panic!("not a members answer: {answer:?}");
    };
    let listed: std::collections::HashSet<Vec<u8>> =
        m.members.iter().map(|m| m.peer_id.to_vec()).collect();
    let others: std::collections::HashSet<Vec<u8>> = net
        .nodes
        .iter()
        .filter(|n| n.peer_id() != asked.peer_id())
        .map(|n| n.peer_id().to_bytes())
        .collect();
    assert_eq!(listed, others);
    assert!(m.members.iter().all(|m| !m.addrs.is_empty()));
    // Every node comes to hold the whole membership: one-hop routing, no lookups.
    let started = Instant::now();
    for n in &net.nodes {
        loop {
            let stats = n.stats().await.unwrap();
            if stats.membership_known && stats.routing_table_peers == 7 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "membership not known: {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    net.shutdown().await;
}

/// A full node joining while another is down (stopped, its connections gone) learns the
/// live membership through the members exchange, opens a warm connection to every live
/// node, and its puts reach a majority straight away: the member that is down is handed
/// on in answers, fails its dial and is skipped, never waited on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_while_a_member_is_down_learns_the_live_membership_and_puts_at_once() {
    use dht_node::NodeMode;
    let mut net = Testnet::builder(8).build().await.unwrap();
    assert!(net.wait_for_routing(7, Duration::from_secs(20)).await);
    net.stop(3).await;
    let down = net.nodes[3].peer_id();
    let joined = net.add_node(NodeMode::Full).await.unwrap();
    let live: Vec<PeerId> = net
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| *i != 3 && n.peer_id() != joined.peer_id())
        .map(|(_, n)| n.peer_id())
        .collect();
    let started = Instant::now();
    loop {
        let stats = joined.stats().await.unwrap();
        if stats.membership_known && stats.connected_peers >= live.len() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the joined node did not learn and connect the {} live members: {stats:?}",
            live.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = put_majority_within_bound(&joined, fresh_item("svc")).await;
    assert!(!report.stored_on().contains(&down), "{}", report.to_json());
    for p in report.stored_on() {
        assert!(
            live.contains(&p) || p == joined.peer_id(),
            "{}",
            report.to_json()
        );
    }
    net.shutdown().await;
}

/// A network larger than its nodes' connection budgets: to stay within budget the nodes
/// close each other's connections all the time, and the other end closing is not a
/// fault. No peer is suspected for it (at 1,000 nodes, suspecting and re-dialling
/// trimmed peers became a storm of connections), and puts reach their majority. A node
/// that does go down is still found out, by the first request to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_trimming_their_connections_are_not_suspected_but_a_stopped_node_is() {
    let net = over_budget_testnet(12).await;
    assert!(net.wait_for_routing(4, Duration::from_secs(20)).await);
    // The budgets trim what formation opened (after their grace period).
    let started = Instant::now();
    for n in &net.nodes {
        while n.stats().await.unwrap().connected_peers > 4 {
            assert!(started.elapsed() < Duration::from_secs(10), "never trimmed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let total = |net: &Testnet, f: fn(&Node) -> u64| net.nodes.iter().map(f).sum::<u64>();
    let suspected = |n: &Node| n.metrics().peers_suspected.get();
    let opened = |n: &Node| n.metrics().connections_opened.get();
    let (suspected0, opened0) = (total(&net, suspected), total(&net, opened));
    for i in 0..24 {
        let report = net.nodes[i % 12].put(fresh_item("tp")).await.unwrap();
        assert!(report.majority_stored(), "{}", report.to_json());
    }
    let opened = total(&net, opened) - opened0;
    // The budgets did trim: the puts' replicas were dialled again and again.
    assert!(opened >= 24, "only {opened} connections opened");
    assert_eq!(
        total(&net, suspected),
        suspected0,
        "peers suspected while {opened} connections were opened and trimmed"
    );

    // A peer of node 0's routing table (a peer it does not track is not suspected).
    let table = net.nodes[0].routing_table();
    let j = (1..12)
        .find(|j| table.contains_key(&net.nodes[*j].peer_id()))
        .expect("node 0 has peers");
    net.stop(j).await;
    let down = net.nodes[j].peer_id();
    let item = fresh_item("tp");
    let before = suspected(&net.nodes[0]);
    // The request that meets the closing connection fails without suspicion (a close
    // is judged where it happens); the next one dials, is refused, and suspects.
    let started = Instant::now();
    while suspected(&net.nodes[0]) == before {
        let result = net.nodes[0]
            .send_item_to(down, &item, dht_core::PutOptions::default())
            .await;
        assert!(
            !matches!(result, dht_node::ReplicaResult::Stored(_)),
            "{result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the stopped node was not suspected; last request: {result:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    net.shutdown().await;
}

/// The same kind of network (budgets smaller than the membership, so a closed connection
/// is not taken as a fault), joined by a `dht-node testnet` process of four nodes that is
/// then SIGKILLed. Puts go on reaching their majority within the bound, the dead nodes
/// are suspected as requests dial them, and no live node is suspected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_process_is_suspected_and_puts_go_on_where_budgets_trim() {
    use std::collections::HashSet;
    use std::io::{BufRead, BufReader};
    let net = over_budget_testnet(8).await;
    let join = net.bootstrap_addr().unwrap().to_string();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dht-node"))
        .args(["testnet", "--nodes", "4", "--join", &join])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.starts_with("READY"))
    });
    assert!(tokio::time::timeout(Duration::from_secs(30), ready)
        .await
        .unwrap()
        .unwrap());
    let ours: HashSet<PeerId> = net.nodes.iter().map(|n| n.peer_id()).collect();
    let outsiders = |net: &Testnet| -> HashSet<PeerId> {
        net.nodes
            .iter()
            .flat_map(|n| n.routing_table().into_keys())
            .filter(|p| !ours.contains(p))
            .collect()
    };
    wait_for(
        "the process's nodes in the tables",
        Duration::from_secs(20),
        || outsiders(&net).len() == 4,
    )
    .await;
    let killed = outsiders(&net);
    let mut events: Vec<_> = net.nodes.iter().map(|n| n.subscribe()).collect();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    for i in 0..16 {
        put_majority_within_bound(&net.nodes[i % 8], fresh_item("tp")).await;
    }
    let mut suspected = HashSet::new();
    for rx in &mut events {
        loop {
            match rx.try_recv() {
                Ok(NodeEvent::PeerSuspected(p)) => {
                    suspected.insert(p);
                }
                Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
    }
    assert!(
        suspected.iter().all(|p| killed.contains(p)),
        "live peers suspected: {:?}",
        suspected.difference(&killed).collect::<Vec<_>>()
    );
    assert!(!suspected.is_empty(), "no killed node was suspected");
    net.shutdown().await;
}

/// A new item under a fresh key.
fn fresh_item(salt: &'static str) -> MutableItem {
    let key = SigningKey::generate_ed25519();
    MutableItem::sign(&key, key.public_key(), salt, 1, Bytes::from_static(b"[1]"))
}

/// Puts `item` from `node`, asserting that a majority stored it within [`BOUND`].
async fn put_majority_within_bound(node: &Node, item: MutableItem) -> dht_node::PutReport {
    let t = Instant::now();
    let report = node.put(item).await.unwrap();
    assert!(report.majority_stored(), "{}", report.to_json());
    assert!(
        t.elapsed() < BOUND,
        "put took {:?}: {}",
        t.elapsed(),
        report.to_json()
    );
    report
}

/// `n` full nodes whose connection budget (4: at most 3 kept) is smaller than their
/// membership, so that they trim each other's connections and no node keeps every
/// connection warm.
async fn over_budget_testnet(n: usize) -> Testnet {
    let mut config = NodeConfig::local();
    config.max_connected_peers = 4;
    Testnet::builder(n).config(config).build().await.unwrap()
}
