//! Kad events: routing-table updates (with the per-IP-range bound), finished lookups
//! and bootstrap rounds, and inbound `PUT_VALUE` records, checked like item-protocol
//! puts.

use std::collections::{HashMap, HashSet};

use libp2p::kad::{self, QueryResult};
use libp2p::{Multiaddr, PeerId};
use tracing::{debug, info, warn};

use super::driver::Driver;
use crate::events::NodeEvent;
use crate::kad_records::check_record;
use crate::metrics::{KadRejectLabels, Metrics};
use crate::routing::ip_range;

impl Driver {
    pub(super) fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed {
                id,
                result: QueryResult::GetClosestPeers(r),
                step,
                stats,
            } => {
                self.count_kad_requests(step.last, &stats);
                let (key, peers) = match r {
                    Ok(ok) => (ok.key, ok.peers),
                    Err(kad::GetClosestPeersError::Timeout { key, peers }) => (key, peers),
                };
                if step.last && key == self.swarm.local_peer_id().to_bytes() {
                    // A lookup of its own id (a visor's join round): as a bootstrap, it
                    // found the whole membership if it found fewer than k.
                    self.view_dirty = true;
                    self.state.set_bootstrapped();
                }
                if step.last {
                    if let Some(reply) = self.lookups.remove(&id) {
                        let _ =
                            reply.send(peers.into_iter().map(|p| (p.peer_id, p.addrs)).collect());
                    }
                }
            }
            kad::Event::OutboundQueryProgressed {
                result: QueryResult::Bootstrap(r),
                step,
                stats,
                ..
            } if step.last => {
                self.count_kad_requests(true, &stats);
                debug!(ok = r.is_ok(), "bootstrap round finished");
                self.view_dirty = true;
                self.state.set_bootstrapped();
                self.state.emit(NodeEvent::BootstrapFinished);
            }
            kad::Event::RoutingUpdated {
                peer,
                is_new_peer,
                addresses,
                ..
            } => {
                self.touch(&peer);
                if is_new_peer && !self.admit_by_ip_range(&peer, addresses.iter()) {
                    self.swarm.behaviour_mut().kad.remove_peer(&peer);
                    warn!(%peer, "routing table: too many peers from one IP range");
                    // The view may already hold it (identify adds a full node's
                    // addresses and refreshes the view before this event arrives).
                    self.view_dirty = true;
                    self.refresh_view();
                    return;
                }
                self.view_dirty = true;
                if is_new_peer {
                    self.refresh_view();
                    self.state.emit(NodeEvent::PeerAdded(peer));
                }
            }
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        source,
                        record: Some(record),
                        ..
                    },
            } => self.on_kad_put(source, record),
            _ => {}
        }
    }

    /// An inbound kad `PUT_VALUE`: kad has already acknowledged it (the protocol has no
    /// way to refuse), so a record is only stored if it passes the same checks as an
    /// item-protocol put; a refused one is logged and counted in
    /// `dht_kad_put_rejected_total{reason}`.
    fn on_kad_put(&mut self, source: PeerId, record: kad::Record) {
        let Some(inbound) = self.inbound.clone() else {
            // A client node is no kad server: nothing reaches here.
            return;
        };
        let stranger = self.state.view.addresses(&source).is_empty();
        let limited_as_stranger = self.is_stranger(&source);
        if !self
            .limiter
            .allow(source, 256 + record.value.len(), limited_as_stranger)
        {
            self.state.metrics.rate_limited.inc();
            refuse_kad_put(
                &self.state.metrics,
                source,
                "rate_limited",
                &"too many requests",
            );
            return;
        }
        let ip = self.remote_ips.get(&source).copied();
        // Signature checks and the store are blocking work: keep them off the swarm task.
        tokio::task::spawn_blocking(move || {
            let metrics = &inbound.state.metrics;
            let verified = match check_record(&inbound.validator, &record).and_then(|v| {
                if stranger {
                    inbound.admit_stranger(source, ip, &v)?;
                }
                Ok(v)
            }) {
                Ok(v) => v,
                Err(r) => return refuse_kad_put(metrics, source, r.code().as_str(), &r),
            };
            let (target, seq, tombstone) = (
                verified.target(),
                verified.item().seq,
                verified.item().is_tombstone(),
            );
            let salt = verified.item().salt.clone();
            match inbound.store.put(verified, dht_core::PutOptions::default()) {
                Ok(admission) => {
                    debug!(%source, %target, seq, "kad put stored");
                    metrics.count_put(&salt, Ok(admission));
                    if matches!(admission, dht_core::Admission::Supersede { .. }) {
                        metrics.equivocations.inc();
                    }
                    inbound.state.emit(NodeEvent::ItemStored {
                        target,
                        seq,
                        tombstone,
                    });
                }
                Err(dht_core::StoreError::Rejected(r)) => {
                    metrics.count_put(&salt, Err(r.code()));
                    refuse_kad_put(metrics, source, r.code().as_str(), &r);
                }
                Err(e) => {
                    tracing::error!(error = %e, "kad put: store failed");
                    refuse_kad_put(metrics, source, "internal", &e);
                }
            }
        });
    }

    /// Whether a new peer may enter the routing table under the per-IP-range bound.
    fn admit_by_ip_range<'a>(
        &mut self,
        peer: &PeerId,
        addrs: impl Iterator<Item = &'a Multiaddr>,
    ) -> bool {
        let Some(max) = self.max_per_range else {
            return true;
        };
        let lo = self.range_includes_loopback;
        let ranges: HashSet<Vec<u8>> = addrs.filter_map(|a| ip_range(a, lo)).collect();
        if ranges.is_empty() {
            return true;
        }
        let mut counts: HashMap<Vec<u8>, usize> = HashMap::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            for e in bucket.iter() {
                if e.node.key.preimage() == peer {
                    continue;
                }
                let theirs: HashSet<Vec<u8>> = e
                    .node
                    .value
                    .iter()
                    .filter_map(|a| ip_range(a, lo))
                    .collect();
                for r in theirs {
                    *counts.entry(r).or_default() += 1;
                }
            }
        }
        ranges
            .iter()
            .all(|r| counts.get(r).copied().unwrap_or(0) < max)
    }
}

/// Logs and counts an inbound kad record that was not stored.
fn refuse_kad_put(metrics: &Metrics, source: PeerId, reason: &str, detail: &dyn std::fmt::Display) {
    info!(%source, reason, "kad PUT_VALUE refused (already acknowledged by kad): {detail}");
    metrics
        .kad_put_rejected
        .get_or_create(&KadRejectLabels {
            reason: reason.into(),
        })
        .inc();
}
