//! Helpers shared by the integration tests.

use std::time::{Duration, Instant};

/// Polls `f` every 50 ms until it holds; fails the test naming `what` once `timeout`
/// passed. Returns how long it took.
#[allow(dead_code)] // not every test binary polls
pub async fn wait_for<F: FnMut() -> bool>(what: &str, timeout: Duration, mut f: F) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// A counter of the node's metrics (0 if absent).
#[allow(dead_code)] // not every test binary reads metrics
pub fn metric(node: &dht_node::Node, line_start: &str) -> u64 {
    node.metrics()
        .encode()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}
