//! Hostile peers: one peer floods a standalone `dht-node run` process with each of five
//! kinds of traffic while an honest client reads from it and, in the same moments, from
//! an unflooded control node (another `dht-node run` process). Reported per kind: the
//! honest get p50 / p99 on both and their ratio, the flooded node's rate-limited count
//! and its peak resident memory (and after the flood).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use dht_core::{MutableItem, PutOptions, Signature, SigningKey, Target};
use dht_node::test_util::{request_proto, GetRequestProto, RequestProto};
use dht_node::{Node, NodeConfig, NodeMode, PeerId};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::memory::{cpu_seconds, rss_mb};
use crate::{pcts, Pcts};

/// The kinds of flood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Gets for random targets.
    Gets,
    /// Items whose signature does not verify.
    BadSignatures,
    /// Values of 1.5 MiB, over the 1 MiB limit.
    OverLimitValues,
    /// Frames of 5 MiB.
    HugeFrames,
    /// Valid items under fresh keys.
    FreshKeys,
}

impl Kind {
    /// Every kind, in the order measured.
    pub const ALL: [Kind; 5] = [
        Kind::Gets,
        Kind::BadSignatures,
        Kind::OverLimitValues,
        Kind::HugeFrames,
        Kind::FreshKeys,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Gets => "gets for random targets",
            Kind::BadSignatures => "items with bad signatures",
            Kind::OverLimitValues => "1.5 MiB values (over the 1 MiB limit)",
            Kind::HugeFrames => "5 MiB frames",
            Kind::FreshKeys => "valid puts under fresh keys",
        }
    }
}

/// What one flood did.
#[derive(Debug, Clone)]
pub struct FloodFigures {
    pub kind: Kind,
    pub per_second: f64,
    /// Item-protocol bytes that reached the flooded node, per second (MB/s).
    pub received_mb_per_second: f64,
    pub flooded: Pcts,
    pub control: Pcts,
    pub rate_limited: u64,
    /// Times the flooded node banned the flooder (`dht_peers_banned_total`).
    pub banned: u64,
    /// Cores the flooded and the control node used during the flood.
    pub cpu: (f64, f64),
    pub peak_rss_mb: f64,
    pub after_rss_mb: f64,
    pub idle_rss_mb: f64,
    pub stored_after: Option<u64>,
}

/// A `dht-node run` process.
struct Standalone {
    child: Child,
    peer: PeerId,
    addr: String,
    metrics: String,
    _dir: tempfile::TempDir,
}

async fn start_node(bin: &Path) -> anyhow::Result<Standalone> {
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(bin)
        .args([
            "run",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
    let (mut addr, mut metrics) = (None, None);
    while let Some(line) = lines.next_line().await? {
        if let Some(a) = line.strip_prefix("listening: ") {
            addr = Some(a.to_string());
        }
        if let Some(m) = line.strip_prefix("metrics: ") {
            metrics = Some(m.to_string());
        }
        if addr.is_some() && metrics.is_some() {
            break;
        }
    }
    // Keep draining stderr so the child never blocks on it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let addr = addr.context("the node printed no address")?;
    let peer = addr
        .rsplit("/p2p/")
        .next()
        .context("peer id in the address")?
        .parse()?;
    Ok(Standalone {
        child,
        peer,
        addr,
        metrics: metrics.context("the node printed no metrics address")?,
        _dir: dir,
    })
}

/// A counter's value from a Prometheus text page (summed over the lines whose labels
/// contain `having`).
async fn counter(url: &str, name: &str) -> u64 {
    counter_with(url, name, "").await
}

async fn counter_with(url: &str, name: &str, having: &str) -> u64 {
    let Ok(resp) = reqwest::get(url).await else {
        return 0;
    };
    let Ok(text) = resp.text().await else {
        return 0;
    };
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#') && l.contains(having))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn client(bootstrap: &[&Standalone], max_value_len: usize) -> anyhow::Result<Node> {
    let addrs: Vec<&str> = bootstrap.iter().map(|s| s.addr.as_str()).collect();
    client_of(&addrs, max_value_len).await
}

async fn client_of(bootstrap: &[&str], max_value_len: usize) -> anyhow::Result<Node> {
    let mut config = NodeConfig::local();
    config.mode = NodeMode::Client;
    config.policy.max_value_len = max_value_len;
    config.bootstrap = bootstrap
        .iter()
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let node = Node::builder().config(config).build().await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.routing_table().len() < bootstrap.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(node)
}

fn get_request(target: Target) -> RequestProto {
    RequestProto {
        kind: Some(request_proto::Kind::Get(GetRequestProto {
            target: Bytes::copy_from_slice(target.as_bytes()),
        })),
    }
}

/// The messages of one kind of flood. Over-limit values are signed once and sent again
/// and again (the node refuses them from their length prefix, so nothing is gained by
/// signing each, and signing megabytes would make the flooder, not the node, the
/// bottleneck).
struct Flooder {
    kind: Kind,
    over_limit: Option<MutableItem>,
}

impl Flooder {
    fn new(kind: Kind) -> Self {
        let key = SigningKey::generate_ed25519();
        let over_limit = match kind {
            Kind::OverLimitValues => Some(vec![1u8; 1536 * 1024]),
            Kind::HugeFrames => Some(vec![2u8; 5 * 1024 * 1024]),
            _ => None,
        }
        .map(|value| MutableItem::sign(&key, key.public_key(), "tp", 1, value));
        Flooder { kind, over_limit }
    }

    /// Sends message `n`.
    async fn send(&self, hostile: &Node, to: PeerId, n: u64) {
        let key = SigningKey::generate_ed25519();
        match (self.kind, &self.over_limit) {
            (_, Some(item)) => {
                hostile.send_item_to(to, item, PutOptions::default()).await;
            }
            (Kind::Gets, _) => {
                let mut t = [0u8; 32];
                t[..8].copy_from_slice(&n.to_be_bytes());
                let _ = hostile.request(to, get_request(Target(t))).await;
            }
            (Kind::BadSignatures, _) => {
                let mut item = MutableItem::sign(&key, key.public_key(), "tp", 1, &b"[junk]"[..]);
                item.signature = Signature::from_bytes(&[7u8; 64]).expect("64 bytes");
                hostile.send_item_to(to, &item, PutOptions::default()).await;
            }
            (_, None) => {
                let item =
                    MutableItem::sign(&key, key.public_key(), "svc", 1, &b"[junk service]"[..]);
                hostile.send_item_to(to, &item, PutOptions::default()).await;
            }
        }
    }
}

/// The flooder's own process (`dht-bench --flood-worker ADDR --flood-kind K`): a
/// client-mode node that connects to `addr`, prints `ready`, sends `kind` messages for
/// `secs` seconds with `in_flight` at a time, and prints `sent N`. Its own process, so
/// that its work never competes with the honest client's measurements for a runtime.
pub async fn worker(addr: &str, kind: usize, secs: u64, in_flight: usize) -> anyhow::Result<()> {
    let kind = *Kind::ALL.get(kind).context("no such flood kind")?;
    let hostile = client_of(&[addr], 8 * 1024 * 1024).await?;
    let to: PeerId = addr
        .rsplit("/p2p/")
        .next()
        .context("peer id in the address")?
        .parse()?;
    let flooder = std::sync::Arc::new(Flooder::new(kind));
    println!("ready");
    let stop = Instant::now() + Duration::from_secs(secs);
    let sent = std::sync::atomic::AtomicU64::new(0);
    futures::stream::iter(0u64..)
        .take_while(|_| futures::future::ready(Instant::now() < stop))
        .for_each_concurrent(in_flight, |n| {
            let hostile = &hostile;
            let sent = &sent;
            let flooder = flooder.clone();
            async move {
                flooder.send(hostile, to, n).await;
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
        .await;
    println!("sent {}", sent.load(std::sync::atomic::Ordering::Relaxed));
    hostile.shutdown().await;
    Ok(())
}

/// Starts the flooder process against `flooded` and waits until it is connected.
async fn start_flooder(
    flooded: &Standalone,
    kind: Kind,
    secs: u64,
    in_flight: usize,
) -> anyhow::Result<(
    Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
)> {
    let index = Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--flood-worker", &flooded.addr, "--flood-kind"])
        .arg(index.to_string())
        .arg("--flood-secs")
        .arg(secs.to_string())
        .arg("--flood-in-flight")
        .arg(in_flight.to_string())
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the flooder process")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    while let Some(line) = lines.next_line().await? {
        if line == "ready" {
            return Ok((child, lines));
        }
    }
    anyhow::bail!("the flooder process exited before it was ready")
}

/// Runs every flood for `secs` seconds each, `in_flight` messages at a time.
/// With `busy`, a spinning thread per core runs during each flood (a shared machine);
/// both the flooded and the control node see the same load.
pub async fn run(bin: &Path, secs: u64, in_flight: usize, busy: bool) -> anyhow::Result<FloodRun> {
    let load_at_start = crate::faults::load_average();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut out = Vec::new();
    for kind in Kind::ALL {
        eprintln!(
            "== flood ({}): {}",
            if busy { "busy" } else { "idle" },
            kind.name()
        );
        // Fresh processes per kind, so one flood's after-effects do not colour the next.
        let flooded = start_node(bin).await?;
        let control = start_node(bin).await?;
        let pid = flooded.child.id().context("pid")?;
        let control_pid = control.child.id().context("pid")?;
        let honest = client(&[&flooded, &control], 1024 * 1024).await?;
        // The honest reads: an item on each node.
        let owner = SigningKey::generate_ed25519();
        let item = MutableItem::sign(&owner, owner.public_key(), "svc", 1, vec![3u8; 900]);
        for peer in [flooded.peer, control.peer] {
            honest
                .send_item_to(peer, &item, PutOptions::default())
                .await;
        }
        let target = item.target();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle_rss = rss_mb(pid);

        let hog = busy.then(|| crate::faults::Hog::start(cores));
        let items_in = "protocol=\"items\",direction=\"in\"";
        let received_before =
            counter_with(&flooded.metrics, "dht_protocol_bytes_total", items_in).await;
        let (mut flooder, mut flooder_out) = start_flooder(&flooded, kind, secs, in_flight).await?;
        let stop = Instant::now() + Duration::from_secs(secs);
        let cpu_before = (cpu_seconds(pid), cpu_seconds(control_pid));
        let sampler = tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            while Instant::now() < stop {
                peak = peak.max(rss_mb(pid));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        });
        // Honest gets, alternating between the flooded node and the control.
        let (mut on_flooded, mut on_control) = (Vec::new(), Vec::new());
        tokio::time::sleep(Duration::from_millis(300)).await;
        while Instant::now() < stop {
            for (peer, lat) in [
                (flooded.peer, &mut on_flooded),
                (control.peer, &mut on_control),
            ] {
                let started = Instant::now();
                let _ = honest.request(peer, get_request(target)).await;
                lat.push(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let peak = sampler.await.unwrap_or(0.0);
        let cpu = (
            (cpu_seconds(pid) - cpu_before.0) / secs as f64,
            (cpu_seconds(control_pid) - cpu_before.1) / secs as f64,
        );
        drop(hog);
        let mut sent = 0u64;
        let report = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(Some(line)) = flooder_out.next_line().await {
                if let Some(n) = line.strip_prefix("sent ") {
                    return n.parse::<u64>().ok();
                }
            }
            None
        });
        if let Ok(Some(n)) = report.await {
            sent = n;
        }
        let _ = flooder.kill().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_mb(pid);
        let received = counter_with(&flooded.metrics, "dht_protocol_bytes_total", items_in)
            .await
            .saturating_sub(received_before);
        let rate_limited = counter(&flooded.metrics, "dht_rate_limited_total").await;
        let stored_after = if kind == Kind::FreshKeys {
            Some(counter_with(&flooded.metrics, "dht_puts_total", "result=\"accepted\"").await)
        } else {
            None
        };
        let throttled = counter(&flooded.metrics, "dht_strangers_throttled_total").await;
        let banned = counter(&flooded.metrics, "dht_peers_banned_total").await;
        out.push(FloodFigures {
            kind,

            per_second: sent as f64 / secs as f64,
            received_mb_per_second: received as f64 / 1e6 / secs as f64,
            flooded: pcts(on_flooded),
            control: pcts(on_control),
            rate_limited: rate_limited + throttled,
            banned,
            cpu,
            peak_rss_mb: peak,
            after_rss_mb: after,
            idle_rss_mb: idle_rss,
            stored_after,
        });
        eprintln!("{:?}", out.last());
        honest.shutdown().await;
    }
    let condition = if busy {
        format!("busy: {cores} spinning threads, one per core, during each flood")
    } else {
        "idle: nothing else started".to_string()
    };
    Ok(FloodRun {
        rows: out,
        condition,
        load_at_start,
    })
}

/// One pass over every kind of flood, under one machine condition.
#[derive(Debug, Clone)]
pub struct FloodRun {
    /// One row per kind.
    pub rows: Vec<FloodFigures>,
    /// What else ran: idle, or the load added.
    pub condition: String,
    /// 1-minute load average when the pass started.
    pub load_at_start: f64,
}

/// The "Hostile peers" section.
pub fn markdown(runs: &[FloodRun], secs: u64, in_flight: usize) -> String {
    let mut md = format!(
        "### Hostile peers\n\n\
         One hostile peer (a process of its own) floods a standalone `dht-node run` process ({secs} s per kind, \
         {in_flight} messages in flight) while an honest client reads an item from it and, \
         in the same moments, from an unflooded control node (another `dht-node run`). \
         Latencies in ms; ratio = flooded / control. `tried/s` counts the flooder's \
         attempts, including those its own stream limit failed at once while the flooded \
         node held its refusals; `MB/s reaching it` is the item-protocol bytes the flooded \
         node read (`dht_protocol_bytes_total`); `banned` counts the bans of the flooder \
         (30 s each: for frames far over the limit, oversized frames past its byte budget, \
         or requests past its refusals).\n"
    );
    for run in runs {
        md.push_str(&format!(
            "\n#### {} (load average {:.2} at start)\n\n",
            run.condition, run.load_at_start
        ));
        md.push_str(&table(&run.rows));
    }
    md.push_str("\nGoals (issue): p99 ratio <= 2x for every kind; peak RSS <= 150 MB.\n");
    md
}

fn table(rows: &[FloodFigures]) -> String {
    let mut md = String::from(
        "| flood | tried/s | MB/s reaching it | honest get p50 flooded / control | p99 flooded / control | p99 ratio | rate-limited | banned | cores flooded / control | RSS idle / peak / 2 s after (MB) |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let ratio = if r.control.p99 > 0.0 {
            r.flooded.p99 / r.control.p99
        } else {
            0.0
        };
        md.push_str(&format!(
            "| {} | {:.0} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2}x | {} | {} | {:.2} / {:.2} | {:.0} / {:.0} / {:.0} |\n",
            r.kind.name(),
            r.per_second,
            r.received_mb_per_second,
            r.flooded.p50,
            r.control.p50,
            r.flooded.p99,
            r.control.p99,
            ratio,
            r.rate_limited,
            r.banned,
            r.cpu.0,
            r.cpu.1,
            r.idle_rss_mb,
            r.peak_rss_mb,
            r.after_rss_mb,
        ));
    }
    if let Some(r) = rows.iter().find(|r| r.kind == Kind::FreshKeys) {
        if let Some(n) = r.stored_after {
            md.push_str(&format!(
                "\nItems the flooded node accepted during the fresh-key flood: {n} (rate-limited \
                 counts requests refused by the rate limiter plus new items refused by the \
                 stranger budget).\n"
            ));
        }
    }
    md
}
