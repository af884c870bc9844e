//! `dht-node run` (a full node from the layered configuration) and `dht-node testnet`.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use dht_core::Scheme;
use dht_node::process::{init_logs, LogFormat, StopSignal};
use dht_node::settings::{self, Layers, NodeSettings};
use dht_node::{status, Multiaddr, Node, NodeConfig, NodeEvent, Testnet};

use crate::cli::RunArgs;
use crate::client::read_key;

/// The flags of `run` as an object of configuration keys (the top layer).
fn flags(args: &RunArgs, log_format: Option<LogFormat>) -> Result<serde_json::Value> {
    let mut flags = serde_json::to_value(&args.node)?;
    if let (Some(f), Some(obj)) = (log_format, flags.as_object_mut()) {
        obj.insert("log_format".into(), serde_json::to_value(f)?);
    }
    Ok(flags)
}

/// Loads the layered configuration (file < `DHT_*` < flags), validated.
pub fn load(
    args: &RunArgs,
    log_format: Option<LogFormat>,
) -> Result<settings::Loaded<NodeSettings>> {
    Ok(settings::load(Layers {
        file: args.config.as_deref(),
        env_ignore: &["config"],
        flags: flags(args, log_format)?,
    })?)
}

pub async fn run(args: RunArgs, log_format: Option<LogFormat>) -> Result<()> {
    let mut stop = StopSignal::new().context("installing the SIGTERM handler")?;
    let loaded = load(&args, log_format)?;
    let settings = loaded.value;
    init_logs(settings.log_format);
    for w in &loaded.warnings {
        status!("warning: {w}");
    }
    // The identity key is read before --check answers, so that it checks it too.
    let identity = match &settings.identity_key {
        Some(path) => {
            let key = read_key(path).context("identity_key")?;
            if key.scheme() != Scheme::Secp256k1 {
                bail!(
                    "identity_key {}: a Skywire key is secp256k1",
                    path.display()
                );
            }
            Some(dht_node::keypair_from_skywire_secret(&key.to_bytes())?)
        }
        None => None,
    };
    if args.check {
        print!("{}", settings::to_toml(&settings));
        return Ok(());
    }
    let config = settings
        .node_config()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {} {}", e.key, e.message))?;
    let bootstrap_given = !config.bootstrap.is_empty();
    let announce = config.external_addresses.clone();
    let mut builder = Node::builder().config(config);
    if let Some(keypair) = identity {
        builder = builder.keypair(keypair);
    }
    let node = builder.build().await?;
    let mut events = node.subscribe();
    status!("peer id: {}", node.peer_id());
    if let Some(addr) = settings.metrics_listen {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                node.shutdown().await;
                return Err(e).context(format!("binding the metrics endpoint to {addr}"));
            }
        };
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
    for a in &announce {
        status!("announcing: {a}/p2p/{}", node.peer_id());
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

pub async fn testnet(nodes: usize, on_disk: bool, join: Option<Multiaddr>) -> Result<()> {
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
