//! Label sets of the metrics stay bounded whatever publishers send.

use dht_core::{MutableItem, SigningKey};
use dht_node::Testnet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_salts_are_counted_as_other() {
    let net = Testnet::builder(1).build().await.unwrap();
    let node = &net.nodes[0];
    let key = SigningKey::generate_ed25519();
    for (i, salt) in ["tp", "svc", "dmsg", "invented-1", "invented-2", "x"]
        .iter()
        .enumerate()
    {
        let item = MutableItem::sign(&key, key.public_key(), *salt, i as u64 + 1, &b"[]"[..]);
        let report = node.put(item).await.unwrap();
        assert!(
            matches!(report.local, Some(dht_node::ReplicaResult::Stored(_))),
            "{salt}: {report:?}"
        );
    }
    let text = node.metrics().encode();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("dht_items_accepted_by_salt_total{"))
        .collect();
    for (salt, n) in [("tp", 1), ("svc", 1), ("dmsg", 1), ("other", 3)] {
        assert!(
            series.contains(
                &format!("dht_items_accepted_by_salt_total{{salt=\"{salt}\"}} {n}").as_str()
            ),
            "{salt}: {series:?}"
        );
    }
    assert_eq!(series.len(), 4, "{series:?}");
    net.shutdown().await;
}

/// docs/metrics.md and the Grafana dashboard name every metric a node exports, and the
/// dashboard queries no metric that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_and_the_dashboard_cover_every_metric() {
    let net = Testnet::builder(1).build().await.unwrap();
    let text = net.nodes[0].metrics().encode();
    net.shutdown().await;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let docs = std::fs::read_to_string(format!("{root}/docs/metrics.md")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/grafana/dht-node.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    // Exposed names: counters with _total, histograms with _bucket.
    let mut exported = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        exported.push(match kind {
            "counter" => format!("{name}_total"),
            "histogram" => format!("{name}_bucket"),
            _ => name.to_string(),
        });
    }
    assert!(exported.len() >= 10, "{exported:?}");
    // Every metric registered in the source, with or without series yet.
    let source = std::fs::read_to_string(format!("{root}/dht-node/src/metrics.rs")).unwrap();
    let registered: Vec<&str> = source
        .split("r.register(")
        .skip(1)
        .map(|rest| rest.split('"').nth(1).unwrap())
        .collect();
    assert!(registered.len() >= 19, "{registered:?}");
    for name in &registered {
        let name = format!("dht_{name}");
        assert!(
            docs.contains(&format!("`{name}")),
            "{name} not in docs/metrics.md"
        );
        assert!(
            exprs.iter().any(|e| e.contains(name.as_str())),
            "{name} not on the dashboard"
        );
    }
    for name in &exported {
        let base = name.trim_end_matches("_bucket");
        assert!(
            docs.contains(&format!("`{base}`")),
            "{base} not in docs/metrics.md"
        );
        assert!(
            exprs.iter().any(|e| e.contains(name.as_str())),
            "{name} not on the dashboard"
        );
    }
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
            if let Some(name) = word.strip_prefix("dht_") {
                let base = name
                    .strip_suffix("_total")
                    .or_else(|| name.strip_suffix("_bucket"))
                    .unwrap_or(name);
                assert!(registered.contains(&base), "{word} in {e} is not a metric");
            }
        }
    }
}
