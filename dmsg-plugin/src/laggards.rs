//! The mirror's background queue: keys whose latest signed item a majority of the
//! responsible replicas holds but some replica does not yet (it was down, slow, or did
//! not answer). The discovery got its answer already; a worker re-sends the same signed
//! item with backoff until every responsible replica holds it, a newer item replaced it,
//! or the attempts run out (hinted hand-off and republish still cover the rest). The
//! queue is saved in the node's data directory, so it survives a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use dht_core::wire::DecodeLimits;
use dht_core::{MutableItem, PublicKey, ReasonCode};
use dht_node::{Node, NodeError, ReplicaResult};
use parking_lot::Mutex;
use tracing::{debug, warn};

/// Wait before the first re-send; doubled per attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between re-sends of one key.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Re-sends of one item before it is left to hand-off and republish.
const MAX_ATTEMPTS: u32 = 12;
/// How often the worker looks for due keys.
const TICK: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
struct Entry {
    item: MutableItem,
    attempts: u32,
    due: tokio::time::Instant,
}

/// Keys waiting for laggard replicas, by subject.
#[derive(Debug)]
pub(crate) struct Laggards {
    entries: Mutex<HashMap<PublicKey, Entry>>,
    path: Option<PathBuf>,
    worker: Mutex<bool>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    /// Wire-encoded signed items, hex.
    items: Vec<String>,
}

impl Laggards {
    /// A queue saved at `path` (none: in memory only), loaded from it if present.
    pub(crate) fn load(path: Option<PathBuf>, max_value_len: usize) -> Self {
        let mut entries = HashMap::new();
        if let Some(p) = &path {
            match std::fs::read(p) {
                Ok(bytes) => match serde_json::from_slice::<Saved>(&bytes) {
                    Ok(saved) => {
                        let limits = DecodeLimits { max_value_len };
                        for hex_item in saved.items {
                            let item = hex::decode(&hex_item)
                                .ok()
                                .and_then(|b| dht_core::wire::decode_item(&b, &limits).ok());
                            match item {
                                Some(item) => {
                                    entries.insert(
                                        item.subject,
                                        Entry {
                                            item,
                                            attempts: 0,
                                            due: tokio::time::Instant::now(),
                                        },
                                    );
                                }
                                None => {
                                    warn!(path = %p.display(), "skipping an undecodable queued item")
                                }
                            }
                        }
                    }
                    Err(e) => {
                        warn!(path = %p.display(), error = %e, "ignoring an unreadable mirror queue")
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!(path = %p.display(), error = %e, "cannot read the mirror queue"),
            }
        }
        Laggards {
            entries: Mutex::new(entries),
            path,
            worker: Mutex::new(false),
        }
    }

    /// Keys waiting.
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Queues `item` (replacing an older one of the same subject) and makes sure the
    /// worker runs.
    pub(crate) fn push(self: &Arc<Self>, node: &Node, item: MutableItem) {
        {
            let mut entries = self.entries.lock();
            let newer_queued = entries
                .get(&item.subject)
                .is_some_and(|e| dht_core::precedence(&e.item, &item).is_gt());
            if !newer_queued {
                entries.insert(
                    item.subject,
                    Entry {
                        item,
                        attempts: 0,
                        due: tokio::time::Instant::now() + FIRST_BACKOFF,
                    },
                );
            }
        }
        self.save();
        self.ensure_worker(node);
    }

    /// A newer item of `subject` reached every responsible replica: drop what is queued
    /// for it unless it is newer still.
    pub(crate) fn settled(&self, item: &MutableItem) {
        let removed = {
            let mut entries = self.entries.lock();
            match entries.get(&item.subject) {
                Some(e) if !dht_core::precedence(&e.item, item).is_gt() => {
                    entries.remove(&item.subject);
                    true
                }
                _ => false,
            }
        };
        if removed {
            self.save();
        }
    }

    /// Starts the worker if it is not running (and a runtime is there to run it).
    pub(crate) fn ensure_worker(self: &Arc<Self>, node: &Node) {
        let mut running = self.worker.lock();
        if *running || self.entries.lock().is_empty() {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        *running = true;
        tokio::spawn(work(Arc::downgrade(self), node.clone()));
    }

    fn save(&self) {
        let Some(path) = &self.path else { return };
        let saved = Saved {
            items: self
                .entries
                .lock()
                .values()
                .map(|e| hex::encode(dht_core::wire::encode_item(&e.item)))
                .collect(),
        };
        let write = || -> std::io::Result<()> {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(&saved)?)?;
            std::fs::rename(tmp, path)
        };
        if let Err(e) = write() {
            warn!(path = %path.display(), error = %e, "could not save the mirror queue");
        }
    }
}

/// Whether a re-send is finished with: every responsible replica holds the item (or a
/// newer one), or a newer item superseded it.
fn complete(report: &dht_node::PutReport) -> bool {
    let superseded = report
        .rejected_by()
        .iter()
        .any(|(_, c)| matches!(c, ReasonCode::Stale | ReasonCode::Equivocation));
    superseded || (report.majority_stored() && report.unreachable.is_empty())
}

async fn work(queue: Weak<Laggards>, node: Node) {
    loop {
        tokio::time::sleep(TICK).await;
        let Some(q) = queue.upgrade() else { return };
        let now = tokio::time::Instant::now();
        let due: Vec<MutableItem> = q
            .entries
            .lock()
            .values()
            .filter(|e| e.due <= now)
            .map(|e| e.item.clone())
            .collect();
        for item in due {
            let result = node.put(item.clone()).await;
            let done = match &result {
                Ok(report) => complete(report),
                Err(NodeError::Shutdown) => {
                    *q.worker.lock() = false;
                    return;
                }
                Err(NodeError::Rejected(_)) => true,
                Err(_) => false,
            };
            let mut entries = q.entries.lock();
            if let Some(e) = entries.get_mut(&item.subject) {
                if e.item != item {
                    continue;
                }
                e.attempts += 1;
                if done || e.attempts >= MAX_ATTEMPTS {
                    if !done {
                        debug!(subject = %item.subject, "laggards left to hand-off and republish");
                    }
                    entries.remove(&item.subject);
                } else {
                    let shift = e.attempts.min(8);
                    e.due = tokio::time::Instant::now()
                        + FIRST_BACKOFF.saturating_mul(1 << shift).min(MAX_BACKOFF);
                }
            }
            if let Ok(report) = &result {
                let stored = report
                    .replicas
                    .iter()
                    .filter(|r| matches!(r.result, ReplicaResult::Stored(_)))
                    .count();
                debug!(subject = %item.subject, stored, done, "re-sent to laggards");
            }
        }
        q.save();
        let mut running = q.worker.lock();
        if q.entries.lock().is_empty() {
            *running = false;
            return;
        }
    }
}
