//! `dht-bench`: testnet benchmarks, side by side with the `mainline` crate (a Rust BEP44
//! DHT) on testnets of the same size and the same item sizes, in one run.
//!
//! ```sh
//! cargo run --release -p dht-benches --bin dht-bench                # full suite
//! cargo run --release -p dht-benches --bin dht-bench -- --quick     # smoke test (CI)
//! sudo target/release/dht-bench --only-wan --wan-rtt-ms 50           # over an emulated WAN
//! ```
//!
//! `--only-wan` (module `wan`) runs the side-by-side in a network namespace of its own
//! whose loopback delays every packet by half the RTT, and states latencies in RTTs.
//!
//! For each network size: time to form the network, resident memory per node, put
//! latency until the replicas confirmed, get latency for the first valid answer and for
//! best-of-quorum (p50 / p90 / p99), and throughput of concurrent puts. Every figure of
//! ours is printed next to mainline's and as a ratio. No timing is asserted.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use clap::Parser;
mod faults;
mod fleet;
mod flood;
mod floor;
mod hops;
mod idle;
mod memory;
mod procs;
mod scale;
mod seed;
mod wan;

use dht_core::{MutableItem, SigningKey, Target};
use dht_node::{GetMode, NodeConfig, Testnet};
use futures::StreamExt;
use hops::Hops;
use rand::Rng;

#[derive(Parser)]
#[command(name = "dht-bench", about = "Testnet benchmarks against mainline")]
struct Args {
    /// Network sizes of the side-by-side (0: skip it).
    #[arg(long, value_delimiter = ',', default_value = "10,50,100,200")]
    sizes: Vec<usize>,
    /// Operations per measurement.
    #[arg(long, default_value_t = 100)]
    ops: usize,
    /// Item value size in bytes (mainline's limit is 1,000).
    #[arg(long, default_value_t = 900)]
    value_len: usize,
    /// Skip the mainline comparison.
    #[arg(long)]
    no_mainline: bool,
    /// Our testnets up to this size run in this process; larger ones run over several
    /// `dht-node testnet` processes of `--per-process` nodes (one process's 20,000 file
    /// descriptors cannot hold the connections of 200 nodes), operations from this
    /// process's nodes.
    #[arg(long, default_value_t = 100)]
    single_process_max: usize,
    /// Nodes per process of the testnets larger than `--single-process-max`.
    #[arg(long, default_value_t = 50)]
    per_process: usize,
    /// Sizes of the side-by-side run again on a loaded machine (a thread spinning on
    /// every core, as on a shared server); 0 skips it.
    #[arg(long, value_delimiter = ',', default_value = "100,200")]
    loaded_sizes: Vec<usize>,
    /// Small and fast: sizes 10, 20 operations (a smoke test, for CI).
    #[arg(long)]
    quick: bool,
    /// Model network sizes for hops versus size (a simulation: routing tables filled from
    /// the whole membership, no sockets).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,10000,100000,1000000"
    )]
    model_sizes: Vec<usize>,
    /// Largest network: total nodes over several `dht-node testnet` processes (0: skip).
    #[arg(long, default_value_t = 1000)]
    scale_nodes: usize,
    /// Nodes per process in the scale-out run (each node may hold `max_connected_peers`
    /// connections, and a process has 20,000 file descriptors).
    #[arg(long, default_value_t = 50)]
    scale_per_process: usize,
    /// Seed scenario scales to run (1: the production snapshot, 10: ten times larger; 0:
    /// skip).
    #[arg(long, value_delimiter = ',', default_value = "1,10")]
    seed_scales: Vec<usize>,
    /// The mirror adapter's coalescing window in the seed scenario, ms.
    #[arg(long, default_value_t = 250)]
    seed_coalesce_ms: u64,
    /// Internal: be the seed scenario's worker process for this scale (in a network
    /// namespace of its own), printing its figures as JSON.
    #[arg(long, hide = true)]
    seed_worker: Option<usize>,
    /// Items held by the standalone node in the memory measurement (0: skip).
    #[arg(long, default_value_t = 100_000)]
    memory_items: usize,
    /// Nodes of the restarted-node catch-up measurement (0: skip).
    #[arg(long, default_value_t = 40)]
    catch_up_nodes: usize,
    /// Skip the faults section.
    #[arg(long)]
    no_faults: bool,
    /// Run only the faults section (rewrites only its block of the report).
    #[arg(long)]
    only_faults: bool,
    /// Seconds of each hostile-peer flood (0: skip that section).
    #[arg(long, default_value_t = 8)]
    flood_secs: u64,
    /// Flood messages in flight.
    #[arg(long, default_value_t = 64)]
    flood_in_flight: usize,
    /// Run only the hostile-peer section (rewrites only its block of the report).
    #[arg(long)]
    only_flood: bool,
    /// Internal: be the echo process of the round-trip floor (module `floor`).
    #[arg(long, hide = true)]
    echo_worker: bool,
    /// Internal: be the flooder process of the hostile-peer section, flooding the node
    /// at this address.
    #[arg(long, hide = true)]
    flood_worker: Option<String>,
    /// Internal: the kind of flood of `--flood-worker` (an index).
    #[arg(long, hide = true, default_value_t = 0)]
    flood_kind: usize,
    /// Also run the testnets side by side with mainline over an emulated WAN link of this
    /// round-trip time (a network namespace with NFQUEUE; needs root and iptables-legacy),
    /// in a process of its own after the other sections.
    #[arg(long)]
    wan_rtt_ms: Option<f64>,
    /// Jitter of the emulated link: each packet's one-way delay varies by up to +/- this.
    #[arg(long, default_value_t = 0.0)]
    wan_jitter_ms: f64,
    /// Loss of the emulated link, percent of packets in each direction.
    #[arg(long, default_value_t = 0.0)]
    wan_loss_pct: f64,
    /// Network sizes over the emulated link.
    #[arg(long, value_delimiter = ',', default_value = "50,100")]
    wan_sizes: Vec<usize>,
    /// Operations per figure over the emulated link.
    #[arg(long, default_value_t = 100)]
    wan_ops: usize,
    /// Run only the emulated-WAN section (RTT from --wan-rtt-ms, default 50; rewrites only
    /// its block of the report).
    #[arg(long)]
    only_wan: bool,
    /// Full nodes of the idle-cost measurement, in a `dht-node testnet` process of their
    /// own (0: skip).
    #[arg(long, default_value_t = 100)]
    idle_nodes: usize,
    /// Seconds of idleness measured: at least one ping interval (180 s), since most of
    /// a quiet network's work comes in bursts once per interval.
    #[arg(long, default_value_t = 180)]
    idle_secs: u64,
    /// Client-mode visors of the fleet benchmark (in worker processes), each offering
    /// 1 get/s to 20 full nodes in a process of their own (0: skip).
    #[arg(long, default_value_t = 1000)]
    fleet_visors: usize,
    /// Smaller fleets run before the largest, to find the largest that holds.
    #[arg(long, value_delimiter = ',', default_value = "300,600")]
    fleet_steps: Vec<usize>,
    /// Seconds of load per fleet.
    #[arg(long, default_value_t = 20)]
    fleet_secs: u64,
    /// Visors per worker process of the fleet benchmark.
    #[arg(long, default_value_t = 250)]
    fleet_per_worker: usize,
    /// Internal: be a worker process of the fleet benchmark, hosting visors of the
    /// fleet whose plan (full nodes' addresses, items' subjects) is in this file.
    #[arg(long, hide = true)]
    fleet_worker: Option<std::path::PathBuf>,
    /// Internal: the index in the fleet of the worker's first visor.
    #[arg(long, hide = true, default_value_t = 0)]
    fleet_first: usize,
    /// Internal: the worker's visors.
    #[arg(long, hide = true, default_value_t = 0)]
    fleet_count: usize,
    /// Internal: the worker's visors joining at once.
    #[arg(long, hide = true, default_value_t = 8)]
    fleet_concurrency: usize,
    /// Run only the idle-cost and fleet sections (rewrites only their block of the
    /// report).
    #[arg(long)]
    only_fleet: bool,
    /// The `dht-sidecar` binary (default: beside this one).
    #[arg(long)]
    dht_sidecar: Option<std::path::PathBuf>,
    /// The `dht-node` binary (default: beside this one).
    #[arg(long)]
    dht_node: Option<std::path::PathBuf>,
    /// Write the markdown tables here. If the file has the markers
    /// `<!-- dht-bench:start -->` and `<!-- dht-bench:end -->`, only the text between them
    /// is replaced (the written findings around them stay).
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: String,
}

/// Latency percentiles of a sample.
#[derive(Debug, Clone, Copy, Default)]
struct Pcts {
    p50: f64,
    p90: f64,
    p99: f64,
}

fn pcts(mut v: Vec<Duration>) -> Pcts {
    if v.is_empty() {
        return Pcts::default();
    }
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3;
    Pcts {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
    }
}

#[derive(Debug, Default, Clone)]
struct Figures {
    formation_s: f64,
    rss_mb_per_node: f64,
    put: Pcts,
    get_first: Pcts,
    get_quorum: Pcts,
    puts_per_s: f64,
    failures: usize,
    /// Per operation (put, get-first, get-quorum): requests sent, loopback bytes and
    /// packets (both directions of every connection are on `lo`).
    wire: [Wire; 3],
    hops: Option<Hops>,
    /// Processes the nodes ran in, when more than this one (0: all in this process).
    processes: usize,
}

/// Traffic per operation.
#[derive(Debug, Default, Clone, Copy)]
struct Wire {
    requests: f64,
    bytes: f64,
    packets: f64,
}

/// Loopback interface counters (bytes, packets) sent, from `/proc/net/dev`.
fn loopback_tx() -> (u64, u64) {
    std::fs::read_to_string("/proc/net/dev")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.trim_start().starts_with("lo:"))
                .map(|l| {
                    let f: Vec<u64> = l
                        .split(':')
                        .nth(1)
                        .unwrap_or("")
                        .split_whitespace()
                        .filter_map(|v| v.parse().ok())
                        .collect();
                    (
                        f.get(8).copied().unwrap_or(0),
                        f.get(9).copied().unwrap_or(0),
                    )
                })
        })
        .unwrap_or((0, 0))
}

/// Measures traffic of a phase of `ops` operations.
struct WireMeter {
    requests: u64,
    lo: (u64, u64),
}

impl WireMeter {
    fn start(requests: u64) -> Self {
        WireMeter {
            requests,
            lo: loopback_tx(),
        }
    }
    fn per_op(&self, requests: u64, ops: usize) -> Wire {
        let lo = loopback_tx();
        let n = ops.max(1) as f64;
        Wire {
            requests: requests.saturating_sub(self.requests) as f64 / n,
            bytes: lo.0.saturating_sub(self.lo.0) as f64 / n,
            packets: lo.1.saturating_sub(self.lo.1) as f64 / n,
        }
    }
}

/// Requests sent by every node of the testnet (kad find_node + item requests).
fn requests_sent(net: &Testnet) -> u64 {
    net.nodes
        .iter()
        .map(|n| {
            ["find_node", "put", "get", "sync"]
                .iter()
                .map(|kind| {
                    n.metrics()
                        .outbound_requests
                        .get_or_create(&dht_node::RequestLabels {
                            kind: (*kind).into(),
                        })
                        .get()
                })
                .sum::<u64>()
        })
        .sum()
}

fn rss_mb() -> f64 {
    memory::rss_mb(std::process::id())
}

/// Routing tables, connections and whether the membership is known, over `nodes`.
async fn tables_summary(nodes: &[dht_node::Node]) -> String {
    let mut table = Vec::with_capacity(nodes.len());
    let (mut connected, mut known) = (0usize, 0usize);
    for n in nodes {
        if let Ok(s) = n.stats().await {
            table.push(s.routing_table_peers);
            connected += s.connected_peers;
            known += usize::from(s.membership_known);
        }
    }
    format!(
        "routing tables {}..{} peers, {:.1} connected per node, membership known at {known} of {}",
        table.iter().min().unwrap_or(&0),
        table.iter().max().unwrap_or(&0),
        connected as f64 / nodes.len().max(1) as f64,
        nodes.len()
    )
}

async fn ours(size: usize, ops: usize, value_len: usize, quick: bool) -> anyhow::Result<Figures> {
    let mut f = Figures::default();
    let rss0 = rss_mb();
    let t0 = Instant::now();
    let mut config = NodeConfig::local();
    config.max_peers_per_ip_range = None;
    let net = Testnet::builder(size).config(config).build().await?;
    net.wait_for_routing((size - 1).min(20), Duration::from_secs(60))
        .await;
    f.formation_s = t0.elapsed().as_secs_f64();
    f.rss_mb_per_node = (rss_mb() - rss0).max(0.0) / size as f64;
    // Joining nodes repeat bootstrap rounds 1, 3, 10 and 30 s after they start: measure
    // after those, so the traffic per operation is the operations' own.
    if !quick {
        tokio::time::sleep_until((t0 + Duration::from_secs(32)).into()).await;
    }

    eprintln!("   {}", tables_summary(&net.nodes).await);
    let mut rng = rand::thread_rng();
    let keys: Vec<SigningKey> = (0..ops).map(|_| SigningKey::generate_ed25519()).collect();
    let mut put_lat = Vec::with_capacity(ops);
    let meter = WireMeter::start(requests_sent(&net));
    for k in &keys {
        let node = &net.nodes[rng.gen_range(0..size)];
        let item = MutableItem::sign(k, k.public_key(), "tp", 1, vec![0x42; value_len]);
        let t = Instant::now();
        let report = node.put(item).await?;
        put_lat.push(t.elapsed());
        if !report.majority_stored() && size > 1 {
            f.failures += 1;
            if std::env::var_os("DHT_BENCH_DEBUG").is_some() {
                eprintln!("put failed after {:?}: {}", t.elapsed(), report.to_json());
            }
        }
    }
    f.put = pcts(put_lat);
    f.wire[0] = meter.per_op(requests_sent(&net), ops);
    for (i, (mode, slot)) in [
        (GetMode::First, &mut f.get_first),
        (GetMode::Quorum(0), &mut f.get_quorum),
    ]
    .into_iter()
    .enumerate()
    {
        let meter = WireMeter::start(requests_sent(&net));
        let mut lat = Vec::with_capacity(ops);
        for k in &keys {
            let node = &net.nodes[rng.gen_range(0..size)];
            let t = Instant::now();
            let got = node.get(k.public_key(), b"tp", mode).await?;
            lat.push(t.elapsed());
            if got.value().is_none() {
                f.failures += 1;
            }
        }
        *slot = pcts(lat);
        f.wire[i + 1] = meter.per_op(requests_sent(&net), ops);
    }
    let targets: Vec<Target> = keys
        .iter()
        .map(|k| Target::of(&k.public_key(), b"tp"))
        .collect();
    f.hops = Some(hops::measure(&net, &targets));
    // Throughput: concurrent puts from one node (a discovery mirroring into the network).
    let items: Vec<MutableItem> = (0..ops)
        .map(|_| {
            let k = SigningKey::generate_ed25519();
            MutableItem::sign(&k, k.public_key(), "svc", 1, vec![0x42; value_len])
        })
        .collect();
    let node = net.nodes[0].clone();
    let t = Instant::now();
    let stored: usize = futures::stream::iter(items)
        .map(|i| {
            let node = node.clone();
            async move {
                node.put(i)
                    .await
                    .map(|r| r.majority_stored())
                    .unwrap_or(false)
            }
        })
        .buffer_unordered(32)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    f.puts_per_s = stored as f64 / t.elapsed().as_secs_f64();
    net.shutdown().await;
    Ok(f)
}

/// Ours over several processes (see `--single-process-max`): the figures the
/// scale-out run measures, operations from this process's nodes once the last
/// process's joining rounds are over ([`dht_node::JOINING_ROUNDS`] and a few seconds).
async fn ours_over_processes(
    bin: &std::path::Path,
    size: usize,
    args: &Args,
) -> anyhow::Result<Figures> {
    let s = scale::run(
        bin,
        size,
        args.per_process,
        args.ops,
        args.value_len,
        dht_node::JOINING_ROUNDS + Duration::from_secs(5),
    )
    .await?;
    let p = |v: [f64; 3]| Pcts {
        p50: v[0],
        p90: v[1],
        p99: v[2],
    };
    Ok(Figures {
        formation_s: s.formation_s,
        rss_mb_per_node: s.rss_mb_per_node,
        put: p(s.put),
        get_first: p(s.get_first),
        get_quorum: p(s.get_quorum),
        failures: s.failures,
        processes: s.processes,
        ..Figures::default()
    })
}

#[allow(deprecated)] // mainline's sync API
fn mainline_figures(size: usize, ops: usize, value_len: usize) -> anyhow::Result<Figures> {
    let mut f = Figures::default();
    let rss0 = rss_mb();
    let t0 = Instant::now();
    let testnet = mainline::Testnet::builder(size).build()?;
    f.formation_s = t0.elapsed().as_secs_f64();
    f.rss_mb_per_node = (rss_mb() - rss0).max(0.0) / size as f64;
    let mut rng = rand::thread_rng();
    let value = vec![0x42; value_len.min(1000)];
    let keys: Vec<mainline::SigningKey> = (0..ops)
        .map(|_| mainline::SigningKey::from_bytes(&rng.gen::<[u8; 32]>()))
        .collect();
    let mut put_lat = Vec::with_capacity(ops);
    let meter = WireMeter::start(0);
    for k in &keys {
        let node = &testnet.nodes[rng.gen_range(0..size)];
        let item = mainline::MutableItem::new(k.clone(), &value, 1, Some(b"tp"));
        let t = Instant::now();
        if node.put_mutable(item, None).is_err() {
            f.failures += 1;
        }
        put_lat.push(t.elapsed());
    }
    f.put = pcts(put_lat);
    f.wire[0] = meter.per_op(0, ops);
    let mut first = Vec::with_capacity(ops);
    let meter = WireMeter::start(0);
    for k in &keys {
        let pk = k.verifying_key().to_bytes();
        let node = &testnet.nodes[rng.gen_range(0..size)];
        let t = Instant::now();
        let got = node.get_mutable(&pk, Some(b"tp"), None).next();
        first.push(t.elapsed());
        if got.is_none() {
            f.failures += 1;
        }
    }
    f.wire[1] = meter.per_op(0, ops);
    let mut recent = Vec::with_capacity(ops);
    let meter = WireMeter::start(0);
    for k in &keys {
        let pk = k.verifying_key().to_bytes();
        let node = &testnet.nodes[rng.gen_range(0..size)];
        let t = Instant::now();
        let _ = node.get_mutable_most_recent(&pk, Some(b"tp"));
        recent.push(t.elapsed());
    }
    f.wire[2] = meter.per_op(0, ops);
    f.get_first = pcts(first);
    f.get_quorum = pcts(recent);
    // Throughput: concurrent puts from one node.
    let node = testnet.nodes[0].clone();
    let t = Instant::now();
    let handles: Vec<_> = (0..ops)
        .map(|_| {
            let node = node.clone();
            let value = value.clone();
            let k = mainline::SigningKey::from_bytes(&rand::thread_rng().gen::<[u8; 32]>());
            std::thread::spawn(move || {
                node.put_mutable(mainline::MutableItem::new(k, &value, 1, Some(b"svc")), None)
                    .is_ok()
            })
        })
        .collect();
    let stored = handles
        .into_iter()
        .filter_map(|h| h.join().ok())
        .filter(|ok| *ok)
        .count();
    f.puts_per_s = stored as f64 / t.elapsed().as_secs_f64();
    Ok(f)
}

/// 1-minute load average.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Ours, then mainline, on testnets of `size` nodes: one block of rows of the table.
async fn side_by_side(
    md: &mut String,
    size: usize,
    args: &Args,
    bin: &std::path::Path,
    loaded: bool,
) -> anyhow::Result<()> {
    eprintln!("== {size} nodes: ours");
    // On a loaded machine, ours runs as deployed (a node per DMSG server, each process
    // with its own runtime), in processes of `--per-process`: one process of 100 nodes
    // has two worker threads against the two spinning ones, while mainline runs a
    // thread per node.
    let single_max = if loaded {
        args.single_process_max.min(args.per_process)
    } else {
        args.single_process_max
    };
    let o = if size > single_max {
        ours_over_processes(bin, size, args).await?
    } else {
        ours(size, args.ops, args.value_len, args.quick).await?
    };
    eprintln!("{o:?}");
    let m = if args.no_mainline {
        None
    } else {
        eprintln!("== {size} nodes: mainline");
        let (ops, len) = (args.ops, args.value_len);
        let m = tokio::task::spawn_blocking(move || mainline_figures(size, ops, len)).await??;
        eprintln!("{m:?}");
        Some(m)
    };
    let rows: Vec<(&'static str, f64, Option<f64>, bool)> = vec![
        (
            "network formed (s)",
            o.formation_s,
            m.as_ref().map(|m| m.formation_s),
            true,
        ),
        (
            "resident memory per node (MB)",
            o.rss_mb_per_node,
            m.as_ref().map(|m| m.rss_mb_per_node),
            true,
        ),
        (
            "put confirmed p50",
            o.put.p50,
            m.as_ref().map(|m| m.put.p50),
            true,
        ),
        (
            "put confirmed p90",
            o.put.p90,
            m.as_ref().map(|m| m.put.p90),
            true,
        ),
        (
            "put confirmed p99",
            o.put.p99,
            m.as_ref().map(|m| m.put.p99),
            true,
        ),
        (
            "get first valid p50",
            o.get_first.p50,
            m.as_ref().map(|m| m.get_first.p50),
            true,
        ),
        (
            "get first valid p90",
            o.get_first.p90,
            m.as_ref().map(|m| m.get_first.p90),
            true,
        ),
        (
            "get first valid p99",
            o.get_first.p99,
            m.as_ref().map(|m| m.get_first.p99),
            true,
        ),
        (
            "get best-of-quorum / most recent p50",
            o.get_quorum.p50,
            m.as_ref().map(|m| m.get_quorum.p50),
            true,
        ),
        (
            "get best-of-quorum / most recent p90",
            o.get_quorum.p90,
            m.as_ref().map(|m| m.get_quorum.p90),
            true,
        ),
        (
            "get best-of-quorum / most recent p99",
            o.get_quorum.p99,
            m.as_ref().map(|m| m.get_quorum.p99),
            true,
        ),
        (
            "puts/s from one node (32 in flight)",
            o.puts_per_s,
            m.as_ref().map(|m| m.puts_per_s),
            false,
        ),
        (
            "failed operations",
            o.failures as f64,
            m.as_ref().map(|m| m.failures as f64),
            true,
        ),
    ];
    let mut rows = rows;
    if o.processes > 0 {
        // Over several processes: throughput, traffic and hops are measured by the
        // in-process runs only.
        rows.retain(|r| !r.0.starts_with("puts/s"));
        rows.push((
            leak(format!(
                "ours over processes of {} nodes (operations from the first)",
                args.per_process
            )),
            o.processes as f64,
            None,
            true,
        ));
    }
    let wire_rows = if o.processes > 0 { 0 } else { 3 };
    for (i, op) in ["put", "get first valid", "get best-of-quorum / most recent"]
        .iter()
        .enumerate()
        .take(wire_rows)
    {
        rows.push((
            leak(format!("{op}: requests sent per op (kad + item)")),
            o.wire[i].requests,
            None,
            true,
        ));
        rows.push((
            leak(format!(
                "{op}: bytes on the wire per op (loopback, all layers)"
            )),
            o.wire[i].bytes,
            m.as_ref().map(|m| m.wire[i].bytes),
            true,
        ));
        rows.push((
            leak(format!("{op}: packets per op (loopback)")),
            o.wire[i].packets,
            m.as_ref().map(|m| m.wire[i].packets),
            true,
        ));
    }
    if let Some(h) = o.hops {
        rows.push((
            "hops to a replica, mean (replayed, alpha 3)",
            h.to_replica_mean,
            None,
            true,
        ));
        rows.push((
            "hops to a replica, max",
            h.to_replica_max as f64,
            None,
            true,
        ));
        rows.push((
            "hops until a lookup knows its final k closest, mean",
            h.full_mean,
            None,
            true,
        ));
        rows.push((
            "lookups ending at the true k closest (%)",
            h.exact_share * 100.0,
            None,
            false,
        ));
    }
    for (name, ours_v, theirs, lower_is_better) in rows {
        let theirs_s = theirs.map_or("-".into(), |t| format!("{t:.2}"));
        let r = match theirs {
            Some(t) if lower_is_better => ratio(ours_v, t),
            Some(t) => ratio(t, ours_v),
            None => "-".into(),
        };
        writeln!(md, "| {size} | {name} | {ours_v:.2} | {theirs_s} | {r} |")?;
    }
    Ok(())
}

/// The round-trip floor of this machine (module `floor`), as rows of the side-by-side
/// table: what no get can beat, idle or loaded as the rows above it.
async fn floor_rows(md: &mut String, args: &Args) -> anyhow::Result<()> {
    let ops = if args.quick { 200 } else { 2_000 };
    eprintln!("== round-trip floor ({ops} round trips)");
    let p = pcts(floor::measure(ops).await?);
    eprintln!("{p:?}");
    for (name, v) in [("p50", p.p50), ("p90", p.p90), ("p99", p.p99)] {
        writeln!(
            md,
            "| floor | one request and answer between two processes, no DHT, {name} | {v:.2} | - | - |"
        )?;
    }
    writeln!(
        md,
        "| floor | its p99 / p50 | {:.2} | - | - |",
        p.p99 / p.p50.max(1e-9)
    )?;
    Ok(())
}

const START: &str = "<!-- dht-bench:start -->";
const END: &str = "<!-- dht-bench:end -->";
const FAULTS_START: &str = "<!-- dht-bench:faults:start -->";
const FAULTS_END: &str = "<!-- dht-bench:faults:end -->";
const FLOOD_START: &str = "<!-- dht-bench:flood:start -->";
const FLOOD_END: &str = "<!-- dht-bench:flood:end -->";

/// Writes `md` to `path` between the markers `start` and `end`; appends the marked
/// block if the file lacks them.
fn write_report(path: &str, md: &str, start: &str, end: &str) -> anyhow::Result<()> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let out = match (existing.find(start), existing.find(end)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{start}\n{md}\n{}", &existing[..a], &existing[b..])
        }
        _ => format!("{existing}\n{start}\n{md}\n{end}\n"),
    };
    std::fs::write(path, out)?;
    Ok(())
}

/// A row label built at run time (a handful per run).
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn ratio(ours: f64, theirs: f64) -> String {
    if ours <= 0.0 || theirs <= 0.0 {
        "-".into()
    } else {
        format!("{:.2}x", theirs / ours)
    }
}

const WAN_START: &str = "<!-- dht-bench:wan:start -->";
const FLEET_START: &str = "<!-- dht-bench:fleet:start -->";
const FLEET_END: &str = "<!-- dht-bench:fleet:end -->";
const WAN_END: &str = "<!-- dht-bench:wan:end -->";

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    // A size of 0 skips, as in the other sections' options (`--sizes 0`: no side-by-side).
    for sizes in [
        &mut args.sizes,
        &mut args.model_sizes,
        &mut args.wan_sizes,
        &mut args.seed_scales,
    ] {
        sizes.retain(|n| *n > 0);
    }
    if args.echo_worker {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        return rt.block_on(floor::serve());
    }
    if let Some(addr) = &args.flood_worker {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        return rt.block_on(flood::worker(
            addr,
            args.flood_kind,
            args.flood_secs,
            args.flood_in_flight,
        ));
    }
    if let Some(scale) = args.seed_worker {
        // A network namespace of its own (before any thread starts), so that its `lo`
        // counts the seed's traffic only.
        wan::own_namespace()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let window = Duration::from_millis(args.seed_coalesce_ms);
        let r = rt.block_on(seed::run(scale, 20, window, true))?;
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    if let Some(plan) = &args.fleet_worker {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        return rt.block_on(fleet::worker(
            plan,
            args.fleet_first,
            args.fleet_count,
            args.fleet_concurrency,
        ));
    }
    // The WAN section moves the process into a network namespace of its own: that must
    // happen before any thread (the runtime's) starts.
    let emulation = if args.only_wan {
        Some(wan::enter(wan::Link {
            rtt_ms: args.wan_rtt_ms.unwrap_or(50.0),
            jitter_ms: args.wan_jitter_ms,
            loss_pct: args.wan_loss_pct,
        })?)
    } else {
        None
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let res = rt.block_on(async {
        match &emulation {
            Some(emu) => {
                let md = wan::run(
                    emu,
                    &args.wan_sizes,
                    args.wan_ops,
                    args.value_len,
                    args.no_mainline,
                )
                .await?;
                write_report(&args.out, &md, WAN_START, WAN_END)?;
                println!("{md}");
                Ok(())
            }
            None => run(args).await,
        }
    });
    // Stop the testnets' tasks before the delayer lets the last packets through.
    drop(rt);
    drop(emulation);
    res
}

async fn run(mut args: Args) -> anyhow::Result<()> {
    if args.quick {
        args.sizes = vec![10];
        args.ops = 20;
        args.model_sizes = vec![1000];
        args.scale_nodes = 0;
        args.seed_scales = vec![1];
        args.memory_items = 2_000;
        args.catch_up_nodes = 10;
        args.idle_nodes = 10;
        args.idle_secs = 5;
        args.fleet_visors = 20;
        args.fleet_steps = Vec::new();
        args.fleet_secs = 5;
    }
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.to_string()))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let bin = args.dht_node.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("dht-node")))
            .unwrap_or_else(|| "dht-node".into())
    });
    if (args.idle_nodes > 0 || args.fleet_visors > 0) && !args.only_faults && !args.only_flood {
        let md = idle_and_fleet(&args, &bin).await?;
        write_report(&args.out, &md, FLEET_START, FLEET_END)?;
        println!("{md}");
    }
    if args.only_fleet {
        return Ok(());
    }
    if args.flood_secs > 0 && !args.only_faults {
        let secs = if args.quick { 2 } else { args.flood_secs };
        let mut runs = vec![flood::run(&bin, secs, args.flood_in_flight, false).await?];
        if !args.quick {
            runs.push(flood::run(&bin, secs, args.flood_in_flight, true).await?);
        }
        let md = format!(
            "Machine: {cores} cores, {mem_total}.\n{}",
            flood::markdown(&runs, secs, args.flood_in_flight)
        );
        write_report(&args.out, &md, FLOOD_START, FLOOD_END)?;
        println!("{md}");
    }
    if args.only_flood {
        return Ok(());
    }
    if !args.no_faults {
        let sidecar = args
            .dht_sidecar
            .clone()
            .unwrap_or_else(|| bin.with_file_name("dht-sidecar"));
        let mut runs = vec![faults::run(&sidecar, args.quick, false).await?];
        if !args.quick {
            runs.push(faults::run(&sidecar, args.quick, true).await?);
        }
        eprintln!("{runs:?}");
        let md = format!(
            "Machine: {cores} cores, {}.\n{}",
            mem_total
                .replace("MemTotal:", "memory")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            faults::markdown(&runs)
        );
        write_report(&args.out, &md, FAULTS_START, FAULTS_END)?;
        println!("{md}");
    }
    if args.only_faults {
        return Ok(());
    }
    let mut md = String::new();
    writeln!(md, "## Testnet benchmarks (`dht-bench`)\n")?;
    writeln!(
        md,
        "Machine: {cores} cores, {}. Real sockets on 127.0.0.1 (ours: TCP + noise + yamux; mainline: UDP). \
         {} operations per figure, values of {} bytes. Latencies in ms; ratio = mainline / ours (above 1: ours is faster).\n",
        mem_total.replace("MemTotal:", "memory").split_whitespace().collect::<Vec<_>>().join(" "),
        args.ops,
        args.value_len
    )?;
    writeln!(md, "| nodes | figure | ours | mainline | ratio |")?;
    writeln!(md, "|---|---|---|---|---|")?;
    for &size in &args.sizes {
        side_by_side(&mut md, size, &args, &bin, false).await?;
    }
    if !args.sizes.is_empty() {
        floor_rows(&mut md, &args).await?;
    }
    let loaded: Vec<usize> = args
        .loaded_sizes
        .iter()
        .copied()
        .filter(|n| *n > 0)
        .collect();
    if !args.quick && !loaded.is_empty() {
        writeln!(
            md,
            "\n### The same on a loaded machine\n\n\
             A thread spinning on every core ({cores}) during both runs, as on a shared \
             server; load average at the start: {}. Ours runs in `dht-node testnet` \
             processes of {} nodes (each with its own runtime, as separate servers would; \
             mainline runs a thread per node), operations from this process's nodes.\n",
            load_average(),
            args.per_process
        )?;
        writeln!(md, "| nodes | figure | ours | mainline | ratio |")?;
        writeln!(md, "|---|---|---|---|---|")?;
        let hog = faults::Hog::start(cores);
        for &size in &loaded {
            side_by_side(&mut md, size, &args, &bin, true).await?;
        }
        floor_rows(&mut md, &args).await?;
        drop(hog);
    }
    writeln!(
        md,
        "\n### Hops versus network size (model simulation)\n\n\
         Kademlia's iterative lookup (k = 20, alpha = 3) replayed over model networks whose \
         k-buckets hold k random members of their range (64-bit ids, no sockets): how lookup \
         depth grows with size. The testnet rows above replay the same lookup over the \
         routing tables the live nodes built.\n"
    )?;
    writeln!(md, "| nodes | hops to a replica (mean) | max | hops until the final k closest are known (mean) | ended at the true k closest |")?;
    writeln!(md, "|---|---|---|---|---|")?;
    for &n in &args.model_sizes {
        let h = hops::simulate(n, if args.quick { 20 } else { 200 });
        writeln!(
            md,
            "| {n} | {:.2} | {} | {:.2} | {:.0}% |",
            h.to_replica_mean,
            h.to_replica_max,
            h.full_mean,
            h.exact_share * 100.0
        )?;
    }
    let mut seed_rows = Vec::new();
    for &scale in &args.seed_scales {
        eprintln!("== seed scenario {scale}x");
        let r = seed::run_isolated(scale, Duration::from_millis(args.seed_coalesce_ms)).await?;
        eprintln!("{r:?}");
        seed_rows.push(r);
    }
    if !seed_rows.is_empty() {
        md.push_str(&seed::markdown(&seed_rows));
    }
    let mem = if args.memory_items > 0 {
        eprintln!("== standalone node memory");
        let m = memory::node_memory(&bin, args.memory_items, args.value_len).await?;
        eprintln!("{m:?}");
        Some(m)
    } else {
        None
    };
    let catch = if args.catch_up_nodes > 0 {
        eprintln!("== catch-up of a restarted node");
        let c = memory::catch_up(args.catch_up_nodes, if args.quick { 50 } else { 300 }).await?;
        eprintln!("{c:?}");
        Some(c)
    } else {
        None
    };
    md.push_str(&memory::markdown(mem.as_ref(), catch.as_ref()));
    if args.scale_nodes > 0 {
        eprintln!("== scale-out: {} nodes", args.scale_nodes);
        let s = scale::run(
            &bin,
            args.scale_nodes,
            args.scale_per_process,
            args.ops.min(60),
            args.value_len,
            Duration::from_secs(5),
        )
        .await?;
        eprintln!("{s:?}");
        writeln!(
            md,
            "\n### Largest network on this machine (real nodes, several processes)\n\n\
             {} nodes over real TCP + noise + yamux on 127.0.0.1 in {} processes of up to {} \
             (`dht-node testnet --join`; one process's 20,000 file descriptors bound its \
             nodes' connections). {} operations from the first process's nodes; latencies in ms.\n",
            s.nodes,
            s.processes,
            args.scale_per_process,
            args.ops.min(60)
        )?;
        writeln!(md, "| figure | p50 | p90 | p99 |")?;
        writeln!(md, "|---|---|---|---|")?;
        for (name, v) in [
            ("put confirmed by a majority", s.put),
            ("get first valid", s.get_first),
            ("get best-of-quorum", s.get_quorum),
        ] {
            writeln!(md, "| {name} | {:.2} | {:.2} | {:.2} |", v[0], v[1], v[2])?;
        }
        writeln!(
            md,
            "\nFormed in {:.1} s; resident memory {:.1} MB per node (all processes); {} failed operations.",
            s.formation_s, s.rss_mb_per_node, s.failures
        )?;
    }
    write_report(&args.out, &md, START, END)?;
    println!("{md}");
    if let Some(rtt) = args.wan_rtt_ms {
        run_wan_process(&args, rtt)?;
    }
    Ok(())
}

/// The idle-cost and visor-fleet sections.
async fn idle_and_fleet(args: &Args, bin: &std::path::Path) -> anyhow::Result<String> {
    let mut md = String::new();
    if args.idle_nodes > 0 {
        eprintln!("== idle cost: {} nodes", args.idle_nodes);
        let f = idle::run(bin, args.idle_nodes, Duration::from_secs(args.idle_secs)).await?;
        eprintln!("{f:?}");
        md.push_str(&idle::markdown(&f));
    }
    if args.fleet_visors > 0 {
        let mut sizes: Vec<usize> = args
            .fleet_steps
            .iter()
            .copied()
            .filter(|&n| n > 0 && n < args.fleet_visors)
            .collect();
        sizes.push(args.fleet_visors);
        let mut runs = Vec::new();
        for n in sizes {
            eprintln!("== fleet: {n} visors");
            let f = fleet::run(
                bin,
                n,
                args.fleet_per_worker,
                Duration::from_secs(args.fleet_secs),
            )
            .await?;
            eprintln!("{f:?}");
            runs.push(f);
        }
        md.push_str(&fleet::markdown(&runs, args.fleet_per_worker));
    }
    Ok(md)
}

/// Runs the WAN section in a process of its own (it moves into a network namespace).
fn run_wan_process(args: &Args, rtt: f64) -> anyhow::Result<()> {
    if let Some(why) = wan::unavailable() {
        eprintln!("== wan: skipped: {why}");
        return Ok(());
    }
    let sizes: Vec<String> = args.wan_sizes.iter().map(|s| s.to_string()).collect();
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("--only-wan")
        .arg(format!("--wan-rtt-ms={rtt}"))
        .arg(format!("--wan-jitter-ms={}", args.wan_jitter_ms))
        .arg(format!("--wan-loss-pct={}", args.wan_loss_pct))
        .arg(format!("--wan-sizes={}", sizes.join(",")))
        .arg(format!("--wan-ops={}", args.wan_ops))
        .arg(format!("--value-len={}", args.value_len))
        .arg(format!("--out={}", args.out));
    if args.no_mainline {
        cmd.arg("--no-mainline");
    }
    let status = cmd.status()?;
    anyhow::ensure!(status.success(), "the WAN section failed: {status}");
    Ok(())
}
