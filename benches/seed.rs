//! The seed's scenario at scale: the production transport snapshot (4,615 transports, a
//! hub edge with 552) and a 10x one (46,150 transports, ten hub edges with 1,000 each),
//! registered in the transport discovery's store and mirrored through the transport
//! adapter into a 20-node network; then every edge's FULL list is read back from every
//! node.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dht_core::{Policy, PublicKey, SigningKey};
use dht_node::{GetMode, NodeConfig, Testnet};
use dmsg_plugin::fakes::MemoryTransportStore;
use dmsg_plugin::formats::{encode_transport_list, TransportEntry};
use dmsg_plugin::{Mirror, MirrorAction, TransportMirror};
use futures::StreamExt;
use sha2::Digest;

/// Figures of one scale.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SeedFigures {
    pub scale: usize,
    pub transports: usize,
    pub edges: usize,
    pub hubs: usize,
    pub biggest_list: usize,
    pub largest_value_bytes: usize,
    /// Seconds for the adapter to mirror every batch (each put confirmed by a majority).
    pub mirror_s: f64,
    /// Seconds from the first batch until every node read every edge's full list.
    pub converged_s: f64,
    /// Edge items mirrored per second.
    pub items_per_s: f64,
    /// Whether the run had a network namespace (and so a `lo`) of its own: then
    /// `bytes_sent` counts this run's traffic only.
    pub isolated: bool,
    /// The adapter's coalescing window, ms.
    pub coalesce_ms: u64,
    /// Puts made (edge items mirrored, retries not counted).
    pub puts: usize,
    /// Loopback bytes sent from the first batch until the traffic settled after the last
    /// put (all layers: substreams, multistream, yamux, noise, TCP/IP; all nodes).
    pub bytes_sent: u64,
    /// Loopback packets sent in the same span.
    pub packets_sent: u64,
    /// Substream bytes sent per application protocol (MB), all nodes, same span.
    pub by_protocol: Vec<(String, f64)>,
    /// One 230-byte transport appended to the largest (hub) list, put by the mirror.
    pub append: Option<AppendFigures>,
    /// The adapter's anti-entropy pass once more, nothing having changed.
    pub reassert: Option<ReassertFigures>,
    /// Item value bytes (one copy per edge).
    pub value_bytes: u64,
    /// Reads (edge x node) that did not return the full list.
    pub failures: usize,
}

fn key(i: usize) -> String {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&(i as u64).to_be_bytes());
    h[8] = 0x5a;
    format!("02{}", hex::encode(sha2::Sha256::digest(h)))
}

/// `total` transports among `visors` visors, with `hubs` hub edges of `per_hub` each.
pub fn snapshot(total: usize, visors: usize, hubs: usize, per_hub: usize) -> Vec<TransportEntry> {
    let types = ["stcpr", "sudph", "dmsg", "stcp"];
    let mut out = Vec::with_capacity(total);
    let mut seen = HashSet::new();
    for h in 0..hubs {
        let hub = key(visors + 1 + h);
        let mut j = 0;
        let mut n = 0;
        while n < per_hub {
            let e = TransportEntry::new(
                &hub,
                &key(1 + (h * per_hub + j) % visors),
                types[j % 4],
                "automatic",
            );
            j += 1;
            if seen.insert(e.t_id.clone()) {
                out.push(e);
                n += 1;
            }
        }
    }
    let mut i = 0usize;
    while out.len() < total {
        let d = sha2::Sha256::digest((i as u64).to_be_bytes());
        let a = 1 + (u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize) % visors;
        let b = 1 + (u32::from_be_bytes([d[4], d[5], d[6], d[7]]) as usize) % visors;
        i += 1;
        if a == b {
            continue;
        }
        let label = if i.is_multiple_of(10) {
            "user"
        } else {
            "automatic"
        };
        let e = TransportEntry::new(&key(a), &key(b), types[i % 4], label);
        if seen.insert(e.t_id.clone()) {
            out.push(e);
        }
    }
    out
}

fn edges_of(entries: &[TransportEntry]) -> BTreeSet<PublicKey> {
    entries
        .iter()
        .flat_map(|e| e.edges.iter().filter_map(|k| k.parse::<PublicKey>().ok()))
        .collect()
}

impl SeedFigures {
    /// MB sent on `protocol`'s substreams.
    fn protocol_mb(&self, protocol: &str) -> f64 {
        self.by_protocol
            .iter()
            .filter(|(p, _)| p == protocol)
            .map(|(_, mb)| mb)
            .sum()
    }
}

/// Loopback bytes and packets sent (`/proc/net/dev` of this network namespace).
fn lo() -> (u64, u64) {
    crate::loopback_tx()
}

/// Waits until `lo` carries less than 32 KB in 250 ms (the puts' stragglers, which finish
/// after the put returned, are done), at most 20 s.
async fn settle() {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = lo().0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = lo().0;
        if now.saturating_sub(last) < 32_000 {
            return;
        }
        last = now;
    }
}

/// Runs one scale (1: production, 10: ten times larger) on `nodes` nodes, the adapter
/// coalescing each edge's updates within `coalesce`. `isolated`: whether this process
/// has a network namespace of its own (only recorded).
pub async fn run(
    scale: usize,
    nodes: usize,
    coalesce: Duration,
    isolated: bool,
) -> anyhow::Result<SeedFigures> {
    let (total, visors, hubs, per_hub) = if scale >= 10 {
        (46_150, 13_000, 10, 1_000)
    } else {
        (4_615, 1_300, 1, 552)
    };
    let entries = snapshot(total, visors, hubs, per_hub);
    let edges = edges_of(&entries);
    let tpd_key = SigningKey::generate_secp256k1();
    let mut config = NodeConfig::local();
    config.policy = Policy::default().authorize("tp", tpd_key.public_key());
    let net = Testnet::builder(nodes).config(config).build().await?;
    let network_up = Instant::now();
    net.wait_for_routing(nodes.saturating_sub(1).min(20), Duration::from_secs(30))
        .await;
    let store = Arc::new(MemoryTransportStore::default());
    let publisher =
        Arc::new(Mirror::new(net.nodes[0].clone(), tpd_key, "tp").with_coalesce_window(coalesce));
    let mirror = TransportMirror::new(store.clone(), publisher.clone());
    settle().await;
    let (lo0, packets0) = lo();
    let proto0 = protocol_bytes_out(&net);
    let started = Instant::now();
    let mut failed_keys = 0;
    let puts;
    if scale >= 10 {
        // The whole snapshot at once, mirrored by the adapter's anti-entropy pass (one
        // full list per edge): what a discovery does when it first starts mirroring.
        store.register(&entries);
        let outcome = mirror
            .anti_entropy()
            .await
            .map_err(|e| anyhow::anyhow!("anti-entropy: {e:?}"))?;
        failed_keys += outcome.failed().len();
        puts = outcome.keys.len();
    } else {
        // The batches reach the store back to back; the adapter queues their edges and
        // puts each once its window ends (an edge touched again meanwhile is put once).
        for batch in entries.chunks(500) {
            store.register(batch);
            mirror.enqueue_batch(batch);
        }
        let outcome = mirror.flush().await;
        failed_keys += outcome.failed().len();
        puts = outcome.keys.len();
    }
    let mirror_s = started.elapsed().as_secs_f64();
    settle().await;
    let (lo1, packets1) = lo();
    let by_protocol = protocol_delta(&proto0, &protocol_bytes_out(&net));
    let expected: Vec<(PublicKey, Vec<u8>)> = edges
        .iter()
        .map(|e| (*e, encode_transport_list(&store.list(e))))
        .collect();
    let biggest_list = edges.iter().map(|e| store.list(e).len()).max().unwrap_or(0);
    let largest_value_bytes = expected.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    let value_bytes = expected.iter().map(|(_, v)| v.len() as u64).sum();
    // Every edge's full list from every node; the unmatched are retried until a deadline.
    let pending = read_back(&net, &expected).await;
    let converged_s = started.elapsed().as_secs_f64();
    let reassert = {
        settle().await;
        let (lo0, proto0) = (lo().0, protocol_bytes_out(&net));
        let t0 = Instant::now();
        let outcome = mirror
            .anti_entropy()
            .await
            .map_err(|e| anyhow::anyhow!("anti-entropy: {e:?}"))?;
        let secs = t0.elapsed().as_secs_f64();
        settle().await;
        let substream_bytes = protocol_delta(&proto0, &protocol_bytes_out(&net))
            .iter()
            .map(|(_, mb)| (mb * 1e6).round() as u64)
            .sum();
        let bytes_sent = lo().0.saturating_sub(lo0);
        let unread = read_back(&net, &expected).await.len();
        Some(ReassertFigures {
            puts: outcome.keys.len(),
            secs,
            bytes_sent,
            substream_bytes,
            failures: outcome.failed().len() + unread,
        })
    };
    let append = if scale == 1 {
        let hub = *edges
            .iter()
            .max_by_key(|e| store.list(e).len())
            .expect("edges");
        Some(
            append_one(
                &net,
                network_up,
                &store,
                &publisher,
                hub,
                &key(visors + 100),
            )
            .await,
        )
    } else {
        None
    };
    net.shutdown().await;
    Ok(SeedFigures {
        scale,
        transports: entries.len(),
        edges: edges.len(),
        hubs,
        biggest_list,
        largest_value_bytes,
        mirror_s,
        converged_s,
        items_per_s: edges.len() as f64 / mirror_s.max(1e-9),
        isolated,
        coalesce_ms: coalesce.as_millis() as u64,
        puts,
        bytes_sent: lo1.saturating_sub(lo0),
        packets_sent: packets1.saturating_sub(packets0),
        by_protocol,
        append,
        reassert,
        value_bytes,
        failures: pending.len() + failed_keys,
    })
}

/// Runs one scale in a worker process of this binary in a network namespace of its own
/// (`--seed-worker`), so that the loopback bytes are the seed's alone; without root, in
/// this process (the bytes then include whatever else uses `lo`).
pub async fn run_isolated(scale: usize, coalesce: Duration) -> anyhow::Result<SeedFigures> {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("seed {scale}x: not root, so no network namespace: lo is shared");
        return run(scale, 20, coalesce, false).await;
    }
    let exe = std::env::current_exe()?;
    let out = tokio::process::Command::new(exe)
        .arg("--seed-worker")
        .arg(scale.to_string())
        .arg("--seed-coalesce-ms")
        .arg(coalesce.as_millis().to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "seed worker {scale}x: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    Ok(serde_json::from_str(line)?)
}

/// Reads every expected value from every node (first valid answer), retrying the
/// unmatched for up to 120 s; returns the (node, value) pairs still unmatched.
async fn read_back(net: &Testnet, expected: &[(PublicKey, Vec<u8>)]) -> Vec<(usize, usize)> {
    let mut pending: Vec<(usize, usize)> = (0..net.nodes.len())
        .flat_map(|n| (0..expected.len()).map(move |e| (n, e)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pending.is_empty() && Instant::now() < deadline {
        pending = futures::stream::iter(pending)
            .map(|(n, e)| async move {
                let (edge, want) = &expected[e];
                let got = net.nodes[n].get(*edge, b"tp", GetMode::First).await;
                let ok = got.is_ok_and(|g| g.value() == Some(&want[..]));
                (!ok).then_some((n, e))
            })
            .buffer_unordered(64)
            .filter_map(futures::future::ready)
            .collect()
            .await;
    }
    pending
}

/// Appends one transport (`hub` to `other`) to the hub's list and puts the new full list
/// through the mirror, measuring the bytes it sends; then reads it back from every node.
async fn append_one(
    net: &Testnet,
    network_up: Instant,
    store: &MemoryTransportStore,
    publisher: &Mirror,
    hub: PublicKey,
    other: &str,
) -> AppendFigures {
    let before = encode_transport_list(&store.list(&hub));
    store.register(&[TransportEntry::new(
        &hub.to_hex(),
        other,
        "stcpr",
        "automatic",
    )]);
    let value = encode_transport_list(&store.list(&hub));
    // Past the nodes' joining rounds (a self-lookup and a members exchange each, the
    // last JOINING_ROUNDS after a node joined: 20 of them, tens of KB in a second), so
    // that the second measured holds the append's traffic and the idle network's.
    let joined = network_up + dht_node::JOINING_ROUNDS + Duration::from_secs(2);
    tokio::time::sleep_until(joined.into()).await;
    settle().await;
    // The idle network's bytes per second (pings and the like), over 5 s.
    let idle_span = Duration::from_secs(5);
    let (idle0, idle_proto0) = (lo().0, protocol_bytes_out(net));
    tokio::time::sleep(idle_span).await;
    let idle_bytes = lo().0.saturating_sub(idle0) / idle_span.as_secs();
    let idle_substream: f64 = protocol_delta(&idle_proto0, &protocol_bytes_out(net))
        .iter()
        .map(|(_, mb)| mb * 1e6)
        .sum();
    let idle_substream_bytes = (idle_substream / idle_span.as_secs_f64()).round() as u64;
    // The measurement: the second from the put.
    let span = Duration::from_secs(1);
    let (lo0, proto0) = (lo(), protocol_bytes_out(net));
    let started = Instant::now();
    let outcome = publisher
        .mirror(hub, MirrorAction::Publish(value.clone()))
        .await;
    tokio::time::sleep(span.saturating_sub(started.elapsed())).await;
    let (lo1, proto1) = (lo(), protocol_bytes_out(net));
    let bytes_sent = lo1.0.saturating_sub(lo0.0);
    let packets = lo1.1.saturating_sub(lo0.1);
    let by_protocol = protocol_delta(&proto0, &proto1);
    let bytes_of = |items: bool| -> u64 {
        by_protocol
            .iter()
            .filter(|(p, _)| (p == "items") == items)
            .map(|(_, mb)| (mb * 1e6).round() as u64)
            .sum()
    };
    let (substream_bytes, other_substream_bytes) = (bytes_of(true), bytes_of(false));
    let failures = read_back(net, &[(hub, value.clone())]).await.len();
    AppendFigures {
        list_bytes: before.len(),
        appended_bytes: value.len() - before.len(),
        bytes_sent,
        packets,
        idle_bytes,
        idle_substream_bytes,
        substream_bytes,
        other_substream_bytes,
        stored: outcome.stored,
        failures,
    }
}

/// Substream bytes sent by all the nodes, per application protocol
/// (`dht_protocol_bytes_total{direction="out"}`): every substream byte is sent by one
/// node, so this is the substreams' traffic in both directions.
fn protocol_bytes_out(net: &Testnet) -> BTreeMap<String, f64> {
    let mut by: BTreeMap<String, f64> = Default::default();
    for node in &net.nodes {
        for line in node.metrics().encode().lines() {
            let Some(rest) = line.strip_prefix("dht_protocol_bytes_total{") else {
                continue;
            };
            if !rest.contains("direction=\"out\"") {
                continue;
            }
            let protocol = rest
                .split("protocol=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("?");
            let value: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            *by.entry(protocol.to_string()).or_default() += value;
        }
    }
    by
}

/// MB per protocol sent between two readings of [`protocol_bytes_out`].
fn protocol_delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> Vec<(String, f64)> {
    after
        .iter()
        .map(|(p, b)| (p.clone(), (b - before.get(p).copied().unwrap_or(0.0)) / 1e6))
        .collect()
}

/// An anti-entropy pass over unchanged lists: every edge put again.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReassertFigures {
    pub puts: usize,
    pub secs: f64,
    /// Loopback bytes until the traffic settled (all layers, all nodes).
    pub bytes_sent: u64,
    /// Substream bytes of all protocols.
    pub substream_bytes: u64,
    /// Edges without a majority, and (edge, node) reads not byte-identical afterwards.
    pub failures: usize,
}

/// One append to the hub edge's list, measured alone after the seed's mirroring.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AppendFigures {
    /// The list's value before the append.
    pub list_bytes: usize,
    /// Bytes the append added to the value.
    pub appended_bytes: usize,
    /// Loopback bytes sent in the second from the put (all layers, all nodes, idle
    /// traffic of that second included).
    pub bytes_sent: u64,
    /// Loopback packets sent in that second.
    #[serde(default)]
    pub packets: u64,
    /// Loopback bytes the idle network sends per second, averaged over 5 s measured
    /// just before.
    pub idle_bytes: u64,
    /// Substream bytes (all protocols) the idle network sends per second, same 5 s.
    #[serde(default)]
    pub idle_substream_bytes: u64,
    /// Item-protocol substream bytes in the second from the put.
    pub substream_bytes: u64,
    /// Substream bytes of the other protocols (kad, identify, ping) in that second.
    #[serde(default)]
    pub other_substream_bytes: u64,
    /// Replicas that stored it.
    pub stored: usize,
    /// Nodes that did not read the new list back byte-identical.
    pub failures: usize,
}

/// The markdown table of the seed scenario.
pub fn markdown(rows: &[SeedFigures]) -> String {
    let window = rows.first().map_or(0, |r| r.coalesce_ms);
    let isolated = rows.iter().all(|r| r.isolated);
    let mut s = format!(
        "\n### The seed's scenario at scale (`TransportMirror` into a 20-node network)\n\n\
         1x: the transport discovery's store receives the snapshot in batches of 500 (as \
         visors re-register during a cycle), back to back; after each the adapter queues \
         the touched edges (`enqueue_batch`), and `flush` waits for the last puts. The \
         adapter coalesces an edge's updates within its window ({window} ms: \
         `[mirror] coalesce_ms`), then reads that edge's FULL list once and puts it (one item \
         per edge, salt \"tp\"), waiting for a majority of replicas: an edge touched by \
         several batches within the window is put once; the node sends a replica the \
         items of several concurrent puts in one request once 4 requests to it are in \
         flight (`put_batch`). 10x: the whole snapshot is in the \
         store and the adapter's anti-entropy pass mirrors each edge once (a discovery \
         starting to mirror). Converged: every edge's full list, byte-identical to the v3 \
         HTTP response, read (first valid answer) from every one of the nodes. With k = 20 \
         on 20 nodes every node is a replica, so most reads are local. Bytes: {what}, from \
         the first batch until the traffic settled after the last put (stragglers \
         included), all layers (substreams, multistream-select, yamux, noise, TCP/IP \
         headers) and all nodes; each edge's item goes to 19 other replicas. Of them, the \
         substream bytes of each application protocol (`dht_protocol_bytes_total`, sent, \
         all nodes: the rest is yamux, noise and TCP/IP framing).\n\n\
         | scale | transports | edges | hubs x list | largest value | puts | mirrored in | items/s | every edge from every node after | bytes on the wire | packets | of which item protocol / kad / other | value bytes (one copy) | failures |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        what = if isolated {
            "loopback bytes sent in the run's own network namespace (nothing else on its `lo`)"
        } else {
            "loopback bytes sent (the machine's `lo`, shared with whatever else ran: an upper bound)"
        },
    );
    for r in rows {
        s.push_str(&format!(
            "| {}x | {} | {} | {} x {} | {:.1} KB | {} | {:.1} s | {:.0} | {:.1} s | {:.1} MB | {:.0}k | {:.1} / {:.1} / {:.1} MB | {:.1} MB | {} |\n",
            r.scale,
            r.transports,
            r.edges,
            r.hubs,
            r.biggest_list,
            r.largest_value_bytes as f64 / 1024.0,
            r.puts,
            r.mirror_s,
            r.items_per_s,
            r.converged_s,
            r.bytes_sent as f64 / 1e6,
            r.packets_sent as f64 / 1e3,
            r.protocol_mb("items"),
            r.protocol_mb("kad"),
            r.by_protocol
                .iter()
                .filter(|(p, _)| p != "items" && p != "kad")
                .map(|(_, mb)| mb)
                .sum::<f64>(),
            r.value_bytes as f64 / 1e6,
            r.failures
        ));
    }
    let reasserts: Vec<_> = rows
        .iter()
        .filter_map(|r| r.reassert.as_ref().map(|a| (r.scale, a)))
        .collect();
    if !reasserts.is_empty() {
        s.push_str(
            "\nThe adapter's anti-entropy pass once more after convergence, nothing having \
             changed (a discovery re-asserting every key): each edge is put again with a \
             new seq, and each replica gets a patch against the value it holds (the \
             publisher remembers the last value it put at up to 65,536 targets and 64 MB); \
             then every edge is read back from every node, byte-identical. Bytes as above.\n\n\
             | scale | puts | in | bytes on the wire | substream bytes | failures |\n\
             |---|---|---|---|---|---|\n",
        );
        for (scale, a) in reasserts {
            s.push_str(&format!(
                "| {scale}x | {} | {:.1} s | {:.1} MB | {:.1} MB | {} |\n",
                a.puts,
                a.secs,
                a.bytes_sent as f64 / 1e6,
                a.substream_bytes as f64 / 1e6,
                a.failures
            ));
        }
    }
    let appends: Vec<_> = rows.iter().filter_map(|r| r.append.as_ref()).collect();
    if !appends.is_empty() {
        s.push_str(
            "\nOne transport appended to the hub edge's list after the 1x mirroring, put by \
             the mirror to the 20 nodes (a patch against the list the replicas hold), once \
             the nodes' joining rounds are over (a self-lookup and a members exchange each, \
             the last 44 s after joining): bytes and packets on the wire in the second from \
             the put, all layers and all nodes, idle traffic of that second included; the \
             idle network's bytes per second (pings and the like), averaged over 5 s just \
             before; substream bytes of the item protocol and of the others in that second; \
             then the new list is read back from every node, byte-identical.\n\n\
             | list before | appended | bytes on the wire | packets | idle network, per s (substreams) | item-protocol substream bytes | other substream bytes | replicas stored | read-back failures |\n\
             |---|---|---|---|---|---|---|---|---|\n",
        );
        for a in appends {
            s.push_str(&format!(
                "| {:.1} KB | {} B | {:.1} KB | {} | {:.1} KB ({:.1} KB) | {:.1} KB | {:.1} KB | {} | {} |\n",
                a.list_bytes as f64 / 1024.0,
                a.appended_bytes,
                a.bytes_sent as f64 / 1e3,
                a.packets,
                a.idle_bytes as f64 / 1e3,
                a.idle_substream_bytes as f64 / 1e3,
                a.substream_bytes as f64 / 1e3,
                a.other_substream_bytes as f64 / 1e3,
                a.stored,
                a.failures
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_have_their_sizes_and_hubs() {
        let one = snapshot(4_615, 1_300, 1, 552);
        assert_eq!(one.len(), 4_615);
        let ten = snapshot(46_150, 13_000, 10, 1_000);
        assert_eq!(ten.len(), 46_150);
        let hub: PublicKey = key(13_000 + 1).parse().unwrap();
        let on_hub = ten
            .iter()
            .filter(|e| e.edges.contains(&hub.to_hex()))
            .count();
        assert!(on_hub >= 1_000, "{on_hub}");
    }
}
