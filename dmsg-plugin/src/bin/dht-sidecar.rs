//! `dht-sidecar`: the DHT full node and HTTP gateway for DMSG servers that are not
//! written in Rust, configured like `dht-node run` (the same keys, file < environment <
//! flags) plus its own sections.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use dht_node::process::{error_chain, init_logs, LogFormat, StopSignal};
use dht_node::settings::{self, keys_help, Layers, NodeFlags, NODE_KEYS};
use dht_node::status;
use dmsg_plugin::settings::{read_secret, SidecarSettings, SIDECAR_KEYS};
use dmsg_plugin::DhtPlugin;

/// The configuration's keys, exit codes and environment, shown by `--help`.
fn help() -> String {
    format!(
        "\
Configuration: every key optional; layered defaults < file < environment < flags.
  file         TOML, --config FILE (or DHT_SIDECAR_CONFIG); a commented example with
               every key is examples/config/dht-sidecar.toml
  environment  DHT_<KEY> in upper case, a section's key as DHT_<SECTION>__<KEY>:
               DHT_DATA_DIR=/var/lib/dht, DHT_GATEWAY__LISTEN=0.0.0.0:9481,
               DHT_PUSH__TOKEN=..., DHT_BOOTSTRAP=addr1,addr2
  flags        the options above, each naming its key
The node's keys (the same as `dht-node run`) = example [default; range]:
{}The sidecar's sections:
{}
An unknown key in the file, or a value out of range, is refused at start with a message
naming the key and where it was set; --check prints the effective configuration and exits.

Exit codes: 0 clean stop (SIGTERM or Ctrl-C), 1 error (configuration, start-up).

Environment besides the keys:
  RUST_LOG            log filter (tracing EnvFilter), default \"info,libp2p=warn,libp2p_request_response=error\"
  DHT_SIDECAR_CONFIG  the configuration file, as --config
Logs go to standard error, without colours unless it is a terminal.
Shell completions: dht-sidecar completions bash|zsh|fish|elvish|powershell.",
        keys_help(NODE_KEYS),
        keys_help(SIDECAR_KEYS)
    )
}

#[derive(Parser)]
#[command(
    name = "dht-sidecar",
    version,
    about = "Skywire DHT full node + HTTP gateway for DMSG servers",
    after_help = help(),
    args_conflicts_with_subcommands = true
)]
struct Args {
    /// TOML configuration file (keys listed below).
    #[arg(long, env = "DHT_SIDECAR_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration, print the effective settings (TOML) and exit.
    #[arg(long)]
    check: bool,
    /// Gateway listen address [key: gateway.listen].
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Log format on standard error [key: log_format].
    #[arg(long, value_enum, env = "DHT_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(flatten)]
    node: NodeFlags,
    #[command(subcommand)]
    command: Option<SidecarCommand>,
}

#[derive(Subcommand)]
enum SidecarCommand {
    /// Print a shell completion script, e.g.
    /// `dht-sidecar completions bash > /etc/bash_completion.d/dht-sidecar`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[tokio::main]
async fn main() {
    let args = Args::try_parse().unwrap_or_else(|e| {
        let _ = e.print();
        std::process::exit(if e.use_stderr() { 1 } else { 0 })
    });
    let log_format = args.log_format;
    if let Some(SidecarCommand::Completions { shell }) = args.command {
        clap_complete::generate(
            shell,
            &mut Args::command(),
            "dht-sidecar",
            &mut std::io::stdout(),
        );
        return;
    }
    if let Err(e) = run(args).await {
        init_logs(log_format.unwrap_or(LogFormat::Text));
        status!("error: {}", error_chain(&e));
        std::process::exit(1);
    }
}

/// The flags as an object of configuration keys (the top layer).
fn flags(args: &Args) -> Result<serde_json::Value> {
    let mut flags = serde_json::to_value(&args.node)?;
    if let Some(obj) = flags.as_object_mut() {
        if let Some(f) = args.log_format {
            obj.insert("log_format".into(), serde_json::to_value(f)?);
        }
        if let Some(http) = args.http {
            obj.insert("gateway".into(), serde_json::json!({ "listen": http }));
        }
    }
    Ok(flags)
}

async fn run(args: Args) -> Result<()> {
    let mut stop = StopSignal::new().context("installing the SIGTERM handler")?;
    let loaded = settings::load::<SidecarSettings>(Layers {
        file: args.config.as_deref(),
        env_ignore: &["sidecar_config", "config"],
        flags: flags(&args)?,
    })?;
    let settings = loaded.value;
    init_logs(settings.node.log_format);
    for w in &loaded.warnings {
        status!("warning: {w}");
    }
    // Key files are read before --check answers, so that it checks them too.
    let config = settings.plugin_config()?;
    let identity = match &settings.node.identity_key {
        Some(p) => Some(dht_node::keypair_from_skywire_secret(
            &read_secret("identity_key", p)?.to_bytes(),
        )?),
        None => None,
    };
    if args.check {
        print!("{}", settings::to_toml(&settings));
        return Ok(());
    }
    let announce = config.node.external_addresses.clone();
    let plugin = DhtPlugin::start(identity, config).await?;
    let http = settings.gateway.listen;
    let listener = match tokio::net::TcpListener::bind(http).await {
        Ok(l) => l,
        Err(e) => {
            plugin.shutdown().await;
            return Err(e).with_context(|| format!("binding the gateway to {http}"));
        }
    };
    let node = plugin.node().clone();
    status!("peer id: {}", node.peer_id());
    for a in node.listen_addrs() {
        status!("listening: {a}/p2p/{}", node.peer_id());
    }
    for a in &announce {
        status!("announcing: {a}/p2p/{}", node.peer_id());
    }
    status!("gateway: http://{}", listener.local_addr()?);
    if let Some(a) = plugin.push_addr() {
        status!("push api: http://{a}");
    }
    if let Some(addr) = settings.node.metrics_listen {
        let metrics = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                plugin.shutdown().await;
                return Err(e).with_context(|| format!("binding the metrics endpoint to {addr}"));
            }
        };
        status!("metrics: http://{}/metrics", metrics.local_addr()?);
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = dht_node::http::serve(node, metrics).await {
                status!("metrics endpoint stopped: {e}");
            }
        });
    }
    axum::serve(listener, plugin.router())
        .with_graceful_shutdown(async move { stop.recv().await })
        .await?;
    status!("shutting down");
    plugin.shutdown().await;
    Ok(())
}
