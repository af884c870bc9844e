//! The gateway, the push API and the visor client over real HTTP, against a real local
//! network; malformed input included.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use dht_core::json::ItemJson;
use dht_core::{MutableItem, Policy, SigningKey};
use dht_node::{NodeConfig, NodeMode, Testnet};
use dmsg_plugin::fakes::{transport_discovery_router, MemoryTransportStore};
use dmsg_plugin::formats::{encode_transport_list, TransportEntry};
use dmsg_plugin::{
    DhtPlugin, GatewayConfig, PluginConfig, PushConfig, Source, VisorClient, VisorClientConfig,
};

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

fn pk_hex(k: &SigningKey) -> String {
    k.public_key().to_hex()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_reads_submits_and_refuses_bad_input_with_json_errors() {
    let net = Testnet::builder(3).build().await.unwrap();
    assert!(net.wait_for_routing(2, Duration::from_secs(10)).await);
    let url = serve(dmsg_plugin::gateway::router(
        net.nodes[0].clone(),
        GatewayConfig::default(),
    ))
    .await;
    let http = reqwest::Client::new();

    // Submit a pre-signed item; the answer is the put report.
    let edge = SigningKey::generate_secp256k1();
    let list = encode_transport_list(&[TransportEntry::new(
        &pk_hex(&edge),
        &pk_hex(&SigningKey::generate_secp256k1()),
        "stcpr",
        "automatic",
    )]);
    let item = MutableItem::sign(&edge, edge.public_key(), "tp", 1, list.clone());
    let r = http
        .post(format!("{url}/v1/items"))
        .json(&ItemJson::from(&item))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let report: serde_json::Value = r.json().await.unwrap();
    assert!(report["stored"].as_u64().unwrap() >= 2, "{report}");

    // Reads in the discoveries' shapes.
    let v3 = http
        .get(format!("{url}/v3/transports/edge:{}", pk_hex(&edge)))
        .send()
        .await
        .unwrap();
    assert_eq!(v3.status(), 200);
    assert_eq!(v3.bytes().await.unwrap(), list);
    let v2 = http
        .get(format!("{url}/transports/edge:{}", pk_hex(&edge)))
        .send()
        .await
        .unwrap();
    assert_eq!(v2.status(), 200);
    let none = SigningKey::generate_secp256k1();
    let v3 = http
        .get(format!("{url}/v3/transports/edge:{}", pk_hex(&none)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (v3.status().as_u16(), v3.text().await.unwrap()),
        (200, "[]".to_string())
    );
    let v2 = http
        .get(format!("{url}/transports/edge:{}", pk_hex(&none)))
        .send()
        .await
        .unwrap();
    assert_eq!(v2.status(), 404);
    assert!(v2.json::<serde_json::Value>().await.unwrap()["error"].is_string());
    // The raw signed item, verifiable by the client.
    let raw: serde_json::Value = http
        .get(format!("{url}/v1/items/tp/{}?quorum=true", pk_hex(&edge)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(raw["status"], "found");
    let back: ItemJson = serde_json::from_value(raw["item"].clone()).unwrap();
    let back = MutableItem::try_from(back).unwrap();
    dht_core::Validator::default()
        .validate(back.clone())
        .unwrap();
    assert_eq!(back, item);

    // A rejected submission says why: stale.
    let stale = MutableItem::sign(&edge, edge.public_key(), "tp", 0, &b"[]"[..]);
    let r = http
        .post(format!("{url}/v1/items"))
        .json(&ItemJson::from(&stale))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["replicas"][0]["reason"], "stale", "{body}");
    // A forged one is refused before it reaches the network.
    let mut forged = ItemJson::from(&item);
    forged.subject = none.public_key();
    forged.target = None;
    let r = http
        .post(format!("{url}/v1/items"))
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["code"],
        "unauthorized"
    );

    // Malformed input: JSON errors with 4xx, never a panic.
    let cases: Vec<(reqwest::RequestBuilder, u16)> = vec![
        (http.get(format!("{url}/v3/transports/edge:nothex")), 400),
        (http.get(format!("{url}/v3/transports/edge:02ab")), 400),
        (http.get(format!("{url}/v3/transports/id:123")), 404),
        (http.get(format!("{url}/dmsg-discovery/entry/zz")), 400),
        (http.get(format!("{url}/api/services")), 400),
        (http.get(format!("{url}/api/services?visor=xyz")), 400),
        (
            http.get(format!(
                "{url}/v1/items/{}/{}",
                "s".repeat(65),
                pk_hex(&edge)
            )),
            400,
        ),
        (http.post(format!("{url}/v1/items")).body("{}"), 415),
        (
            http.post(format!("{url}/v1/items"))
                .header("content-type", "application/json")
                .body("{not json"),
            400,
        ),
        (
            http.post(format!("{url}/v1/items"))
                .header("content-type", "application/json")
                .body(r#"{"subject":"00"}"#),
            400,
        ),
        (http.get(format!("{url}/no/such/route")), 404),
        // Last: the server answers before reading the whole body and closes the connection.
        (
            reqwest::Client::new()
                .post(format!("{url}/v1/items"))
                .header("content-type", "application/json")
                .body(vec![b' '; 3 * 1024 * 1024]),
            413,
        ),
    ];
    for (req, status) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status);
        let body: serde_json::Value = r.json().await.expect("JSON error body");
        assert!(
            body["error"].is_string() && body["code"].is_string(),
            "{body}"
        );
    }

    // Health and metrics.
    let h: serde_json::Value = http
        .get(format!("{url}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok");
    let m = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "dht_routing_table_peers",
        "dht_items_stored",
        "dht_puts_total",
        "dht_get_latency_seconds",
        "dht_items_accepted_by_salt_total",
    ] {
        assert!(m.contains(name), "{name} missing");
    }
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes() {
    let net = Testnet::builder(1).build().await.unwrap();
    let url = serve(dmsg_plugin::gateway::router(
        net.nodes[0].clone(),
        GatewayConfig::default(),
    ))
    .await;
    let doc: serde_json::Value = reqwest::get(format!("{url}/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let routes: BTreeSet<(String, String)> = dmsg_plugin::gateway::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, routes);
    // Every documented route is served (not the "no such route" fallback).
    let pk = SigningKey::generate_secp256k1().public_key().to_hex();
    let http = reqwest::Client::new();
    for (method, path) in &routes {
        let concrete = path
            .replace("{pk}", &pk)
            .replace("{subject}", &pk)
            .replace("{salt}", "tp")
            .replace("{addr}", &format!("{pk}:44"));
        let req = match method.as_str() {
            "get" => http.get(format!("{url}{concrete}")),
            _ => http
                .post(format!("{url}{concrete}"))
                .json(&serde_json::json!({})),
        };
        let r = req.send().await.unwrap();
        if r.status() == 404 {
            let body: serde_json::Value = r.json().await.unwrap();
            assert_ne!(
                body["code"], "no_route",
                "{method} {path} is documented but not routed"
            );
        }
    }
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_push_api_and_visor_client() {
    let mirror_key = SigningKey::generate_secp256k1();
    let mut node = NodeConfig::local();
    node.policy = Policy::default().authorize("tp", mirror_key.public_key());
    let net = Testnet::builder(3)
        .config(node.clone())
        .build()
        .await
        .unwrap();
    assert!(net.wait_for_routing(2, Duration::from_secs(10)).await);

    // Non-loopback push without opt-in, or a short token, is refused.
    let mut config = PluginConfig {
        node: node.clone(),
        ..PluginConfig::default()
    };
    config.node.bootstrap = vec![net.bootstrap_addr().unwrap()];
    config.mirror_keys.insert("tp".into(), mirror_key.clone());
    for (listen, token) in [
        ("0.0.0.0:0", "a-long-enough-token"),
        ("127.0.0.1:0", "short"),
    ] {
        let mut c = config.clone();
        c.push = Some(PushConfig {
            listen: listen.parse().unwrap(),
            token: token.into(),
            allow_non_loopback: false,
        });
        assert!(DhtPlugin::start(None, c).await.is_err());
    }
    // Pushing "tp" back into HTTP is refused by configuration.
    let mut c = config.clone();
    c.pusher
        .endpoints
        .insert("tp".into(), "http://127.0.0.1:1/".into());
    assert!(DhtPlugin::start(None, c).await.is_err());

    let token = "0123456789abcdef-token";
    config.push = Some(PushConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: token.into(),
        allow_non_loopback: false,
    });
    let plugin = DhtPlugin::start(None, config).await.unwrap();
    let push = format!("http://{}", plugin.push_addr().unwrap());
    let gateway = serve(plugin.router()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while plugin.node().routing_table().len() < 3 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let http = reqwest::Client::new();
    let edge = SigningKey::generate_secp256k1();
    let list = encode_transport_list(&[TransportEntry::new(
        &pk_hex(&edge),
        &pk_hex(&mirror_key),
        "dmsg",
        "user",
    )]);
    let put = |auth: Option<&str>, salt: &str, body: Vec<u8>| {
        let mut r = http
            .put(format!("{push}/v1/mirror/{salt}/{}", pk_hex(&edge)))
            .body(body);
        if let Some(a) = auth {
            r = r.header("authorization", format!("Bearer {a}"));
        }
        r.send()
    };
    assert_eq!(put(None, "tp", list.clone()).await.unwrap().status(), 401);
    assert_eq!(
        put(Some("wrong-token-wrong-token"), "tp", list.clone())
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        put(Some(token), "svc", list.clone())
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        put(Some(token), "tp", b"not json".to_vec())
            .await
            .unwrap()
            .status(),
        400
    );
    let r = put(Some(token), "tp", list.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    let outcome: serde_json::Value = r.json().await.unwrap();
    assert!(
        outcome["ok"].as_bool().unwrap() && outcome["stored"].as_u64().unwrap() >= 3,
        "{outcome}"
    );
    let got = http
        .get(format!("{gateway}/v3/transports/edge:{}", pk_hex(&edge)))
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap(), list);

    // The visor client: DHT first. It knows the discoveries' mirror keys (as it knows their
    // URLs): a mirror item signed by any other key is refused on read.
    let client = dht_node::Node::builder()
        .config(NodeConfig {
            mode: NodeMode::Client,
            policy: node.policy.clone(),
            listen: vec![],
            bootstrap: vec![net.bootstrap_addr().unwrap()],
            quic: false,
            ..NodeConfig::default()
        })
        .build()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.routing_table().len() < 3 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... and an HTTP transport discovery with v3, and one that only has v2.
    let tpd_store = Arc::new(MemoryTransportStore::default());
    let http_only = SigningKey::generate_secp256k1();
    tpd_store.register(&[TransportEntry::new(
        &pk_hex(&http_only),
        &pk_hex(&edge),
        "stcpr",
        "automatic",
    )]);
    let tpd = serve(transport_discovery_router(tpd_store.clone())).await;
    // An older discovery: v2 only (v3 answers 404).
    let v2_store = tpd_store.clone();
    let v2_only = serve(axum::Router::new().route(
        "/transports/{edge}",
        axum::routing::get(
            move |axum::extract::Path(edge): axum::extract::Path<String>| {
                let store = v2_store.clone();
                async move {
                    let pk: dht_core::PublicKey = edge.trim_start_matches("edge:").parse().unwrap();
                    encode_transport_list(&store.list(&pk))
                }
            },
        ),
    ))
    .await;
    let visor = VisorClient::new(
        Some(client.clone()),
        VisorClientConfig {
            transport_discovery: Some(tpd.clone()),
            budget: Duration::from_secs(4),
            ..VisorClientConfig::default()
        },
    );
    let a = visor.transports_by_edge(edge.public_key()).await.unwrap();
    assert_eq!(a.source, Source::Dht);
    assert_eq!(a.value.len(), 1);
    let a = visor
        .transports_by_edge(http_only.public_key())
        .await
        .unwrap();
    assert_eq!(a.source, Source::HttpV3);
    assert_eq!(a.value.len(), 1);
    let old = VisorClient::new(
        None,
        VisorClientConfig {
            transport_discovery: Some(v2_only),
            ..VisorClientConfig::default()
        },
    );
    let a = old
        .transports_by_edge(http_only.public_key())
        .await
        .unwrap();
    assert_eq!((a.source, a.value.len()), (Source::HttpV2, 1));

    // Deleting through the push API: the visor then reads "none" from the DHT.
    let r = http
        .delete(format!("{push}/v1/mirror/tp/{}", pk_hex(&edge)))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let a = visor.transports_by_edge(edge.public_key()).await.unwrap();
    assert_eq!((a.source, a.value.len()), (Source::Dht, 0));

    client.shutdown().await;
    plugin.shutdown().await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pusher_copies_dmsg_entries_back_to_the_http_discovery() {
    // A DMSG discovery that records what it is sent.
    let received = Arc::new(parking_lot::Mutex::new(Vec::<Vec<u8>>::new()));
    let sink = received.clone();
    let dmsgd = serve(axum::Router::new().route(
        "/dmsg-discovery/entry/",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().push(body.to_vec());
                "ok"
            }
        }),
    ))
    .await;
    let mut config = PluginConfig {
        node: NodeConfig::local(),
        ..PluginConfig::default()
    };
    config
        .pusher
        .endpoints
        .insert("dmsg".into(), format!("{dmsgd}/dmsg-discovery/entry/"));
    let plugin = DhtPlugin::start(None, config).await.unwrap();
    let server = SigningKey::generate_secp256k1();
    let entry = format!(
        r#"{{"version":"0.0.1","sequence":1,"static":"{}"}}"#,
        pk_hex(&server)
    );
    // A DMSG server publishing its own entry (self-signed) and a "tp" item: only the
    // entry is pushed.
    let node = plugin.node().clone();
    node.put(MutableItem::sign(
        &server,
        server.public_key(),
        "dmsg",
        1,
        entry.clone().into_bytes(),
    ))
    .await
    .unwrap();
    node.put(MutableItem::sign(
        &server,
        server.public_key(),
        "tp",
        1,
        &b"[]"[..],
    ))
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while received.lock().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "nothing pushed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(*received.lock(), vec![entry.into_bytes()]);
    plugin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_api_refuses_oversized_values_at_once_with_json_413() {
    let mirror_key = SigningKey::generate_secp256k1();
    let mut node = NodeConfig::local();
    node.policy = Policy::default().authorize("tp", mirror_key.public_key());
    node.policy.max_value_len = 1000;
    let mut config = PluginConfig {
        node,
        ..PluginConfig::default()
    };
    config.gateway.max_body = 4096;
    config.mirror_keys.insert("tp".into(), mirror_key.clone());
    let token = "0123456789abcdef-token";
    config.push = Some(PushConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: token.into(),
        allow_non_loopback: false,
    });
    let plugin = DhtPlugin::start(None, config).await.unwrap();
    let push = format!("http://{}", plugin.push_addr().unwrap());
    let http = reqwest::Client::new();
    let edge = pk_hex(&SigningKey::generate_secp256k1());
    let put = |body: Vec<u8>| {
        http.put(format!("{push}/v1/mirror/tp/{edge}"))
            .header("authorization", format!("Bearer {token}"))
            .body(body)
            .send()
    };
    let json_string = |n: usize| format!("\"{}\"", "a".repeat(n)).into_bytes();

    // Within both limits: stored (this node alone is the whole responsible set).
    let r = put(json_string(100)).await.unwrap();
    assert_eq!(r.status(), 200);

    // Over the node's value limit but within the HTTP limit: this node's own rules
    // refuse it, answered at once (never retried) with the outcome.
    let started = std::time::Instant::now();
    let r = put(json_string(2000)).await.unwrap();
    assert_eq!(r.status(), 413);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "{body}");
    assert_eq!(body["code"], "too_large", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("too_large"),
        "{body}"
    );
    assert_eq!(body["outcome"]["attempts"], 1, "{body}");
    assert!(
        body["outcome"]["rejected"][0]
            .as_str()
            .unwrap()
            .starts_with("local: too_large"),
        "{body}"
    );

    // Over the HTTP body limit: a JSON 413 too, not axum's plain text.
    let r = put(json_string(10_000)).await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "too_large", "{body}");
    plugin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_query_strings_are_json_400_on_every_route() {
    let net = Testnet::builder(1).build().await.unwrap();
    let url = serve(dmsg_plugin::gateway::router(
        net.nodes[0].clone(),
        GatewayConfig::default(),
    ))
    .await;
    let pk = SigningKey::generate_secp256k1().public_key().to_hex();
    let http = reqwest::Client::new();
    for path in [
        format!("/v3/transports/edge:{pk}?quorum=null"),
        format!("/transports/edge:{pk}?quorum=null"),
        format!("/api/services?visor={pk}&quorum=null"),
        format!("/api/services/{pk}:44?quorum=null"),
        format!("/dmsg-discovery/entry/{pk}?quorum=1"),
        format!("/v1/items/tp/{pk}?quorum=yes"),
    ] {
        let r = http.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        assert_eq!(
            r.headers()["content-type"].to_str().unwrap(),
            "application/json",
            "{path}"
        );
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], "bad_query", "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("quorum"),
            "{path}: {body}"
        );
    }
    let r = http
        .get(format!("{url}/v3/transports/edge:{pk}?quorum=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http.delete(format!("{url}/health")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed");
    net.shutdown().await;
}
