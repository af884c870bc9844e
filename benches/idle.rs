//! Idle cost: what a quiet network burns. A testnet of full nodes runs in a
//! `dht-node testnet` process of its own; once it has formed and its joining rounds are
//! over, its CPU time is read from `/proc` over a window in which nobody asks it
//! anything.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::procs::TestnetProcess;

/// Wait after the process reports ready: joining nodes repeat bootstrap rounds 1, 3, 10
/// and 30 s after they start, and the last of them must be over (on a loaded machine
/// the rounds of 100 nodes take a while).
pub const SETTLE: Duration = Duration::from_secs(60);

/// Figures of one idle measurement.
#[derive(Debug, Clone, Default)]
pub struct IdleFigures {
    /// Full nodes.
    pub nodes: usize,
    /// Seconds until the process reported them ready.
    pub formation_s: f64,
    /// Seconds of idleness measured.
    pub window_s: f64,
    /// CPU cores the whole process used over the window.
    pub cores: f64,
    /// Resident memory of the process (MB).
    pub rss_mb: f64,
}

/// Forms `nodes` full nodes in a child process, waits [`SETTLE`], then measures the
/// cores they use over `window`.
pub async fn run(bin: &Path, nodes: usize, window: Duration) -> anyhow::Result<IdleFigures> {
    let t0 = Instant::now();
    let net = TestnetProcess::start(bin, nodes, None).await?;
    let formation_s = t0.elapsed().as_secs_f64();
    eprintln!("   {nodes} nodes formed in {formation_s:.1} s; settling");
    tokio::time::sleep(SETTLE).await;
    let cores = net.cores_over(window).await;
    Ok(IdleFigures {
        nodes,
        formation_s,
        window_s: window.as_secs_f64(),
        cores,
        rss_mb: net.rss_mb(),
    })
}

/// The idle figures as a markdown table.
pub fn markdown(f: &IdleFigures) -> String {
    format!(
        "\n### Idle cost\n\n\
         {} full nodes in one `dht-node testnet` process, formed in {:.1} s; after {} s of \
         settling, CPU time (user + system, `/proc/PID/stat`) over {:.0} s in which nobody \
         asks anything.\n\n\
         | nodes | CPU cores used while idle | per node (millicores) | resident memory (MB) |\n\
         |---|---|---|---|\n\
         | {} | {:.3} | {:.2} | {:.0} |\n",
        f.nodes,
        f.formation_s,
        SETTLE.as_secs(),
        f.window_s,
        f.nodes,
        f.cores,
        f.cores * 1000.0 / f.nodes.max(1) as f64,
        f.rss_mb
    )
}
