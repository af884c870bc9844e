//! `dht-sidecar`: the DHT full node and HTTP gateway for DMSG servers that are not
//! written in Rust, configured by a TOML file and flags.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use dht_core::{Policy, PublicKey, SigningKey};
use dht_node::{Multiaddr, NodeConfig};
use dmsg_plugin::{DhtPlugin, PluginConfig, PushConfig};

#[derive(Parser)]
#[command(
    name = "dht-sidecar",
    version,
    about = "Skywire DHT full node + HTTP gateway for DMSG servers"
)]
struct Args {
    /// TOML configuration file.
    #[arg(long, env = "DHT_SIDECAR_CONFIG")]
    config: Option<PathBuf>,
    /// Gateway listen address.
    #[arg(long, default_value = "127.0.0.1:9481")]
    http: SocketAddr,
    /// Data directory (overrides the file).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// DHT port (TCP and QUIC).
    #[arg(long)]
    port: Option<u16>,
    /// Bootstrap peer; repeatable.
    #[arg(long, value_delimiter = ',')]
    bootstrap: Vec<Multiaddr>,
}

/// The sidecar's configuration file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    port: Option<u16>,
    #[serde(default)]
    bootstrap: Vec<String>,
    /// salt -> hex public keys of authorized publishers.
    #[serde(default)]
    authorized_publishers: HashMap<String, Vec<String>>,
    /// salt -> file holding this server's mirror secret key (`secp256k1:<hex>` or bare hex).
    #[serde(default)]
    mirror_keys: HashMap<String, PathBuf>,
    /// The DMSG server's Skywire secret key file, used as the node identity.
    identity_key: Option<PathBuf>,
    push_listen: Option<SocketAddr>,
    push_token: Option<String>,
    #[serde(default)]
    push_allow_non_loopback: bool,
    /// salt -> URL the DHT values are pushed back to (never "tp" or "svc").
    #[serde(default)]
    pusher: HashMap<String, String>,
}

fn read_secret(path: &PathBuf) -> Result<SigningKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    SigningKey::from_key_file(&text).with_context(|| format!("{}: malformed key", path.display()))
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,libp2p=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Args::parse()).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    let file: FileConfig = match &args.config {
        Some(p) => toml::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("{}: invalid configuration", p.display()))?,
        None => FileConfig::default(),
    };
    let mut node = NodeConfig::default();
    let port = args.port.or(file.port).unwrap_or(dht_node::DEFAULT_PORT);
    node.listen = vec![
        format!("/ip4/0.0.0.0/tcp/{port}").parse()?,
        format!("/ip4/0.0.0.0/udp/{port}/quic-v1").parse()?,
    ];
    node.bootstrap = if args.bootstrap.is_empty() {
        file.bootstrap
            .iter()
            .map(|a| {
                a.parse()
                    .with_context(|| format!("bootstrap: invalid address {a:?}"))
            })
            .collect::<Result<_>>()?
    } else {
        args.bootstrap.clone()
    };
    node.data_dir = Some(
        args.data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("dht-data")),
    );
    let mut policy = Policy::default();
    for (salt, keys) in &file.authorized_publishers {
        for k in keys {
            let pk: PublicKey = k
                .parse()
                .with_context(|| format!("authorized publisher for {salt:?}: {k:?}"))?;
            policy = policy.authorize(salt.clone().into_bytes(), pk);
        }
    }
    node.policy = policy;
    let mut config = PluginConfig {
        node,
        ..PluginConfig::default()
    };
    for (salt, path) in &file.mirror_keys {
        config.mirror_keys.insert(salt.clone(), read_secret(path)?);
    }
    if let Some(listen) = file.push_listen {
        config.push = Some(PushConfig {
            listen,
            token: file
                .push_token
                .clone()
                .context("push_listen needs push_token")?,
            allow_non_loopback: file.push_allow_non_loopback,
        });
    }
    config.pusher.endpoints = file.pusher;
    let identity = match &file.identity_key {
        Some(p) => Some(dht_node::keypair_from_skywire_secret(
            &read_secret(p)?.to_bytes(),
        )?),
        None => None,
    };
    let plugin = DhtPlugin::start(identity, config).await?;
    let listener = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| format!("binding the gateway to {}", args.http))?;
    eprintln!("peer id: {}", plugin.node().peer_id());
    eprintln!("gateway: http://{}", listener.local_addr()?);
    if let Some(a) = plugin.push_addr() {
        eprintln!("push api: http://{a}");
    }
    axum::serve(listener, plugin.router())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    plugin.shutdown().await;
    Ok(())
}
