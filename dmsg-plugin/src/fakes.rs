//! Test fakes (feature `test-util`): in-memory discovery stores implementing the adapter
//! traits, with read counters, and the HTTP routes a transport discovery serves over
//! them. For tests, examples and benchmarks; production discoveries implement the
//! traits over their own stores.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use dht_core::PublicKey;
use parking_lot::RwLock;

use crate::adapters::{visor_of, DmsgStore, ServiceStore, SourceError, TransportStore};
use crate::formats::{encode_transport_list, DmsgEntry, ServiceEntry, TransportEntry};

/// The transport discovery's data: transports indexed by edge.
#[derive(Default)]
pub struct MemoryTransportStore {
    by_edge: RwLock<HashMap<PublicKey, BTreeMap<String, TransportEntry>>>,
    reads: AtomicUsize,
}

fn edges_of(e: &TransportEntry) -> Vec<PublicKey> {
    e.edges.iter().filter_map(|k| k.parse().ok()).collect()
}

impl MemoryTransportStore {
    /// Registers entries (as `POST /v3/transports/` does).
    pub fn register(&self, entries: &[TransportEntry]) {
        let mut m = self.by_edge.write();
        for e in entries {
            for edge in edges_of(e) {
                m.entry(edge).or_default().insert(e.t_id.clone(), e.clone());
            }
        }
    }

    /// Deregisters entries (as `DELETE /transports/id:{id}` does).
    pub fn deregister(&self, entries: &[TransportEntry]) {
        let mut m = self.by_edge.write();
        for e in entries {
            for edge in edges_of(e) {
                if let Some(list) = m.get_mut(&edge) {
                    list.remove(&e.t_id);
                    if list.is_empty() {
                        m.remove(&edge);
                    }
                }
            }
        }
    }

    /// Reads of per-edge lists so far.
    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::Relaxed)
    }

    /// The list of an edge, without counting a read.
    pub fn list(&self, edge: &PublicKey) -> Vec<TransportEntry> {
        self.by_edge
            .read()
            .get(edge)
            .map(|l| l.values().cloned().collect())
            .unwrap_or_default()
    }
}

impl TransportStore for Arc<MemoryTransportStore> {
    async fn transports_by_edge(
        &self,
        edge: &PublicKey,
    ) -> Result<Vec<TransportEntry>, SourceError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        Ok(self.list(edge))
    }

    async fn edges(&self) -> Result<Vec<PublicKey>, SourceError> {
        Ok(self.by_edge.read().keys().copied().collect())
    }
}

/// The transport discovery's read routes over a [`MemoryTransportStore`]:
/// `GET /v3/transports/edge:{pk}` (`[]` when none) and `GET /transports/edge:{pk}` (404
/// when none).
pub fn transport_discovery_router(store: Arc<MemoryTransportStore>) -> Router {
    async fn v3(State(s): State<Arc<MemoryTransportStore>>, Path(edge): Path<String>) -> Response {
        match edge
            .strip_prefix("edge:")
            .and_then(|k| k.parse::<PublicKey>().ok())
        {
            Some(pk) => (
                [(header::CONTENT_TYPE, "application/json")],
                encode_transport_list(&s.list(&pk)),
            )
                .into_response(),
            None => (StatusCode::BAD_REQUEST, r#"{"error":"invalid edge"}"#).into_response(),
        }
    }
    async fn v2(State(s): State<Arc<MemoryTransportStore>>, Path(edge): Path<String>) -> Response {
        match edge
            .strip_prefix("edge:")
            .and_then(|k| k.parse::<PublicKey>().ok())
        {
            Some(pk) => {
                let list = s.list(&pk);
                if list.is_empty() {
                    (StatusCode::NOT_FOUND, r#"{"error":"transport not found"}"#).into_response()
                } else {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        encode_transport_list(&list),
                    )
                        .into_response()
                }
            }
            None => (StatusCode::BAD_REQUEST, r#"{"error":"invalid edge"}"#).into_response(),
        }
    }
    Router::new()
        .route("/v3/transports/{edge}", get(v3))
        .route("/transports/{edge}", get(v2))
        .with_state(store)
}

/// The service discovery's data: services indexed by visor.
#[derive(Default)]
pub struct MemoryServiceStore {
    by_visor: RwLock<HashMap<PublicKey, BTreeMap<String, ServiceEntry>>>,
    reads: AtomicUsize,
}

impl MemoryServiceStore {
    /// Registers a service (keyed by type and address).
    pub fn register(&self, e: ServiceEntry) {
        if let Ok(pk) = visor_of(&e.address).parse() {
            self.by_visor
                .write()
                .entry(pk)
                .or_default()
                .insert(format!("{}|{}", e.service_type, e.address), e);
        }
    }

    /// Removes a service.
    pub fn remove(&self, e: &ServiceEntry) {
        if let Ok(pk) = visor_of(&e.address).parse::<PublicKey>() {
            let mut m = self.by_visor.write();
            if let Some(l) = m.get_mut(&pk) {
                l.remove(&format!("{}|{}", e.service_type, e.address));
                if l.is_empty() {
                    m.remove(&pk);
                }
            }
        }
    }

    /// Reads so far.
    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::Relaxed)
    }
}

impl ServiceStore for Arc<MemoryServiceStore> {
    async fn services_by_pk(&self, visor: &PublicKey) -> Result<Vec<ServiceEntry>, SourceError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        Ok(self
            .by_visor
            .read()
            .get(visor)
            .map(|l| l.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn visors(&self) -> Result<Vec<PublicKey>, SourceError> {
        Ok(self.by_visor.read().keys().copied().collect())
    }
}

/// The DMSG discovery's data: one entry per key.
#[derive(Default)]
pub struct MemoryDmsgStore {
    entries: RwLock<HashMap<PublicKey, DmsgEntry>>,
}

impl MemoryDmsgStore {
    /// Sets an entry (its `static` key must parse).
    pub fn set(&self, e: DmsgEntry) -> Result<PublicKey, SourceError> {
        let pk: PublicKey = e
            .static_pk
            .parse()
            .map_err(|err| SourceError(format!("entry key: {err}")))?;
        self.entries.write().insert(pk, e);
        Ok(pk)
    }

    /// Deletes the entry of a key.
    pub fn delete(&self, pk: &PublicKey) {
        self.entries.write().remove(pk);
    }
}

impl DmsgStore for Arc<MemoryDmsgStore> {
    async fn entry(&self, pk: &PublicKey) -> Result<Option<DmsgEntry>, SourceError> {
        Ok(self.entries.read().get(pk).cloned())
    }

    async fn keys(&self) -> Result<Vec<PublicKey>, SourceError> {
        Ok(self.entries.read().keys().copied().collect())
    }
}
