//! Faults, measured as an operator sees them:
//! - the push API of one of five real `dht-sidecar` processes, all up and then with
//!   another sidecar SIGKILLed (p50 / p99);
//! - a 24-node network cut in two and healed: time until every responsible replica holds
//!   the highest item of every target written during the cut (equal-seq conflicts
//!   included);
//! - 30% of 30 nodes stopped at once: time until every item has a copy in each of its
//!   replica slots on the live nodes;
//! - a node restarted after the lists it held were deleted: stale lists it served;
//! - a third party re-posting a published item: how far its expiry moved.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use dht_core::{precedence, MutableItem, SigningKey, Target};
use dht_node::{GetMode, Node, NodeConfig, Testnet};

use crate::{pcts, Pcts};

/// Every figure of the faults section.
#[derive(Debug, Clone, Default)]
pub struct FaultFigures {
    pub push_all_up: Pcts,
    pub push_one_down: Pcts,
    pub push_failed: usize,
    pub push_ops: usize,
    pub heal_nodes: usize,
    pub heal_targets: usize,
    pub heal_converged_s: Option<f64>,
    pub rerep_nodes: usize,
    pub rerep_killed: usize,
    pub rerep_items: usize,
    pub rerep_filled_s: Option<f64>,
    pub restart_reads: usize,
    pub restart_stale: usize,
    pub restart_lists: usize,
    pub repost_expiry_moved_ms: i64,
    /// What else ran: "idle" or the load added.
    pub condition: String,
    /// 1-minute load average when the run started.
    pub load_at_start: f64,
}

/// Threads spinning on every core until dropped: a busy, shared machine.
pub struct Hog {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Hog {
    /// Starts `n` spinning threads.
    pub fn start(n: usize) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        for i in 0..10_000u64 {
                            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
                        }
                        std::hint::black_box(x);
                    }
                })
            })
            .collect();
        Hog { stop, threads }
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The 1-minute load average (0 when unreadable).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// A sidecar process and what it printed.
struct Sidecar {
    child: Child,
    peer_id: String,
    port: u16,
    push: Option<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_sidecar(
    bin: &Path,
    mirror: &SigningKey,
    bootstrap: Option<String>,
    push: bool,
) -> anyhow::Result<Sidecar> {
    let dir = tempfile::tempdir()?;
    let key_file = dir.path().join("mirror.key");
    std::fs::write(
        &key_file,
        format!("secp256k1:{}", hex::encode(mirror.to_bytes())),
    )?;
    let port = free_port()?;
    let mut toml = format!("data_dir = {:?}\nport = {port}\n", dir.path().join("data"));
    if let Some(b) = &bootstrap {
        toml.push_str(&format!("bootstrap = [{b:?}]\n"));
    }
    if push {
        toml.push_str("[push]\nlisten = \"127.0.0.1:0\"\ntoken = \"bench-token-0123456789\"\n");
    }
    toml.push_str(&format!(
        "[mirror_keys]\ntp = {key_file:?}\n[authorized_publishers]\ntp = [\"{}\"]\n",
        mirror.public_key().to_hex()
    ));
    let config = dir.path().join("sidecar.toml");
    std::fs::write(&config, toml)?;
    let mut child = Command::new(bin)
        .args([
            "--config",
            config.to_str().context("utf-8 path")?,
            "--http",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut peer_id = None;
    let mut push_url = None;
    let mut last = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        last.clone_from(&line);
        if let Some(p) = line.strip_prefix("peer id: ") {
            peer_id = Some(p.to_string());
        }
        if let Some(u) = line.strip_prefix("push api: ") {
            push_url = Some(u.to_string());
        }
        if line.starts_with("gateway: ") {
            if push && push_url.is_none() {
                continue;
            }
            break;
        }
        if push_url.is_some() && peer_id.is_some() {
            break;
        }
    }
    Ok(Sidecar {
        child,
        peer_id: peer_id.with_context(|| format!("the sidecar did not start: {last}"))?,
        port,
        push: push_url,
        _dir: dir,
    })
}

async fn push_round(
    client: &reqwest::Client,
    url: &str,
    ops: usize,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let mut lat = Vec::with_capacity(ops);
    let mut failed = 0;
    for i in 0..ops {
        let subject = SigningKey::generate_secp256k1().public_key().to_hex();
        let body = format!("[{{\"t_id\":\"{i:08x}\",\"type\":\"stcpr\"}}]");
        let started = Instant::now();
        let r = client
            .put(format!("{url}/v1/mirror/tp/{subject}"))
            .bearer_auth("bench-token-0123456789")
            .body(body)
            .send()
            .await?;
        lat.push(started.elapsed());
        if !r.status().is_success() {
            failed += 1;
        }
    }
    Ok((lat, failed))
}

/// The push API with one of five sidecars SIGKILLed, beside the all-up figure.
async fn push_with_one_down(sidecar_bin: &Path, ops: usize) -> anyhow::Result<(Pcts, Pcts, usize)> {
    let mirror = SigningKey::generate_secp256k1();
    let first = start_sidecar(sidecar_bin, &mirror, None, true)?;
    let boot = format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", first.port, first.peer_id);
    let mut others = Vec::new();
    for _ in 0..4 {
        others.push(start_sidecar(
            sidecar_bin,
            &mirror,
            Some(boot.clone()),
            false,
        )?);
    }
    // Let the five find each other.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let client = reqwest::Client::new();
    let url = first.push.clone().context("push api address")?;
    push_round(&client, &url, 5).await?;
    let (up, f1) = push_round(&client, &url, ops).await?;
    // SIGKILL one replica (not the one the discovery talks to).
    let mut victim = others.pop().context("a sidecar to kill")?;
    victim.child.kill()?;
    let _ = victim.child.wait();
    let (down, f2) = push_round(&client, &url, ops).await?;
    drop(others);
    drop(first);
    Ok((pcts(up), pcts(down), f1 + f2))
}

fn fast_config() -> NodeConfig {
    NodeConfig::local()
}

/// Who among `nodes` holds exactly `item`.
fn holders(nodes: &[&Node], item: &MutableItem) -> usize {
    let target = item.target();
    nodes
        .iter()
        .filter(|n| {
            n.store()
                .and_then(|s| s.get(&target).ok().flatten())
                .is_some_and(|s| s.item == *item)
        })
        .count()
}

/// The nodes responsible for `target` among `nodes` (the `k` closest).
fn responsible<'a>(nodes: &[&'a Node], target: &Target, k: usize) -> Vec<&'a Node> {
    let key = dht_node::target_key(target);
    let ids: Vec<_> = nodes.iter().map(|n| n.peer_id()).collect();
    let closest = dht_node::closest_of(&key, ids.into_iter(), k);
    nodes
        .iter()
        .filter(|n| closest.contains(&n.peer_id()))
        .copied()
        .collect()
}

/// A 24-node network cut in two; writes on both sides (equal-seq conflicts included);
/// seconds from the heal until every responsible replica holds each target's winner.
async fn heal(nodes: usize, targets: usize) -> anyhow::Result<Option<f64>> {
    let net = Testnet::builder(nodes)
        .config(fast_config())
        .build()
        .await?;
    let k = net.nodes[0].config().replication;
    let a: Vec<usize> = (0..nodes / 2).collect();
    let b: Vec<usize> = (nodes / 2..nodes).collect();
    net.partition(&a, &b).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut winners = Vec::new();
    for i in 0..targets {
        let key = SigningKey::generate_ed25519();
        let pk = key.public_key();
        let left = MutableItem::sign(&key, pk, "tp", 2, Bytes::from(format!("left {i}")));
        let right = if i % 2 == 0 {
            MutableItem::tombstone(&key, pk, "tp", 2)
        } else {
            MutableItem::sign(&key, pk, "tp", 3, Bytes::from(format!("right {i}")))
        };
        net.nodes[a[i % a.len()]].put(left.clone()).await?;
        net.nodes[b[i % b.len()]].put(right.clone()).await?;
        winners.push(if precedence(&left, &right).is_gt() {
            left
        } else {
            right
        });
    }
    let healed = Instant::now();
    net.heal(&a, &b).await?;
    let all: Vec<&Node> = net.nodes.iter().collect();
    let deadline = healed + Duration::from_secs(60);
    let mut converged = None;
    while Instant::now() < deadline {
        let done = winners.iter().all(|w| {
            let r = responsible(&all, &w.target(), k);
            holders(&r, w) == r.len()
        });
        if done {
            converged = Some(healed.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    net.shutdown().await;
    Ok(converged)
}

/// 30% of the nodes stopped at once; seconds until every item has a copy in each of its
/// `min(k, live)` replica slots on the live nodes.
async fn rereplication(nodes: usize, items: usize) -> anyhow::Result<(usize, Option<f64>)> {
    let net = Testnet::builder(nodes)
        .config(fast_config())
        .build()
        .await?;
    let k = net.nodes[0].config().replication;
    let mut all_items = Vec::new();
    for i in 0..items {
        let key = SigningKey::generate_ed25519();
        let item = MutableItem::sign(
            &key,
            key.public_key(),
            "svc",
            1,
            Bytes::from(format!("v{i}")),
        );
        net.nodes[i % nodes].put(item.clone()).await?;
        all_items.push(item);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed: HashSet<usize> = (0..nodes).filter(|i| i % 10 < 3).collect();
    let started = Instant::now();
    for &i in &killed {
        net.stop(i).await;
    }
    let live: Vec<&Node> = net
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| !killed.contains(i))
        .map(|(_, n)| n)
        .collect();
    let slots = k.min(live.len());
    let deadline = started + Duration::from_secs(90);
    let mut filled = None;
    while Instant::now() < deadline {
        if all_items.iter().all(|it| holders(&live, it) >= slots) {
            filled = Some(started.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    net.shutdown().await;
    Ok((killed.len(), filled))
}

/// A node restarted after its lists were deleted; reads from it until well after its
/// catch-up: (reads, stale reads).
async fn restart_stale_reads(lists: usize) -> anyhow::Result<(usize, usize)> {
    let mut net = Testnet::builder(10)
        .config(fast_config())
        .on_disk(true)
        .build()
        .await?;
    let keys: Vec<SigningKey> = (0..lists).map(|_| SigningKey::generate_ed25519()).collect();
    for k in &keys {
        net.nodes[0]
            .put(MutableItem::sign(
                k,
                k.public_key(),
                "tp",
                1,
                &b"[\"old list\"]"[..],
            ))
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    net.stop(7).await;
    for k in &keys {
        net.nodes[1].delete(k, k.public_key(), b"tp").await?;
    }
    let back = net.restart(7).await?;
    let mut reads = 0;
    let mut stale = 0;
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until || !back.caught_up() {
        for k in &keys {
            let got = back.get(k.public_key(), b"tp", GetMode::First).await?;
            reads += 1;
            stale += usize::from(got.value().is_some());
        }
        if Instant::now() > until + Duration::from_secs(30) {
            break;
        }
    }
    net.shutdown().await;
    Ok((reads, stale))
}

/// How far (ms) a third party's re-post of the current item moves its stored expiry on
/// the replicas.
async fn repost_expiry() -> anyhow::Result<i64> {
    let net = Testnet::builder(5).config(fast_config()).build().await?;
    let key = SigningKey::generate_ed25519();
    let item = MutableItem::sign(&key, key.public_key(), "svc", 1, &b"[]"[..]);
    net.nodes[0].put(item.clone()).await?;
    let target = item.target();
    let expiry = |n: &Node| {
        n.store()
            .and_then(|s| s.get(&target).ok().flatten())
            .map(|s| s.expires_at_ms as i64)
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before: Vec<_> = net.nodes.iter().map(expiry).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The item is public: anyone can send it again, from anywhere.
    net.nodes[3].put(item.clone()).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after: Vec<_> = net.nodes.iter().map(expiry).collect();
    net.shutdown().await;
    Ok(before
        .iter()
        .zip(&after)
        .filter_map(|(b, a)| Some(a.as_ref()? - b.as_ref()?))
        .max()
        .unwrap_or(0))
}

/// Runs every fault measurement (smaller with `quick`); with `busy`, while a thread
/// spins on every core.
pub async fn run(sidecar_bin: &Path, quick: bool, busy: bool) -> anyhow::Result<FaultFigures> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let _hog = busy.then(|| Hog::start(cores));
    let mut f = FaultFigures {
        condition: if busy {
            format!("busy: {cores} threads spinning beside it")
        } else {
            "idle".into()
        },
        load_at_start: load_average(),
        push_ops: if quick { 20 } else { 200 },
        heal_nodes: 24,
        heal_targets: if quick { 10 } else { 50 },
        rerep_nodes: if quick { 10 } else { 30 },
        rerep_items: if quick { 30 } else { 300 },
        restart_lists: if quick { 20 } else { 100 },
        ..Default::default()
    };
    eprintln!("== faults: push api with one of five sidecars down");
    let (up, down, failed) = push_with_one_down(sidecar_bin, f.push_ops).await?;
    f.push_all_up = up;
    f.push_one_down = down;
    f.push_failed = failed;
    eprintln!("== faults: partition and heal");
    f.heal_converged_s = heal(f.heal_nodes, f.heal_targets).await?;
    eprintln!("== faults: re-replication after a third of the nodes stopped");
    let (killed, filled) = rereplication(f.rerep_nodes, f.rerep_items).await?;
    f.rerep_killed = killed;
    f.rerep_filled_s = filled;
    eprintln!("== faults: restart without stale reads");
    let (reads, stale) = restart_stale_reads(f.restart_lists).await?;
    f.restart_reads = reads;
    f.restart_stale = stale;
    eprintln!("== faults: re-posted item's expiry");
    f.repost_expiry_moved_ms = repost_expiry().await?;
    Ok(f)
}

/// The "Faults" section: one table per run (idle, busy).
pub fn markdown(runs: &[FaultFigures]) -> String {
    let mut out = String::from(
        "### Faults\n\nReal processes and real sockets on 127.0.0.1; latencies in ms. \
         The same measurements on an idle machine and on a busy one (a thread spinning on \
         every core, as on a shared server).\n",
    );
    for f in runs {
        out.push_str(&table(f));
    }
    out
}

fn table(f: &FaultFigures) -> String {
    let secs = |v: Option<f64>| v.map_or("did not finish".to_string(), |s| format!("{s:.1} s"));
    let ratio = if f.push_all_up.p99 > 0.0 {
        f.push_one_down.p99 / f.push_all_up.p99
    } else {
        0.0
    };
    format!(
        "\n#### {} (load average {:.2} at the start)\n\n\
         | fault | figure | measured | goal |\n|---|---|---|---|\n\
         | push API, 5 `dht-sidecar`s, all up ({} pushes) | p50 / p99 | {:.1} / {:.1} | |\n\
         | push API, one of the 5 SIGKILLed ({} pushes) | p50 / p99 | {:.1} / {:.1} | p99 <= 2x all-up and <= 500 ms |\n\
         | | p99 one down / all up | {:.2}x | <= 2x |\n\
         | | failed pushes (both rounds) | {} | 0 |\n\
         | {} nodes cut 12/12, {} targets written on both sides (half equal-seq conflicts), healed | every responsible replica holds each winner | {} | <= 10 s |\n\
         | {} of {} nodes stopped at once, {} items | every replica slot filled on the live nodes | {} | <= 30 s |\n\
         | node restarted after its {} lists were deleted | stale lists served in {} reads | {} | 0 |\n\
         | a third party re-posts a published item | stored expiry moved | {} ms | 0 |\n",
        f.condition,
        f.load_at_start,
        f.push_ops,
        f.push_all_up.p50,
        f.push_all_up.p99,
        f.push_ops,
        f.push_one_down.p50,
        f.push_one_down.p99,
        ratio,
        f.push_failed,
        f.heal_nodes,
        f.heal_targets,
        secs(f.heal_converged_s),
        f.rerep_killed,
        f.rerep_nodes,
        f.rerep_items,
        secs(f.rerep_filled_s),
        f.restart_lists,
        f.restart_reads,
        f.restart_stale,
        f.repost_expiry_moved_ms,
    )
}
