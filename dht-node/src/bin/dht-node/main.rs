//! The `dht-node` binary: run a full node (bootstrap or member), create keys, put, get and
//! delete items, list peers, start a local testnet, print shell completions.

mod cli;
mod client;
mod run;

use clap::{CommandFactory, Parser};
use dht_node::process::{error_chain, init_logs, LogFormat};
use dht_node::status;

use cli::{Cli, Command};

/// Exit codes a script can rely on (see `dht-node --help`).
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

#[tokio::main]
async fn main() {
    // A usage error exits 1 like every other bad input (clap's own 2 is "unreachable").
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let _ = e.print();
        std::process::exit(if e.use_stderr() { code::ERROR } else { 0 })
    });
    let log_format = cli.log_format;
    if let Err(e) = dispatch(cli).await {
        // `run` sets up logging once its configuration is read; before that (or for
        // the other commands) the flag decides.
        init_logs(log_format.unwrap_or(LogFormat::Text));
        let exit = e
            .chain()
            .find_map(|c| c.downcast_ref::<Exit>())
            .map_or(code::ERROR, |x| x.code);
        status!("error: {}", error_chain(&e));
        std::process::exit(exit);
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    if !matches!(cli.command, Command::Run(_)) {
        init_logs(cli.log_format.unwrap_or(LogFormat::Text));
    }
    match cli.command {
        Command::Run(args) => run::run(args, cli.log_format).await,
        Command::Keygen { scheme, out } => client::keygen(scheme, &out),
        Command::Put {
            net,
            signer,
            seq,
            value_file,
            allow_empty,
        } => client::put(net, signer, seq, value_file, allow_empty).await,
        Command::Get {
            net,
            subject,
            salt,
            quorum,
            raw,
        } => client::get(net, subject, salt, quorum, raw).await,
        Command::Delete { net, signer } => client::delete(net, signer).await,
        Command::Peers { net } => client::peers(net).await,
        Command::Testnet {
            nodes,
            on_disk,
            join,
        } => run::testnet(nodes, on_disk, join).await,
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "dht-node",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}
