//! Answers inbound item-protocol requests of a full node. Every item is validated with
//! the dht-core rules before the store sees it; the answer says exactly what happened
//! to each item, with the stable reason code when it was rejected.

use std::net::IpAddr;
use std::sync::Arc;

use dht_core::codec::Decoded;
use dht_core::store::RecordStore;
use dht_core::wire::{DecodeLimits, Envelope};
use dht_core::{Admission, ReasonCode, Rejection, Target, Validator, VerifiedItem};
use libp2p::{Multiaddr, PeerId};
use tracing::{debug, instrument};

use crate::admission::StrangerAdmission;
use crate::events::NodeEvent;
use crate::metrics::RequestLabels;
use crate::protocol::{
    encoded_size, Decoded as Read, ItemRequest, PutItem, PutResult, Refusal, Request, Response,
    SyncPage, SyncRequest,
};
use crate::routing::is_dialable;
use crate::state::NodeState;

/// Most items in one sync page.
pub(crate) const MAX_SYNC_PAGE: usize = 1024;

/// Room kept free in a sync page for the response's own framing: at least one item
/// always fits (a full value plus overhead).
const SYNC_PAGE_MARGIN: usize = 16 * 1024;

/// The inbound request handler of a full node.
pub(crate) struct Inbound {
    /// The local store.
    pub store: Arc<dyn RecordStore>,
    /// The rules.
    pub validator: Validator,
    /// Items are decoded with these.
    pub limits: DecodeLimits,
    /// Routing view, events and metrics.
    pub state: Arc<NodeState>,
    /// This node.
    pub local: PeerId,
    /// Replicas per item.
    pub replication: usize,
    /// Largest message.
    pub max_message_len: usize,
    /// The store's epoch, sent with sync pages.
    pub epoch: u64,
    /// Budgets of new items from peers outside the routing table.
    pub strangers: StrangerAdmission,
}

impl Inbound {
    /// Answers one request.
    #[instrument(skip_all, fields(%peer))]
    pub async fn handle(
        self: Arc<Self>,
        peer: PeerId,
        ip: Option<IpAddr>,
        request: ItemRequest,
    ) -> Response {
        let kind = request.kind();
        self.state
            .metrics
            .inbound_requests
            .get_or_create(&RequestLabels { kind: kind.into() })
            .inc();
        let this = self.clone();
        // Decoding, signature checks and the store are blocking work: keep them off the
        // reactor.
        let result = tokio::task::spawn_blocking(move || {
            // A node catching up may hold copies replaced or deleted while it was away:
            // it refuses, and the reader asks the other replicas.
            if kind == "get" && !this.state.caught_up() {
                return Response::refused(Refusal::CATCHING_UP, "catch-up sync in progress");
            }
            match Request::decode(request, &this.limits) {
                Ok(Request::Put(items)) => this.put(peer, ip, items),
                Ok(Request::Get(target)) => this.get(&target),
                Ok(Request::Sync(s)) => this.sync(peer, s),
                Ok(Request::Members) => this.members(),
                Err(refusal) => Response::Refused(refusal),
            }
        })
        .await;
        result.unwrap_or_else(|e| Response::refused(Refusal::INTERNAL, e.to_string()))
    }

    /// The full nodes of the routing table with their dialable addresses: how a
    /// joining node (or a visor) learns the whole membership of a small network from
    /// one answer (see `membership::learn`). Peers this node holds down (suspected or
    /// dead) are left out.
    fn members(&self) -> Response {
        Response::Members(
            self.state
                .view
                .snapshot()
                .into_iter()
                .filter(|(peer, _)| !self.state.liveness.is_down(peer))
                .filter_map(|(peer, addrs)| {
                    let addrs: Vec<Multiaddr> = addrs.into_iter().filter(is_dialable).collect();
                    (!addrs.is_empty()).then_some((peer, addrs))
                })
                .collect(),
        )
    }

    fn put(&self, peer: PeerId, ip: Option<IpAddr>, items: Vec<Read<PutItem>>) -> Response {
        // Full nodes of the routing table hand items over in bulk; anyone else creating
        // new targets under non-authorized keys is budgeted.
        let stranger = self.state.view.addresses(&peer).is_empty();
        let mut results: Vec<Option<PutResult>> = Vec::with_capacity(items.len());
        let mut batch = Vec::new();
        let mut slots = Vec::new();
        for p in items {
            let p = match p.and_then(|p| self.rebuild(p)) {
                Ok(Ok(p)) => Ok(p),
                Ok(Err(held_seq)) => {
                    results.push(Some(PutResult::NeedBase { held_seq }));
                    continue;
                }
                Err(r) => Err(r),
            };
            let checked = p
                .and_then(|p| self.validator.validate(p.item).map(|v| (v, p.opts)))
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
                    self.state.metrics.count_put(b"", Err(r.code()));
                    results.push(Some(PutResult::Rejected {
                        code: r.code(),
                        detail: r.to_string(),
                    }));
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
                return Response::refused(Refusal::INTERNAL, e.to_string());
            }
        }
        Response::Put(results.into_iter().flatten().collect())
    }

    /// The put item with its full value: a coded value is decoded (a patch against the
    /// live copy held at the target); `Ok(Err(held_seq))` when a patch's base is not
    /// held (a store that fails to read counts as holding nothing). The value is still
    /// untrusted: the item goes through validation like any other.
    fn rebuild(&self, mut p: PutItem) -> Result<Result<PutItem, u64>, Rejection> {
        let Some(coded) = p.coded.take() else {
            return Ok(Ok(p));
        };
        let held = match coded.base() {
            Some(_) => self.store.get(&p.item.target()).ok().flatten(),
            None => None,
        };
        let base = held
            .as_ref()
            .and_then(|s| s.item.value().map(|v| (s.item.seq, &v[..])));
        match coded.decode(base, self.limits.max_value_len) {
            Ok(Decoded::Value(v)) => {
                let opts = p.opts;
                Ok(Ok(PutItem::plain(p.with_value(v), opts)))
            }
            Ok(Decoded::NeedBase(_)) => Ok(Err(held.map_or(0, |s| s.item.seq))),
            Err(e) => Err(Rejection::from(e)),
        }
    }

    /// The stranger budgets (see [`crate::admission`]): a new item under a key that is
    /// not an authorized publisher, from a peer outside the routing table, spends them.
    pub fn admit_stranger(
        &self,
        peer: PeerId,
        ip: Option<IpAddr>,
        v: &VerifiedItem,
    ) -> Result<(), Rejection> {
        if v.by_authorized_publisher() || !self.is_new(&v.target()) {
            return Ok(());
        }
        if self.strangers.admit(peer, ip, encoded_size(v.item())) {
            Ok(())
        } else {
            self.state.metrics.strangers_throttled.inc();
            Err(Rejection::QuotaExceeded(
                "new-item budget for peers outside the routing table is spent".into(),
            ))
        }
    }

    /// Whether nothing live is stored at `target` (a put there creates a new item).
    fn is_new(&self, target: &Target) -> bool {
        !matches!(self.store.get(target), Ok(Some(_)))
    }

    fn put_result(
        &self,
        outcome: Result<Admission, Rejection>,
        target: Target,
        seq: u64,
        tombstone: bool,
        salt: &[u8],
    ) -> PutResult {
        self.state
            .metrics
            .count_put(salt, outcome.as_ref().map(|a| *a).map_err(|r| r.code()));
        match outcome {
            Ok(a) => {
                if matches!(a, Admission::Supersede { .. }) {
                    self.state.metrics.equivocations.inc();
                }
                self.state.emit(NodeEvent::ItemStored {
                    target,
                    seq,
                    tombstone,
                });
                PutResult::Stored(a)
            }
            Err(r) => {
                if r.code() == ReasonCode::Equivocation {
                    self.state.metrics.equivocations.inc();
                }
                PutResult::Rejected {
                    code: r.code(),
                    detail: r.to_string(),
                }
            }
        }
    }

    fn get(&self, target: &Target) -> Response {
        match self.store.get(target) {
            Ok(Some(s)) => Response::held(s.item, s.expires_at_ms),
            Ok(None) => Response::Get(None),
            Err(e) => Response::refused(Refusal::INTERNAL, e.to_string()),
        }
    }

    /// Items changed after the cursor that `peer` is responsible for, in change order,
    /// bounded by count and bytes.
    fn sync(&self, peer: PeerId, req: SyncRequest) -> Response {
        let page = sync_page(
            dht_core::store::changed_since(&*self.store, req.since),
            &req,
            self.max_message_len.saturating_sub(SYNC_PAGE_MARGIN),
            |target| {
                self.state
                    .view
                    .responsible(target, self.replication, self.local, &[peer])
                    .contains(&peer)
            },
        );
        match page {
            Ok((items, next, done)) => Response::Sync(SyncPage {
                items,
                next,
                done,
                epoch: self.epoch,
            }),
            Err(e) => Response::refused(Refusal::INTERNAL, e.to_string()),
        }
    }
}

/// One page of sync over `changes` (in change order): the items of `req`'s salt that
/// `wanted` says the requester is responsible for, at most `req.limit` (clamped to
/// 1..=[`MAX_SYNC_PAGE`]) and `budget` bytes, though always at least one. Returns the
/// items, the cursor to continue from and whether nothing is left.
fn sync_page<E>(
    changes: impl IntoIterator<Item = Result<dht_core::store::ChangedItem, E>>,
    req: &SyncRequest,
    budget: usize,
    wanted: impl Fn(&Target) -> bool,
) -> Result<(Vec<Read<Envelope>>, u64, bool), E> {
    let limit = (req.limit as usize).clamp(1, MAX_SYNC_PAGE);
    let mut items = Vec::new();
    let mut bytes = 0usize;
    let mut next = req.since;
    for change in changes {
        let change = change?;
        let item = &change.stored.item;
        if !req.salt.is_empty() && item.salt != req.salt {
            next = change.change_seq;
            continue;
        }
        if wanted(&item.target()) {
            let size = encoded_size(item);
            if !items.is_empty() && (items.len() >= limit || bytes + size > budget) {
                return Ok((items, next, false));
            }
            bytes += size;
            let expires_at_ms = change.stored.expires_at_ms;
            items.push(Ok(Envelope {
                item: item.clone(),
                expires_at_ms: (expires_at_ms != 0).then_some(expires_at_ms),
            }));
        }
        next = change.change_seq;
    }
    Ok((items, next, true))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use dht_core::store::ChangedItem;
    use dht_core::{MutableItem, SigningKey, StoredItem};

    use super::*;

    fn changes(salts: &[&'static str]) -> Vec<Result<ChangedItem, ()>> {
        let key = SigningKey::generate_ed25519();
        salts
            .iter()
            .enumerate()
            .map(|(i, salt)| {
                Ok(ChangedItem {
                    change_seq: 10 * (i as u64 + 1),
                    stored: StoredItem {
                        item: MutableItem::sign(&key, key.public_key(), *salt, 1, vec![0u8; 100]),
                        expires_at_ms: 0,
                        by_authorized_publisher: false,
                    },
                })
            })
            .collect()
    }

    fn req(since: u64, limit: u32, salt: &'static str) -> SyncRequest {
        SyncRequest {
            since,
            limit,
            salt: Bytes::from_static(salt.as_bytes()),
        }
    }

    #[test]
    fn sync_pages_stop_at_the_limit_and_continue_from_their_cursor() {
        let all = changes(&["a", "a", "a", "a", "a"]);
        let (items, next, done) =
            sync_page(all.clone(), &req(0, 2, ""), usize::MAX, |_| true).unwrap();
        assert_eq!((items.len(), next, done), (2, 20, false));
        // The next page starts after the cursor (the store iterator does the skipping).
        let (items, next, done) =
            sync_page(all[2..].to_vec(), &req(next, 2, ""), usize::MAX, |_| true).unwrap();
        assert_eq!((items.len(), next, done), (2, 40, false));
        let (items, next, done) =
            sync_page(all[4..].to_vec(), &req(next, 2, ""), usize::MAX, |_| true).unwrap();
        assert_eq!((items.len(), next, done), (1, 50, true));
        // A limit of 0 means 1; one above the maximum means the maximum.
        let (items, _, _) = sync_page(all.clone(), &req(0, 0, ""), usize::MAX, |_| true).unwrap();
        assert_eq!(items.len(), 1);
        let (items, _, done) =
            sync_page(all.clone(), &req(0, u32::MAX, ""), usize::MAX, |_| true).unwrap();
        assert_eq!((items.len(), done), (5, true));
    }

    #[test]
    fn sync_pages_keep_to_the_byte_budget_but_carry_at_least_one_item() {
        let all = changes(&["a", "a", "a"]);
        let one = encoded_size(&all[0].as_ref().unwrap().stored.item);
        let (items, next, done) = sync_page(all.clone(), &req(0, 100, ""), 1, |_| true).unwrap();
        assert_eq!((items.len(), next, done), (1, 10, false));
        let (items, _, _) = sync_page(all, &req(0, 100, ""), 2 * one, |_| true).unwrap();
        assert_eq!(items.len(), 2);
    }

    #[test]
    fn sync_pages_skip_other_salts_and_unwanted_targets_but_move_the_cursor() {
        let all = changes(&["a", "b", "a", "b"]);
        let (items, next, done) =
            sync_page(all.clone(), &req(0, 100, "b"), usize::MAX, |_| true).unwrap();
        assert_eq!((items.len(), next, done), (2, 40, true));
        let (items, next, done) = sync_page(all, &req(0, 100, ""), usize::MAX, |_| false).unwrap();
        assert_eq!((items.len(), next, done), (0, 40, true));
        // A store error ends the page with the error.
        let failing: Vec<Result<ChangedItem, &str>> = vec![Err("disk")];
        assert_eq!(
            sync_page(failing, &req(0, 1, ""), 1, |_| true).unwrap_err(),
            "disk"
        );
    }
}
