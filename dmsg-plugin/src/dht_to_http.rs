//! DHT to HTTP: the pusher that copies values stored in the DHT back into an HTTP
//! discovery, switchable per salt (the opposite direction of [`crate::mirror_api`]). It
//! is off for "tp" and "svc" (their DHT values are full lists, which the
//! single-entry POST endpoints cannot take); it is useful for "dmsg", whose DHT value is
//! exactly the entry the DMSG discovery accepts.

use std::collections::HashMap;

use dht_core::{SALT_SERVICES, SALT_TRANSPORTS};
use dht_node::{Node, NodeEvent};
use tracing::{debug, warn};

/// Where items of each salt are pushed (salt -> URL to POST the value to).
#[derive(Debug, Clone, Default)]
pub struct PusherConfig {
    /// Enabled salts and their endpoints.
    pub endpoints: HashMap<String, String>,
}

/// A failure configuring the pusher.
#[derive(Debug, thiserror::Error)]
pub enum PusherError {
    /// "tp" and "svc" values cannot round-trip through the HTTP APIs.
    #[error("pushing salt {0:?} back to HTTP is not supported: its DHT value is a full list")]
    NotRoundTrippable(String),
}

impl PusherConfig {
    /// Checks that no list-valued salt is enabled.
    pub fn validate(&self) -> Result<(), PusherError> {
        for salt in self.endpoints.keys() {
            if salt.as_bytes() == SALT_TRANSPORTS || salt.as_bytes() == SALT_SERVICES {
                return Err(PusherError::NotRoundTrippable(salt.clone()));
            }
        }
        Ok(())
    }
}

/// Runs the pusher until the node's event stream closes: every value stored locally under
/// an enabled salt is POSTed to that salt's endpoint.
pub async fn run(node: Node, config: PusherConfig) {
    if config.endpoints.is_empty() {
        return;
    }
    let http = reqwest::Client::new();
    let mut events = node.subscribe();
    loop {
        let target = match events.recv().await {
            Ok(NodeEvent::ItemStored {
                target,
                tombstone: false,
                ..
            }) => target,
            Ok(_) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                warn!(n, "pusher lagged behind the node's events");
                continue;
            }
            Err(_) => return,
        };
        let stored = match node.with_store(move |s| s.get(&target)).await {
            Ok(Some(Ok(Some(stored)))) => stored,
            Ok(None) => return,
            _ => continue,
        };
        let salt = String::from_utf8_lossy(&stored.item.salt).into_owned();
        let (Some(url), Some(value)) = (config.endpoints.get(&salt), stored.item.value()) else {
            continue;
        };
        match http
            .post(url)
            .header("content-type", "application/json")
            .body(value.to_vec())
            .send()
            .await
        {
            Ok(r) => debug!(%url, status = %r.status(), "pushed to HTTP discovery"),
            Err(e) => warn!(%url, error = %e, "push to HTTP discovery failed"),
        }
    }
}
