//! Background work of a full node: catch-up sync at start (only what changed since the
//! last sync with each peer), exchange of missed changes with a peer that comes back,
//! re-replication when a peer is declared dead, hand-off of items to peers that became
//! responsible for them, the republish pass, the expiry sweep and saving the routing
//! table. Everything streams from the store page by page; nothing collects the whole
//! store into memory.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dht_core::store::RecordStore;
use dht_core::wire::DecodeLimits;
use dht_core::{Admission, Target};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use libp2p::kad::KBucketKey;
use libp2p::PeerId;
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::mpsc;
use tracing::{debug, info, instrument, warn};

use crate::events::NodeEvent;
use crate::node::{Node, CURSORS_FILE};
use crate::protocol::{
    envelope, request_proto, response_proto, PutItemProto, PutRequestProto, RequestProto,
    SyncRequestProto,
};

/// Room kept free in a batch frame for the request's own framing.
const BATCH_MARGIN: usize = 16 * 1024;
/// Items per sync page requested.
const SYNC_PAGE: u32 = 1024;
/// Wait after a new peer appears before handing off (several joins share one pass).
const HANDOFF_DEBOUNCE: Duration = Duration::from_millis(300);

/// Runs the maintenance loop until the node shuts down.
pub async fn run(node: Node) {
    let mut events = node.subscribe();
    let cursors = Arc::new(SyncCursors::load(&node));
    tokio::spawn(catch_up(node.clone(), cursors.clone()));
    let mut departed: HashSet<PeerId> = HashSet::new();
    let rereplicate_at = tokio::time::sleep(Duration::from_secs(3600 * 24 * 365));
    tokio::pin!(rereplicate_at);
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
                Ok(NodeEvent::PeerDeparted(p)) => {
                    departed.insert(p);
                    rereplicate_at.as_mut().reset(tokio::time::Instant::now() + HANDOFF_DEBOUNCE);
                }
                Ok(NodeEvent::PeerReturned(p)) => {
                    // Exchange what changed while apart: pull its changes since the last
                    // sync, and hand it back what it is responsible for (the copies this
                    // node held for it as a stand-in, and anything it missed).
                    let node = node.clone();
                    let cursors = cursors.clone();
                    tokio::spawn(async move {
                        let pulled = pull_from(&node, p, &cursors).await;
                        cursors.save(&node);
                        debug!(peer = %p, items = pulled.len(), "pulled changes from a returning peer");
                        push_responsible(node, Some(HashSet::from([p]))).await;
                    });
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
            _ = &mut rereplicate_at => {
                rereplicate_at.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(3600 * 24 * 365));
                let gone = std::mem::take(&mut departed);
                tokio::spawn(rereplicate(node.clone(), gone));
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

/// Sync cursors: for each peer, the epoch of its store and the change sequence up to
/// which this node has pulled from it. Saved in the data directory.
pub(crate) struct SyncCursors {
    cursors: Mutex<HashMap<PeerId, (u64, u64)>>,
    path: Option<PathBuf>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedCursor {
    peer_id: String,
    epoch: u64,
    cursor: u64,
}

impl SyncCursors {
    fn load(node: &Node) -> Self {
        let path = node
            .config()
            .data_dir
            .as_ref()
            .map(|d| d.join(CURSORS_FILE));
        let mut cursors = HashMap::new();
        if let Some(p) = &path {
            match std::fs::read(p) {
                Ok(bytes) => match serde_json::from_slice::<Vec<SavedCursor>>(&bytes) {
                    Ok(saved) => {
                        for c in saved {
                            if let Ok(peer) = c.peer_id.parse() {
                                cursors.insert(peer, (c.epoch, c.cursor));
                            }
                        }
                    }
                    Err(e) => {
                        warn!(path = %p.display(), error = %e, "ignoring unreadable sync cursors: the next catch-up is a full one")
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!(path = %p.display(), error = %e, "cannot read sync cursors"),
            }
        }
        SyncCursors {
            cursors: Mutex::new(cursors),
            path,
        }
    }

    fn get(&self, peer: &PeerId) -> Option<(u64, u64)> {
        self.cursors.lock().get(peer).copied()
    }

    fn set(&self, peer: PeerId, epoch: u64, cursor: u64) {
        self.cursors.lock().insert(peer, (epoch, cursor));
    }

    fn save(&self, _node: &Node) {
        let Some(path) = &self.path else { return };
        let saved: Vec<SavedCursor> = self
            .cursors
            .lock()
            .iter()
            .map(|(p, (epoch, cursor))| SavedCursor {
                peer_id: p.to_string(),
                epoch: *epoch,
                cursor: *cursor,
            })
            .collect();
        let write = || -> std::io::Result<()> {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(&saved)?)?;
            std::fs::rename(tmp, path)
        };
        if let Err(e) = write() {
            warn!(path = %path.display(), error = %e, "could not save sync cursors");
        }
    }
}

/// Pulls, from the closest neighbours, what changed since the last sync with each of
/// them among the items this node is responsible for; then reads trust the local copy.
#[instrument(skip_all, fields(peer_id = %node.peer_id()))]
pub(crate) async fn catch_up(node: Node, cursors: Arc<SyncCursors>) {
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
    let mut pulls: FuturesUnordered<_> = peers
        .iter()
        .map(|&p| pull_from(&node, p, &cursors))
        .collect();
    let mut changed: HashSet<Target> = HashSet::new();
    while let Some(targets) = pulls.next().await {
        changed.extend(targets);
    }
    cursors.save(&node);
    node.inner
        .shared
        .caught_up
        .store(true, std::sync::atomic::Ordering::Release);
    info!(
        items = changed.len(),
        peers = peers.len(),
        "catch-up finished"
    );
    let _ = node.inner.shared.events.send(NodeEvent::CatchUpFinished {
        items: changed.len(),
        peers: peers.len(),
    });
}

/// Pulls from `peer` the items this node is responsible for that changed since the
/// cursor; returns the targets whose local copy changed.
async fn pull_from(node: &Node, peer: PeerId, cursors: &SyncCursors) -> HashSet<Target> {
    let mut changed = HashSet::new();
    let Some(store) = node.store() else {
        return changed;
    };
    let limits = DecodeLimits {
        max_value_len: node.validator().policy().max_value_len,
    };
    let (mut epoch, mut since) = cursors.get(&peer).unwrap_or((0, 0));
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
                    return changed;
                }
            },
            Err(e) => {
                debug!(%peer, error = %e, "sync failed");
                return changed;
            }
        };
        if page.epoch != epoch && since != 0 {
            // The peer's store is not the one the cursor points into: start over.
            epoch = page.epoch;
            since = 0;
            continue;
        }
        epoch = page.epoch;
        let validator = node.validator().clone();
        let store = store.clone();
        let done = page.done || page.next <= since;
        since = page.next;
        let items = page.items;
        let accepted = tokio::task::spawn_blocking(move || {
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
            let targets: Vec<Target> = batch.iter().map(|(v, _)| v.target()).collect();
            store
                .put_batch(batch)
                .map(|r| {
                    r.iter()
                        .zip(targets)
                        .filter(|(o, _)| matches!(o, Ok(a) if *a != Admission::Refresh))
                        .map(|(_, t)| t)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .await
        .unwrap_or_default();
        changed.extend(accepted);
        cursors.set(peer, epoch, since);
        if done {
            return changed;
        }
    }
}

/// After peers were declared dead: every item this node holds that one of them was
/// responsible for goes to the peers that took their places. Of the remaining holders,
/// the two closest to the target send it, so a copy goes out even if one of them is
/// down too.
pub(crate) async fn rereplicate(node: Node, departed: HashSet<PeerId>) {
    if departed.is_empty() {
        return;
    }
    let local = node.peer_id();
    let k = node.config().replication;
    let shared = node.inner.shared.clone();
    let gone: Vec<PeerId> = departed.into_iter().collect();
    let sent = push_items(node.clone(), move |target| {
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
    node.metrics().items_rereplicated.inc_by(sent as u64);
    if sent > 0 {
        info!(items = sent, "re-replicated the items of departed peers");
    }
}

/// Sends stored items to the peers responsible for them. With `only`, just to those
/// peers (hand-off to newcomers, hand-back to a returning peer); without, to every
/// responsible peer (republish). Items carry their expiry: replicas never extend an
/// item's life.
pub(crate) async fn push_responsible(node: Node, only: Option<HashSet<PeerId>>) {
    let local = node.peer_id();
    let k = node.config().replication;
    let shared = node.inner.shared.clone();
    let items = push_items(node.clone(), move |target| {
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
        let _ = node
            .inner
            .shared
            .events
            .send(NodeEvent::HandedOff { items });
    }
}

/// Bytes an item takes in a put or sync frame (an upper bound).
pub(crate) fn encoded_size(item: &dht_core::MutableItem) -> usize {
    item.stored_size() + 128
}

/// Streams the store and sends each item to the peers `recipients` names for its
/// target, batched per peer; returns how many items went to at least one peer.
async fn push_items<F>(node: Node, recipients: F) -> usize
where
    F: Fn(&Target) -> Vec<PeerId> + Send + 'static,
{
    let Some(store) = node.store() else {
        return 0;
    };
    let (tx, mut rx) = mpsc::channel::<(PeerId, Vec<PutItemProto>)>(16);
    // Every batch fits in one frame of the item protocol.
    let batch_bytes = node.config().max_message_len().saturating_sub(BATCH_MARGIN);
    let producer = tokio::task::spawn_blocking(move || {
        let mut batches: HashMap<PeerId, (Vec<PutItemProto>, usize)> = HashMap::new();
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
                    if tx.blocking_send((*peer, full)).is_err() {
                        return items;
                    }
                }
                entry.1 += size;
                entry.0.push(PutItemProto {
                    envelope: Some(envelope(&stored.item, stored.expires_at_ms)),
                    cas_kind: 0,
                    cas_seq: 0,
                });
            }
            items += usize::from(!peers.is_empty());
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
                debug!(%peer, error = %e, "push batch failed");
            }
        });
        // Keep a bounded number of batches in flight.
        while sends.len() >= 8 {
            sends.next().await;
        }
    }
    while sends.next().await.is_some() {}
    producer.await.unwrap_or(0)
}
