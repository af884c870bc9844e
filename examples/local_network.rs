//! A local network: five full nodes, a DMSG server embedding the plugin (full node +
//! gateway), and a transport discovery feeding it through the transport mirror.
//!
//! `cargo run -p dht-examples --example local_network -- [SECONDS]`

use std::sync::Arc;
use std::time::Duration;

use dht_core::{Policy, SigningKey};
use dht_node::{NodeConfig, Testnet};
use dmsg_plugin::fakes::MemoryTransportStore;
use dmsg_plugin::formats::TransportEntry;
use dmsg_plugin::{DhtPlugin, PluginConfig, TransportMirror};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let seconds: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(0);

    // The transport discovery's mirror key, authorized for "tp" on every full node.
    let tpd_key = SigningKey::generate_secp256k1();
    let mut node = NodeConfig::local();
    node.policy = Policy::default().authorize("tp", tpd_key.public_key());
    let net = Testnet::builder(5).config(node.clone()).build().await?;

    // A DMSG server with the plugin, joined to the network.
    let mut config = PluginConfig {
        node,
        ..PluginConfig::default()
    };
    config.node.bootstrap = vec![net.bootstrap_addr().expect("bootstrap")];
    config.mirror_keys.insert("tp".into(), tpd_key);
    let plugin = DhtPlugin::start(None, config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gateway = format!("http://{}", listener.local_addr()?);
    let router = plugin.router();
    tokio::spawn(async move { axum::serve(listener, router).await });

    // The transport discovery registers a batch and mirrors each touched edge once.
    let store = Arc::new(MemoryTransportStore::default());
    let mirror = TransportMirror::new(store.clone(), plugin.mirror("tp").expect("tp mirror"));
    let edge = SigningKey::generate_secp256k1().public_key().to_hex();
    let batch: Vec<TransportEntry> = (0..3)
        .map(|_| {
            let other = SigningKey::generate_secp256k1().public_key().to_hex();
            TransportEntry::new(&edge, &other, "stcpr", "automatic")
        })
        .collect();
    store.register(&batch);
    let outcome = mirror.on_batch(&batch).await;
    println!(
        "mirrored {} edges with {} store reads; failures: {}",
        outcome.touched,
        outcome.reads,
        outcome.failed().len()
    );

    let url = format!("{gateway}/v3/transports/edge:{edge}");
    let body = reqwest::get(&url).await?.text().await?;
    println!("GET {url}\n{body}");
    if seconds > 0 {
        println!("gateway up for {seconds}s at {gateway} (try /health, /metrics, /openapi.json)");
        tokio::time::sleep(Duration::from_secs(seconds)).await;
    }
    plugin.shutdown().await;
    net.shutdown().await;
    Ok(())
}
