//! The largest network on one machine: real nodes over real TCP sockets on 127.0.0.1,
//! spread over several processes (`dht-node testnet --join`), because one process's
//! file-descriptor limit bounds how many connections its nodes can hold. Operations run
//! from the nodes of this process against the whole network.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dht_core::{MutableItem, SigningKey};
use dht_node::{GetMode, NodeConfig, Testnet};
use rand::Rng;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Figures of one scale-out run.
#[derive(Debug, Default, Clone)]
pub struct ScaleFigures {
    /// Nodes in the network.
    pub nodes: usize,
    /// Processes they ran in.
    pub processes: usize,
    /// Seconds until every process reported its nodes ready.
    pub formation_s: f64,
    /// Resident memory of all processes together, per node (MB).
    pub rss_mb_per_node: f64,
    /// Put until a majority of replicas confirmed (ms): p50, p90, p99.
    pub put: [f64; 3],
    /// First valid get (ms).
    pub get_first: [f64; 3],
    /// Best-of-quorum get (ms).
    pub get_quorum: [f64; 3],
    /// Operations that failed.
    pub failures: usize,
}

fn pcts(v: Vec<Duration>) -> [f64; 3] {
    let p = crate::pcts(v);
    [p.p50, p.p90, p.p99]
}

/// Kills the child processes when dropped (also on error paths).
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.start_kill();
        }
    }
}

/// Runs a network of `nodes` nodes, `per_process` per process (this one included), and
/// measures `ops` operations from this process's nodes.
pub async fn run(
    dht_node_bin: &Path,
    nodes: usize,
    per_process: usize,
    ops: usize,
    value_len: usize,
    settle: Duration,
) -> anyhow::Result<ScaleFigures> {
    anyhow::ensure!(
        dht_node_bin.exists(),
        "{} not found: build it with `cargo build --release -p dht-node`",
        dht_node_bin.display()
    );
    let per_process = per_process.clamp(1, nodes.max(1));
    let processes = nodes.div_ceil(per_process);
    let t0 = Instant::now();
    let mut config = NodeConfig::local();
    config.max_peers_per_ip_range = None;
    let net = Testnet::builder(per_process).config(config).build().await?;
    let join = net.bootstrap_addr().context("no bootstrap address")?;
    let mut children = Children(Vec::new());
    let mut remaining = nodes - per_process;
    while remaining > 0 {
        let n = remaining.min(per_process);
        remaining -= n;
        let mut child = Command::new(dht_node_bin)
            .args([
                "testnet",
                "--nodes",
                &n.to_string(),
                "--join",
                &join.to_string(),
            ])
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", dht_node_bin.display()))?;
        let stdout = child.stdout.take().context("child stdout")?;
        children.0.push(child);
        // One process at a time: each joins the network the previous ones formed.
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(180), async {
            while let Some(line) = lines.next_line().await? {
                if line.starts_with("READY") {
                    return Ok::<_, std::io::Error>(true);
                }
            }
            Ok(false)
        })
        .await;
        anyhow::ensure!(
            matches!(ready, Ok(Ok(true))),
            "a testnet process did not become ready"
        );
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        eprintln!(
            "   {} nodes up after {:.1} s",
            nodes - remaining,
            t0.elapsed().as_secs_f64()
        );
    }
    let mut f = ScaleFigures {
        nodes,
        processes,
        formation_s: t0.elapsed().as_secs_f64(),
        ..ScaleFigures::default()
    };
    // Let routing tables settle (the later processes' lookups reach the first nodes,
    // and the joining rounds of the last process end).
    tokio::time::sleep(settle).await;
    // A network of this size keeps a connection between every two full nodes: measure
    // once those are open (and no new ones are being opened), as a network that has
    // been up for a while would be, not while its last nodes still dial the others.
    let warm_started = Instant::now();
    let warm = wait_until_warm(&net.nodes, Duration::from_secs(90)).await;
    eprintln!(
        "   connections {} after another {:.1} s",
        if warm { "warm" } else { "still opening" },
        warm_started.elapsed().as_secs_f64()
    );
    let own = crate::memory::rss_mb(std::process::id());
    let others: f64 = children
        .0
        .iter()
        .filter_map(Child::id)
        .map(crate::memory::rss_mb)
        .sum();
    f.rss_mb_per_node = (own + others) / nodes as f64;
    eprintln!(
        "   this process: {}",
        crate::tables_summary(&net.nodes).await
    );

    let mut rng = rand::thread_rng();
    let keys: Vec<SigningKey> = (0..ops).map(|_| SigningKey::generate_ed25519()).collect();
    let mut lat = Vec::with_capacity(ops);
    let mut slowest = Vec::new();
    let watched0 = watched_counters(&net.nodes);
    let puts_started = Instant::now();
    for k in &keys {
        let node = &net.nodes[rng.gen_range(0..net.nodes.len())];
        let item = MutableItem::sign(k, k.public_key(), "tp", 1, vec![0x42; value_len]);
        let known = node.membership_known();
        let t = Instant::now();
        let at = t.duration_since(puts_started);
        let report = node.put(item).await;
        let took = t.elapsed();
        lat.push(took);
        let ok = report.as_ref().is_ok_and(|r| r.majority_stored());
        f.failures += usize::from(!ok);
        if let Ok(r) = report {
            slowest.push((took, at, known, r));
        }
    }
    f.put = pcts(lat);
    eprintln!("   puts done: {:?}", f.put);
    let watched1 = watched_counters(&net.nodes);
    eprintln!(
        "   during the puts, this process's nodes: {}",
        WATCHED
            .iter()
            .zip(watched0.iter().zip(&watched1))
            .map(|(name, (a, b))| format!("{name} +{}", b - a))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // The slowest puts, to tell a slow majority from waiting on a lookup or stragglers.
    slowest.sort_by_key(|(took, ..)| std::cmp::Reverse(*took));
    for (took, at, known, r) in slowest.iter().take(5) {
        eprintln!(
            "   slow put {:.1} ms, {:.1} s into the puts: membership known {known}, responsible {}, stored {} \
             ({} responsible), pending {}, unreachable {}, stand-ins {}",
            took.as_secs_f64() * 1e3,
            at.as_secs_f64(),
            r.responsible.len(),
            r.stored_on().len(),
            r.responsible_stored(),
            r.pending.len(),
            r.unreachable.len(),
            r.stand_ins.len()
        );
    }
    for (mode, slot) in [
        (GetMode::First, &mut f.get_first),
        (GetMode::Quorum(0), &mut f.get_quorum),
    ] {
        let mut lat = Vec::with_capacity(ops);
        for k in &keys {
            let node = &net.nodes[rng.gen_range(0..net.nodes.len())];
            let t = Instant::now();
            let got = node.get(k.public_key(), b"tp", mode).await;
            lat.push(t.elapsed());
            if !got.is_ok_and(|g| g.value().is_some()) {
                f.failures += 1;
            }
        }
        *slot = pcts(lat);
        eprintln!("   gets ({mode:?}) done: {slot:?}");
    }
    net.shutdown().await;
    drop(children);
    Ok(f)
}

/// Counters whose change during the puts tells why some were slow (in the order
/// [`watched_counters`] reads them).
const WATCHED: [&str; 6] = [
    "dht_peers_suspected_total",
    "dht_hedged_requests_total",
    "dht_connections_opened_total",
    "dht_puts_returned_early_total",
    "dht_put_need_base_total",
    "dht_put_items_batched_total",
];

/// The [`WATCHED`] counters summed over `nodes`, read from their metrics.
fn watched_counters(nodes: &[dht_node::Node]) -> Vec<f64> {
    let mut sums = vec![0.0; WATCHED.len()];
    for node in nodes {
        let m = node.metrics();
        let values = [
            m.peers_suspected.get(),
            m.hedged_requests.get(),
            m.connections_opened.get(),
            m.puts_returned_early.get(),
            m.put_need_base.get(),
            m.put_items_batched.get(),
        ];
        for (sum, v) in sums.iter_mut().zip(values) {
            *sum += v as f64;
        }
    }
    sums
}

/// Waits until `nodes` are connected to (nearly) every peer of their routing tables, when
/// their tables hold the whole membership, and no connection opened for two seconds;
/// at most `limit`. Returns whether they got there.
async fn wait_until_warm(nodes: &[dht_node::Node], limit: Duration) -> bool {
    let opened = |nodes: &[dht_node::Node]| watched_counters(nodes)[2];
    let deadline = Instant::now() + limit;
    let mut last = opened(nodes);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = opened(nodes);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
        let (mut table, mut connected, mut known) = (0usize, 0usize, true);
        for n in nodes {
            if let Ok(s) = n.stats().await {
                table += s.routing_table_peers;
                connected += s.connected_peers.min(s.routing_table_peers);
                known &= s.membership_known;
            }
        }
        let connected_enough = !known || connected * 100 >= table * 99;
        if connected_enough && quiet_since.elapsed() >= Duration::from_secs(2) {
            return true;
        }
    }
    false
}
