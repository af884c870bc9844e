//! The command line of `dht-node`: subcommands, flags and the help texts.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use dht_node::process::LogFormat;
use dht_node::settings::{keys_help, NodeFlags, ENV_PREFIX, NODE_KEYS};
use dht_node::Multiaddr;

/// Exit codes and environment, shown by `dht-node --help`.
const MAIN_HELP: &str = "\
Exit codes:
  0  success
  1  error (bad input or usage, configuration, I/O, a replica refused the item)
  2  unreachable: no peer answered (bootstrap down, every lookup failed, timed out)
  3  not found: peers answered and none holds the item (get)
  4  deleted: the newest item is a tombstone (get)

Environment:
  RUST_LOG          log filter (tracing EnvFilter), default \"info,libp2p=warn,libp2p_request_response=error\";
                    e.g. RUST_LOG=debug or RUST_LOG=info,dht_node=debug
  DHT_LOG_FORMAT    text (default) or json, as --log-format
  DHT_BOOTSTRAP     bootstrap addresses (comma-separated), as --bootstrap
  DHT_<KEY>         any configuration key of `dht-node run` (see `dht-node run --help`)
Logs go to standard error, without colours unless it is a terminal.
Shell completions: dht-node completions bash|zsh|fish|elvish|powershell.";

/// The configuration keys and layers, shown by `dht-node run --help`.
fn run_help() -> String {
    format!(
        "\
Configuration: every key optional; layered defaults < file < environment < flags.
  file         TOML, --config FILE (or DHT_CONFIG); a commented example with every key
               is examples/config/dht-node.toml
  environment  {ENV_PREFIX}<KEY> in upper case: DHT_DATA_DIR=/var/lib/dht,
               DHT_REPLICATION=3, DHT_BOOTSTRAP=addr1,addr2,
               DHT_AUTHORIZED_PUBLISHERS__TP=[02ab...]
  flags        the options above, each naming its key
Keys = example [default; range]:
{}
An unknown key in the file, or a value out of range, is refused at start with a message
naming the key and where it was set; --check prints the effective configuration and exits.",
        keys_help(NODE_KEYS)
    )
}

#[derive(Parser)]
#[command(
    name = "dht-node",
    version,
    about = "Skywire DHT full node and tools",
    after_help = MAIN_HELP
)]
pub struct Cli {
    /// Log format on standard error [key: log_format].
    #[arg(long, global = true, value_enum, env = "DHT_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a full node: keeps its key and redb store in the data directory, joins the
    /// bootstrap peers if given, and is a bootstrap node otherwise. Stops cleanly (exit 0)
    /// on SIGTERM or Ctrl-C.
    #[command(after_help = run_help())]
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
        #[command(flatten)]
        signer: SignerArgs,
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
        #[command(flatten)]
        signer: SignerArgs,
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
    /// Print a shell completion script, e.g.
    /// `dht-node completions bash > /etc/bash_completion.d/dht-node`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SchemeArg {
    Ed25519,
    Secp256k1,
}

/// Who signs a `put` or a `delete`, for which subject, under which salt.
#[derive(clap::Args)]
pub struct SignerArgs {
    /// Secret key file written by `keygen`.
    #[arg(long)]
    pub key: PathBuf,
    /// Subject key (hex); default: the key's own public key.
    #[arg(long)]
    pub subject: Option<String>,
    /// Salt (namespace), e.g. tp, svc, dmsg.
    #[arg(long)]
    pub salt: String,
}

#[derive(clap::Args)]
pub struct NetArgs {
    /// Bootstrap peer address (/ip4/../tcp/../p2p/<id>); repeatable.
    #[arg(long, env = "DHT_BOOTSTRAP", value_delimiter = ',', required = true)]
    pub bootstrap: Vec<Multiaddr>,
    /// Seconds to wait for the operation.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// TOML configuration file (keys listed below; the environment and flags override it).
    #[arg(long, env = "DHT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate the configuration, print the effective settings (TOML) and exit.
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub node: NodeFlags,
}
