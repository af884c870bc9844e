//! Testnets in processes of their own (`dht-node testnet`), so that what their nodes
//! cost can be read from `/proc` apart from the benchmark's own work: CPU time (user +
//! system) and resident memory.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dht_node::Multiaddr;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running `dht-node testnet` process; killed when dropped.
pub struct TestnetProcess {
    child: Child,
    /// The bootstrap address of its first node.
    pub bootstrap: Multiaddr,
    /// A dialable address (with `/p2p/`) of each of its nodes.
    pub nodes: Vec<Multiaddr>,
}

impl TestnetProcess {
    /// Starts `nodes` full nodes in one `dht-node testnet` process (joining `join`, if
    /// any) and waits until it reports them ready.
    pub async fn start(bin: &Path, nodes: usize, join: Option<&Multiaddr>) -> anyhow::Result<Self> {
        anyhow::ensure!(
            bin.exists(),
            "{} not found: build it with `cargo build --release -p dht-node`",
            bin.display()
        );
        let mut cmd = Command::new(bin);
        cmd.args(["testnet", "--nodes", &nodes.to_string()]);
        if let Some(j) = join {
            cmd.args(["--join", &j.to_string()]);
        }
        let mut child = cmd
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut bootstrap = None;
        let mut addrs = Vec::new();
        let ready = tokio::time::timeout(Duration::from_secs(300), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(a) = line.strip_prefix("BOOTSTRAP ") {
                    bootstrap = a.trim().parse().ok();
                } else if let Some(a) = line.strip_prefix("NODE ") {
                    addrs.extend(a.trim().parse::<Multiaddr>().ok());
                } else if line.starts_with("READY") {
                    return Ok::<_, std::io::Error>(true);
                }
            }
            Ok(false)
        })
        .await;
        anyhow::ensure!(
            matches!(ready, Ok(Ok(true))),
            "the testnet process did not become ready"
        );
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(TestnetProcess {
            child,
            bootstrap: bootstrap.context("no BOOTSTRAP line")?,
            nodes: addrs,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// CPU cores the process used on average over `window` from now.
    pub async fn cores_over(&self, window: Duration) -> f64 {
        let pid = self.pid();
        let (t0, c0) = (Instant::now(), cpu_seconds(pid));
        tokio::time::sleep(window).await;
        (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64()
    }

    /// Resident memory in MB.
    pub fn rss_mb(&self) -> f64 {
        crate::memory::rss_mb(self.pid())
    }
}

/// CPU time (user + system) process `pid` used so far, in seconds (0 if unknown).
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces: fields are counted after its ')'.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i)?.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks / if hz > 0 { hz as f64 } else { 100.0 }
}
