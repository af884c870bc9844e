//! Thin adapters through which the transport, service and DMSG discoveries push FULL
//! per-key lists into the DHT. A batch of changes collects the distinct touched keys,
//! re-reads each key's full value from the discovery's own store ONCE, and mirrors it
//! once; a key whose value became empty gets a tombstone. Anti-entropy re-asserts every
//! key of the store and tombstones what the DHT holds but the store no longer has.

use std::collections::BTreeSet;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;

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

/// Mirrors touched keys, and runs anti-entropy, for any [`KeySource`].
struct KeyMirror<S> {
    source: S,
    mirror: Arc<Mirror>,
}

impl<S: KeySource> KeyMirror<S> {
    /// Reads each key once and mirrors it once.
    async fn mirror_keys(&self, keys: BTreeSet<PublicKey>, out: &mut BatchOutcome) {
        out.touched += keys.len();
        let mut work = Vec::with_capacity(keys.len());
        for key in keys {
            out.reads += 1;
            match self.source.read(&key).await {
                Ok(Some(value)) => work.push((key, MirrorAction::Publish(value))),
                Ok(None) => work.push((key, MirrorAction::Delete)),
                Err(e) => tracing::warn!(%key, error = %e, "cannot read the key's value"),
            }
        }
        out.keys.extend(self.mirror.mirror_all(work).await);
    }

    /// Re-asserts every key of the source; tombstones keys the DHT holds from this mirror
    /// but the source no longer has.
    async fn anti_entropy(&self) -> Result<BatchOutcome, SourceError> {
        let mut out = BatchOutcome::default();
        let keys: BTreeSet<PublicKey> = self.source.all().await?.into_iter().collect();
        let gone: Vec<_> = self
            .mirror
            .known_subjects()
            .await
            .into_iter()
            .filter(|s| !keys.contains(s))
            .map(|s| (s, MirrorAction::Delete))
            .collect();
        self.mirror_keys(keys, &mut out).await;
        out.touched += gone.len();
        out.keys.extend(self.mirror.mirror_all(gone).await);
        Ok(out)
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

impl<S: TransportStore> TransportMirror<S> {
    /// A mirror of `store` publishing through `mirror` (whose salt must be "tp").
    pub fn new(store: S, mirror: impl Into<Arc<Mirror>>) -> Self {
        let mirror = mirror.into();
        debug_assert_eq!(mirror.salt(), SALT_TRANSPORTS);
        TransportMirror(KeyMirror {
            source: Transports(store),
            mirror,
        })
    }

    /// The discovery's store.
    pub fn store(&self) -> &S {
        &self.0.source.0
    }

    /// After a batch of registrations or deregistrations: mirror every touched edge once.
    pub async fn on_batch<'a>(
        &self,
        changed: impl IntoIterator<Item = &'a TransportEntry>,
    ) -> BatchOutcome {
        let mut out = BatchOutcome::default();
        let edges = parse_keys(
            changed
                .into_iter()
                .flat_map(|e| e.edges.iter().map(String::as_str)),
            &mut out.skipped,
        );
        self.0.mirror_keys(edges, &mut out).await;
        out
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

impl<S: ServiceStore> ServiceMirror<S> {
    /// A mirror of `store` publishing through `mirror` (salt "svc").
    pub fn new(store: S, mirror: impl Into<Arc<Mirror>>) -> Self {
        let mirror = mirror.into();
        debug_assert_eq!(mirror.salt(), SALT_SERVICES);
        ServiceMirror(KeyMirror {
            source: Services(store),
            mirror,
        })
    }

    /// After registrations or deletions of services: mirror every touched visor once.
    pub async fn on_batch<'a>(
        &self,
        changed: impl IntoIterator<Item = &'a ServiceEntry>,
    ) -> BatchOutcome {
        let mut out = BatchOutcome::default();
        let visors = parse_keys(
            changed.into_iter().map(|e| visor_of(&e.address)),
            &mut out.skipped,
        );
        self.0.mirror_keys(visors, &mut out).await;
        out
    }

    /// Anti-entropy, as for transports.
    pub async fn anti_entropy(&self) -> Result<BatchOutcome, SourceError> {
        self.0.anti_entropy().await
    }
}

/// Mirrors the DMSG discovery: one item per key (salt "dmsg"), the entry's JSON.
pub struct DmsgMirror<S>(KeyMirror<Entries<S>>);

impl<S: DmsgStore> DmsgMirror<S> {
    /// A mirror of `store` publishing through `mirror` (salt "dmsg").
    pub fn new(store: S, mirror: impl Into<Arc<Mirror>>) -> Self {
        let mirror = mirror.into();
        debug_assert_eq!(mirror.salt(), SALT_DMSG);
        DmsgMirror(KeyMirror {
            source: Entries(store),
            mirror,
        })
    }

    /// After entries were set or deleted: mirror each touched key once (a deleted entry's
    /// twin becomes a tombstone).
    pub async fn on_change(&self, keys: impl IntoIterator<Item = PublicKey>) -> BatchOutcome {
        let mut out = BatchOutcome::default();
        self.0
            .mirror_keys(keys.into_iter().collect(), &mut out)
            .await;
        out
    }

    /// Anti-entropy, as for transports.
    pub async fn anti_entropy(&self) -> Result<BatchOutcome, SourceError> {
        self.0.anti_entropy().await
    }
}
