//! Resident memory of a standalone full node (the `dht-node run` binary in its own
//! process, embedded redb store), idle and holding 100,000 items; and the time for a
//! restarted node to catch up.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dht_core::store::{RecordStore, RedbStore, StoreConfig};
use dht_core::{MutableItem, Policy, PutOptions, SigningKey, Validator};
use dht_node::{NodeConfig, NodeEvent, Testnet};
use tokio::process::{Child, Command};

/// Memory figures of one standalone node.
#[derive(Debug, Clone, Default)]
pub struct MemoryFigures {
    pub idle_rss_mb: f64,
    pub loaded_rss_mb: f64,
    /// Holding the items while republish passes read the whole store.
    pub republishing_rss_mb: f64,
    pub items: u64,
    pub value_len: usize,
    pub populate_s: f64,
    pub store_mb_on_disk: f64,
}

/// Resident memory of process `pid` in MB (0 if unknown).
pub fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU seconds (user + system) process `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // The fields after the command name (which may hold spaces), from field 3.
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .unwrap_or(0.0);
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}

/// Starts `dht-node run` on `dir` (with `config`, if any), lets it settle `settle`, and
/// returns its median RSS over 3 s.
async fn run_and_sample(
    bin: &Path,
    dir: &Path,
    config: Option<&Path>,
    settle: Duration,
) -> anyhow::Result<f64> {
    let mut cmd = Command::new(bin);
    cmd.args(["run", "--listen", "/ip4/127.0.0.1/tcp/0", "--data-dir"])
        .arg(dir);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let mut child: Child = cmd
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().context("child pid")?;
    tokio::time::sleep(settle).await;
    let mut samples = Vec::new();
    for _ in 0..6 {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("dht-node run exited early: {status}");
        }
        samples.push(rss_mb(pid));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    child.kill().await?;
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

/// Idle RSS of a fresh node, then RSS of the node restarted on a store of `items` items.
pub async fn node_memory(
    bin: &Path,
    items: usize,
    value_len: usize,
) -> anyhow::Result<MemoryFigures> {
    anyhow::ensure!(
        bin.exists(),
        "{} not found: build it with `cargo build --release -p dht-node`",
        bin.display()
    );
    let dir = tempfile::tempdir()?;
    let idle_rss_mb = run_and_sample(bin, dir.path(), None, Duration::from_secs(2)).await?;
    // Fill the node's own store file while it is stopped: valid signed items, one key each.
    let t = Instant::now();
    let path = dir.path().join("items.redb");
    let count = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let store = RedbStore::open(&path, StoreConfig::default())?;
        let validator = Validator::new(Policy::default());
        let value = vec![0x42; value_len];
        let mut done = 0;
        while done < items {
            let n = (items - done).min(2_000);
            let batch = (0..n)
                .map(|_| {
                    let k = SigningKey::generate_ed25519();
                    let item = MutableItem::sign(&k, k.public_key(), "tp", 1, value.clone());
                    Ok((validator.validate(item)?, PutOptions::default()))
                })
                .collect::<Result<Vec<_>, dht_core::Rejection>>()?;
            store.put_batch(batch)?;
            done += n;
        }
        let stats = store.stats()?;
        store.close();
        Ok(stats.items)
    })
    .await??;
    let populate_s = t.elapsed().as_secs_f64();
    let store_mb_on_disk = std::fs::metadata(dir.path().join("items.redb"))?.len() as f64 / 1e6;
    let loaded_rss_mb = run_and_sample(bin, dir.path(), None, Duration::from_secs(2)).await?;
    // The same node while it reads its whole store: a republish pass every second (it has
    // no peers to send to, so this is the read side of the pass).
    let config = dir.path().join("republish.toml");
    std::fs::write(&config, "republish_interval_secs = 1\n")?;
    let republishing_rss_mb =
        run_and_sample(bin, dir.path(), Some(&config), Duration::from_secs(6)).await?;
    Ok(MemoryFigures {
        republishing_rss_mb,
        idle_rss_mb,
        loaded_rss_mb,
        items: count,
        value_len,
        populate_s,
        store_mb_on_disk,
    })
}

/// Catch-up of a restarted node.
#[derive(Debug, Clone, Default)]
pub struct CatchUpFigures {
    pub nodes: usize,
    pub missed: usize,
    /// Of the missed items, those the restarted node is a replica of.
    pub responsible: usize,
    /// Seconds from restart until it held all of them.
    pub catch_up_s: f64,
    pub held: usize,
}

/// On-disk testnet of `nodes`; one node stops, `missed` items are put, it restarts from
/// its data directory (no bootstrap list: its saved routing table) and is timed until it
/// holds every missed item it is one of the k closest to.
pub async fn catch_up(nodes: usize, missed: usize) -> anyhow::Result<CatchUpFigures> {
    let mut config = NodeConfig::local();
    config.max_peers_per_ip_range = None;
    let mut net = Testnet::builder(nodes)
        .config(config)
        .on_disk(true)
        .build()
        .await?;
    net.wait_for_routing(nodes.saturating_sub(1).min(20), Duration::from_secs(30))
        .await;
    let down = nodes / 2;
    let down_id = net.nodes[down].peer_id();
    net.stop(down).await;
    let mut targets = Vec::with_capacity(missed);
    for i in 0..missed {
        let k = SigningKey::generate_ed25519();
        let item = MutableItem::sign(&k, k.public_key(), "tp", 1, vec![0x42; 900]);
        targets.push(item.target());
        let from = if i % nodes == down { 0 } else { i % nodes };
        let _ = net.nodes[from].put(item).await?;
    }
    // The items the restarted node is one of the k closest to, among all nodes.
    let all: Vec<_> = net.nodes.iter().map(|n| n.peer_id()).collect();
    let k = net.nodes[0].config().replication;
    let mine: Vec<_> = targets
        .iter()
        .filter(|t| {
            dht_node::closest_of(&dht_node::target_key(t), all.iter().copied(), k)
                .contains(&down_id)
        })
        .copied()
        .collect();
    let t = Instant::now();
    let back = net.restart(down).await?;
    let mut events = back.subscribe();
    let store = back.store().context("restarted node has a store")?;
    let held = |store: &std::sync::Arc<dyn RecordStore>| {
        mine.iter()
            .filter(|t| matches!(store.get(t), Ok(Some(_))))
            .count()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while held(&store) < mine.len() && tokio::time::Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(50), async {
            while !matches!(events.recv().await, Ok(NodeEvent::CatchUpFinished { .. })) {}
        })
        .await;
    }
    let figures = CatchUpFigures {
        nodes,
        missed,
        responsible: mine.len(),
        catch_up_s: t.elapsed().as_secs_f64(),
        held: held(&store),
    };
    drop(store);
    net.shutdown().await;
    Ok(figures)
}

/// The markdown section.
pub fn markdown(mem: Option<&MemoryFigures>, catch: Option<&CatchUpFigures>) -> String {
    let mut s = String::new();
    if let Some(m) = mem {
        s.push_str(&format!(
            "\n### Memory of a standalone full node (`dht-node run`, own process, redb store)\n\n\
             | state | resident memory |\n|---|---|\n\
             | idle, empty store | {:.1} MB |\n\
             | holding {} items of {} bytes ({:.0} MB on disk; filled in {:.1} s) | {:.1} MB |\n\
             | the same, republish passes reading the whole store every second | {:.1} MB |\n\n\
             Median VmRSS over 3 s, 2 s after start (6 s for the last row). The items live in \
             redb's file; the process keeps redb's page cache (32 MiB) and what it is sending.\n",
            m.idle_rss_mb,
            m.items,
            m.value_len,
            m.store_mb_on_disk,
            m.populate_s,
            m.loaded_rss_mb,
            m.republishing_rss_mb
        ));
    }
    if let Some(c) = catch {
        s.push_str(&format!(
            "\n### A restarted node catches up\n\n\
             {} on-disk nodes (k = 20); one stops, {} items are put while it is down ({} of \
             them have it among their k closest). It restarts from its data directory (its \
             saved routing table, no bootstrap list) and pulls what it missed from its \
             neighbours (catch-up sync). It held {} of {} after **{:.2} s**.\n",
            c.nodes, c.missed, c.responsible, c.held, c.responsible, c.catch_up_s
        ));
    }
    s
}
