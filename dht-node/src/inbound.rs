//! Answers inbound item-protocol requests of a full node. Every item is validated with
//! the dht-core rules before the store sees it; the answer says exactly what happened
//! to each item, with the stable reason code when it was rejected.

use std::sync::Arc;

use dht_core::store::RecordStore;
use dht_core::wire::DecodeLimits;
use dht_core::{Admission, Rejection, Validator};
use libp2p::PeerId;
use tracing::{debug, instrument};

use crate::events::NodeEvent;
use crate::network::Shared;
use crate::protocol::{
    accepted, envelope, error_response, parse_put_item, parse_target, rejected, request_kind,
    request_proto, response_proto, GetResponseProto, PutRequestProto, PutResponseProto,
    PutResultProto, RequestProto, ResponseProto, SyncRequestProto, SyncResponseProto,
};

/// Most items in one sync page.
pub const MAX_SYNC_PAGE: usize = 1024;

/// The inbound request handler of a full node.
pub struct Inbound {
    /// The local store.
    pub store: Arc<dyn RecordStore>,
    /// The rules.
    pub validator: Validator,
    /// Routing view, events and metrics.
    pub shared: Arc<Shared>,
    /// This node.
    pub local: PeerId,
    /// Replicas per item.
    pub replication: usize,
    /// Largest message.
    pub max_message_len: usize,
    /// The store's epoch, sent with sync pages.
    pub epoch: u64,
    /// Budgets of new items from peers outside the routing table.
    pub(crate) strangers: crate::admission::StrangerAdmission,
}

impl Inbound {
    fn limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_value_len: self.validator.policy().max_value_len,
        }
    }

    /// Answers one request.
    #[instrument(skip_all, fields(%peer))]
    pub async fn handle(
        self: Arc<Self>,
        peer: PeerId,
        ip: Option<std::net::IpAddr>,
        request: RequestProto,
    ) -> ResponseProto {
        use request_proto::Kind;
        let kind = request_kind(&request);
        self.shared
            .metrics
            .inbound_requests
            .get_or_create(&crate::metrics::RequestLabels { kind: kind.into() })
            .inc();
        let this = self.clone();
        // Signature checks and the store are blocking work: keep them off the reactor.
        let result = tokio::task::spawn_blocking(move || match request.kind {
            Some(Kind::Put(p)) => this.put(peer, ip, p),
            // A node catching up may hold copies replaced or deleted while it was away:
            // it refuses, and the reader asks the other replicas.
            Some(Kind::Get(_)) if !this.shared.caught_up() => {
                error_response("catching_up", "catch-up sync in progress")
            }
            Some(Kind::Get(g)) => this.get(&g.target),
            Some(Kind::Sync(s)) => this.sync(peer, s),
            None => error_response("malformed", "empty request"),
        })
        .await;
        result.unwrap_or_else(|e| error_response("internal", e.to_string()))
    }

    fn put(
        &self,
        peer: PeerId,
        ip: Option<std::net::IpAddr>,
        req: PutRequestProto,
    ) -> ResponseProto {
        let limits = self.limits();
        // Full nodes of the routing table hand items over in bulk; anyone else creating
        // new targets under non-authorized keys is budgeted.
        let stranger = self.shared.view.addresses(&peer).is_empty();
        let mut results: Vec<Option<PutResultProto>> = Vec::with_capacity(req.items.len());
        let mut batch = Vec::new();
        let mut slots = Vec::new();
        for p in req.items {
            let checked = parse_put_item(p, &limits)
                .and_then(|(item, opts)| self.validator.validate(item).map(|v| (v, opts)))
                .and_then(|(v, opts)| {
                    if stranger {
                        self.admit_stranger(peer, ip, &v)?;
                    }
                    Ok((v, opts))
                });
            match checked {
                Ok(v) => {
                    slots.push(results.len());
                    results.push(None);
                    batch.push(v);
                }
                Err(r) => {
                    debug!(%peer, code = %r.code(), "put rejected: {r}");
                    self.shared.metrics.count_put(b"", Err(r.code()));
                    results.push(Some(rejected(r.code(), r.to_string())));
                }
            }
        }
        let meta: Vec<_> = batch
            .iter()
            .map(|(v, _)| {
                (
                    v.target(),
                    v.item().seq,
                    v.item().is_tombstone(),
                    v.item().salt.clone(),
                )
            })
            .collect();
        match self.store.put_batch(batch) {
            Ok(outcomes) => {
                for ((slot, outcome), (target, seq, tombstone, salt)) in
                    slots.into_iter().zip(outcomes).zip(meta)
                {
                    results[slot] = Some(self.put_result(outcome, target, seq, tombstone, &salt));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store failed");
                return error_response("internal", e.to_string());
            }
        }
        ResponseProto {
            kind: Some(response_proto::Kind::Put(PutResponseProto {
                results: results.into_iter().flatten().collect(),
            })),
        }
    }

    /// The stranger budgets (see [`crate::admission`]): a new item under a key that is
    /// not an authorized publisher, from a peer outside the routing table, spends them.
    pub(crate) fn admit_stranger(
        &self,
        peer: PeerId,
        ip: Option<std::net::IpAddr>,
        v: &dht_core::VerifiedItem,
    ) -> Result<(), Rejection> {
        if v.by_authorized_publisher() || !self.is_new(&v.target()) {
            return Ok(());
        }
        let bytes = crate::maintenance::encoded_size(v.item());
        if self.strangers.admit(peer, ip, bytes) {
            Ok(())
        } else {
            self.shared.metrics.strangers_throttled.inc();
            Err(Rejection::QuotaExceeded(
                "new-item budget for peers outside the routing table is spent".into(),
            ))
        }
    }

    /// Whether nothing live is stored at `target` (a put there creates a new item).
    fn is_new(&self, target: &dht_core::Target) -> bool {
        !matches!(self.store.get(target), Ok(Some(_)))
    }

    fn put_result(
        &self,
        outcome: Result<Admission, Rejection>,
        target: dht_core::Target,
        seq: u64,
        tombstone: bool,
        salt: &[u8],
    ) -> PutResultProto {
        self.shared
            .metrics
            .count_put(salt, outcome.as_ref().map(|a| *a).map_err(|r| r.code()));
        match outcome {
            Ok(a) => {
                if matches!(a, Admission::Supersede { .. }) {
                    self.shared.metrics.equivocations.inc();
                }
                let _ = self.shared.events.send(NodeEvent::ItemStored {
                    target,
                    seq,
                    tombstone,
                });
                accepted(a)
            }
            Err(r) => {
                if r.code() == dht_core::ReasonCode::Equivocation {
                    self.shared.metrics.equivocations.inc();
                }
                rejected(r.code(), r.to_string())
            }
        }
    }

    fn get(&self, target: &[u8]) -> ResponseProto {
        let Some(target) = parse_target(target) else {
            return error_response("malformed", "target must be 32 bytes");
        };
        match self.store.get(&target) {
            Ok(found) => ResponseProto {
                kind: Some(response_proto::Kind::Get(GetResponseProto {
                    envelope: found.map(|s| envelope(&s.item, s.expires_at_ms)),
                })),
            },
            Err(e) => error_response("internal", e.to_string()),
        }
    }

    /// Items changed after the cursor that `peer` is responsible for, in change order,
    /// bounded by count and bytes.
    fn sync(&self, peer: PeerId, req: SyncRequestProto) -> ResponseProto {
        let limit = (req.limit as usize).clamp(1, MAX_SYNC_PAGE);
        // One frame: at least one item always fits (a full value plus overhead).
        let budget = self.max_message_len.saturating_sub(16 * 1024);
        let mut items = Vec::new();
        let mut bytes = 0usize;
        let mut next = req.since;
        let mut done = true;
        for change in dht_core::store::changed_since(&*self.store, req.since) {
            let change = match change {
                Ok(c) => c,
                Err(e) => return error_response("internal", e.to_string()),
            };
            let item = &change.stored.item;
            if !req.salt.is_empty() && item.salt != req.salt {
                next = change.change_seq;
                continue;
            }
            let responsible =
                self.shared
                    .view
                    .responsible(&item.target(), self.replication, self.local, &[peer]);
            if responsible.contains(&peer) {
                let size = crate::maintenance::encoded_size(item);
                if !items.is_empty() && (items.len() >= limit || bytes + size > budget) {
                    done = false;
                    break;
                }
                bytes += size;
                items.push(envelope(item, change.stored.expires_at_ms));
            }
            next = change.change_seq;
        }
        ResponseProto {
            kind: Some(response_proto::Kind::Sync(SyncResponseProto {
                items,
                next,
                done,
                epoch: self.epoch,
            })),
        }
    }
}
