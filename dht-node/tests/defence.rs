//! Defences and operations: hostile requests, rate limits, the per-IP-range bound,
//! secp256k1 identities, QUIC, metrics and stats.

use std::time::Duration;

use bytes::Bytes;
use dht_core::wire::{EnvelopeProto, ItemProto};
use dht_core::{MutableItem, PutOptions, SigningKey};
use dht_node::protocol::{
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
    a.shutdown().await;
    b.shutdown().await;
}
