//! Cross-implementation test: a js-libp2p peer (`@libp2p/kad-dht` under
//! `/skywire-dht/kad/1.0.0`) reads an item from a real testnet with the standard kad
//! `GET_VALUE`, and its `PUT_VALUE`s are validated with the dht-core rules.
//!
//! Needs `node` (v20+) and the peer's packages: `npm ci --prefix dht-node/tests/interop-js`
//! (CI does this in `.ci/run`). Without them the test prints SKIPPED and passes.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use dht_core::wire::{decode_item, encode_item, DecodeLimits};
use dht_core::{MutableItem, SigningKey, Target};
use dht_node::KadRejectLabels;
use dht_node::{Node, Testnet};

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop-js")
}

/// Why the JS peer cannot run here, if it cannot.
fn js_missing() -> Option<String> {
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => return Some("`node` is not on PATH".into()),
    }
    let kad = js_dir().join("node_modules/@libp2p/kad-dht/package.json");
    if !kad.exists() {
        return Some(format!("{} is missing", kad.display()));
    }
    None
}

fn rejected(nodes: &[Node], reason: &str) -> u64 {
    nodes
        .iter()
        .map(|n| {
            n.metrics()
                .kad_put_rejected
                .get_or_create(&KadRejectLabels {
                    reason: reason.into(),
                })
                .get()
        })
        .sum()
}

fn stored_seq(node: &Node, target: &Target) -> Option<u64> {
    node.store()?.get(target).ok()?.map(|s| s.item.seq)
}

/// Polls `f` until it holds or `timeout` passes.
async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_js_libp2p_peer_reads_items_with_get_value_and_its_bad_puts_are_refused() {
    if let Some(why) = js_missing() {
        println!(
            "SKIPPED interop test: {why}; install with `npm ci --prefix dht-node/tests/interop-js` (node v20+)"
        );
        return;
    }
    let net = Testnet::builder(4).build().await.unwrap();
    assert!(net.wait_for_routing(3, Duration::from_secs(10)).await);
    let key = SigningKey::generate_ed25519();
    let item = MutableItem::sign(&key, key.public_key(), "svc", 1, &b"[\"js\"]"[..]);
    let target = item.target();
    let report = net.nodes[1].put(item.clone()).await.unwrap();
    assert!(!report.stored_on().is_empty(), "{}", report.to_json());
    // A newer item the JS peer will PUT_VALUE under its own key.
    let newer = MutableItem::sign(&key, key.public_key(), "svc", 2, &b"[\"js2\"]"[..]);
    let bogus = Target([0x5a; 32]);

    let bootstrap = net.bootstrap_addr().unwrap().to_string();
    let args = vec![
        js_dir().join("peer.mjs").display().to_string(),
        bootstrap,
        hex::encode(target.as_bytes()),
        hex::encode(bogus.as_bytes()),
        hex::encode(encode_item(&newer)),
    ];
    let output = tokio::task::spawn_blocking(move || Command::new("node").args(&args).output())
        .await
        .unwrap()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    println!("--- JS peer stdout\n{stdout}--- JS peer stderr\n{stderr}---");
    assert!(output.status.success(), "JS peer failed: {}", output.status);
    let line = |name: &str| -> String {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} line"))
            .to_owned()
    };

    // The JS side got the real signed item: it decodes and validates for its target.
    let bytes = hex::decode(line("RECORD")).unwrap();
    let got = decode_item(&bytes, &DecodeLimits::default()).unwrap();
    let verified = net.nodes[0].validator().validate_for(&target, got).unwrap();
    assert_eq!(verified.item(), &item);

    // Its puts were acknowledged by kad (the protocol cannot refuse)...
    let acked: usize = line("PUT_GARBAGE").parse().unwrap();
    assert!(acked > 0, "no peer acknowledged the garbage put");
    // ...but garbage and a moved item were refused and counted, and nothing is stored.
    assert!(
        eventually(Duration::from_secs(5), || rejected(&net.nodes, "malformed")
            >= 1
            && rejected(&net.nodes, "target_mismatch") >= 1)
        .await,
        "malformed {} target_mismatch {}",
        rejected(&net.nodes, "malformed"),
        rejected(&net.nodes, "target_mismatch")
    );
    for n in &net.nodes {
        assert_eq!(stored_seq(n, &bogus), None);
    }
    let text = net.nodes[0].metrics().encode();
    assert!(text.contains("dht_kad_put_rejected_total"), "{text}");

    // A valid item PUT_VALUE'd by the JS side is validated and stored.
    let acked: usize = line("PUT_ITEM").parse().unwrap();
    assert!(acked > 0);
    assert!(
        eventually(Duration::from_secs(5), || net
            .nodes
            .iter()
            .any(|n| stored_seq(n, &target) == Some(2)))
        .await
    );
    net.shutdown().await;
}
