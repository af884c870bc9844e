//! A visor looking an edge up: DHT first (through a client-mode node, which never enters
//! routing tables), the transport discovery over HTTP as fallback. Sets up its own small
//! network so it runs anywhere.
//!
//! `cargo run -p dht-examples --example visor_lookup`

use std::sync::Arc;
use std::time::Duration;

use dht_core::{Policy, SigningKey};
use dht_node::{Node, NodeConfig, NodeMode, Testnet};
use dmsg_plugin::fakes::{transport_discovery_router, MemoryTransportStore};
use dmsg_plugin::formats::TransportEntry;
use dmsg_plugin::{Mirror, TransportMirror, VisorClient, VisorClientConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let tpd_key = SigningKey::generate_secp256k1();
    let mut config = NodeConfig::local();
    config.policy = Policy::default().authorize("tp", tpd_key.public_key());
    let net = Testnet::builder(4).config(config.clone()).build().await?;

    // The transport discovery: HTTP routes, and a mirror of one edge into the DHT.
    let store = Arc::new(MemoryTransportStore::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let tpd = format!("http://{}", listener.local_addr()?);
    let router = transport_discovery_router(store.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let mirror = TransportMirror::new(
        store.clone(),
        Mirror::new(net.nodes[0].clone(), tpd_key, "tp"),
    );
    let pk = || SigningKey::generate_secp256k1().public_key();
    let (mirrored, http_only) = (pk(), pk());
    let in_dht = TransportEntry::new(&mirrored.to_hex(), &pk().to_hex(), "stcpr", "automatic");
    store.register(std::slice::from_ref(&in_dht));
    mirror.on_batch([&in_dht]).await;
    // Registered after the mirror ran: only HTTP knows it yet.
    store.register(&[TransportEntry::new(
        &http_only.to_hex(),
        &pk().to_hex(),
        "sudph",
        "user",
    )]);

    // The visor: a client-mode node that trusts the discovery's mirror key.
    let visor_node = Node::builder()
        .config(NodeConfig {
            mode: NodeMode::Client,
            listen: vec![],
            bootstrap: vec![net.bootstrap_addr().expect("bootstrap")],
            quic: false,
            ..config
        })
        .build()
        .await?;
    while visor_node.routing_table().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let visor = VisorClient::new(
        Some(visor_node.clone()),
        VisorClientConfig {
            transport_discovery: Some(tpd),
            budget: Duration::from_secs(3),
            ..VisorClientConfig::default()
        },
    );
    for edge in [mirrored, http_only] {
        let answer = visor.transports_by_edge(edge).await?;
        println!(
            "edge {edge}: {} transport(s) from {:?}",
            answer.value.len(),
            answer.source
        );
    }
    visor_node.shutdown().await;
    net.shutdown().await;
    Ok(())
}
