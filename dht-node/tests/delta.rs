//! Coded put values on real sockets (127.0.0.1): a publisher sends a replica that holds
//! its last value a patch, one that does not the value compressed, and a replica stores
//! only what it validated over the full value.

mod common;

use common::metric;

use std::time::Duration;

use common::wait_for;
use dht_core::codec::{compress, make_patch, Base};
use dht_core::wire::{EnvelopeProto, ItemProto, ENVELOPE_VERSION};
use dht_core::{MutableItem, Policy, ReasonCode, SigningKey, Target};
use dht_node::test_util::{
    request_proto, response_proto, PutItemProto, PutRequestProto, RequestProto, ValueCodecProto,
};
use dht_node::{GetMode, Node, Testnet};

/// Pseudo-random 64 bits from `x` (splitmix64): keys and ids that compress like real
/// ones.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A transport list of an edge as the transport discovery serves it (about 230 bytes
/// an entry, random keys and ids).
fn transport_list(edge: &str, n: usize) -> Vec<u8> {
    let entries: Vec<serde_json::Value> = (0..n as u64)
        .map(|i| {
            let other = format!(
                "03{:016x}{:016x}{:016x}{:016x}",
                mix(4 * i),
                mix(4 * i + 1),
                mix(4 * i + 2),
                mix(4 * i + 3)
            );
            let mut edges = [edge.to_string(), other];
            edges.sort();
            let id = mix(i ^ 0x5555);
            serde_json::json!({
                "t_id": format!(
                    "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                    id >> 32,
                    (id >> 16) & 0xffff,
                    id & 0xfff,
                    (id >> 12) & 0xfff,
                    mix(id) & 0xffff_ffff_ffff
                ),
                "edges": edges,
                "type": "stcpr",
                "label": "automatic",
            })
        })
        .collect();
    serde_json::to_vec(&entries).unwrap()
}

fn item_bytes_out(node: &Node) -> u64 {
    metric(node, "dht_item_protocol_bytes_total{direction=\"out\"}")
}

/// Waits until every node but `except` holds `seq` at `target`.
async fn all_hold(net: &Testnet, target: Target, seq: u64, except: Option<usize>) {
    wait_for(
        &format!("every replica holds seq {seq}"),
        Duration::from_secs(15),
        || {
            net.nodes.iter().enumerate().all(|(i, n)| {
                Some(i) == except
                    || n.store()
                        .unwrap()
                        .get(&target)
                        .ok()
                        .flatten()
                        .map(|s| s.item.seq)
                        == Some(seq)
            })
        },
    )
    .await;
}

/// A 127 KB list changing by one entry: the second put costs the publisher a patch per
/// replica, and every replica holds the exact new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_entry_added_to_a_127_kb_list_goes_as_a_patch() {
    let net = Testnet::builder(5).build().await.unwrap();
    assert!(net.wait_for_routing(4, Duration::from_secs(10)).await);
    assert!(net.wait_for_catch_up(Duration::from_secs(10)).await);
    // Let the young network's hand-offs (which push whole items) finish first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let edge = SigningKey::generate_secp256k1();
    let pk = edge.public_key();
    let v1 = transport_list(&pk.to_hex(), 550);
    let v2 = transport_list(&pk.to_hex(), 551);
    assert!((120_000..135_000).contains(&v1.len()), "{}", v1.len());
    let publisher = &net.nodes[0];
    let item1 = MutableItem::sign(&edge, pk, "tp", 1, v1.clone());
    let target = item1.target();

    // For comparison: the same item sent as is to one replica (item protocol, plain).
    let before = item_bytes_out(publisher);
    let plain = publisher
        .send_item_to(net.nodes[1].peer_id(), &item1, Default::default())
        .await;
    assert!(
        matches!(plain, dht_node::ReplicaResult::Stored(_)),
        "{plain:?}"
    );
    let plain_per_replica = item_bytes_out(publisher) - before;

    let before = item_bytes_out(publisher);
    let report = publisher.put(item1).await.unwrap();
    assert!(report.majority_stored(), "{}", report.to_json());
    all_hold(&net, target, 1, None).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first = item_bytes_out(publisher) - before;

    let before = item_bytes_out(publisher);
    let report = publisher
        .put(MutableItem::sign(&edge, pk, "tp", 2, v2.clone()))
        .await
        .unwrap();
    assert!(report.majority_stored(), "{}", report.to_json());
    all_hold(&net, target, 2, None).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = item_bytes_out(publisher) - before;
    let replicas = (net.nodes.len() - 1) as u64;
    eprintln!(
        "value {} -> {} bytes; item-protocol bytes out: plain {plain_per_replica}/replica, \
         first put {first} ({}/replica, zstd), second put {second} ({}/replica, patch)",
        v1.len(),
        v2.len(),
        first / replicas,
        second / replicas,
    );
    for n in &net.nodes {
        let held = n.store().unwrap().get(&target).unwrap().unwrap();
        assert_eq!(held.item.value().map(|v| &v[..]), Some(&v2[..]));
        let got = n.get(pk, b"tp", GetMode::Quorum(0)).await.unwrap();
        assert_eq!(got.value(), Some(&v2[..]));
    }
    assert!(plain_per_replica > 120_000, "{plain_per_replica}");
    assert!(second < 20_000, "second put sent {second} bytes");
    assert!(second * 10 < first, "{second} vs {first}");
    assert_eq!(
        metric(publisher, "dht_put_value_forms_total{form=\"patch\"}"),
        replicas
    );
    assert_eq!(metric(publisher, "dht_put_need_base_total"), 0);
    net.shutdown().await;
}

/// Replicas that do not hold the publisher's last value (another node put the seq in
/// between) answer "need base" and get the full value, compressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_the_base_gets_the_full_value() {
    let net = Testnet::builder(5).build().await.unwrap();
    assert!(net.wait_for_routing(4, Duration::from_secs(10)).await);
    let edge = SigningKey::generate_secp256k1();
    let pk = edge.public_key();
    let list = |n| transport_list(&pk.to_hex(), n);
    let publisher = &net.nodes[0];
    let item1 = MutableItem::sign(&edge, pk, "tp", 1, list(300));
    let target = item1.target();
    publisher.put(item1).await.unwrap();
    all_hold(&net, target, 1, None).await;
    // Seq 2 comes from another node: the publisher's base (seq 1) is gone everywhere.
    net.nodes[1]
        .put(MutableItem::sign(&edge, pk, "tp", 2, list(301)))
        .await
        .unwrap();
    all_hold(&net, target, 2, None).await;
    let v3 = list(302);
    let report = publisher
        .put(MutableItem::sign(&edge, pk, "tp", 3, v3.clone()))
        .await
        .unwrap();
    assert!(report.majority_stored(), "{}", report.to_json());
    all_hold(&net, target, 3, None).await;
    for n in &net.nodes {
        let held = n.store().unwrap().get(&target).unwrap().unwrap();
        assert_eq!(held.item.value().map(|v| &v[..]), Some(&v3[..]));
    }
    let need_base = metric(publisher, "dht_put_need_base_total");
    assert_eq!(need_base, (net.nodes.len() - 1) as u64);
    assert_eq!(
        metric(publisher, "dht_put_value_forms_total{form=\"zstd\"}"),
        // The first put (no base yet) and the retries.
        2 * need_base
    );
    net.shutdown().await;
}

/// A put request carrying `item` (its value replaced by `coded` on the wire).
fn coded_put(item: &MutableItem, coded: ValueCodecProto) -> RequestProto {
    RequestProto {
        kind: Some(request_proto::Kind::Put(PutRequestProto {
            items: vec![PutItemProto {
                envelope: Some(EnvelopeProto {
                    version: ENVELOPE_VERSION,
                    item: Some(ItemProto::from(item)),
                    expires_at_ms: 0,
                }),
                cas_kind: 0,
                cas_seq: 0,
                coded: Some(coded),
            }],
        })),
    }
}

/// The reason a replica gave for the one item of a put (0: stored).
async fn put_reason(from: &Node, to: &Node, req: RequestProto) -> u32 {
    match from.request(to.peer_id(), req).await.unwrap().kind {
        Some(response_proto::Kind::Put(p)) => p.results[0].reason,
        other => panic!("not a put answer: {other:?}"),
    }
}

/// A patch that rebuilds other bytes than the signed value is refused `bad_signature`,
/// and a patch or frame declaring more than `max_value_len` is refused `too_large`:
/// the replica keeps what it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_patches_and_bombs_are_refused_and_nothing_is_stored() {
    let net = Testnet::builder(3).build().await.unwrap();
    assert!(net.wait_for_routing(2, Duration::from_secs(10)).await);
    let edge = SigningKey::generate_secp256k1();
    let pk = edge.public_key();
    let v1 = transport_list(&pk.to_hex(), 100);
    let item1 = MutableItem::sign(&edge, pk, "tp", 1, v1.clone());
    let target = item1.target();
    net.nodes[0].put(item1).await.unwrap();
    all_hold(&net, target, 1, None).await;
    let (from, replica) = (&net.nodes[0], &net.nodes[1]);
    let base = Base::of(1, &v1);
    let patch = |data: Vec<u8>| ValueCodecProto {
        form: 2,
        data: data.into(),
        base_seq: 1,
        base_hash: base.hash.to_vec().into(),
    };

    // Signed over v2, patched to v2 with one byte changed.
    let v2 = transport_list(&pk.to_hex(), 101);
    let item2 = MutableItem::sign(&edge, pk, "tp", 2, v2.clone());
    let mut tampered = v2.clone();
    tampered[v2.len() / 2] ^= 1;
    let forged = coded_put(&item2, patch(make_patch(&v1, &tampered)));
    assert_eq!(
        put_reason(from, replica, forged).await,
        ReasonCode::BadSignature.tag()
    );
    // The honest patch is taken.
    let honest = coded_put(&item2, patch(make_patch(&v1, &v2)));
    assert_eq!(put_reason(from, replica, honest).await, 0);
    let held = replica.store().unwrap().get(&target).unwrap().unwrap();
    assert_eq!(held.item.value().map(|v| &v[..]), Some(&v2[..]));

    // A patch for a target the replica holds nothing at: "need base" (outcome 5, held
    // seq 0), nothing stored.
    let other = SigningKey::generate_secp256k1();
    let lone = MutableItem::sign(&other, other.public_key(), "tp", 2, v2.clone());
    let answer = from
        .request(
            replica.peer_id(),
            coded_put(&lone, patch(make_patch(&v1, &v2))),
        )
        .await
        .unwrap();
    let Some(response_proto::Kind::Put(p)) = answer.kind else {
        panic!("not a put answer: {answer:?}")
    };
    assert_eq!((p.results[0].outcome, p.results[0].previous_seq), (5, 0));
    assert!(replica
        .store()
        .unwrap()
        .get(&lone.target())
        .unwrap()
        .is_none());

    // Bombs: a patch and a frame that declare one byte over the value limit.
    let limit = Policy::default().max_value_len;
    let item3 = MutableItem::sign(&edge, pk, "tp", 3, v1.clone());
    let huge = vec![b'['; limit + 1];
    let bomb = ValueCodecProto {
        base_seq: 2,
        base_hash: Base::of(2, &v2).hash.to_vec().into(),
        ..patch(make_patch(&v2, &huge))
    };
    assert!(bomb.data.len() < 10_000, "{}", bomb.data.len());
    assert_eq!(
        put_reason(from, replica, coded_put(&item3, bomb)).await,
        ReasonCode::TooLarge.tag()
    );
    let frame = ValueCodecProto {
        form: 1,
        data: compress(&huge).into(),
        base_seq: 0,
        base_hash: Default::default(),
    };
    assert_eq!(
        put_reason(from, replica, coded_put(&item3, frame)).await,
        ReasonCode::TooLarge.tag()
    );
    let held = replica.store().unwrap().get(&target).unwrap().unwrap();
    assert_eq!(held.item.seq, 2);
    assert_eq!(held.item.value().map(|v| &v[..]), Some(&v2[..]));
    net.shutdown().await;
}
