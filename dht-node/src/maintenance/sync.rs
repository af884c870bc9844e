//! Sync: cursors into each peer's store (saved in the data directory), the start-up
//! catch-up from the closest neighbours, and pulls of what changed on one peer.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dht_core::{Admission, PutOptions, Target};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use libp2p::kad::KBucketKey;
use libp2p::PeerId;
use parking_lot::Mutex;
use tracing::{debug, info, instrument, warn};

use super::Maintenance;
use crate::data_dir::CURSORS_FILE;
use crate::events::NodeEvent;
use crate::protocol::{Request, Response, SyncPage, SyncRequest};

/// Items per sync page requested.
const SYNC_PAGE: u32 = 1024;

/// Sync cursors: for each peer, the epoch of its store and the change sequence up to
/// which this node has pulled from it. Saved in the data directory.
pub(super) struct SyncCursors {
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
    /// The cursors saved in `data_dir` (none without one).
    pub(super) fn load(data_dir: Option<&Path>) -> Self {
        let path = data_dir.map(|d| d.join(CURSORS_FILE));
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

    pub(super) fn save(&self) {
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
#[instrument(skip_all, fields(peer_id = %m.peer_id()))]
pub(super) async fn catch_up(m: Arc<Maintenance>, cursors: Arc<SyncCursors>) {
    // Wait for the routing table to fill (bootstrap), up to a few seconds.
    let view = &m.state.view;
    for _ in 0..50 {
        if view.len() >= m.config().replication.min(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the bootstrap round add more neighbours before choosing whom to ask.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let own = KBucketKey::from(m.peer_id());
    let mut peers: Vec<PeerId> = view.snapshot().into_keys().collect();
    peers.sort_by_key(|p| own.distance(&KBucketKey::from(*p)));
    peers.truncate(m.config().replication);
    let mut pulls: FuturesUnordered<_> =
        peers.iter().map(|&p| pull_from(&m, p, &cursors)).collect();
    let mut changed: HashSet<Target> = HashSet::new();
    while let Some(targets) = pulls.next().await {
        changed.extend(targets);
    }
    cursors.save();
    m.state.set_caught_up();
    info!(
        items = changed.len(),
        peers = peers.len(),
        "catch-up finished"
    );
    m.state.emit(NodeEvent::CatchUpFinished {
        items: changed.len(),
        peers: peers.len(),
    });
}

/// Pulls from `peer` the items this node is responsible for that changed since the
/// cursor; returns the targets whose local copy changed.
pub(super) async fn pull_from(
    m: &Maintenance,
    peer: PeerId,
    cursors: &SyncCursors,
) -> HashSet<Target> {
    let mut changed = HashSet::new();
    let Some(store) = m.store() else {
        return changed;
    };
    let limits = *m.client.limits();
    let (mut epoch, mut since) = cursors.get(&peer).unwrap_or((0, 0));
    loop {
        let request = Request::Sync(SyncRequest {
            since,
            limit: SYNC_PAGE,
            salt: Default::default(),
        });
        let frame = match m.client.send(peer, request.into()).await {
            Ok(frame) => frame,
            Err(e) => {
                debug!(%peer, error = %e, "sync failed");
                return changed;
            }
        };
        // A page decodes up to a thousand items: off the async threads.
        let page = tokio::task::spawn_blocking(move || Response::decode(frame, &limits)).await;
        let page: SyncPage = match page {
            Ok(Ok(Response::Sync(page))) => page,
            Ok(other) => {
                debug!(%peer, ?other, "sync refused");
                return changed;
            }
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
        let validator = m.validator().clone();
        let store = store.clone();
        let done = page.done || page.next <= since;
        since = page.next;
        let items = page.items;
        let accepted = tokio::task::spawn_blocking(move || {
            let batch: Vec<_> = items
                .into_iter()
                .filter_map(|env| {
                    let env = env.ok()?;
                    let v = validator.validate(env.item).ok()?;
                    Some((
                        v,
                        PutOptions {
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
