//! The seed's scenario at scale: the production transport snapshot (4,615 transports, a
//! hub edge with 552) and a 10x one (46,150 transports, ten hub edges with 1,000 each),
//! registered in the transport discovery's store and mirrored through the transport
//! adapter into a 20-node network; then every edge's FULL list is read back from every
//! node.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dht_core::{Policy, PublicKey, SigningKey};
use dht_node::{GetMode, NodeConfig, Testnet};
use dmsg_plugin::fakes::MemoryTransportStore;
use dmsg_plugin::formats::{encode_transport_list, TransportEntry};
use dmsg_plugin::{Mirror, TransportMirror};
use futures::StreamExt;
use sha2::Digest;

/// Figures of one scale.
#[derive(Debug, Clone)]
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
    /// Loopback bytes sent during the mirroring (all layers, all nodes).
    pub bytes_sent: u64,
    /// Substream bytes sent per application protocol (MB), all nodes.
    pub by_protocol: Vec<(String, f64)>,
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

/// Runs one scale (1: production, 10: ten times larger) on `nodes` nodes.
pub async fn run(scale: usize, nodes: usize) -> anyhow::Result<SeedFigures> {
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
    net.wait_for_routing(nodes.saturating_sub(1).min(20), Duration::from_secs(30))
        .await;
    let store = Arc::new(MemoryTransportStore::default());
    let mirror = TransportMirror::new(
        store.clone(),
        Mirror::new(net.nodes[0].clone(), tpd_key, "tp"),
    );
    let lo0 = crate::loopback_tx().0;
    let started = Instant::now();
    let mut failed_keys = 0;
    if scale >= 10 {
        // The whole snapshot at once, mirrored by the adapter's anti-entropy pass (one
        // full list per edge): what a discovery does when it first starts mirroring.
        store.register(&entries);
        let outcome = mirror
            .anti_entropy()
            .await
            .map_err(|e| anyhow::anyhow!("anti-entropy: {e:?}"))?;
        failed_keys += outcome.failed().len();
    } else {
        for batch in entries.chunks(500) {
            store.register(batch);
            failed_keys += mirror.on_batch(batch).await.failed().len();
        }
    }
    let mirror_s = started.elapsed().as_secs_f64();
    let bytes_sent = crate::loopback_tx().0.saturating_sub(lo0);
    let by_protocol = protocol_bytes_out(&net);
    let expected: Vec<(PublicKey, Vec<u8>)> = edges
        .iter()
        .map(|e| (*e, encode_transport_list(&store.list(e))))
        .collect();
    let biggest_list = edges.iter().map(|e| store.list(e).len()).max().unwrap_or(0);
    let largest_value_bytes = expected.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    let value_bytes = expected.iter().map(|(_, v)| v.len() as u64).sum();
    // Every edge's full list from every node; the unmatched are retried until a deadline.
    let mut pending: Vec<(usize, usize)> = (0..nodes)
        .flat_map(|n| (0..expected.len()).map(move |e| (n, e)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pending.is_empty() && Instant::now() < deadline {
        let expected = &expected;
        let net = &net;
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
    let converged_s = started.elapsed().as_secs_f64();
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
        bytes_sent,
        by_protocol,
        value_bytes,
        failures: pending.len() + failed_keys,
    })
}

/// Substream bytes sent by all the nodes, per application protocol
/// (`dht_protocol_bytes_total{direction="out"}`), in MB.
fn protocol_bytes_out(net: &Testnet) -> Vec<(String, f64)> {
    let mut by: std::collections::BTreeMap<String, f64> = Default::default();
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
            *by.entry(protocol.to_string()).or_default() += value / 1e6;
        }
    }
    by.into_iter().collect()
}

/// The markdown table of the seed scenario.
pub fn markdown(rows: &[SeedFigures]) -> String {
    let mut s = String::from(
        "\n### The seed's scenario at scale (`TransportMirror` into a 20-node network)\n\n\
         1x: the transport discovery's store receives the snapshot in batches of 500 (as \
         visors re-register during a cycle); the adapter re-reads each touched edge once per \
         batch and puts that edge's FULL list (one item per edge, salt \"tp\"), waiting for \
         a majority of replicas, so an edge touched by several batches is put several times. \
         10x: the whole snapshot is in the store and the adapter's anti-entropy pass mirrors \
         each edge once (a discovery starting to mirror). Converged: every edge's full list, byte-identical to the v3 \
         HTTP response, read (first valid answer) from every one of the nodes. With k = 20 on \
         20 nodes every node is a replica, so most reads are local. Bytes: loopback bytes \
         sent during the mirroring, all layers and all nodes (each edge's item goes to ~20 \
         replicas, each touched again in later batches); of them, the substream bytes of \
         each application protocol (`dht_protocol_bytes_total`, sent, all nodes: the rest \
         is noise, yamux and TCP/IP framing).\n\n\
         | scale | transports | edges | hubs x list | largest value | mirrored in | items/s | every edge from every node after | bytes sent | of which item protocol / kad / other | value bytes (one copy) | failures |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {}x | {} | {} | {} x {} | {:.1} KB | {:.1} s | {:.0} | {:.1} s | {:.1} MB | {:.1} / {:.1} / {:.1} MB | {:.1} MB | {} |\n",
            r.scale,
            r.transports,
            r.edges,
            r.hubs,
            r.biggest_list,
            r.largest_value_bytes as f64 / 1024.0,
            r.mirror_s,
            r.items_per_s,
            r.converged_s,
            r.bytes_sent as f64 / 1e6,
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
