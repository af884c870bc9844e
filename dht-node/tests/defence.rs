//! Defences and operations: hostile requests, rate limits, the per-IP-range bound,
//! secp256k1 identities, QUIC, metrics and stats.

use std::time::Duration;

use bytes::Bytes;
use dht_core::wire::{EnvelopeProto, ItemProto};
use dht_core::{MutableItem, PutOptions, SigningKey};
use dht_node::test_util::{
    request_proto, response_proto, GetRequestProto, PutItemProto, PutRequestProto, RequestProto,
    SyncRequestProto,
};
use dht_node::{GetMode, Node, NodeConfig, RateLimit, ReplicaResult, Testnet};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_errors_and_the_node_keeps_serving() {
    let net = Testnet::builder(2).build().await.unwrap();
    assert!(net.wait_for_routing(1, Duration::from_secs(10)).await);
    let (a, b) = (&net.nodes[0], &net.nodes[1]);
    let garbage_item = PutItemProto {
        envelope: Some(EnvelopeProto {
            version: 1,
            item: Some(ItemProto {
                subject_scheme: 99,
                subject: Bytes::from_static(b"\x01\x02"),
                ..Default::default()
            }),
            expires_at_ms: 0,
        }),
        cas_kind: 7,
        cas_seq: 0,
        coded: None,
    };
    let cases = vec![
        RequestProto { kind: None },
        RequestProto {
            kind: Some(request_proto::Kind::Get(GetRequestProto {
                target: Bytes::from_static(b"short"),
            })),
        },
        RequestProto {
            kind: Some(request_proto::Kind::Put(PutRequestProto {
                items: vec![garbage_item, PutItemProto::default()],
            })),
        },
        RequestProto {
            kind: Some(request_proto::Kind::Sync(SyncRequestProto {
                since: u64::MAX,
                limit: u32::MAX,
                salt: Bytes::new(),
            })),
        },
    ];
    for req in cases {
        let resp = a.request(b.peer_id(), req.clone()).await.unwrap();
        match resp.kind {
            Some(response_proto::Kind::Error(e)) => assert_eq!(e.code, "malformed", "{req:?}"),
            Some(response_proto::Kind::Put(p)) => {
                assert_eq!(p.results.len(), 2);
                assert!(p
                    .results
                    .iter()
                    .all(|r| r.outcome == 0 && r.reason == dht_core::ReasonCode::Malformed.tag()));
            }
            Some(response_proto::Kind::Sync(s)) => assert!(s.items.is_empty() && s.done),
            other => panic!("unexpected {other:?}"),
        }
    }
    // Still serving.
    let key = SigningKey::generate_ed25519();
    let r = a
        .put(MutableItem::sign(
            &key,
            key.public_key(),
            "x",
            1,
            &b"ok"[..],
        ))
        .await
        .unwrap();
    assert_eq!(r.stored_on(), vec![b.peer_id()]);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_is_rate_limited() {
    let mut config = NodeConfig::local();
    config.rate_limit = RateLimit {
        per_second: 1.0,
        burst: 5.0,
        ..RateLimit::default()
    };
    let net = Testnet::builder(2).config(config).build().await.unwrap();
    assert!(net.wait_for_routing(1, Duration::from_secs(10)).await);
    let key = SigningKey::generate_ed25519();
    let mut limited = 0;
    let mut stored = 0;
    for seq in 1..=20 {
        let item = MutableItem::sign(&key, key.public_key(), "x", seq, &b"v"[..]);
        match net.nodes[0]
            .send_item_to(net.nodes[1].peer_id(), &item, PutOptions::default())
            .await
        {
            ReplicaResult::Failed(e) if e.contains("rate_limited") => limited += 1,
            ReplicaResult::Stored(_) => stored += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(limited >= 10, "limited {limited}");
    assert!((5..=8).contains(&stored), "stored {stored}");
    assert!(net.nodes[1]
        .metrics()
        .encode()
        .contains("dht_rate_limited_total"));
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_tables_take_a_bounded_number_of_peers_per_ip_range() {
    let mut config = NodeConfig::local();
    config.max_peers_per_ip_range = Some(2);
    config.ip_range_limit_loopback = true;
    let net = Testnet::builder(6).config(config).build().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in &net.nodes {
        let size = n.routing_table().len();
        assert!(
            size <= 2,
            "{} has {size} peers from 127.0.0.0/24",
            n.peer_id()
        );
    }
    assert!(net.nodes.iter().any(|n| !n.routing_table().is_empty()));
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_under_a_skywire_key_over_quic() {
    let secp = SigningKey::generate_secp256k1();
    let identity = dht_node::keypair_from_skywire_secret(&secp.to_bytes()).unwrap();
    let mut config = NodeConfig::local();
    config.listen = vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()];
    config.quic = true;
    let a = Node::builder()
        .config(config.clone())
        .keypair(identity.clone())
        .build()
        .await
        .unwrap();
    assert_eq!(a.peer_id(), identity.public().to_peer_id());
    // The libp2p public key is the Skywire key.
    let libp2p_pk = identity.public().try_into_secp256k1().unwrap().to_bytes();
    assert_eq!(&libp2p_pk[..], secp.public_key().as_bytes());

    config.bootstrap = vec![a.bootstrap_addr().unwrap()];
    let b = Node::builder().config(config).build().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.routing_table().is_empty() || a.routing_table().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no QUIC peering");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = b
        .put(MutableItem::sign(
            &secp,
            secp.public_key(),
            "dmsg",
            1,
            &b"{}"[..],
        ))
        .await
        .unwrap();
    assert_eq!(r.stored_on(), vec![a.peer_id()]);
    let got = a
        .get(secp.public_key(), b"dmsg", GetMode::First)
        .await
        .unwrap();
    assert_eq!(got.value(), Some(&b"{}"[..]));

    let stats = a.stats().await.unwrap();
    assert_eq!(stats.routing_table_peers, 1);
    assert_eq!(stats.items_stored, 1);
    let text = a.metrics().encode();
    for m in [
        "dht_routing_table_peers",
        "dht_puts_total",
        "dht_inbound_requests_total",
        "dht_get_latency_seconds",
    ] {
        assert!(text.contains(m), "{m} missing from\n{text}");
    }
    assert!(text.contains("result=\"accepted\""));
    // Over QUIC too, bytes are counted per protocol.
    assert!(protocol_bytes(&text, "items", "in") > 0, "{text}");
    assert!(protocol_bytes(&text, "identify", "out") > 0, "{text}");
    a.shutdown().await;
    b.shutdown().await;
}

/// A `dht_protocol_bytes_total` counter from a metrics text (0 when absent).
fn protocol_bytes(text: &str, protocol: &str, direction: &str) -> u64 {
    let series =
        format!("dht_protocol_bytes_total{{protocol=\"{protocol}\",direction=\"{direction}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_are_counted_per_protocol() {
    let net = Testnet::builder(3).build().await.unwrap();
    assert!(net.wait_for_routing(2, Duration::from_secs(10)).await);
    let key = SigningKey::generate_ed25519();
    // Incompressible (xorshift), so it travels as is, never coded smaller.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let value: Vec<u8> = (0..20_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let item = MutableItem::sign(&key, key.public_key(), "svc", 1, value);
    let report = net.nodes[0].put(item).await.unwrap();
    assert!(report.majority_stored(), "{report:?}");
    let sent = net.nodes[0].metrics().encode();
    // Each replica that stored it got the whole value (at least one other node did).
    let items_out = protocol_bytes(&sent, "items", "out");
    assert!(items_out >= 20_000, "items out {items_out}\n{sent}");
    for (protocol, direction) in [("kad", "out"), ("kad", "in"), ("identify", "in")] {
        assert!(
            protocol_bytes(&sent, protocol, direction) > 0,
            "{protocol} {direction} missing\n{sent}"
        );
    }
    // What one node wrote, the others read.
    let mut items_in = 0;
    for node in &net.nodes[1..] {
        items_in += protocol_bytes(&node.metrics().encode(), "items", "in");
    }
    assert!(items_in >= 20_000, "items in {items_in}");
    assert_eq!(protocol_bytes(&sent, "other", "in"), 0, "{sent}");
    net.shutdown().await;
}

/// A client node (in no routing table) with its own, looser limits.
async fn stranger(net: &Testnet, max_value_len: usize) -> Node {
    let mut config = NodeConfig::local();
    config.mode = dht_node::NodeMode::Client;
    config.policy.max_value_len = max_value_len;
    config.bootstrap = net.bootstrap_addr().into_iter().collect();
    let node = Node::builder().config(config).build().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while node.routing_table().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_over_the_limit_are_refused_from_the_frame_header() {
    let net = Testnet::builder(1).build().await.unwrap();
    let replica = net.nodes[0].peer_id();
    let hostile = stranger(&net, 8 * 1024 * 1024).await;
    let key = SigningKey::generate_ed25519();
    // 1.5 MiB against the 1 MiB limit: refused from the length prefix with a typed answer.
    let over = MutableItem::sign(&key, key.public_key(), "tp", 1, vec![1u8; 1536 * 1024]);
    match hostile
        .send_item_to(replica, &over, PutOptions::default())
        .await
    {
        ReplicaResult::Rejected { code, detail } => {
            assert_eq!(code, dht_core::ReasonCode::TooLarge);
            assert!(detail.contains("exceeds the limit"), "{detail}");
        }
        other => panic!("expected too_large, got {other:?}"),
    }
    // Another client, connected before the ban (new connections from the banned
    // peer's address are throttled while it lasts).
    let other = stranger(&net, 1024 * 1024).await;
    // 5 MiB, far over: the stream is reset without reading the body, and the sender is
    // banned (disconnected, its connections refused for a while).
    let items_in = || protocol_bytes(&net.nodes[0].metrics().encode(), "items", "in");
    let before = items_in();
    let huge = MutableItem::sign(&key, key.public_key(), "tp", 2, vec![2u8; 5 * 1024 * 1024]);
    assert!(matches!(
        hostile
            .send_item_to(replica, &huge, PutOptions::default())
            .await,
        ReplicaResult::Failed(_)
    ));
    let read = items_in() - before;
    assert!(read < 1024 * 1024, "read {read} bytes of a 5 MiB frame");
    let text = net.nodes[0].metrics().encode();
    assert!(text.contains("dht_peers_banned_total 1"), "{text}");
    let ok = MutableItem::sign(&key, key.public_key(), "tp", 3, &b"[]"[..]);
    assert!(matches!(
        hostile
            .send_item_to(replica, &ok, PutOptions::default())
            .await,
        ReplicaResult::Failed(_)
    ));
    // The node keeps serving everyone else, and counted the refusals.
    assert!(matches!(
        other
            .send_item_to(replica, &ok, PutOptions::default())
            .await,
        ReplicaResult::Stored(_)
    ));
    assert!(net.nodes[0].metrics().encode().contains("too_large"));
    other.shutdown().await;
    hostile.shutdown().await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_sending_oversized_values_past_its_byte_budget_is_banned() {
    let net = Testnet::builder(1).build().await.unwrap();
    let replica = net.nodes[0].peer_id();
    let hostile = stranger(&net, 8 * 1024 * 1024).await;
    let key = SigningKey::generate_ed25519();
    let over = MutableItem::sign(&key, key.public_key(), "tp", 1, vec![1u8; 1536 * 1024]);
    // Each 1.5 MiB frame is refused from its prefix and charged to the stranger's byte
    // budget (a few MiB): the first get a typed answer, then the stranger is banned.
    let mut typed = 0;
    for _ in 0..8 {
        match hostile
            .send_item_to(replica, &over, PutOptions::default())
            .await
        {
            ReplicaResult::Rejected { code, .. } => {
                assert_eq!(code, dht_core::ReasonCode::TooLarge);
                typed += 1;
            }
            ReplicaResult::Failed(_) => {}
            other => panic!("expected too_large or a failure, got {other:?}"),
        }
    }
    assert!((1..8).contains(&typed), "{typed} typed refusals");
    let text = net.nodes[0].metrics().encode();
    assert!(text.contains("dht_peers_banned_total 1"), "{text}");
    // Banned: even a valid item is not taken from it now, while a full node's is.
    let ok = MutableItem::sign(&key, key.public_key(), "tp", 2, &b"[]"[..]);
    assert!(matches!(
        hostile
            .send_item_to(replica, &ok, PutOptions::default())
            .await,
        ReplicaResult::Failed(_)
    ));
    hostile.shutdown().await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_flood_is_throttled_while_publishers_and_owners_keep_writing() {
    let mirror = SigningKey::generate_secp256k1();
    let mut config = NodeConfig::local();
    config.policy = dht_core::Policy::default().authorize("tp", mirror.public_key());
    config.stranger_items_per_peer = dht_node::Budget {
        per_second: 0.5,
        burst: 20.0,
    };
    let net = Testnet::builder(1).config(config).build().await.unwrap();
    let replica = net.nodes[0].peer_id();
    let flooder = stranger(&net, 1024 * 1024).await;

    // A visor's own entry, written before the flood.
    let visor = SigningKey::generate_ed25519();
    let own = MutableItem::sign(&visor, visor.public_key(), "svc", 1, &b"[v1]"[..]);
    assert!(matches!(
        flooder
            .send_item_to(replica, &own, PutOptions::default())
            .await,
        ReplicaResult::Stored(_)
    ));

    // 200 new items under fresh keys: only the burst gets in.
    let mut stored = 0;
    let mut throttled = 0;
    for _ in 0..200 {
        let k = SigningKey::generate_ed25519();
        let junk = MutableItem::sign(&k, k.public_key(), "svc", 1, &b"[junk]"[..]);
        match flooder
            .send_item_to(replica, &junk, PutOptions::default())
            .await
        {
            ReplicaResult::Stored(_) => stored += 1,
            ReplicaResult::Rejected { code, .. } => {
                assert_eq!(code, dht_core::ReasonCode::QuotaExceeded);
                throttled += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(stored <= 25, "stored {stored}");
    assert!(throttled >= 175, "throttled {throttled}");

    // Meanwhile the authorized publisher's new items and the visor's update get through,
    // even from the same stranger peer.
    for _ in 0..50 {
        let edge = SigningKey::generate_secp256k1().public_key();
        let item = MutableItem::sign(&mirror, edge, "tp", 1, &b"[edge list]"[..]);
        assert!(matches!(
            flooder
                .send_item_to(replica, &item, PutOptions::default())
                .await,
            ReplicaResult::Stored(_)
        ));
    }
    let update = MutableItem::sign(&visor, visor.public_key(), "svc", 2, &b"[v2]"[..]);
    assert!(matches!(
        flooder
            .send_item_to(replica, &update, PutOptions::default())
            .await,
        ReplicaResult::Stored(_)
    ));
    assert!(net.nodes[0]
        .metrics()
        .encode()
        .contains("dht_strangers_throttled_total"));
    flooder.shutdown().await;
    net.shutdown().await;
}

/// Two full nodes whose peers may send 40 requests (strangers 2), never refilled.
async fn two_nodes_allowing_40_requests() -> Testnet {
    let mut config = NodeConfig::local();
    config.rate_limit = RateLimit {
        per_second: 0.0,
        burst: 40.0,
        bytes_per_second: 0.0,
        burst_bytes: 1e9,
    };
    let net = Testnet::builder(2).config(config).build().await.unwrap();
    assert!(net.wait_for_routing(1, Duration::from_secs(10)).await);
    net
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_that_keeps_sending_past_its_refusals_is_banned_and_full_nodes_are_not() {
    // Full nodes may send 40 requests at once; a stranger 2, and is refused at most 100
    // more (at no rate) before it is taken for a flood.
    let net = two_nodes_allowing_40_requests().await;
    let replica = net.nodes[0].peer_id();
    let flooder = stranger(&net, 1024 * 1024).await;
    let get = || RequestProto {
        kind: Some(request_proto::Kind::Get(GetRequestProto {
            target: Bytes::from(vec![7u8; 32]),
        })),
    };
    let banned = || {
        net.nodes[0]
            .metrics()
            .encode()
            .contains("dht_peers_banned_total 1")
    };
    // Waves of gets in parallel, ignoring every refusal (each wave's refusals are held
    // a second, so about 32 a second count).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !banned() && std::time::Instant::now() < deadline {
        futures::future::join_all((0..40).map(|_| flooder.request(replica, get()))).await;
    }
    assert!(banned(), "{}", net.nodes[0].metrics().encode());
    // Banned: its requests fail now, at once rather than after a held refusal, and
    // its redials from the same address are dropped before their handshake (past two).
    let started = std::time::Instant::now();
    for _ in 0..5 {
        assert!(flooder.request(replica, get()).await.is_err());
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let text = net.nodes[0].metrics().encode();
    assert!(
        !text.contains("dht_connections_throttled_total 0"),
        "{text}"
    );
    // A full node sending more requests than that is refused, never banned.
    let full = &net.nodes[1];
    for _ in 0..5 {
        futures::future::join_all((0..40).map(|_| full.request(replica, get()))).await;
    }
    assert!(banned());
    assert!(full.request(replica, get()).await.is_ok());
    flooder.shutdown().await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_waits_for_its_refusals_while_full_nodes_get_them_at_once() {
    // Full nodes may send 40 requests; a stranger a twentieth of that: 2.
    let net = two_nodes_allowing_40_requests().await;
    // The client bootstraps from (and so is connected to) node 0.
    let replica = net.nodes[0].peer_id();
    let key = SigningKey::generate_ed25519();
    let item = |seq| MutableItem::sign(&key, key.public_key(), "svc", seq, &b"[v]"[..]);

    let client = stranger(&net, 1024 * 1024).await;
    let mut refused_late = 0;
    for n in 0..5 {
        let started = std::time::Instant::now();
        let result = client
            .send_item_to(replica, &item(n + 1), PutOptions::default())
            .await;
        if n < 2 {
            assert!(matches!(result, ReplicaResult::Stored(_)), "{result:?}");
            continue;
        }
        assert!(
            matches!(&result, ReplicaResult::Failed(e) if e.contains("rate_limited")),
            "{result:?}"
        );
        // The refusal was held about a second.
        if started.elapsed() >= Duration::from_millis(800) {
            refused_late += 1;
        }
    }
    assert_eq!(refused_late, 3);

    // A full node of the routing table has twenty times the room, and its refusals
    // come at once.
    let full = &net.nodes[1];
    let mut stored = 0;
    for seq in 10..55 {
        let started = std::time::Instant::now();
        match full
            .send_item_to(replica, &item(seq), PutOptions::default())
            .await
        {
            ReplicaResult::Stored(_) => stored += 1,
            ReplicaResult::Failed(e) => {
                assert!(e.contains("rate_limited"), "{e}");
                assert!(started.elapsed() < Duration::from_millis(800));
            }
            other => panic!("{other:?}"),
        }
    }
    // Its own background requests (members exchanges of its joining rounds) share
    // the same budget.
    assert!(stored >= 34, "stored {stored}");
    let text = net.nodes[0].metrics().encode();
    assert!(text.contains("dht_refusals_held_total 3"), "{text}");
    client.shutdown().await;
    net.shutdown().await;
}
