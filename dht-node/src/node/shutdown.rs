//! Stopping a node: the routing table is saved, the tasks stop, and the store is let go
//! of so that a restart on the same data directory can open it.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::Node;
use crate::network::Command;
use crate::NodeError;

/// How long shutdown waits for in-flight work to let go of the store.
const STORE_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

impl Node {
    /// Saves the routing table to the data directory (if any).
    pub fn save_routing_table(&self) -> Result<(), NodeError> {
        self.inner
            .state
            .save_routing_table(self.inner.config.data_dir.as_deref())
    }

    /// Stops the node: saves the routing table, stops maintenance and the swarm.
    pub async fn shutdown(&self) {
        if let Err(e) = self.save_routing_table() {
            warn!(error = %e, "could not save the routing table");
        }
        let _ = self.inner.client.command(Command::Shutdown).await;
        let tasks: Vec<JoinHandle<()>> = self.inner.tasks.lock().drain(..).collect();
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        // Release the store (and the redb file): wait, briefly, for in-flight work (an
        // inbound request being answered) to let go of it, so that a restart on the
        // same data directory can open it.
        if let Some(store) = self.inner.state.take_store() {
            let weak = Arc::downgrade(&store);
            drop(store);
            let deadline = tokio::time::Instant::now() + STORE_RELEASE_TIMEOUT;
            while weak.strong_count() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        info!(peer_id = %self.inner.peer_id, "node stopped");
    }
}
