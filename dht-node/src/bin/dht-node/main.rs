//! The `dht-node` binary: run a full node (bootstrap or member), create keys, put, get and
//! delete items, list peers, and start a local testnet.

use dht_node::process::{error_chain, LogFormat, StopSignal};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use dht_core::{MutableItem, Policy, PublicKey, Scheme, SigningKey};
use dht_node::{
    GetMode, Lookup, Multiaddr, Node, NodeConfig, NodeEvent, NodeMode, Testnet, DEFAULT_PORT,
};

/// Exit codes and environment, shown by `dht-node --help`.
const MAIN_HELP: &str = "\
Exit codes:
  0  success
  1  error (bad input, configuration, I/O, a replica refused the item)
  2  unreachable: no peer answered (bootstrap down, every lookup failed, timed out)
  3  not found: peers answered and none holds the item (get)
  4  deleted: the newest item is a tombstone (get)

Environment:
  RUST_LOG          log filter (tracing EnvFilter), default \"info,libp2p=warn\";
                    e.g. RUST_LOG=debug or RUST_LOG=info,dht_node=debug
  DHT_LOG_FORMAT    text (default) or json, as --log-format
  DHT_BOOTSTRAP     bootstrap addresses (comma-separated), as --bootstrap
Logs go to standard error, without colours unless it is a terminal.";

/// The configuration file's keys, shown by `dht-node run --help`.
const RUN_HELP: &str = "\
Configuration file (TOML, --config; flags and DHT_* variables override it; every key
optional; a commented example is deploy/dht-node.toml):
  data_dir = \"/var/lib/dht-node\"     key, redb store, saved routing table [./dht-data]
  port = 9480                        TCP and QUIC port on all interfaces [9480]
  listen = [\"/ip4/0.0.0.0/tcp/9480\"] listen addresses; override port
  bootstrap = [\"/ip4/../tcp/../p2p/<id>\"]  peers to join through [none: a bootstrap node]
  max_value_len = 1048576            largest value accepted, bytes [1 MiB; 1 to 64 MiB]
  ttl_secs = 21600                   longest an item is kept after a put [6 h; 1 s to 1 year]
  replication = 20                   replicas per item, Kademlia k [20; 1 to 100]
  republish_interval_secs = 3600     republish pass interval [1 h; 1 s to 1 year]
  max_connected_peers = 256          most peers kept connected [256; 1 to 100000]
  metrics_listen = \"127.0.0.1:9100\"  serve /metrics and /health [off]
  [authorized_publishers]            salt -> hex public keys allowed to publish any subject
  tp = [\"02ab...\"]
A value out of range is refused with a message naming the key.";

#[derive(Parser)]
#[command(
    name = "dht-node",
    version,
    about = "Skywire DHT full node and tools",
    after_help = MAIN_HELP
)]
struct Cli {
    /// Log format on standard error.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "DHT_LOG_FORMAT",
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// Exit codes a script can rely on (see [`MAIN_HELP`]).
mod code {
    pub const ERROR: i32 = 1;
    pub const UNREACHABLE: i32 = 2;
    pub const NOT_FOUND: i32 = 3;
    pub const DELETED: i32 = 4;
}

/// An error that ends the process with a specific exit code.
#[derive(Debug)]
struct Exit {
    code: i32,
    message: String,
}

impl Exit {
    fn error(code: i32, message: impl Into<String>) -> anyhow::Error {
        Exit {
            code,
            message: message.into(),
        }
        .into()
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

#[derive(Subcommand)]
enum Command {
    /// Run a full node: keeps its key and redb store in the data directory, joins the
    /// bootstrap peers if given, and is a bootstrap node otherwise. Stops cleanly (exit 0)
    /// on SIGTERM or Ctrl-C.
    #[command(after_help = RUN_HELP)]
    Run(RunArgs),
    /// Create a signing key for items; prints the public key.
    Keygen {
        /// Signature scheme.
        #[arg(long, value_enum, default_value_t = SchemeArg::Ed25519)]
        scheme: SchemeArg,
        /// Where to write the secret key (hex; created with mode 0600).
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign and publish a value for a subject and salt.
    Put {
        #[command(flatten)]
        net: NetArgs,
        /// Secret key file written by `keygen`.
        #[arg(long)]
        key: PathBuf,
        /// Subject key (hex); default: the key's own public key.
        #[arg(long)]
        subject: Option<String>,
        /// Salt (namespace), e.g. tp, svc, dmsg.
        #[arg(long)]
        salt: String,
        /// Sequence number; default: one above the highest currently stored.
        #[arg(long)]
        seq: Option<u64>,
        /// Read the value from this file ("-" or absent: standard input).
        #[arg(long)]
        value_file: Option<PathBuf>,
        /// Publish an empty value (refused otherwise; to delete, use `dht-node delete`).
        #[arg(long)]
        allow_empty: bool,
    },
    /// Read the item of a subject and salt. Exit code 0: found, 2: no peer answered,
    /// 3: not found, 4: deleted (the JSON report is printed in every case but 2).
    Get {
        #[command(flatten)]
        net: NetArgs,
        /// Subject key (hex).
        #[arg(long)]
        subject: String,
        /// Salt.
        #[arg(long)]
        salt: String,
        /// Best of a quorum (with read repair) instead of the first valid answer.
        #[arg(long)]
        quorum: bool,
        /// Print only the raw value (nothing when not found or deleted; see the exit code).
        #[arg(long)]
        raw: bool,
    },
    /// Delete the item of a subject and salt (a signed tombstone).
    Delete {
        #[command(flatten)]
        net: NetArgs,
        /// Secret key file.
        #[arg(long)]
        key: PathBuf,
        /// Subject key (hex); default: the key's own public key.
        #[arg(long)]
        subject: Option<String>,
        /// Salt.
        #[arg(long)]
        salt: String,
    },
    /// Join the network as a client and list the full nodes that answered or are in its
    /// routing table ("PEER_ID ADDR..." per line). Exit code 2 when no peer answered.
    Peers {
        #[command(flatten)]
        net: NetArgs,
    },
    /// Start a local network of N full nodes on 127.0.0.1 and keep it running.
    Testnet {
        /// Number of nodes.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Keep each node's redb store in a temporary directory instead of memory.
        #[arg(long)]
        on_disk: bool,
        /// Join an existing network through this address instead of starting a new one
        /// (several processes then form one larger testnet).
        #[arg(long)]
        join: Option<Multiaddr>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum SchemeArg {
    Ed25519,
    Secp256k1,
}

#[derive(clap::Args)]
struct NetArgs {
    /// Bootstrap peer address (/ip4/../tcp/../p2p/<id>); repeatable.
    #[arg(long, env = "DHT_BOOTSTRAP", value_delimiter = ',', required = true)]
    bootstrap: Vec<Multiaddr>,
    /// Seconds to wait for the operation.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

#[derive(clap::Args)]
struct RunArgs {
    /// TOML configuration file (flags and environment override it; keys listed below).
    #[arg(long, env = "DHT_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (key, redb store, saved routing table).
    #[arg(long, env = "DHT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Port for TCP and QUIC on all interfaces.
    #[arg(long, env = "DHT_PORT")]
    port: Option<u16>,
    /// Listen address (repeatable); overrides --port.
    #[arg(long)]
    listen: Vec<Multiaddr>,
    /// Bootstrap peer address; repeatable.
    #[arg(long, env = "DHT_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<Multiaddr>,
    /// Authorized publisher as SALT=HEXKEY (repeatable).
    #[arg(long = "authorize")]
    authorize: Vec<String>,
    /// Largest value accepted, in bytes.
    #[arg(long)]
    max_value_len: Option<usize>,
    /// Run under this Skywire secp256k1 secret key (file with 64 hex chars) as the node
    /// identity, instead of the ed25519 key kept in the data directory.
    #[arg(long, env = "DHT_SKYWIRE_KEY")]
    skywire_key: Option<PathBuf>,
    /// Serve GET /metrics (Prometheus) and GET /health on this address (off unless set).
    #[arg(long, env = "DHT_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Move a damaged or vanished item store aside and start empty; the node then
    /// rebuilds what it is responsible for from the network.
    #[arg(long)]
    repair_store: bool,
}

/// The TOML configuration file of `dht-node run`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    port: Option<u16>,
    #[serde(default)]
    listen: Vec<String>,
    #[serde(default)]
    bootstrap: Vec<String>,
    /// salt -> hex keys.
    #[serde(default)]
    authorized_publishers: HashMap<String, Vec<String>>,
    max_value_len: Option<usize>,
    ttl_secs: Option<u64>,
    replication: Option<usize>,
    republish_interval_secs: Option<u64>,
    max_connected_peers: Option<usize>,
    metrics_listen: Option<std::net::SocketAddr>,
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
                Some(e) => tracing::error!(target: "dht_node", "{e}"),
                None => tracing::info!(target: "dht_node", "{line}"),
            }
        } else {
            eprintln!("{line}");
        }
    }};
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    if let Err(e) = dispatch(cli).await {
        let exit = e
            .chain()
            .find_map(|c| c.downcast_ref::<Exit>())
            .map_or(code::ERROR, |x| x.code);
        status!("error: {}", error_chain(&e));
        std::process::exit(exit);
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

async fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => run(args).await,
        Command::Keygen { scheme, out } => keygen(scheme, &out),
        Command::Put {
            net,
            key,
            subject,
            salt,
            seq,
            value_file,
            allow_empty,
        } => {
            let key = read_key(&key)?;
            let subject = subject_or_own(subject.as_deref(), &key)?;
            let value = read_value(value_file.as_deref())?;
            if value.is_empty() && !allow_empty {
                let from = match value_file.as_deref() {
                    Some(p) if p != Path::new("-") => p.display().to_string(),
                    _ => "standard input".to_owned(),
                };
                bail!(
                    "the value read from {from} is empty: refusing to publish it (pass \
                     --allow-empty to publish an empty value; to delete, use `dht-node delete`)"
                );
            }
            let node = client(&net).await?;
            let seq = match seq {
                Some(s) => s,
                None => with_timeout(&net, node.get(subject, salt.as_bytes(), GetMode::Quorum(0)))
                    .await?
                    .seq()
                    .map_or(1, |s| s + 1),
            };
            let item = MutableItem::sign(&key, subject, salt.into_bytes(), seq, value);
            let report = with_timeout(&net, node.put(item)).await?;
            println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            node.shutdown().await;
            if report.stored_on().is_empty() {
                return Err(no_replica(&report, "item"));
            }
            Ok(())
        }
        Command::Get {
            net,
            subject,
            salt,
            quorum,
            raw,
        } => {
            let subject: PublicKey = subject.parse().context("--subject")?;
            let node = client(&net).await?;
            let mode = if quorum {
                GetMode::Quorum(0)
            } else {
                GetMode::First
            };
            let report = with_timeout(&net, node.get(subject, salt.as_bytes(), mode)).await;
            node.shutdown().await;
            let report = report?;
            if report.lookup == Lookup::Unreachable {
                return Err(Exit::error(
                    code::UNREACHABLE,
                    format!("no peer answered ({} asked)", report.asked),
                ));
            }
            if raw {
                use std::io::Write;
                if let Some(v) = report.value() {
                    let mut out = std::io::stdout();
                    out.write_all(v)?;
                    out.flush()?;
                }
            } else {
                println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            }
            match report.lookup {
                Lookup::NotFound => Err(Exit::error(code::NOT_FOUND, "not found")),
                Lookup::Deleted(_) => Err(Exit::error(code::DELETED, "deleted")),
                _ => Ok(()),
            }
        }
        Command::Delete {
            net,
            key,
            subject,
            salt,
        } => {
            let key = read_key(&key)?;
            let subject = subject_or_own(subject.as_deref(), &key)?;
            let node = client(&net).await?;
            let report = with_timeout(&net, node.delete(&key, subject, salt.as_bytes())).await?;
            println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            node.shutdown().await;
            if report.stored_on().is_empty() {
                return Err(no_replica(&report, "tombstone"));
            }
            Ok(())
        }
        Command::Peers { net } => {
            let node = client(&net).await?;
            // The peers of a lookup answered; a peer added from --bootstrap (or learned)
            // whose dial or request failed is suspected and not listed.
            let answered: HashSet<_> =
                with_timeout(&net, node.closest_peers(dht_core::Target([0; 32])))
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
            let down: HashSet<_> = node.peers_down().into_iter().collect();
            let mut lines: Vec<String> = node
                .routing_table()
                .into_iter()
                .filter(|(peer, _)| !answered.is_empty() && !down.contains(peer))
                .map(|(peer, addrs)| {
                    let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                    format!("{peer} {}", addrs.join(" "))
                })
                .collect();
            node.shutdown().await;
            if lines.is_empty() {
                return Err(Exit::error(code::UNREACHABLE, "no peer answered"));
            }
            lines.sort();
            for l in lines {
                println!("{l}");
            }
            Ok(())
        }
        Command::Testnet {
            nodes,
            on_disk,
            join,
        } => testnet(nodes, on_disk, join).await,
    }
}

async fn with_timeout<T>(
    net: &NetArgs,
    f: impl std::future::Future<Output = Result<T, dht_node::NodeError>>,
) -> Result<T> {
    match tokio::time::timeout(Duration::from_secs(net.timeout), f).await {
        Err(_) | Ok(Err(dht_node::NodeError::Timeout)) => Err(Exit::error(
            code::UNREACHABLE,
            format!("timed out after {} s (--timeout)", net.timeout),
        )),
        Ok(r) => r.map_err(Into::into),
    }
}

/// A put or delete that no replica stored: exit 2 when none answered, 1 when refused.
fn no_replica(report: &dht_node::PutReport, what: &str) -> anyhow::Error {
    if report.rejected_by().is_empty() {
        Exit::error(
            code::UNREACHABLE,
            format!("no replica stored the {what}: none answered"),
        )
    } else {
        anyhow::anyhow!("no replica stored the {what}: rejected (see the report)")
    }
}

/// A client-mode node joined to the bootstrap peers.
async fn client(net: &NetArgs) -> Result<Node> {
    let mut config = NodeConfig {
        mode: NodeMode::Client,
        listen: Vec::new(),
        bootstrap: net.bootstrap.clone(),
        quic: false,
        ..NodeConfig::default()
    };
    config.lookup_timeout = Duration::from_secs(net.timeout.min(10));
    let node = Node::builder().config(config).build().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(net.timeout.min(10));
    while node.routing_table().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if node.routing_table().is_empty() {
        node.shutdown().await;
        return Err(Exit::error(
            code::UNREACHABLE,
            "could not reach any bootstrap peer",
        ));
    }
    Ok(node)
}

fn keygen(scheme: SchemeArg, out: &Path) -> Result<()> {
    if out.exists() {
        bail!("{} already exists; not overwriting a key", out.display());
    }
    let key = match scheme {
        SchemeArg::Ed25519 => SigningKey::generate_ed25519(),
        SchemeArg::Secp256k1 => SigningKey::generate_secp256k1(),
    };
    std::fs::write(out, key.to_key_file()).with_context(|| format!("writing {}", out.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o600))?;
    }
    println!("{}", key.public_key());
    Ok(())
}

/// Reads a key file (see [`SigningKey::from_key_file`]).
fn read_key(path: &Path) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading key file {}", path.display()))?;
    SigningKey::from_key_file(&text).with_context(|| format!("{}: malformed key", path.display()))
}

fn subject_or_own(subject: Option<&str>, key: &SigningKey) -> Result<PublicKey> {
    match subject {
        Some(s) => s.parse().context("--subject"),
        None => Ok(key.public_key()),
    }
}

fn read_value(path: Option<&Path>) -> Result<Vec<u8>> {
    match path {
        Some(p) if p != Path::new("-") => {
            std::fs::read(p).with_context(|| format!("reading {}", p.display()))
        }
        _ => {
            let mut v = Vec::new();
            std::io::stdin()
                .read_to_end(&mut v)
                .context("reading standard input")?;
            Ok(v)
        }
    }
}

fn parse_addrs(list: &[String], what: &str) -> Result<Vec<Multiaddr>> {
    list.iter()
        .map(|a| {
            a.parse()
                .with_context(|| format!("{what}: invalid address {a:?}"))
        })
        .collect()
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

/// The node configuration and the metrics address, from the file, environment and flags.
fn build_config(args: &RunArgs) -> Result<(NodeConfig, Option<std::net::SocketAddr>)> {
    let file: FileConfig = match &args.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("{}: invalid configuration", p.display()))?
        }
        None => FileConfig::default(),
    };
    let mut config = NodeConfig::default();
    let port = args.port.or(file.port).unwrap_or(DEFAULT_PORT);
    config.listen = if !args.listen.is_empty() {
        args.listen.clone()
    } else if !file.listen.is_empty() {
        parse_addrs(&file.listen, "listen")?
    } else {
        vec![
            format!("/ip4/0.0.0.0/tcp/{port}").parse()?,
            format!("/ip4/0.0.0.0/udp/{port}/quic-v1").parse()?,
        ]
    };
    config.quic = config.listen.iter().any(|a| a.to_string().contains("quic"));
    config.bootstrap = if args.bootstrap.is_empty() {
        parse_addrs(&file.bootstrap, "bootstrap")?
    } else {
        args.bootstrap.clone()
    };
    config.data_dir = Some(
        args.data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("dht-data")),
    );
    let mut policy = Policy::default();
    if let Some(n) = args.max_value_len.or(file.max_value_len) {
        policy.max_value_len = in_range("max_value_len", n, 1, MAX_VALUE_LEN_LIMIT)?;
    }
    if let Some(s) = file.ttl_secs {
        policy.ttl = Duration::from_secs(in_range("ttl_secs", s, 1, YEAR_SECS)?);
    }
    let mut authorized: Vec<(String, String)> = file
        .authorized_publishers
        .into_iter()
        .flat_map(|(salt, keys)| keys.into_iter().map(move |k| (salt.clone(), k)))
        .collect();
    for a in &args.authorize {
        let (salt, key) = a
            .split_once('=')
            .with_context(|| format!("--authorize {a:?}: expected SALT=HEXKEY"))?;
        authorized.push((salt.to_owned(), key.to_owned()));
    }
    for (salt, key) in authorized {
        let key: PublicKey = key
            .parse()
            .with_context(|| format!("authorized publisher for {salt:?}: bad key {key:?}"))?;
        policy = policy.authorize(salt.into_bytes(), key);
    }
    config.policy = policy;
    if let Some(k) = file.replication {
        config.replication = in_range("replication", k, 1, 100)?;
    }
    if let Some(s) = file.republish_interval_secs {
        config.republish_interval =
            Duration::from_secs(in_range("republish_interval_secs", s, 1, YEAR_SECS)?);
    }
    if let Some(n) = file.max_connected_peers {
        config.max_connected_peers = in_range("max_connected_peers", n, 1, 100_000)?;
    }
    config.repair_store = args.repair_store;
    Ok((config, args.metrics_listen.or(file.metrics_listen)))
}

async fn run(args: RunArgs) -> Result<()> {
    let mut stop = StopSignal::new().context("installing the SIGTERM handler")?;
    let (config, metrics_listen) = build_config(&args)?;
    let bootstrap_given = !config.bootstrap.is_empty();
    let listen = config.listen.clone();
    let data_dir = config.data_dir.clone();
    let mut builder = Node::builder().config(config);
    if let Some(path) = &args.skywire_key {
        let key = read_key(path)?;
        if key.scheme() != Scheme::Secp256k1 {
            bail!("{}: a Skywire key is secp256k1", path.display());
        }
        builder = builder.keypair(dht_node::keypair_from_skywire_secret(&key.to_bytes())?);
    }
    let node = builder
        .build()
        .await
        .map_err(|e| explain_start_error(e, &listen, data_dir.as_deref()))?;
    let mut events = node.subscribe();
    status!("peer id: {}", node.peer_id());
    if let Some(addr) = metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics endpoint to {addr}"))?;
        status!("metrics: http://{}/metrics", listener.local_addr()?);
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = dht_node::http::serve(node, listener).await {
                status!("metrics endpoint stopped: {e}");
            }
        });
    }
    for a in node.listen_addrs() {
        status!("listening: {a}/p2p/{}", node.peer_id());
    }
    if !bootstrap_given && node.routing_table().is_empty() {
        status!("no bootstrap peers given: running as a bootstrap node");
    }
    let mut progress = tokio::time::interval(Duration::from_secs(2));
    let mut last = usize::MAX;
    loop {
        tokio::select! {
            _ = stop.recv() => break,
            _ = progress.tick() => {
                let n = node.routing_table().len();
                if n != last {
                    status!("joining: {n} peers in the routing table");
                    last = n;
                }
            }
            ev = events.recv() => {
                if let Ok(NodeEvent::CatchUpFinished { items, peers }) = ev {
                    status!("caught up: {items} items from {peers} peers");
                }
            }
        }
    }
    status!("shutting down");
    node.shutdown().await;
    Ok(())
}

/// A node that failed to start, clearer: a locked store names its file once; a listener
/// failure gets the OS cause the node's error lost (libp2p's transport error displays an
/// I/O cause as an empty string): each fixed-port listen address is bound once more here
/// and the first OS error is named.
fn explain_start_error(
    e: dht_node::NodeError,
    listen: &[Multiaddr],
    data_dir: Option<&Path>,
) -> anyhow::Error {
    if let (dht_node::NodeError::Store(store), Some(dir)) = (&e, data_dir) {
        if store.to_string().contains("already open") {
            return anyhow::anyhow!(
                "{} is locked by another process: is a node already running on this data \
                 directory?",
                dir.join("items.redb").display()
            );
        }
    }
    let dht_node::NodeError::Transport(msg) = &e else {
        return e.into();
    };
    // Most specific first: the address the message names, then the others in order.
    let mut addrs: Vec<&Multiaddr> = listen.iter().collect();
    addrs.sort_by_key(|a| !msg.contains(&a.to_string()));
    for addr in addrs {
        if let Some(Err(cause)) = probe_listen(addr) {
            return anyhow::anyhow!("cannot listen on {addr}: {cause}");
        }
    }
    e.into()
}

/// Binds the socket of a `/ip4|ip6/../tcp|udp/PORT` address with a fixed port once (and
/// closes it); `None` for other addresses.
fn probe_listen(addr: &Multiaddr) -> Option<std::io::Result<()>> {
    use libp2p::multiaddr::Protocol;
    let mut ip = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
            Protocol::Tcp(port) if port != 0 => {
                let sa = std::net::SocketAddr::new(ip?, port);
                return Some(std::net::TcpListener::bind(sa).map(drop));
            }
            Protocol::Udp(port) if port != 0 => {
                let sa = std::net::SocketAddr::new(ip?, port);
                return Some(std::net::UdpSocket::bind(sa).map(drop));
            }
            _ => {}
        }
    }
    None
}

async fn testnet(nodes: usize, on_disk: bool, join: Option<Multiaddr>) -> Result<()> {
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let mut stop = StopSignal::new().context("installing the SIGTERM handler")?;
    let mut config = NodeConfig::local();
    config.bootstrap = join.into_iter().collect();
    let net = Testnet::builder(nodes)
        .config(config)
        .on_disk(on_disk)
        .build()
        .await?;
    let boot = net.bootstrap_addr().context("no bootstrap address")?;
    println!("BOOTSTRAP {boot}");
    for n in &net.nodes {
        if let Some(a) = n.bootstrap_addr() {
            println!("NODE {a}");
        }
    }
    println!("READY {nodes}");
    use std::io::Write;
    std::io::stdout().flush()?;
    stop.recv().await;
    net.shutdown().await;
    Ok(())
}
