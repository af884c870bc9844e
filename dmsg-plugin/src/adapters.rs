//! Thin adapters through which the transport, service and DMSG discoveries push FULL
//! per-key lists into the DHT. A batch of changes collects the distinct touched keys;
//! each key's updates are coalesced within a short window ([`Mirror::coalesce_window`],
//! 250 ms by default), after which its full value is read from the discovery's own store
//! ONCE and mirrored once, so batches arriving close together put each key once with its
//! latest value; a key whose value became empty gets a tombstone. `on_batch` waits for
//! the puts, `enqueue_batch` does not (and `flush` publishes what is queued at once and
//! waits). Anti-entropy re-asserts every key of the store and tombstones what the DHT
//! holds but the store no longer has.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::oneshot;

use dht_core::{PublicKey, SALT_DMSG, SALT_SERVICES, SALT_TRANSPORTS};
use serde::Serialize;

use crate::formats::{
    encode_service_list, encode_transport_list, DmsgEntry, ServiceEntry, TransportEntry,
};
use crate::mirror::{KeyOutcome, Mirror, MirrorAction};

/// A failure reading a discovery's store.
#[derive(Debug, thiserror::Error)]
#[error("discovery store: {0}")]
pub struct SourceError(pub String);

/// The transport discovery's store, as the mirror needs it.
pub trait TransportStore: Send + Sync {
    /// The full transport list of an edge.
    fn transports_by_edge(
        &self,
        edge: &PublicKey,
    ) -> impl Future<Output = Result<Vec<TransportEntry>, SourceError>> + Send;
    /// Every edge with at least one transport.
    fn edges(&self) -> impl Future<Output = Result<Vec<PublicKey>, SourceError>> + Send;
}

/// The service discovery's store.
pub trait ServiceStore: Send + Sync {
    /// The full service list of a visor.
    fn services_by_pk(
        &self,
        visor: &PublicKey,
    ) -> impl Future<Output = Result<Vec<ServiceEntry>, SourceError>> + Send;
    /// Every visor with at least one service.
    fn visors(&self) -> impl Future<Output = Result<Vec<PublicKey>, SourceError>> + Send;
}

/// The DMSG discovery's store.
pub trait DmsgStore: Send + Sync {
    /// The entry of a key.
    fn entry(
        &self,
        pk: &PublicKey,
    ) -> impl Future<Output = Result<Option<DmsgEntry>, SourceError>> + Send;
    /// Every key with an entry.
    fn keys(&self) -> impl Future<Output = Result<Vec<PublicKey>, SourceError>> + Send;
}

/// Per-key outcomes of one batch or anti-entropy pass.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchOutcome {
    /// Distinct keys touched.
    pub touched: usize,
    /// Reads of the discovery's store made for this batch.
    pub reads: usize,
    /// Entries in the batch that could not be attributed to a key (bad keys).
    pub skipped: usize,
    /// One outcome per key.
    pub keys: Vec<KeyOutcome>,
}

impl BatchOutcome {
    /// Keys no replica stored, even after retries.
    pub fn failed(&self) -> Vec<&KeyOutcome> {
        self.keys.iter().filter(|k| !k.ok).collect()
    }
}

fn parse_keys<'a>(keys: impl Iterator<Item = &'a str>, skipped: &mut usize) -> BTreeSet<PublicKey> {
    let mut out = BTreeSet::new();
    for k in keys {
        match PublicKey::from_str(k) {
            Ok(pk) => {
                out.insert(pk);
            }
            Err(_) => *skipped += 1,
        }
    }
    out
}

/// Where a mirror reads one key's full value: the shared mechanism behind the three
/// adapters (`None`: the key has nothing, so its DHT item becomes a tombstone).
trait KeySource: Send + Sync {
    fn read(
        &self,
        key: &PublicKey,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, SourceError>> + Send;
    fn all(&self) -> impl Future<Output = Result<Vec<PublicKey>, SourceError>> + Send;
}

/// Mirrors touched keys, and runs anti-entropy, for any [`KeySource`], coalescing each
/// key's updates within the mirror's window ([`Mirror::coalesce_window`]).
///
/// A touched key waits in `pending` until its window (from the first update not yet
/// published) ends; then its value is read from the source ONCE, so a key touched by
/// many batches in the window is put once, with the latest value: a delete after a
/// publish within the window becomes a tombstone, a publish after a delete a value,
/// because the source's state when the window ends decides. A key is never put twice at
/// once: one touched while its put is in flight waits for that put to end, then for what
/// is left of its window. The publishing runs in tasks of its own, so a caller that stops
/// waiting loses nothing.
struct KeyMirror<S> {
    shared: Arc<Shared<S>>,
}

struct Shared<S> {
    source: S,
    mirror: Arc<Mirror>,
    queue: Mutex<Queue>,
}

/// Who waits for a key's next put: `None` when its value could not be read.
type Waiter = oneshot::Sender<Option<KeyOutcome>>;

#[derive(Default)]
struct Queue {
    /// Keys to publish: since when (the first update not published yet), and who waits.
    pending: BTreeMap<PublicKey, (Instant, Vec<Waiter>)>,
    /// Keys whose put is in flight, and who waits for that put.
    in_flight: HashMap<PublicKey, Vec<Waiter>>,
    /// A publish task is waiting for the end of a window.
    armed: bool,
    /// A flush asked for the pending keys now, not at the end of their window.
    urgent: bool,
}

impl<S: KeySource + 'static> KeyMirror<S> {
    fn new(source: S, mirror: Arc<Mirror>) -> Self {
        KeyMirror {
            shared: Arc::new(Shared {
                source,
                mirror,
                queue: Mutex::new(Queue::default()),
            }),
        }
    }

    fn source(&self) -> &S {
        &self.shared.source
    }

    /// Queues `keys` to be published at the end of their window; with `wait`, answers
    /// one receiver per key for the outcome of the put that follows this call.
    fn queue(
        &self,
        keys: impl IntoIterator<Item = PublicKey>,
        wait: bool,
    ) -> Vec<oneshot::Receiver<Option<KeyOutcome>>> {
        let mut receivers = Vec::new();
        let now = Instant::now();
        let mut q = self.shared.queue.lock();
        for key in keys {
            let (_, waiters) = q.pending.entry(key).or_insert_with(|| (now, Vec::new()));
            if wait {
                let (tx, rx) = oneshot::channel();
                waiters.push(tx);
                receivers.push(rx);
            }
        }
        Shared::arm(&self.shared, &mut q);
        receivers
    }

    /// Mirrors `keys` (each read once, when its window ends) and waits for their puts.
    async fn mirror_keys(&self, keys: BTreeSet<PublicKey>, out: &mut BatchOutcome) {
        out.touched += keys.len();
        let receivers = self.queue(keys, true);
        Self::collect(receivers, out).await;
    }

    async fn collect(
        receivers: Vec<oneshot::Receiver<Option<KeyOutcome>>>,
        out: &mut BatchOutcome,
    ) {
        for rx in receivers {
            if let Ok(read) = rx.await {
                out.reads += 1;
                out.keys.extend(read);
            }
        }
    }

    /// Publishes every queued key now and waits for it, and for the puts in flight.
    async fn flush(&self) -> BatchOutcome {
        let mut out = BatchOutcome::default();
        let receivers = {
            let mut q = self.shared.queue.lock();
            let q = &mut *q;
            let mut receivers = Vec::new();
            for waiters in q
                .pending
                .values_mut()
                .map(|(_, w)| w)
                .chain(q.in_flight.values_mut())
            {
                let (tx, rx) = oneshot::channel();
                waiters.push(tx);
                receivers.push(rx);
            }
            out.touched = receivers.len();
            if !q.pending.is_empty() {
                q.urgent = true;
                tokio::spawn(Shared::publish(self.shared.clone(), Duration::ZERO, false));
            }
            receivers
        };
        Self::collect(receivers, &mut out).await;
        out
    }

    /// Keys queued or in flight.
    fn pending(&self) -> usize {
        let q = self.shared.queue.lock();
        q.pending.len() + q.in_flight.len()
    }

    /// Re-asserts every key of the source; tombstones keys the DHT holds from this mirror
    /// but the source no longer has (each key's value is read when it is published: one
    /// the source lacks then becomes a tombstone).
    async fn anti_entropy(&self) -> Result<BatchOutcome, SourceError> {
        let mut out = BatchOutcome::default();
        let mut keys: BTreeSet<PublicKey> = self.shared.source.all().await?.into_iter().collect();
        keys.extend(self.shared.mirror.known_subjects().await);
        self.mirror_keys(keys, &mut out).await;
        Ok(out)
    }
}

impl<S: KeySource + 'static> Shared<S> {
    /// Starts a publish task for the end of the oldest pending key's window, unless one
    /// waits already or nothing is pending.
    fn arm(this: &Arc<Self>, q: &mut Queue) {
        // Keys in flight are armed for when their put ends.
        let ready = q.pending.keys().any(|k| !q.in_flight.contains_key(k));
        if q.armed || !ready {
            return;
        }
        let delay = if q.urgent {
            Duration::ZERO
        } else {
            let oldest = q.pending.values().map(|(since, _)| *since).min();
            let waited = oldest.map_or(Duration::ZERO, |t| t.elapsed());
            this.mirror.coalesce_window().saturating_sub(waited)
        };
        q.armed = true;
        tokio::spawn(Self::publish(this.clone(), delay, true));
    }

    /// After `delay`, publishes every pending key not in flight: reads each value once
    /// and mirrors it, answers the waiters, and re-arms for what was left pending.
    async fn publish(this: Arc<Self>, delay: Duration, armed: bool) {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let ready: Vec<PublicKey> = {
            let mut q = this.queue.lock();
            let q = &mut *q;
            if armed {
                q.armed = false;
            }
            let ready: Vec<PublicKey> = q
                .pending
                .keys()
                .filter(|k| !q.in_flight.contains_key(k))
                .copied()
                .collect();
            for key in &ready {
                let (_, waiters) = q.pending.remove(key).expect("pending");
                q.in_flight.insert(*key, waiters);
            }
            ready
        };
        if !ready.is_empty() {
            let mut work = Vec::with_capacity(ready.len());
            let mut unread = Vec::new();
            for &key in &ready {
                match this.source.read(&key).await {
                    Ok(Some(value)) => work.push((key, MirrorAction::Publish(value))),
                    Ok(None) => work.push((key, MirrorAction::Delete)),
                    Err(e) => {
                        tracing::warn!(%key, error = %e, "cannot read the key's value");
                        unread.push(key);
                    }
                }
            }
            let outcomes = this.mirror.mirror_all(work).await;
            let mut q = this.queue.lock();
            for key in unread {
                for w in q.in_flight.remove(&key).unwrap_or_default() {
                    let _ = w.send(None);
                }
            }
            for outcome in outcomes {
                let key = PublicKey::from_str(&outcome.subject).ok();
                let waiters = key.and_then(|k| q.in_flight.remove(&k)).unwrap_or_default();
                for w in waiters {
                    let _ = w.send(Some(outcome.clone()));
                }
            }
            // None left in flight (an outcome without its key would hold it forever).
            for key in &ready {
                q.in_flight.remove(key);
            }
        }
        let mut q = this.queue.lock();
        if q.pending.is_empty() {
            q.urgent = false;
        }
        Self::arm(&this, &mut q);
    }
}

struct Transports<S>(S);

impl<S: TransportStore> KeySource for Transports<S> {
    async fn read(&self, edge: &PublicKey) -> Result<Option<Vec<u8>>, SourceError> {
        let list = self.0.transports_by_edge(edge).await?;
        Ok((!list.is_empty()).then(|| encode_transport_list(&list)))
    }
    async fn all(&self) -> Result<Vec<PublicKey>, SourceError> {
        self.0.edges().await
    }
}

struct Services<S>(S);

impl<S: ServiceStore> KeySource for Services<S> {
    async fn read(&self, visor: &PublicKey) -> Result<Option<Vec<u8>>, SourceError> {
        let list = self.0.services_by_pk(visor).await?;
        Ok((!list.is_empty()).then(|| encode_service_list(&list)))
    }
    async fn all(&self) -> Result<Vec<PublicKey>, SourceError> {
        self.0.visors().await
    }
}

struct Entries<S>(S);

impl<S: DmsgStore> KeySource for Entries<S> {
    async fn read(&self, pk: &PublicKey) -> Result<Option<Vec<u8>>, SourceError> {
        Ok(self.0.entry(pk).await?.map(|e| e.raw))
    }
    async fn all(&self) -> Result<Vec<PublicKey>, SourceError> {
        self.0.keys().await
    }
}

/// Mirrors the transport discovery: one item per edge (salt "tp"), the edge's FULL list.
pub struct TransportMirror<S>(KeyMirror<Transports<S>>);

impl<S: TransportStore + 'static> TransportMirror<S> {
    /// A mirror of `store` publishing through `mirror` (whose salt must be "tp").
    pub fn new(store: S, mirror: impl Into<Arc<Mirror>>) -> Self {
        let mirror = mirror.into();
        debug_assert_eq!(mirror.salt(), SALT_TRANSPORTS);
        TransportMirror(KeyMirror::new(Transports(store), mirror))
    }

    /// The discovery's store.
    pub fn store(&self) -> &S {
        &self.0.source().0
    }

    fn edges<'a>(
        changed: impl IntoIterator<Item = &'a TransportEntry>,
        skipped: &mut usize,
    ) -> BTreeSet<PublicKey> {
        parse_keys(
            changed
                .into_iter()
                .flat_map(|e| e.edges.iter().map(String::as_str)),
            skipped,
        )
    }

    /// After a batch of registrations or deregistrations: mirror every touched edge, and
    /// wait for it. Each edge's full list is read from the store when its coalescing
    /// window ends (at most [`Mirror::coalesce_window`] after this call), so the value put
    /// includes this batch; batches that touch the same edge within the window share
    /// one put. Returns one outcome per touched edge, of that put.
    pub async fn on_batch<'a>(
        &self,
        changed: impl IntoIterator<Item = &'a TransportEntry>,
    ) -> BatchOutcome {
        let mut out = BatchOutcome::default();
        let edges = Self::edges(changed, &mut out.skipped);
        self.0.mirror_keys(edges, &mut out).await;
        out
    }

    /// As [`TransportMirror::on_batch`], without waiting: the touched edges are queued
    /// and published when their window ends, in the background (retries and the laggards
    /// queue as for any put). Returns the touched edges and the entries skipped (bad
    /// keys); no outcome. [`TransportMirror::flush`] publishes what is queued at once
    /// and waits for it.
    pub fn enqueue_batch<'a>(
        &self,
        changed: impl IntoIterator<Item = &'a TransportEntry>,
    ) -> BatchOutcome {
        let mut out = BatchOutcome::default();
        let edges = Self::edges(changed, &mut out.skipped);
        out.touched = edges.len();
        self.0.queue(edges, false);
        out
    }

    /// Publishes every queued edge now, without waiting for the end of its window, and
    /// waits for it and for the puts in flight; one outcome per edge.
    pub async fn flush(&self) -> BatchOutcome {
        self.0.flush().await
    }

    /// Edges queued or being put.
    pub fn pending(&self) -> usize {
        self.0.pending()
    }

    /// Anti-entropy: re-assert every edge of the store; tombstone edges the DHT holds
    /// from this mirror but the store no longer has.
    pub async fn anti_entropy(&self) -> Result<BatchOutcome, SourceError> {
        self.0.anti_entropy().await
    }
}

/// Mirrors the service discovery: one item per visor (salt "svc"), its FULL service list.
pub struct ServiceMirror<S>(KeyMirror<Services<S>>);

/// The visor key of a service address `<hex pk>:<port>`.
pub fn visor_of(address: &str) -> &str {
    address.split_once(':').map_or(address, |(pk, _)| pk)
}

impl<S: ServiceStore + 'static> ServiceMirror<S> {
    /// A mirror of `store` publishing through `mirror` (salt "svc").
    pub fn new(store: S, mirror: impl Into<Arc<Mirror>>) -> Self {
        let mirror = mirror.into();
        debug_assert_eq!(mirror.salt(), SALT_SERVICES);
        ServiceMirror(KeyMirror::new(Services(store), mirror))
    }

    fn visors<'a>(
        changed: impl IntoIterator<Item = &'a ServiceEntry>,
        skipped: &mut usize,
    ) -> BTreeSet<PublicKey> {
        parse_keys(changed.into_iter().map(|e| visor_of(&e.address)), skipped)
    }

    /// After registrations or deletions of services: mirror every touched visor, and
    /// wait for it (coalesced as [`TransportMirror::on_batch`]).
    pub async fn on_batch<'a>(
        &self,
        changed: impl IntoIterator<Item = &'a ServiceEntry>,
    ) -> BatchOutcome {
        let mut out = BatchOutcome::default();
        let visors = Self::visors(changed, &mut out.skipped);
        self.0.mirror_keys(visors, &mut out).await;
        out
    }

    /// As [`ServiceMirror::on_batch`], without waiting (see
    /// [`TransportMirror::enqueue_batch`]).
    pub fn enqueue_batch<'a>(
        &self,
        changed: impl IntoIterator<Item = &'a ServiceEntry>,
    ) -> BatchOutcome {
        let mut out = BatchOutcome::default();
        let visors = Self::visors(changed, &mut out.skipped);
        out.touched = visors.len();
        self.0.queue(visors, false);
        out
    }

    /// Publishes every queued visor now and waits for it (see [`TransportMirror::flush`]).
    pub async fn flush(&self) -> BatchOutcome {
        self.0.flush().await
    }

    /// Anti-entropy, as for transports.
    pub async fn anti_entropy(&self) -> Result<BatchOutcome, SourceError> {
        self.0.anti_entropy().await
    }
}

/// Mirrors the DMSG discovery: one item per key (salt "dmsg"), the entry's JSON.
pub struct DmsgMirror<S>(KeyMirror<Entries<S>>);

impl<S: DmsgStore + 'static> DmsgMirror<S> {
    /// A mirror of `store` publishing through `mirror` (salt "dmsg").
    pub fn new(store: S, mirror: impl Into<Arc<Mirror>>) -> Self {
        let mirror = mirror.into();
        debug_assert_eq!(mirror.salt(), SALT_DMSG);
        DmsgMirror(KeyMirror::new(Entries(store), mirror))
    }

    /// After entries were set or deleted: mirror each touched key, and wait for it (a
    /// deleted entry's twin becomes a tombstone; coalesced as
    /// [`TransportMirror::on_batch`]).
    pub async fn on_change(&self, keys: impl IntoIterator<Item = PublicKey>) -> BatchOutcome {
        let mut out = BatchOutcome::default();
        self.0
            .mirror_keys(keys.into_iter().collect(), &mut out)
            .await;
        out
    }

    /// As [`DmsgMirror::on_change`], without waiting (see
    /// [`TransportMirror::enqueue_batch`]); returns the keys queued.
    pub fn enqueue_change(&self, keys: impl IntoIterator<Item = PublicKey>) -> usize {
        let keys: BTreeSet<PublicKey> = keys.into_iter().collect();
        let n = keys.len();
        self.0.queue(keys, false);
        n
    }

    /// Publishes every queued key now and waits for it (see [`TransportMirror::flush`]).
    pub async fn flush(&self) -> BatchOutcome {
        self.0.flush().await
    }

    /// Anti-entropy, as for transports.
    pub async fn anti_entropy(&self) -> Result<BatchOutcome, SourceError> {
        self.0.anti_entropy().await
    }
}
