//! Helpers shared by the integration tests.

use std::time::{Duration, Instant};

/// Polls `f` every 50 ms until it holds; fails the test naming `what` once `timeout`
/// passed. Returns how long it took.
pub async fn wait_for<F: FnMut() -> bool>(what: &str, timeout: Duration, mut f: F) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}
