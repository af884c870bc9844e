//! `dht-sidecar`: the DHT full node and HTTP gateway for DMSG servers that are not
//! written in Rust, configured by a TOML file and flags.

use dht_node::process::{error_chain, LogFormat, StopSignal};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use dht_core::{Policy, PublicKey, SigningKey};
use dht_node::{Multiaddr, NodeConfig};
use dmsg_plugin::{DhtPlugin, PluginConfig, PushConfig};

/// Default gateway address.
const DEFAULT_HTTP: &str = "127.0.0.1:9481";

/// The configuration file's keys, exit codes and environment, shown by `--help`.
const HELP: &str = "\
Configuration file (TOML, --config; flags override it; every key optional; a commented
example is deploy/dht-sidecar.toml):
  http_listen = \"127.0.0.1:9481\"     gateway address (--http overrides) [127.0.0.1:9481]
  data_dir = \"/var/lib/dht-sidecar\"  key, redb store, routing table, mirror queues [./dht-data]
  port = 9480                        DHT port, TCP and QUIC on all interfaces [9480]
  bootstrap = [\"/ip4/../tcp/../p2p/<id>\"]  peers to join through [none: a bootstrap node]
  identity_key = \"/etc/dmsg/secret.key\"  the DMSG server's secp256k1 key as node identity
  max_value_len = 1048576            largest value accepted, bytes [1 MiB; 1 to 64 MiB]
  ttl_secs = 21600                   longest an item is kept after a put [6 h; 1 s to 1 year]
  replication = 20                   replicas per item, Kademlia k [20; 1 to 100]
  push_listen = \"127.0.0.1:9482\"     HTTP push API address [off]
  push_token = \"...\"                 bearer token of the push API (needed with push_listen)
  push_allow_non_loopback = false    allow push_listen on a non-loopback address
  [authorized_publishers]            salt -> hex public keys allowed to publish any subject
  tp = [\"02ab...\"]
  [mirror_keys]                      salt -> this server's mirror secret key file
  tp = \"/etc/dht/tp-mirror.key\"
  [pusher]                           salt -> URL DHT values are pushed back to (not tp/svc)
  dmsg = \"http://127.0.0.1:9090/\"
A value out of range is refused with a message naming the key.

Exit codes: 0 clean stop (SIGTERM or Ctrl-C), 1 error (configuration, start-up).

Environment:
  RUST_LOG            log filter (tracing EnvFilter), default \"info,libp2p=warn\"
  DHT_LOG_FORMAT      text (default) or json, as --log-format
  DHT_SIDECAR_CONFIG  the configuration file, as --config
Logs go to standard error, without colours unless it is a terminal.";

#[derive(Parser)]
#[command(
    name = "dht-sidecar",
    version,
    about = "Skywire DHT full node + HTTP gateway for DMSG servers",
    after_help = HELP
)]
struct Args {
    /// TOML configuration file (keys listed below).
    #[arg(long, env = "DHT_SIDECAR_CONFIG")]
    config: Option<PathBuf>,
    /// Gateway listen address (overrides `http_listen`; default 127.0.0.1:9481).
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Log format on standard error.
    #[arg(long, value_enum, env = "DHT_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
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
    /// The gateway's listen address.
    http_listen: Option<SocketAddr>,
    max_value_len: Option<usize>,
    ttl_secs: Option<u64>,
    replication: Option<usize>,
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

/// Largest `max_value_len` accepted (frames and buffers grow with it).
const MAX_VALUE_LEN_LIMIT: usize = 64 * 1024 * 1024;
const YEAR_SECS: u64 = 365 * 24 * 60 * 60;

/// `value` if within `min..=max`, else an error naming the configuration key.
fn in_range<T: PartialOrd + std::fmt::Display>(key: &str, value: T, min: T, max: T) -> Result<T> {
    if value < min || value > max {
        bail!("invalid configuration: {key} = {value} is out of range (expected {min} to {max})");
    }
    Ok(value)
}

/// Set when logs are JSON: status lines then go through the log as events, so that every
/// line on standard error is one JSON object.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A status line on standard error ("peer id: ...", "listening: ..."): plain text, or an
/// INFO event (ERROR for `error: ...`) when logs are JSON.
macro_rules! status {
    ($($arg:tt)*) => {{
        let line = format!($($arg)*);
        if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
            match line.strip_prefix("error: ") {
                Some(e) => tracing::error!(target: "dht_sidecar", "{e}"),
                None => tracing::info!(target: "dht_sidecar", "{line}"),
            }
        } else {
            eprintln!("{line}");
        }
    }};
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    init_logs(args.log_format);
    if let Err(e) = run(args).await {
        status!("error: {}", error_chain(&e));
        std::process::exit(1);
    }
}

/// Logs as `format` says (see [`dht_node::process::init_logs`]); JSON also for this
/// binary's own status lines.
fn init_logs(format: LogFormat) {
    if format == LogFormat::Json {
        JSON_LOGS.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    dht_node::process::init_logs(format);
}

/// A start-up failure, clearer: a locked store names its file once; a DHT listener failure
/// gets the OS cause the node's error lost (the TCP and UDP port is bound once more here).
fn explain_start_error(
    e: dmsg_plugin::PluginError,
    port: u16,
    data_dir: &std::path::Path,
) -> anyhow::Error {
    use dmsg_plugin::PluginError;
    if let PluginError::Node(dht_node::NodeError::Store(store)) = &e {
        if store.to_string().contains("already open") {
            return anyhow::anyhow!(
                "{} is locked by another process: is a node already running on this data \
                 directory?",
                data_dir.join("items.redb").display()
            );
        }
    }
    if !matches!(&e, PluginError::Node(dht_node::NodeError::Transport(_))) || port == 0 {
        return e.into();
    }
    let tcp = std::net::TcpListener::bind(("0.0.0.0", port)).map(drop);
    let udp = std::net::UdpSocket::bind(("0.0.0.0", port)).map(drop);
    match (tcp, udp) {
        (Err(cause), _) => anyhow::anyhow!("cannot listen on /ip4/0.0.0.0/tcp/{port}: {cause}"),
        (_, Err(cause)) => {
            anyhow::anyhow!("cannot listen on /ip4/0.0.0.0/udp/{port}/quic-v1: {cause}")
        }
        _ => e.into(),
    }
}

async fn run(args: Args) -> Result<()> {
    let mut stop = StopSignal::new().context("installing the SIGTERM handler")?;
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
    if let Some(n) = file.max_value_len {
        policy.max_value_len = in_range("max_value_len", n, 1, MAX_VALUE_LEN_LIMIT)?;
    }
    if let Some(s) = file.ttl_secs {
        policy.ttl = std::time::Duration::from_secs(in_range("ttl_secs", s, 1, YEAR_SECS)?);
    }
    if let Some(k) = file.replication {
        node.replication = in_range("replication", k, 1, 100)?;
    }
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
    let http = match args.http.or(file.http_listen) {
        Some(a) => a,
        None => DEFAULT_HTTP.parse()?,
    };
    let data_dir = config.node.data_dir.clone().unwrap_or_default();
    let plugin = DhtPlugin::start(identity, config)
        .await
        .map_err(|e| explain_start_error(e, port, &data_dir))?;
    let listener = match tokio::net::TcpListener::bind(http).await {
        Ok(l) => l,
        Err(e) => {
            plugin.shutdown().await;
            return Err(e).with_context(|| format!("binding the gateway to {http}"));
        }
    };
    status!("peer id: {}", plugin.node().peer_id());
    status!("gateway: http://{}", listener.local_addr()?);
    if let Some(a) = plugin.push_addr() {
        status!("push api: http://{a}");
    }
    axum::serve(listener, plugin.router())
        .with_graceful_shutdown(async move { stop.recv().await })
        .await?;
    status!("shutting down");
    plugin.shutdown().await;
    Ok(())
}
