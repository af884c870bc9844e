//! What the `dht-node` and `dht-sidecar` binaries share as processes: their log set-up,
//! the stop signals they shut down cleanly on, and how they print an error.

use std::io::IsTerminal;

/// How logs are written on standard error.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Set when logs are JSON: status lines then go through the log as events, so that every
/// line on standard error is one JSON object.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A status line on standard error ("peer id: ...", "listening: ..."): plain text, or an
/// INFO event (ERROR for `error: ...`, WARN for `warning: ...`) when logs are JSON.
pub fn status(line: &str) {
    if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
        if let Some(e) = line.strip_prefix("error: ") {
            tracing::error!(target: "dht_node", "{e}");
        } else if let Some(w) = line.strip_prefix("warning: ") {
            tracing::warn!(target: "dht_node", "{w}");
        } else {
            tracing::info!(target: "dht_node", "{line}");
        }
    } else {
        eprintln!("{line}");
    }
}

/// [`status`] with `format!` arguments.
#[macro_export]
macro_rules! status {
    ($($arg:tt)*) => {
        $crate::process::status(&format!($($arg)*))
    };
}

/// Logs on standard error: `RUST_LOG` filters (default `info,libp2p=warn`), colours only
/// on a terminal; JSON (also for [`status`] lines) when `format` says so. Only the first
/// call has an effect.
pub fn init_logs(format: LogFormat) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| init_logs_once(format));
}

fn init_logs_once(format: LogFormat) {
    if format == LogFormat::Json {
        JSON_LOGS.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,libp2p=warn,libp2p_request_response=error")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// SIGTERM (systemd, docker and Kubernetes stop with it) and SIGINT (Ctrl-C), registered
/// when created: a signal that arrives before the first wait is kept, not lost (and never
/// kills the process with the default action once this exists).
pub struct StopSignal {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl StopSignal {
    /// Registers the handlers (inside a tokio runtime).
    pub fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(StopSignal {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(StopSignal {})
    }

    /// Resolves at the next SIGTERM or SIGINT (cancel-safe: usable in a `select!` loop).
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The error and its causes, joined by ": ", each cause once (some errors repeat their
/// source in their own message).
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
