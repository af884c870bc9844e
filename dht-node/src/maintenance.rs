//! Background work of a full node: catch-up sync at start, hand-off of items to peers
//! that became responsible for them, the republish pass, the expiry sweep and saving the
//! routing table. Everything streams from the store page by page; nothing collects the
//! whole store into memory.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use dht_core::store::RecordStore;
use dht_core::wire::DecodeLimits;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use libp2p::kad::KBucketKey;
use libp2p::PeerId;
use rand::Rng;
use tokio::sync::mpsc;
use tracing::{debug, info, instrument, warn};

use crate::events::NodeEvent;
use crate::node::Node;
use crate::protocol::{
    envelope, request_proto, response_proto, PutItemProto, PutRequestProto, RequestProto,
    SyncRequestProto,
};

/// Bytes per hand-off / republish batch.
const BATCH_BYTES: usize = 1024 * 1024;
/// Items per sync page requested.
const SYNC_PAGE: u32 = 1024;
/// Wait after a new peer appears before handing off (several joins share one pass).
const HANDOFF_DEBOUNCE: Duration = Duration::from_millis(300);

/// Runs the maintenance loop until the node shuts down.
pub async fn run(node: Node) {
    let mut events = node.subscribe();
    tokio::spawn(catch_up(node.clone()));
    let config = node.config().clone();
    let mut sweep = tokio::time::interval(config.sweep_interval);
    let mut save = tokio::time::interval(config.save_interval);
    let mut new_peers: HashSet<PeerId> = HashSet::new();
    let handoff_at = tokio::time::sleep(Duration::from_secs(3600 * 24 * 365));
    tokio::pin!(handoff_at);
    let republish_at = tokio::time::sleep(jittered(config.republish_interval));
    tokio::pin!(republish_at);
    let mut busy: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(NodeEvent::PeerAdded(p)) => {
                    new_peers.insert(p);
                    handoff_at.as_mut().reset(tokio::time::Instant::now() + HANDOFF_DEBOUNCE);
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => debug!(n, "maintenance lagged on events"),
                Err(_) => break,
            },
            _ = &mut handoff_at => {
                handoff_at.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(3600 * 24 * 365));
                if busy.as_ref().is_some_and(|t| !t.is_finished()) {
                    // Try again once the running pass is done.
                    handoff_at.as_mut().reset(tokio::time::Instant::now() + HANDOFF_DEBOUNCE);
                    continue;
                }
                let peers = std::mem::take(&mut new_peers);
                busy = Some(tokio::spawn(push_responsible(node.clone(), Some(peers))));
            }
            _ = &mut republish_at => {
                republish_at.as_mut().reset(tokio::time::Instant::now() + jittered(config.republish_interval));
                if busy.as_ref().is_none_or(|t| t.is_finished()) {
                    busy = Some(tokio::spawn(push_responsible(node.clone(), None)));
                }
            }
            _ = sweep.tick() => sweep_once(&node).await,
            _ = save.tick() => {
                if let Err(e) = node.save_routing_table() {
                    warn!(error = %e, "could not save the routing table");
                }
            }
        }
    }
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.9..1.1))
}

async fn sweep_once(node: &Node) {
    let Some(store) = node.store() else {
        return;
    };
    let r = tokio::task::spawn_blocking(move || {
        let removed = store.sweep_expired(100_000)?;
        Ok::<_, dht_core::StoreError>((removed, store.stats()?))
    })
    .await;
    match r {
        Ok(Ok((removed, stats))) => {
            if removed > 0 {
                debug!(removed, "expired items swept");
            }
            node.metrics().items_stored.set(stats.items as i64);
            node.metrics().store_bytes.set(stats.bytes);
        }
        Ok(Err(e)) => warn!(error = %e, "sweep failed"),
        Err(e) => warn!(error = %e, "sweep task failed"),
    }
}

/// Pulls, from the closest neighbours, every item this node is responsible for, in
/// change order, page by page.
#[instrument(skip_all, fields(peer_id = %node.peer_id()))]
pub async fn catch_up(node: Node) {
    // Wait for the routing table to fill (bootstrap), up to a few seconds.
    let view = &node.inner.shared.view;
    for _ in 0..50 {
        if view.len() >= node.config().replication.min(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the bootstrap round add more neighbours before choosing whom to ask.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let own = KBucketKey::from(node.peer_id());
    let mut peers: Vec<PeerId> = view.snapshot().into_keys().collect();
    peers.sort_by_key(|p| own.distance(&KBucketKey::from(*p)));
    peers.truncate(node.config().replication);
    let mut pulls: FuturesUnordered<_> = peers.iter().map(|&p| pull_from(&node, p)).collect();
    let mut total = 0;
    while let Some(n) = pulls.next().await {
        total += n;
    }
    info!(items = total, peers = peers.len(), "catch-up finished");
    let _ = node.inner.shared.events.send(NodeEvent::CatchUpFinished {
        items: total,
        peers: peers.len(),
    });
}

async fn pull_from(node: &Node, peer: PeerId) -> usize {
    let Some(store) = node.store() else {
        return 0;
    };
    let limits = DecodeLimits {
        max_value_len: node.validator().policy().max_value_len,
    };
    let mut since = 0;
    let mut accepted = 0;
    loop {
        let request = RequestProto {
            kind: Some(request_proto::Kind::Sync(SyncRequestProto {
                since,
                limit: SYNC_PAGE,
                salt: Default::default(),
            })),
        };
        let page = match node.request(peer, request).await {
            Ok(r) => match r.kind {
                Some(response_proto::Kind::Sync(s)) => s,
                other => {
                    debug!(%peer, ?other, "sync refused");
                    return accepted;
                }
            },
            Err(e) => {
                debug!(%peer, error = %e, "sync failed");
                return accepted;
            }
        };
        let validator = node.validator().clone();
        let store = store.clone();
        let done = page.done || page.next <= since;
        since = page.next;
        let items = page.items;
        let n = tokio::task::spawn_blocking(move || {
            let batch: Vec<_> = items
                .into_iter()
                .filter_map(|env| {
                    let env = env.into_envelope(&limits).ok()?;
                    let v = validator.validate(env.item).ok()?;
                    Some((
                        v,
                        dht_core::PutOptions {
                            cas: None,
                            expires_at_ms: env.expires_at_ms,
                        },
                    ))
                })
                .collect();
            store
                .put_batch(batch)
                .map(|r| r.iter().filter(|o| o.is_ok()).count())
                .unwrap_or(0)
        })
        .await
        .unwrap_or(0);
        accepted += n;
        if done {
            return accepted;
        }
    }
}

/// Sends stored items to the peers responsible for them. With `only`, just to those
/// peers (hand-off to newcomers); without, to every responsible peer (republish).
/// Items carry their expiry: replicas never extend an item's life.
pub async fn push_responsible(node: Node, only: Option<HashSet<PeerId>>) {
    let Some(store) = node.store() else {
        return;
    };
    let (tx, mut rx) = mpsc::channel::<(PeerId, Vec<PutItemProto>)>(16);
    let local = node.peer_id();
    let k = node.config().replication;
    let shared = node.inner.shared.clone();
    let producer = tokio::task::spawn_blocking(move || {
        let mut batches: HashMap<PeerId, (Vec<PutItemProto>, usize)> = HashMap::new();
        let mut items = 0usize;
        for stored in dht_core::store::iter_all(&*store as &dyn RecordStore) {
            let Ok(stored) = stored else { break };
            let target = stored.item.target();
            let mut sent = false;
            for peer in shared.view.responsible(&target, k, local, None) {
                if peer == local || only.as_ref().is_some_and(|o| !o.contains(&peer)) {
                    continue;
                }
                let entry = batches.entry(peer).or_default();
                entry.1 += stored.item.stored_size() + 64;
                entry.0.push(PutItemProto {
                    envelope: Some(envelope(&stored.item, stored.expires_at_ms)),
                    cas_kind: 0,
                    cas_seq: 0,
                });
                sent = true;
                if entry.1 >= BATCH_BYTES {
                    let full = std::mem::take(&mut entry.0);
                    entry.1 = 0;
                    if tx.blocking_send((peer, full)).is_err() {
                        return items;
                    }
                }
            }
            items += usize::from(sent);
        }
        for (peer, (batch, _)) in batches {
            if !batch.is_empty() && tx.blocking_send((peer, batch)).is_err() {
                break;
            }
        }
        items
    });
    let node_ref = &node;
    let mut sends = FuturesUnordered::new();
    while let Some((peer, items)) = rx.recv().await {
        sends.push(async move {
            let r = node_ref
                .request(
                    peer,
                    RequestProto {
                        kind: Some(request_proto::Kind::Put(PutRequestProto { items })),
                    },
                )
                .await;
            if let Err(e) = r {
                debug!(%peer, error = %e, "hand-off batch failed");
            }
        });
        // Keep a bounded number of batches in flight.
        while sends.len() >= 8 {
            sends.next().await;
        }
    }
    while sends.next().await.is_some() {}
    let items = producer.await.unwrap_or(0);
    if items > 0 {
        debug!(items, handoff = true, "items pushed to responsible peers");
        let _ = node
            .inner
            .shared
            .events
            .send(NodeEvent::HandedOff { items });
    }
}
