//! The seed's production case, replayed on a local multi-node network: 4,615 transports
//! across visors, one edge with 552 of them, registered in batches like the 90-second
//! cycle and mirrored through the transport adapter.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use dht_core::{Policy, PublicKey, SigningKey, SALT_TRANSPORTS};
use dht_node::{GetMode, NodeConfig, NodeEvent, Testnet};
use dmsg_plugin::fakes::{
    transport_discovery_router, MemoryDmsgStore, MemoryServiceStore, MemoryTransportStore,
};
use dmsg_plugin::formats::{encode_service_list, ServiceEntry, TransportEntry};
use dmsg_plugin::{DmsgEntry, DmsgMirror, GatewayConfig, Mirror, ServiceMirror, TransportMirror};

const TOTAL_TRANSPORTS: usize = 4_615;
const HUB_TRANSPORTS: usize = 552;
const VISORS: usize = 1_300;

fn key(i: usize) -> String {
    // Deterministic keys, real points of the curve as visor keys are (the gateway refuses
    // off-curve keys).
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&(i as u64).to_be_bytes());
    h[8] = 0x5a;
    let secret = hex::encode(sha2_digest(&h));
    dht_core::SigningKey::from_key_file(&format!("secp256k1:{secret}"))
        .expect("a SHA-256 digest is a valid secret")
        .public_key()
        .to_hex()
}

fn sha2_digest(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

/// 4,615 transports: a hub edge with 552, the rest between the other visors.
fn production_snapshot() -> Vec<TransportEntry> {
    let hub = key(0);
    let types = ["stcpr", "sudph", "dmsg", "stcp"];
    let mut out = Vec::with_capacity(TOTAL_TRANSPORTS);
    for i in 0..HUB_TRANSPORTS {
        out.push(TransportEntry::new(
            &hub,
            &key(1 + i),
            types[i % 4],
            "automatic",
        ));
    }
    let mut i = 0usize;
    let mut seen = HashSet::new();
    while out.len() < TOTAL_TRANSPORTS {
        let h = sha2_digest(&(i as u64).to_be_bytes());
        let a = 1 + (u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize) % VISORS;
        let b = 1 + (u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize) % VISORS;
        i += 1;
        if a == b {
            continue;
        }
        let e = TransportEntry::new(
            &key(a),
            &key(b),
            types[i % 4],
            if i.is_multiple_of(10) {
                "user"
            } else {
                "automatic"
            },
        );
        if seen.insert(e.t_id.clone()) {
            out.push(e);
        }
    }
    out
}

fn distinct_edges(entries: &[TransportEntry]) -> BTreeSet<PublicKey> {
    entries
        .iter()
        .flat_map(|e| e.edges.iter().map(|k| k.parse::<PublicKey>().unwrap()))
        .collect()
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_production_case_mirrors_one_full_list_per_edge() {
    let tpd_key = SigningKey::generate_secp256k1();
    let sd_key = SigningKey::generate_secp256k1();
    let dmsgd_key = SigningKey::generate_secp256k1();
    let mut config = NodeConfig::local();
    config.policy = Policy::default()
        .authorize("tp", tpd_key.public_key())
        .authorize("svc", sd_key.public_key())
        .authorize("dmsg", dmsgd_key.public_key());
    let mut net = Testnet::builder(6)
        .config(config)
        .on_disk(true)
        .build()
        .await
        .unwrap();
    assert!(net.wait_for_routing(5, Duration::from_secs(10)).await);

    // The transport discovery: its store, its HTTP routes, and the mirror in node 0.
    let tpd_store = Arc::new(MemoryTransportStore::default());
    let tpd_url = serve(transport_discovery_router(tpd_store.clone())).await;
    let tp_mirror = TransportMirror::new(
        tpd_store.clone(),
        Mirror::new(net.nodes[0].clone(), tpd_key.clone(), "tp"),
    );
    let gateway_url = serve(dmsg_plugin::gateway::router(
        net.nodes[1].clone(),
        GatewayConfig::default(),
    ))
    .await;

    // Register in batches, as visors re-register during one 90-second cycle.
    let snapshot = production_snapshot();
    let all_edges = distinct_edges(&snapshot);
    let started = std::time::Instant::now();
    for (bi, batch) in snapshot.chunks(500).enumerate() {
        eprintln!("batch {bi} at {:?}", started.elapsed());
        tpd_store.register(batch);
        let reads_before = tpd_store.reads();
        let outcome = tp_mirror.on_batch(batch).await;
        let touched = distinct_edges(batch).len();
        // Read cost is proportional to touched edges, not entries: one read per edge.
        assert_eq!(tpd_store.reads() - reads_before, touched);
        assert_eq!(outcome.reads, touched);
        assert_eq!(outcome.touched, touched);
        assert!(outcome.failed().is_empty(), "{:?}", outcome.failed());
    }
    eprintln!(
        "mirrored {} transports over {} edges in {:?}",
        snapshot.len(),
        all_edges.len(),
        started.elapsed()
    );

    // Exactly one item per distinct edge, network-wide.
    let mut subjects = BTreeSet::new();
    for n in &net.nodes {
        for s in dht_core::store::iter_all(&*n.store().unwrap()) {
            let s = s.unwrap();
            if s.item.salt == SALT_TRANSPORTS {
                subjects.insert(s.item.subject);
            }
        }
    }
    assert_eq!(subjects, all_edges, "one DHT item per distinct edge");

    // Each item is the edge's full list, byte-identical to the v3 HTTP response.
    let http = reqwest::Client::new();
    let hub: PublicKey = key(0).parse().unwrap();
    for edge in &all_edges {
        let v3 = http
            .get(format!("{tpd_url}/v3/transports/edge:{edge}"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let from_dht = http
            .get(format!("{gateway_url}/v3/transports/edge:{edge}"))
            .send()
            .await
            .unwrap();
        assert_eq!(from_dht.status(), 200);
        assert_eq!(from_dht.bytes().await.unwrap(), v3, "edge {edge}");
        if *edge == hub {
            let list: Vec<TransportEntry> = serde_json::from_slice(&v3).unwrap();
            assert_eq!(list.len(), HUB_TRANSPORTS);
        }
    }
    // And every node reads the hub's full list.
    let hub_list = dmsg_plugin::formats::encode_transport_list(&tpd_store.list(&hub));
    for n in &net.nodes {
        let got = n.get(hub, b"tp", GetMode::First).await.unwrap();
        assert_eq!(got.value(), Some(&hub_list[..]));
    }

    // Deregister every transport of some edges while node 5 is offline.
    let victims: Vec<PublicKey> = (1..=8).map(|i| key(VISORS - i).parse().unwrap()).collect();
    let gone: Vec<TransportEntry> = victims.iter().flat_map(|v| tpd_store.list(v)).collect();
    assert!(!gone.is_empty());
    net.stop(5).await;
    tpd_store.deregister(&gone);
    let outcome = tp_mirror.on_batch(&gone).await;
    assert!(outcome.failed().is_empty(), "{:?}", outcome.failed());
    let deletes: HashSet<String> = outcome
        .keys
        .iter()
        .filter(|k| k.action == "delete")
        .map(|k| k.subject.clone())
        .collect();
    for v in &victims {
        assert!(
            deletes.contains(&v.to_hex()),
            "{v} was emptied and must be tombstoned"
        );
    }
    let back = net.restart(5).await.unwrap();
    let mut events = back.subscribe();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !matches!(events.recv().await, Ok(NodeEvent::CatchUpFinished { .. })) {}
    })
    .await
    .expect("restarted node caught up");
    for n in &net.nodes {
        for v in &victims {
            let got = n.get(*v, b"tp", GetMode::First).await.unwrap();
            assert!(
                got.is_deleted(),
                "{v} from {}: {:?}",
                n.peer_id(),
                got.lookup
            );
        }
    }
    let body = http
        .get(format!("{gateway_url}/v3/transports/edge:{}", victims[0]))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&body[..], b"[]");

    // Anti-entropy: an edge dropped from the store without a batch is tombstoned, the
    // rest re-asserted.
    let silent: PublicKey = key(VISORS - 20).parse().unwrap();
    let silent_entries = tpd_store.list(&silent);
    assert!(!silent_entries.is_empty());
    tpd_store.deregister(&silent_entries);
    let ae = tp_mirror.anti_entropy().await.unwrap();
    assert!(ae.failed().is_empty());
    assert!(ae
        .keys
        .iter()
        .any(|k| k.subject == silent.to_hex() && k.action == "delete"));
    assert!(net.nodes[2]
        .get(silent, b"tp", GetMode::Quorum(0))
        .await
        .unwrap()
        .is_deleted());

    // Services: a visor registering vpn and skysocks shows both.
    let sd_store = Arc::new(MemoryServiceStore::default());
    let sd_mirror = ServiceMirror::new(
        sd_store.clone(),
        Mirror::new(net.nodes[0].clone(), sd_key, "svc"),
    );
    let visor = key(4242);
    let vpn: ServiceEntry = serde_json::from_value(serde_json::json!({
        "address": format!("{visor}:44"), "type": "vpn", "version": "v1.3.46",
        "geo": {"lat": 1.2, "lon": 3.4, "country": "DE"}
    }))
    .unwrap();
    let socks: ServiceEntry = serde_json::from_value(serde_json::json!({
        "address": format!("{visor}:3"), "type": "skysocks", "display_node_ip": true
    }))
    .unwrap();
    sd_store.register(vpn.clone());
    let o = sd_mirror.on_batch([&vpn]).await;
    assert!(o.failed().is_empty());
    sd_store.register(socks.clone());
    let o = sd_mirror.on_batch([&socks]).await;
    assert!(o.failed().is_empty());
    // The push returned once a majority held the new list; the gateway's node may have
    // been one of the replicas still answering: it serves the new list within moments.
    let started = std::time::Instant::now();
    let listed: Vec<ServiceEntry> = loop {
        let listed: Vec<ServiceEntry> = http
            .get(format!("{gateway_url}/api/services?visor={visor}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if listed.len() == 2 || started.elapsed() > Duration::from_secs(5) {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(listed.len(), 2);
    let types: HashSet<&str> = listed.iter().map(|s| s.service_type.as_str()).collect();
    assert_eq!(types, HashSet::from(["vpn", "skysocks"]));
    let vpn_pk: PublicKey = visor.parse().unwrap();
    let both = encode_service_list(&[vpn, socks]);
    eventually("node 4 reads the new service list", || async {
        let got = net.nodes[4]
            .get(vpn_pk, b"svc", GetMode::First)
            .await
            .unwrap();
        got.value() == Some(&both[..])
    })
    .await;

    // DMSG: a deleted entry's twin reads as deleted.
    let dmsg_store = Arc::new(MemoryDmsgStore::default());
    let dmsg_mirror = DmsgMirror::new(
        dmsg_store.clone(),
        Mirror::new(net.nodes[0].clone(), dmsgd_key, "dmsg"),
    );
    let server = key(777);
    let raw = format!(
        r#"{{"version":"0.0.1","sequence":42,"timestamp":1714000000123456789,"static":"{server}","server":{{"address":"1.2.3.4:8081","availableSessions":2048}},"signature":"{}"}}"#,
        "ab".repeat(65)
    );
    let pk = dmsg_store
        .set(DmsgEntry::from_json(raw.clone().into_bytes()).unwrap())
        .unwrap();
    assert!(dmsg_mirror.on_change([pk]).await.failed().is_empty());
    eventually("the gateway serves the DMSG entry", || async {
        let entry = http
            .get(format!("{gateway_url}/dmsg-discovery/entry/{server}"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        &entry[..] == raw.as_bytes()
    })
    .await;
    dmsg_store.delete(&pk);
    let o = dmsg_mirror.on_change([pk]).await;
    assert_eq!(o.keys[0].action, "delete");
    for n in &net.nodes {
        eventually("every node reads the entry as deleted", || async {
            n.get(pk, b"dmsg", GetMode::First)
                .await
                .unwrap()
                .is_deleted()
        })
        .await;
    }
    eventually("the gateway answers 404 for the deleted entry", || async {
        let r = http
            .get(format!("{gateway_url}/dmsg-discovery/entry/{server}"))
            .send()
            .await
            .unwrap();
        r.status() == 404
    })
    .await;

    net.shutdown().await;
}

/// Waits (up to 5 s) until `check` holds: a put returns once a majority of the replicas
/// holds the item, and a replica still answering then catches up within moments.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
