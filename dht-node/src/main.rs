//! The `dht-node` binary: run a full node (bootstrap or member), create keys, put, get and
//! delete items, list peers, and start a local testnet.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use dht_core::{MutableItem, Policy, PublicKey, Scheme, SigningKey};
use dht_node::{GetMode, Multiaddr, Node, NodeConfig, NodeEvent, NodeMode, Testnet, DEFAULT_PORT};

#[derive(Parser)]
#[command(name = "dht-node", version, about = "Skywire DHT full node and tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a full node: keeps its key and redb store in the data directory, joins the
    /// bootstrap peers if given, and is a bootstrap node otherwise.
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
    },
    /// Read the item of a subject and salt.
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
        /// Print only the raw value (exit code 3 when not found or deleted).
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
    /// Join the network as a client and list the full nodes it knows.
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
    /// TOML configuration file (flags and environment override it).
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

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,libp2p=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = dispatch(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
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
        } => {
            let key = read_key(&key)?;
            let subject = subject_or_own(subject.as_deref(), &key)?;
            let value = read_value(value_file.as_deref())?;
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
                bail!("no replica stored the item");
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
            let report = with_timeout(&net, node.get(subject, salt.as_bytes(), mode)).await?;
            node.shutdown().await;
            if raw {
                use std::io::Write;
                match report.value() {
                    Some(v) => std::io::stdout().write_all(v)?,
                    None => std::process::exit(3),
                }
            } else {
                println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            }
            Ok(())
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
                bail!("no replica stored the tombstone");
            }
            Ok(())
        }
        Command::Peers { net } => {
            let node = client(&net).await?;
            let _ = with_timeout(&net, node.closest_peers(dht_core::Target([0; 32]))).await;
            for (peer, addrs) in node.routing_table() {
                let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                println!("{peer} {}", addrs.join(" "));
            }
            node.shutdown().await;
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
    tokio::time::timeout(Duration::from_secs(net.timeout), f)
        .await
        .context("timed out")?
        .map_err(Into::into)
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
        bail!("could not reach any bootstrap peer");
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
        policy.max_value_len = n;
    }
    if let Some(s) = file.ttl_secs {
        policy.ttl = Duration::from_secs(s);
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
        config.replication = k.max(1);
    }
    if let Some(s) = file.republish_interval_secs {
        config.republish_interval = Duration::from_secs(s.max(1));
    }
    if let Some(n) = file.max_connected_peers {
        if n == 0 {
            bail!("max_connected_peers must be at least 1");
        }
        config.max_connected_peers = n;
    }
    config.repair_store = args.repair_store;
    Ok((config, args.metrics_listen.or(file.metrics_listen)))
}

async fn run(args: RunArgs) -> Result<()> {
    let (config, metrics_listen) = build_config(&args)?;
    let bootstrap_given = !config.bootstrap.is_empty();
    let mut builder = Node::builder().config(config);
    if let Some(path) = &args.skywire_key {
        let key = read_key(path)?;
        if key.scheme() != Scheme::Secp256k1 {
            bail!("{}: a Skywire key is secp256k1", path.display());
        }
        builder = builder.keypair(dht_node::keypair_from_skywire_secret(&key.to_bytes())?);
    }
    let node = builder.build().await?;
    let mut events = node.subscribe();
    eprintln!("peer id: {}", node.peer_id());
    if let Some(addr) = metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics endpoint to {addr}"))?;
        eprintln!("metrics: http://{}/metrics", listener.local_addr()?);
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = dht_node::http::serve(node, listener).await {
                eprintln!("metrics endpoint stopped: {e}");
            }
        });
    }
    for a in node.listen_addrs() {
        eprintln!("listening: {a}/p2p/{}", node.peer_id());
    }
    if !bootstrap_given && node.routing_table().is_empty() {
        eprintln!("no bootstrap peers given: running as a bootstrap node");
    }
    let mut progress = tokio::time::interval(Duration::from_secs(2));
    let mut last = usize::MAX;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminated() => break,
            _ = progress.tick() => {
                let n = node.routing_table().len();
                if n != last {
                    eprintln!("joining: {n} peers in the routing table");
                    last = n;
                }
            }
            ev = events.recv() => {
                if let Ok(NodeEvent::CatchUpFinished { items, peers }) = ev {
                    eprintln!("caught up: {items} items from {peers} peers");
                }
            }
        }
    }
    eprintln!("shutting down");
    node.shutdown().await;
    Ok(())
}

/// Resolves when the process gets SIGTERM (systemd, docker and Kubernetes stop with it).
async fn terminated() {
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await
}

async fn testnet(nodes: usize, on_disk: bool, join: Option<Multiaddr>) -> Result<()> {
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
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
    tokio::signal::ctrl_c().await?;
    net.shutdown().await;
    Ok(())
}
