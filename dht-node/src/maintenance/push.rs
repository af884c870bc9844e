//! Pushes of stored items to the peers responsible for them: re-replication after a
//! peer was declared dead, hand-off to newcomers and back to a returning peer, and the
//! periodic republish. Streams the store and batches per peer, each batch one frame.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use dht_core::store::RecordStore;
use dht_core::{PutOptions, Target};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use libp2p::PeerId;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::Maintenance;
use crate::events::NodeEvent;
use crate::protocol::{encoded_size, ItemRequest, PutItem, Request};

/// Room kept free in a batch frame for the request's own framing.
const BATCH_MARGIN: usize = 16 * 1024;
/// Batches in flight at once.
const BATCHES_IN_FLIGHT: usize = 8;

/// After peers were declared dead: every item this node holds that one of them was
/// responsible for goes to the peers that took their places. Of the remaining holders,
/// the two closest to the target send it, so a copy goes out even if one of them is
/// down too.
pub(super) async fn rereplicate(m: Arc<Maintenance>, departed: HashSet<PeerId>) {
    if departed.is_empty() {
        return;
    }
    let local = m.peer_id();
    let k = m.config().replication;
    let shared = m.state.clone();
    let gone: Vec<PeerId> = departed.into_iter().collect();
    let sent = push_items(m.clone(), move |target| {
        let now = shared.view.responsible(target, k, local, &[]);
        if !now.contains(&local) {
            return Vec::new();
        }
        let before = shared.view.responsible(target, k, local, &gone);
        if !before.iter().any(|p| gone.contains(p)) {
            return Vec::new();
        }
        let holders: Vec<&PeerId> = now.iter().filter(|p| before.contains(p)).collect();
        if !holders.iter().take(2).any(|p| **p == local) {
            return Vec::new();
        }
        now.iter()
            .filter(|p| !before.contains(p) && !shared.liveness.is_down(p))
            .copied()
            .collect()
    })
    .await;
    m.metrics().items_rereplicated.inc_by(sent as u64);
    if sent > 0 {
        info!(items = sent, "re-replicated the items of departed peers");
    }
}

/// Sends stored items to the peers responsible for them. With `only`, just to those
/// peers (hand-off to newcomers, hand-back to a returning peer); without, to every
/// responsible peer (republish). Items carry their expiry: replicas never extend an
/// item's life.
pub(super) async fn push_responsible(m: Arc<Maintenance>, only: Option<HashSet<PeerId>>) {
    let local = m.peer_id();
    let k = m.config().replication;
    let shared = m.state.clone();
    let items = push_items(m.clone(), move |target| {
        shared
            .view
            .responsible(target, k, local, &[])
            .into_iter()
            .filter(|p| *p != local && only.as_ref().is_none_or(|o| o.contains(p)))
            .filter(|p| !shared.liveness.is_down(p))
            .collect()
    })
    .await;
    if items > 0 {
        debug!(items, handoff = true, "items pushed to responsible peers");
        m.state.emit(NodeEvent::HandedOff { items });
    }
}

/// Streams the store and sends each item to the peers `recipients` names for its
/// target, batched per peer; returns how many items went to at least one peer.
async fn push_items<F>(m: Arc<Maintenance>, recipients: F) -> usize
where
    F: Fn(&Target) -> Vec<PeerId> + Send + 'static,
{
    let Some(store) = m.store() else {
        return 0;
    };
    let (tx, mut rx) = mpsc::channel::<(PeerId, ItemRequest)>(16);
    // Every batch fits in one frame of the item protocol.
    let batch_bytes = m.config().max_message_len().saturating_sub(BATCH_MARGIN);
    let producer = tokio::task::spawn_blocking(move || {
        let mut batches: HashMap<PeerId, (Vec<PutItem>, usize)> = HashMap::new();
        let request = |items: Vec<PutItem>| ItemRequest::from(Request::put(items));
        let mut items = 0usize;
        for stored in dht_core::store::iter_all(&*store as &dyn RecordStore) {
            let Ok(stored) = stored else { break };
            let peers = recipients(&stored.item.target());
            let size = encoded_size(&stored.item);
            for peer in &peers {
                let entry = batches.entry(*peer).or_default();
                if !entry.0.is_empty() && entry.1 + size > batch_bytes {
                    let full = std::mem::take(&mut entry.0);
                    entry.1 = 0;
                    if tx.blocking_send((*peer, request(full))).is_err() {
                        return items;
                    }
                }
                entry.1 += size;
                entry.0.push(PutItem {
                    item: stored.item.clone(),
                    opts: PutOptions {
                        cas: None,
                        expires_at_ms: (stored.expires_at_ms != 0).then_some(stored.expires_at_ms),
                    },
                });
            }
            items += usize::from(!peers.is_empty());
        }
        for (peer, (batch, _)) in batches {
            if !batch.is_empty() && tx.blocking_send((peer, request(batch))).is_err() {
                break;
            }
        }
        items
    });
    let client = &m.client;
    let mut sends = FuturesUnordered::new();
    while let Some((peer, request)) = rx.recv().await {
        sends.push(async move {
            if let Err(e) = client.send(peer, request).await {
                debug!(%peer, error = %e, "push batch failed");
            }
        });
        // Keep a bounded number of batches in flight.
        while sends.len() >= BATCHES_IN_FLIGHT {
            sends.next().await;
        }
    }
    while sends.next().await.is_some() {}
    producer.await.unwrap_or(0)
}
