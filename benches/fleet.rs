//! Visor fleets: what thousands of client-mode nodes cost the few full nodes they read
//! from. 20 full nodes run in a `dht-node testnet` process of their own (their CPU is
//! read from `/proc`), holding 2,000 "tp"-salted items (put by a full node of this
//! process that leaves afterwards); N client-mode visors run in this
//! process, each bootstrapped from one full node, and each offers one first-valid get
//! per second (open loop: a slow get does not delay the next). Measured: the full
//! nodes' CPU while the connected visors are idle and while they read, completed gets
//! per second, latency, failures, and the connections each side holds.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dht_core::{MutableItem, PublicKey, SigningKey};
use dht_node::{GetMode, Node, NodeConfig, NodeMode};
use futures::StreamExt;
use rand::Rng;

use crate::procs::{cpu_seconds, TestnetProcess};

/// Full nodes of the fleet.
pub const FULL_NODES: usize = 20;
/// Items the full nodes hold.
pub const ITEMS: usize = 2_000;
/// Visors started at once.
const START_CONCURRENCY: usize = 25;
/// Wait after the last visor started before measuring: the visors' joining lookups (each
/// dials the full nodes it asks, and the connection budget closes the extra ones after
/// a grace period) must be over, and the full nodes' own joining rounds (up to 30 s
/// after they started).
const SETTLE: Duration = Duration::from_secs(60);
/// Idle window over which the full nodes' CPU is read.
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// A get still running this long after the load window counts as failed.
const DRAIN: Duration = Duration::from_secs(15);

/// Figures of one fleet run.
#[derive(Debug, Clone, Default)]
pub struct FleetFigures {
    /// Visors.
    pub visors: usize,
    /// Seconds to start them all.
    pub start_s: f64,
    /// Full nodes' CPU cores while the visors were connected and idle.
    pub idle_cores: f64,
    /// Full nodes' CPU cores while serving.
    pub serving_cores: f64,
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

/// Runs a fleet of `visors` against [`FULL_NODES`] full nodes for `secs` of load.
pub async fn run(bin: &Path, visors: usize, load: Duration) -> anyhow::Result<FleetFigures> {
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
    config.mode = NodeMode::Client;
    let subjects: Arc<Vec<PublicKey>> = Arc::new(keys.iter().map(|k| k.public_key()).collect());

    let t0 = Instant::now();
    let fleet: Vec<Node> = futures::stream::iter(0..visors)
        .map(|i| {
            let mut config = config.clone();
            config.bootstrap = vec![net.nodes[i % net.nodes.len()].clone()];
            async move { Node::builder().config(config).build().await }
        })
        .buffer_unordered(START_CONCURRENCY)
        .filter_map(|n| futures::future::ready(n.ok()))
        .collect()
        .await;
    let start_s = t0.elapsed().as_secs_f64();
    anyhow::ensure!(
        fleet.len() == visors,
        "{} of {visors} visors started",
        fleet.len()
    );
    eprintln!("   {visors} visors started in {start_s:.1} s; settling");
    tokio::time::sleep(SETTLE).await;
    let fds_idle = open_fds(pid);
    let idle_cores = net.cores_over(IDLE_WINDOW).await;
    eprintln!("   idle: {idle_cores:.3} cores, {fds_idle} fds");

    // The load: each visor offers one get per second, at its own phase.
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(AtomicUsize::new(0));
    let offered = Arc::new(AtomicUsize::new(0));
    let (cpu0, t_load) = (cpu_seconds(pid), Instant::now());
    let end = tokio::time::Instant::now() + load;
    let mut tasks = Vec::with_capacity(visors);
    for v in &fleet {
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
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
            for g in gets {
                let _ = g.await;
            }
        }));
    }
    // The CPU of the load window itself (not the drain).
    tokio::time::sleep_until(end).await;
    let serving_cores = (cpu_seconds(pid) - cpu0) / t_load.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    let fds_loaded = open_fds(pid);
    let mut conns = Vec::with_capacity(visors);
    for v in &fleet {
        conns.push(v.stats().await.map_or(0, |s| s.connected_peers));
    }
    let lat = std::mem::take(&mut *lock(&latencies));
    let completed = lat.len();
    let offered = offered.load(Ordering::Relaxed);
    let failures = failures.load(Ordering::Relaxed);
    let p = crate::pcts(lat);
    for v in &fleet {
        v.shutdown().await;
    }
    drop(net);
    Ok(FleetFigures {
        visors,
        start_s,
        idle_cores,
        serving_cores,
        offered_per_s: offered as f64 / load.as_secs_f64(),
        completed_per_s: completed as f64 / load.as_secs_f64(),
        latency: [p.p50, p.p90, p.p99],
        failures,
        visor_connections: (
            conns.iter().sum::<usize>() as f64 / visors.max(1) as f64,
            conns.iter().copied().max().unwrap_or(0),
        ),
        full_node_fds: (fds_idle, fds_loaded),
    })
}

/// The fleet runs as a markdown table, with the largest fleet that held.
pub fn markdown(runs: &[FleetFigures]) -> String {
    let mut md = format!(
        "\n### Visor fleets\n\n\
         {FULL_NODES} full nodes in one `dht-node testnet` process holding {ITEMS} \"tp\" items; \
         client-mode visors in the benchmark's process (started {} at a time), each offering \
         one first-valid get per second. Full nodes' CPU from `/proc` (idle: {} s after the visors joined, over {} s). \
         Latencies in ms.\n\n\
         | visors | started in (s) | full nodes' cores, visors idle | full nodes' cores, serving | offered gets/s | completed gets/s | p50 | p90 | p99 | failures | full nodes per visor (mean / max) | full nodes' fds idle / loaded |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        START_CONCURRENCY,
        SETTLE.as_secs(),
        IDLE_WINDOW.as_secs()
    );
    for f in runs {
        md.push_str(&format!(
            "| {} | {:.1} | {:.3} | {:.3} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:.1} / {} | {} / {} |\n",
            f.visors,
            f.start_s,
            f.idle_cores,
            f.serving_cores,
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
