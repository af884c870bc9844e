//! The publishing side shared by every discovery adapter: sign a key's FULL value (or a
//! tombstone) with the discovery's mirror key, put it, and learn from the put report
//! whether a majority of the responsible replicas stored it. The caller is answered as
//! soon as that majority holds; replicas that were down or slow are brought up to date
//! from a background queue (the private `laggards` module). Only a put that found no
//! majority is retried inline, and an item this node itself refuses (a value over the
//! limit) never.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dht_core::{MutableItem, PublicKey, ReasonCode, SigningKey};
use dht_node::{Node, NodeError, ReplicaResult};
use futures::StreamExt;
use parking_lot::Mutex;
use serde::Serialize;
use tracing::{debug, instrument, warn};

use crate::laggards::Laggards;

/// Sequence numbers that keep increasing across restarts and across several replicas of
/// a discovery service: microseconds of wall-clock time, and never less than one above
/// the last one handed out by this process.
#[derive(Debug, Default)]
pub struct SeqClock {
    last: AtomicU64,
}

impl SeqClock {
    /// The next sequence number.
    pub fn next(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(actual) => last = actual,
            }
        }
    }
}

/// Inline retries of a mirror publish that no majority of the replicas stored.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all.
    pub attempts: u32,
    /// Wait before the second attempt; doubled each time.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            backoff: Duration::from_millis(200),
        }
    }
}

/// How long the adapters ([`crate::adapters`]) hold a touched key before publishing it,
/// so that the updates to one key within it are put once, with the latest value.
pub const DEFAULT_COALESCE_WINDOW: Duration = Duration::from_millis(250);

/// What to write for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorAction {
    /// The key's full value.
    Publish(Vec<u8>),
    /// The key has nothing any more: a tombstone.
    Delete,
}

/// What happened to one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyOutcome {
    /// The subject (edge, visor, DMSG key), hex.
    pub subject: String,
    /// "publish" or "delete".
    pub action: &'static str,
    /// Seq written.
    pub seq: u64,
    /// Replicas that stored it (this node included).
    pub stored: usize,
    /// Replicas that rejected it, with their reasons.
    pub rejected: Vec<String>,
    /// Replicas that did not answer.
    pub failed: usize,
    /// Responsible replicas that were down or did not answer (they get the item from the
    /// background queue or by hand-off when they return).
    pub unreachable: usize,
    /// Attempts made.
    pub attempts: u32,
    /// Whether a majority of the responsible replicas stored it.
    pub ok: bool,
}

/// Signs and publishes full per-key values under one salt.
pub struct Mirror {
    node: Node,
    key: SigningKey,
    salt: Bytes,
    seq: SeqClock,
    retry: RetryPolicy,
    /// Subjects this mirror holds a live value for (for anti-entropy).
    live: Mutex<HashSet<PublicKey>>,
    concurrency: usize,
    laggards: Arc<Laggards>,
    coalesce: Duration,
}

impl Mirror {
    /// A mirror publishing under `salt`, signing with `key` (which the network's full
    /// nodes list as an authorized publisher for that salt).
    ///
    /// With a data directory, the queue of keys waiting for laggard replicas is saved
    /// there (`mirror-queue-<salt hex>.json`) and resumed at the next start.
    pub fn new(node: Node, key: SigningKey, salt: impl Into<Bytes>) -> Self {
        let salt = salt.into();
        let path = node
            .config()
            .data_dir
            .as_ref()
            .map(|d| d.join(format!("mirror-queue-{}.json", hex::encode(&salt))));
        let laggards = Arc::new(Laggards::load(
            path,
            node.validator().policy().max_value_len,
        ));
        laggards.ensure_worker(&node);
        Mirror {
            node,
            key,
            salt,
            seq: SeqClock::default(),
            retry: RetryPolicy::default(),
            live: Mutex::new(HashSet::new()),
            concurrency: 32,
            laggards,
            coalesce: DEFAULT_COALESCE_WINDOW,
        }
    }

    /// Keys waiting in the background queue for laggard replicas.
    pub fn laggards(&self) -> usize {
        self.laggards.len()
    }

    /// Sets the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets how long the adapters publishing through this mirror hold a touched key
    /// before reading and putting its value ([`DEFAULT_COALESCE_WINDOW`]; zero: at once).
    /// [`Mirror::mirror`] itself never waits.
    pub fn with_coalesce_window(mut self, window: Duration) -> Self {
        self.coalesce = window;
        self
    }

    /// How long the adapters hold a touched key before publishing it.
    pub fn coalesce_window(&self) -> Duration {
        self.coalesce
    }

    /// The salt.
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    /// The mirror's public key.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// The node publishing.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Subjects the DHT may hold a live value of this mirror for: those published by this
    /// process, and those signed by this mirror's key in the local store.
    /// The store is scanned on the blocking pool ([`Node::with_store`]).
    pub async fn known_subjects(&self) -> HashSet<PublicKey> {
        let mut out = self.live.lock().clone();
        let me = self.key.public_key();
        let salt = self.salt.clone();
        let scan = self.node.with_store(move |store| {
            dht_core::store::iter_all(store)
                .flatten()
                .filter(|s| s.item.salt == salt && s.item.signer == me && !s.item.is_tombstone())
                .map(|s| s.item.subject)
                .collect::<Vec<_>>()
        });
        match scan.await {
            Ok(Some(subjects)) => out.extend(subjects),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "scanning the store for this mirror's subjects failed")
            }
        }
        out
    }

    /// Publishes one key, retrying with backoff while no replica stored it.
    #[instrument(skip(self, action), fields(salt = %String::from_utf8_lossy(&self.salt), %subject))]
    pub async fn mirror(&self, subject: PublicKey, action: MirrorAction) -> KeyOutcome {
        let mut attempt = 0;
        let mut wait = self.retry.backoff;
        loop {
            attempt += 1;
            let seq = self.seq.next();
            let item = match &action {
                MirrorAction::Publish(v) => {
                    MutableItem::sign(&self.key, subject, self.salt.clone(), seq, v.clone())
                }
                MirrorAction::Delete => {
                    MutableItem::tombstone(&self.key, subject, self.salt.clone(), seq)
                }
            };
            let mut outcome = KeyOutcome {
                subject: subject.to_hex(),
                action: match action {
                    MirrorAction::Publish(_) => "publish",
                    MirrorAction::Delete => "delete",
                },
                seq,
                stored: 0,
                rejected: Vec::new(),
                failed: 0,
                unreachable: 0,
                attempts: attempt,
                ok: false,
            };
            let mut superseded = false;
            let mut refused_here = false;
            match self.node.put(item.clone()).await {
                Ok(report) => {
                    outcome.stored = report.stored_on().len()
                        + usize::from(matches!(report.local, Some(ReplicaResult::Stored(_))));
                    outcome.failed = report.failed().len();
                    outcome.unreachable = report.unreachable.len();
                    for (peer, code) in report.rejected_by() {
                        superseded |= matches!(code, ReasonCode::Stale | ReasonCode::Equivocation);
                        outcome.rejected.push(format!("{peer}: {code}"));
                    }
                    outcome.ok = report.majority_stored();
                    // Replicas still answering when the put returned finish in the
                    // put's own background; those down or failed are the queue's.
                    let laggards = !report.unreachable.is_empty();
                    if outcome.ok && laggards && !superseded {
                        self.laggards.push(&self.node, item);
                    } else if outcome.ok {
                        self.laggards.settled(&item);
                    }
                }
                Err(NodeError::Rejected(r)) => {
                    // This node's own rules refuse it: no replica would take it either.
                    refused_here = true;
                    outcome.rejected.push(format!("local: {}: {r}", r.code()));
                }
                Err(e) => {
                    warn!(error = %e, "mirror publish failed");
                    outcome.rejected.push(format!("local: {e}"));
                }
            }
            if outcome.ok {
                let mut live = self.live.lock();
                match action {
                    MirrorAction::Publish(_) => live.insert(subject),
                    MirrorAction::Delete => live.remove(&subject),
                };
            }
            // Retry inline only while no majority holds it; laggards behind a majority
            // are the background queue's, and a newer value from another replica of the
            // discovery is not worth retrying.
            if outcome.ok || superseded || refused_here || attempt >= self.retry.attempts {
                debug!(
                    ok = outcome.ok,
                    attempts = attempt,
                    stored = outcome.stored,
                    unreachable = outcome.unreachable,
                    "mirrored"
                );
                return outcome;
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }

    /// Publishes many keys concurrently; one outcome per key, in no particular order.
    pub async fn mirror_all(&self, work: Vec<(PublicKey, MirrorAction)>) -> Vec<KeyOutcome> {
        futures::stream::iter(work)
            .map(|(s, a)| self.mirror(s, a))
            .buffer_unordered(self.concurrency)
            .collect()
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::SeqClock;

    #[test]
    fn seq_clock_is_strictly_increasing_and_time_based() {
        let c = SeqClock::default();
        let a = c.next();
        let b = c.next();
        assert!(b > a);
        // Time-based: a fresh clock (a restart, another replica) starts above `a` too.
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(SeqClock::default().next() > b);
    }
}
