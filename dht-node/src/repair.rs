//! Read repair: after a best-of-quorum get, the best copy goes to every responsible
//! holder whose copy lost to it or who had none (this node's own store included), in
//! the background.

use dht_core::PutOptions;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use libp2p::PeerId;
use tracing::debug;

use crate::node::Node;
use crate::report::{Found, ReplicaResult};

impl Node {
    /// Sends `best` to `targets` (None: this node) in the background.
    pub(crate) fn spawn_repair(&self, targets: Vec<Option<PeerId>>, best: Found) {
        let node = self.clone();
        tokio::spawn(async move {
            let opts = PutOptions {
                cas: None,
                expires_at_ms: Some(best.expires_at_ms).filter(|t| *t > 0),
            };
            if targets.contains(&None) {
                if let Ok(v) = node.inner.validator.validate(best.item.clone()) {
                    let _ = node.store_locally(v, opts).await;
                }
            }
            let remote = targets.iter().flatten().copied();
            let mut sends: FuturesUnordered<_> = remote
                .map(|peer| {
                    let node = &node;
                    let item = &best.item;
                    async move { node.send_item(peer, item, opts).await }
                })
                .collect();
            let mut repaired = 0;
            while let Some(r) = sends.next().await {
                repaired += usize::from(matches!(r, ReplicaResult::Stored(_)));
            }
            debug!(repaired, "read repair");
        });
    }
}
