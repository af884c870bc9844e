//! Visor fleets: what thousands of client-mode nodes cost the few full nodes they read
//! from. 20 full nodes run in a `dht-node testnet` process of their own (their CPU is
//! read from `/proc`), holding 2,000 "tp"-salted items (put by a full node of the
//! benchmark's process that leaves afterwards). N client-mode visors run in worker
//! processes (`dht-bench --fleet-worker`, up to `per_worker` visors each, so that no one
//! process's scheduler or file descriptors bound the fleet), each bootstrapped from one
//! full node, and each offers one first-valid get per second (open loop: a slow get does
//! not delay the next). Measured: the full nodes' and the visors' CPU while the connected
//! visors are idle and while they read, completed gets per second, latency, failures,
//! and the connections each side holds.
//!
//! The workers talk to the benchmark over their standard input and output: a worker
//! prints `started N` once its visors joined, runs `load SECS` when told, then prints
//! `result OFFERED FAILURES CONNECTIONS MAX_CONNECTIONS` and `lat` followed by the
//! latencies (microseconds) of its completed gets; `opened` prints `opened N`, the
//! connections its visors opened so far; `quit` (or the end of its input)
//! shuts its visors down.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dht_core::{MutableItem, PublicKey, SigningKey};
use dht_node::{GetMode, Multiaddr, Node, NodeConfig, NodeMode};
use futures::StreamExt;
use rand::Rng;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::procs::{cpu_seconds, TestnetProcess};

/// Full nodes of the fleet.
pub const FULL_NODES: usize = 20;
/// Items the full nodes hold.
pub const ITEMS: usize = 2_000;
/// Visors joining at once (over all workers): each counts as started once its lookup
/// found every full node.
const START_CONCURRENCY: usize = 25;
/// Wait after the last visor started before measuring: the visors' joining lookups (each
/// dials the full nodes it asks, and the connection budget closes the extra ones after
/// a grace period) must be over, and the full nodes' own joining rounds (up to 30 s
/// after they started).
const SETTLE: Duration = Duration::from_secs(60);
/// Idle window over which the full nodes' CPU is read.
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// Longest wait for one visor's join before the next starts.
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);
/// A get still running this long after the load window counts as failed.
const DRAIN: Duration = Duration::from_secs(15);

/// Figures of one fleet run.
#[derive(Debug, Clone, Default)]
pub struct FleetFigures {
    /// Visors.
    pub visors: usize,
    /// Worker processes the visors ran in.
    pub workers: usize,
    /// Seconds to start them all.
    pub start_s: f64,
    /// Full nodes' CPU cores while the visors were connected and idle.
    pub idle_cores: f64,
    /// The visors' (worker processes') CPU cores while idle.
    pub visor_idle_cores: f64,
    /// Connections the visors opened per second while idle (each a handshake on a
    /// full node).
    pub idle_opened_per_s: f64,
    /// Full nodes' CPU cores while serving.
    pub serving_cores: f64,
    /// The visors' CPU cores while reading.
    pub visor_serving_cores: f64,
    /// Gets offered per second.
    pub offered_per_s: f64,
    /// Gets completed (item found) per second.
    pub completed_per_s: f64,
    /// Latency of the completed gets (ms): p50, p90, p99.
    pub latency: [f64; 3],
    /// Gets that failed (error, not found, or still running after the drain).
    pub failures: usize,
    /// Connected full nodes per visor: mean and max (sampled after the load).
    pub visor_connections: (f64, usize),
    /// Open file descriptors of the full nodes' process (its sockets), idle and after
    /// the load.
    pub full_node_fds: (usize, usize),
    /// The machine's 1-minute load average at the end of the load window (other work
    /// on the machine included).
    pub load_average: f64,
}

impl FleetFigures {
    /// Whether the fleet held: every get completed, p99 within 100 ms.
    pub fn held(&self) -> bool {
        self.failures == 0 && self.latency[2] <= 100.0
    }
}

/// Locks `m`, also after a panic elsewhere (the figures stay readable).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A worker process hosting a share of the visors.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    /// Starts a worker of `visors` visors (the `first`-th of the fleet onwards) reading
    /// the plan at `plan`, `concurrency` joining at once.
    fn spawn(plan: &Path, first: usize, visors: usize, concurrency: usize) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--fleet-worker")
            .arg(plan)
            .args(["--fleet-first", &first.to_string()])
            .args(["--fleet-count", &visors.to_string()])
            .args(["--fleet-concurrency", &concurrency.to_string()])
            .env("RUST_LOG", "error")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a fleet worker")?;
        let stdin = child.stdin.take().context("stdin")?;
        let lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        Ok(Worker {
            child,
            stdin,
            lines,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// The next line starting with `prefix` (its rest).
    async fn expect(&mut self, prefix: &str) -> anyhow::Result<String> {
        while let Some(line) = self.lines.next_line().await? {
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.trim().to_string());
            }
        }
        anyhow::bail!("a fleet worker exited before it printed {prefix:?}")
    }

    async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }
}

/// Connections all the workers' visors opened so far.
async fn opened(workers: &mut [Worker]) -> anyhow::Result<u64> {
    let mut n = 0;
    for w in workers.iter_mut() {
        w.send("opened").await?;
        n += w.expect("opened ").await?.parse::<u64>()?;
    }
    Ok(n)
}

/// CPU seconds of all `workers` so far.
fn workers_cpu(workers: &[Worker]) -> f64 {
    workers.iter().map(|w| cpu_seconds(w.pid())).sum()
}

/// One worker's load results.
#[derive(Default)]
struct WorkerResult {
    offered: usize,
    failures: usize,
    connections: usize,
    max_connections: usize,
    latencies: Vec<Duration>,
}

/// Runs a fleet of `visors` (in worker processes of up to `per_worker` each) against
/// [`FULL_NODES`] full nodes for `load` of gets.
pub async fn run(
    bin: &Path,
    visors: usize,
    per_worker: usize,
    load: Duration,
) -> anyhow::Result<FleetFigures> {
    let net = TestnetProcess::start(bin, FULL_NODES, None).await?;
    anyhow::ensure!(!net.nodes.is_empty(), "the testnet reported no nodes");
    let pid = net.pid();
    // The items: put by a full node of this process that leaves once they are stored
    // (a client would be a stranger to the full nodes, whose admission lets a stranger
    // create only a few items a second). Each item keeps 19 or 20 copies.
    let mut config = NodeConfig::local();
    config.bootstrap = vec![net.bootstrap.clone()];
    let writer = Node::builder().config(config.clone()).build().await?;
    let t = Instant::now();
    while writer.routing_table().len() < FULL_NODES && t.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let keys: Vec<SigningKey> = (0..ITEMS).map(|_| SigningKey::generate_ed25519()).collect();
    let stored = futures::stream::iter(&keys)
        .map(|k| {
            let writer = writer.clone();
            let item = MutableItem::sign(k, k.public_key(), "tp", 1, vec![0x42; 300]);
            async move { writer.put(item).await.is_ok_and(|r| r.majority_stored()) }
        })
        .buffer_unordered(32)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    writer.shutdown().await;
    eprintln!("   {stored}/{ITEMS} items stored");

    // The plan the workers read: the full nodes' addresses and the items' subjects.
    let mut plan = String::new();
    for a in &net.nodes {
        plan.push_str(&format!("NODE {a}\n"));
    }
    for k in &keys {
        plan.push_str(&format!("KEY {}\n", k.public_key()));
    }
    let dir = tempfile::tempdir()?;
    let plan_path = dir.path().join("fleet-plan");
    std::fs::write(&plan_path, plan)?;

    let per_worker = per_worker.max(1);
    let n_workers = visors.div_ceil(per_worker).max(1);
    let concurrency = START_CONCURRENCY.div_ceil(n_workers).max(1);
    let t0 = Instant::now();
    let mut workers = Vec::with_capacity(n_workers);
    for w in 0..n_workers {
        let first = w * per_worker;
        let count = per_worker.min(visors - first);
        workers.push(Worker::spawn(&plan_path, first, count, concurrency)?);
    }
    let mut started = 0;
    for w in &mut workers {
        started += w.expect("started ").await?.parse::<usize>()?;
    }
    let start_s = t0.elapsed().as_secs_f64();
    anyhow::ensure!(started == visors, "{started} of {visors} visors started");
    eprintln!("   {visors} visors started in {start_s:.1} s in {n_workers} workers; settling");
    tokio::time::sleep(SETTLE).await;
    let fds_idle = open_fds(pid);
    let opened0 = opened(&mut workers).await?;
    let (visor_cpu0, t_idle) = (workers_cpu(&workers), Instant::now());
    let idle_cores = net.cores_over(IDLE_WINDOW).await;
    let idle_s = t_idle.elapsed().as_secs_f64();
    let visor_idle_cores = (workers_cpu(&workers) - visor_cpu0) / idle_s;
    let idle_opened_per_s = (opened(&mut workers).await? - opened0) as f64 / idle_s;
    eprintln!(
        "   idle: full nodes {idle_cores:.3} cores, visors {visor_idle_cores:.3} cores, \
         {fds_idle} fds, {idle_opened_per_s:.1} connections opened/s"
    );

    // The load: each visor offers one get per second, at its own phase.
    let (cpu0, visor_cpu0, t_load) = (cpu_seconds(pid), workers_cpu(&workers), Instant::now());
    for w in &mut workers {
        w.send(&format!("load {}", load.as_secs_f64())).await?;
    }
    tokio::time::sleep(load).await;
    let elapsed = t_load.elapsed().as_secs_f64();
    let serving_cores = (cpu_seconds(pid) - cpu0) / elapsed;
    let visor_serving_cores = (workers_cpu(&workers) - visor_cpu0) / elapsed;
    let load_average = crate::faults::load_average();
    let mut total = WorkerResult::default();
    for w in &mut workers {
        let r = parse_result(&w.expect("result ").await?, &w.expect("lat").await?)?;
        total.offered += r.offered;
        total.failures += r.failures;
        total.connections += r.connections;
        total.max_connections = total.max_connections.max(r.max_connections);
        total.latencies.extend(r.latencies);
    }
    let fds_loaded = open_fds(pid);
    for w in &mut workers {
        let _ = w.send("quit").await;
    }
    for mut w in workers {
        if tokio::time::timeout(Duration::from_secs(30), w.child.wait())
            .await
            .is_err()
        {
            let _ = w.child.kill().await;
        }
    }
    let completed = total.latencies.len();
    let p = crate::pcts(total.latencies);
    drop(net);
    Ok(FleetFigures {
        visors,
        workers: n_workers,
        start_s,
        idle_cores,
        visor_idle_cores,
        idle_opened_per_s,
        serving_cores,
        visor_serving_cores,
        offered_per_s: total.offered as f64 / load.as_secs_f64(),
        completed_per_s: completed as f64 / load.as_secs_f64(),
        latency: [p.p50, p.p90, p.p99],
        failures: total.failures,
        visor_connections: (
            total.connections as f64 / visors.max(1) as f64,
            total.max_connections,
        ),
        full_node_fds: (fds_idle, fds_loaded),
        load_average,
    })
}

/// Parses a worker's `result` and `lat` lines (their rests).
fn parse_result(result: &str, lat: &str) -> anyhow::Result<WorkerResult> {
    let f: Vec<usize> = result
        .split_whitespace()
        .map(|v| v.parse())
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(f.len() == 4, "a malformed result line: {result}");
    let latencies = lat
        .split_whitespace()
        .map(|v| v.parse::<u64>().map(Duration::from_micros))
        .collect::<Result<_, _>>()?;
    Ok(WorkerResult {
        offered: f[0],
        failures: f[1],
        connections: f[2],
        max_connections: f[3],
        latencies,
    })
}

/// The worker process (`dht-bench --fleet-worker PLAN`): starts `count` visors (the
/// `first`-th of the fleet onwards, each bootstrapped from one full node of the plan,
/// `concurrency` joining at once), then serves the benchmark's commands (see the module
/// documentation).
pub async fn worker(
    plan: &Path,
    first: usize,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(plan).context("reading the fleet plan")?;
    let mut nodes: Vec<Multiaddr> = Vec::new();
    let mut subjects: Vec<PublicKey> = Vec::new();
    for line in text.lines() {
        if let Some(a) = line.strip_prefix("NODE ") {
            nodes.push(a.trim().parse()?);
        } else if let Some(k) = line.strip_prefix("KEY ") {
            subjects.push(k.trim().parse().map_err(|e| anyhow::anyhow!("{e:?}"))?);
        }
    }
    anyhow::ensure!(
        !nodes.is_empty() && !subjects.is_empty(),
        "an empty fleet plan"
    );
    let subjects = Arc::new(subjects);
    let mut config = NodeConfig::local();
    config.mode = NodeMode::Client;
    let full_nodes = nodes.len();
    let fleet: Vec<Node> = futures::stream::iter(first..first + count)
        .map(|i| {
            let mut config = config.clone();
            config.bootstrap = vec![nodes[i % nodes.len()].clone()];
            async move {
                let v = Node::builder().config(config).build().await?;
                // Joined once its lookup found the full nodes: only then does the next
                // one start (a fleet booting all at once would hold a connection to
                // every full node per visor, tens of thousands, at the same moment).
                let t = Instant::now();
                while v.routing_table().len() < full_nodes && t.elapsed() < JOIN_TIMEOUT {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok::<_, dht_node::NodeError>(v)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .filter_map(|n| futures::future::ready(n.ok()))
        .collect()
        .await;
    println!("started {}", fleet.len());
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = input.next_line().await? {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("load") => {
                let secs: f64 = words.next().context("load SECS")?.parse()?;
                let r = load(&fleet, &subjects, Duration::from_secs_f64(secs)).await;
                println!(
                    "result {} {} {} {}",
                    r.offered, r.failures, r.connections, r.max_connections
                );
                let lat: Vec<String> = r
                    .latencies
                    .iter()
                    .map(|d| d.as_micros().to_string())
                    .collect();
                println!("lat {}", lat.join(" "));
            }
            Some("opened") => {
                let n: u64 = fleet
                    .iter()
                    .map(|v| v.metrics().connections_opened.get())
                    .sum();
                println!("opened {n}");
            }
            Some("quit") => break,
            _ => {}
        }
    }
    for v in &fleet {
        v.shutdown().await;
    }
    Ok(())
}

/// Every visor of `fleet` offers one get per second (at its own phase) for `secs`;
/// waits for the gets (at most [`DRAIN`] each) and samples the visors' connections.
async fn load(fleet: &[Node], subjects: &Arc<Vec<PublicKey>>, secs: Duration) -> WorkerResult {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(AtomicUsize::new(0));
    let offered = Arc::new(AtomicUsize::new(0));
    let end = tokio::time::Instant::now() + secs;
    let mut tasks = Vec::with_capacity(fleet.len());
    for v in fleet {
        let (v, subjects) = (v.clone(), subjects.clone());
        let (latencies, failures, offered) = (latencies.clone(), failures.clone(), offered.clone());
        let phase = Duration::from_millis(rand::thread_rng().gen_range(0..1000));
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + phase,
                Duration::from_secs(1),
            );
            let mut gets = Vec::new();
            loop {
                let at = tick.tick().await;
                if at >= end {
                    break;
                }
                offered.fetch_add(1, Ordering::Relaxed);
                let subject = subjects[rand::thread_rng().gen_range(0..subjects.len())];
                let (v, latencies, failures) = (v.clone(), latencies.clone(), failures.clone());
                gets.push(tokio::spawn(async move {
                    let t = Instant::now();
                    let got =
                        tokio::time::timeout(DRAIN, v.get(subject, b"tp", GetMode::First)).await;
                    match got {
                        Ok(Ok(r)) if r.value().is_some() => lock(&latencies).push(t.elapsed()),
                        other => {
                            // The first few failures of each worker, for the log.
                            if failures.fetch_add(1, Ordering::Relaxed) < 3 {
                                let why = match other {
                                    Ok(Ok(r)) => format!("not found: {}", r.to_json()),
                                    Ok(Err(e)) => format!("error: {e}"),
                                    Err(_) => format!("still running after {DRAIN:?}"),
                                };
                                eprintln!("   a get failed after {:?}: {why}", t.elapsed());
                            }
                        }
                    }
                }));
            }
            for g in gets {
                let _ = g.await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut conns = Vec::with_capacity(fleet.len());
    for v in fleet {
        conns.push(v.stats().await.map_or(0, |s| s.connected_peers));
    }
    let latencies = std::mem::take(&mut *lock(&latencies));
    WorkerResult {
        offered: offered.load(Ordering::Relaxed),
        failures: failures.load(Ordering::Relaxed),
        connections: conns.iter().sum(),
        max_connections: conns.iter().copied().max().unwrap_or(0),
        latencies,
    }
}

/// The fleet runs as a markdown table, with the largest fleet that held.
pub fn markdown(runs: &[FleetFigures], per_worker: usize) -> String {
    let mut md = format!(
        "\n### Visor fleets\n\n\
         {FULL_NODES} full nodes in one `dht-node testnet` process holding {ITEMS} \"tp\" items; \
         client-mode visors in worker processes of up to {per_worker} (`dht-bench --fleet-worker`; \
         {} joining at a time over all workers, the next starting once one's lookup found every full node), each offering one first-valid get per second. \
         CPU from `/proc` (idle: {} s after the visors joined, over {} s), of the full nodes' \
         process and of the visors' processes together. Latencies in ms; load average: the \
         machine's 1-minute figure at the end of the load (other work included).\n\n\
         | visors (workers) | started in (s) | full nodes' cores, visors idle | visors' cores, idle | connections opened/s, idle | full nodes' cores, serving | visors' cores, serving | offered gets/s | completed gets/s | p50 | p90 | p99 | failures | full nodes per visor (mean / max) | full nodes' fds idle / loaded | load average |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        START_CONCURRENCY,
        SETTLE.as_secs(),
        IDLE_WINDOW.as_secs()
    );
    for f in runs {
        md.push_str(&format!(
            "| {} ({}) | {:.1} | {:.3} | {:.3} | {:.1} | {:.3} | {:.3} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:.1} / {} | {} / {} | {:.1} |\n",
            f.visors,
            f.workers,
            f.start_s,
            f.idle_cores,
            f.visor_idle_cores,
            f.idle_opened_per_s,
            f.serving_cores,
            f.visor_serving_cores,
            f.offered_per_s,
            f.completed_per_s,
            f.latency[0],
            f.latency[1],
            f.latency[2],
            f.failures,
            f.visor_connections.0,
            f.visor_connections.1,
            f.full_node_fds.0,
            f.full_node_fds.1,
            f.load_average,
        ));
    }
    let held = runs.iter().filter(|f| f.held()).map(|f| f.visors).max();
    md.push_str(&match held {
        Some(n) => {
            format!("\nLargest fleet that held (every get completed, p99 <= 100 ms): {n} visors.\n")
        }
        None => "\nNo fleet measured held (every get completed, p99 <= 100 ms).\n".into(),
    });
    md
}
