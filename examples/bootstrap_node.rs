//! A full node with its embedded on-disk store: a bootstrap node for others.
//!
//! `cargo run -p dht-examples --example bootstrap_node -- [DATA_DIR] [SECONDS]`
//! (runs until Ctrl-C, or for SECONDS if given).

use std::time::Duration;

use dht_node::{Node, NodeConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter("info,libp2p=warn")
        .init();
    let mut args = std::env::args().skip(1);
    let data_dir = args.next().unwrap_or_else(|| "bootstrap-data".into());
    let seconds: Option<u64> = args.next().map(|s| s.parse()).transpose()?;
    let config = NodeConfig {
        data_dir: Some(data_dir.into()),
        ..NodeConfig::local()
    };
    let node = Node::builder().config(config).build().await?;
    println!(
        "bootstrap address: {}",
        node.bootstrap_addr().expect("listening")
    );
    println!("join with: cargo run -p dht-node -- run --data-dir other --port 9490 --bootstrap <address>");
    match seconds {
        Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
        None => tokio::signal::ctrl_c().await?,
    }
    println!("{}", serde_json::to_string_pretty(&node.stats().await?)?);
    node.shutdown().await;
    Ok(())
}
