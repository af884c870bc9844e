//! Prometheus metrics of a node: what operators watch.

use std::sync::atomic::AtomicU64;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of put outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PutLabels {
    /// "accepted" or "rejected".
    pub result: String,
    /// Reason code when rejected, the admission ("inserted", "replaced", "refreshed")
    /// when accepted.
    pub reason: String,
}

/// Labels of inbound requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// "put", "get", "sync".
    pub kind: String,
}

/// Labels of traffic counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
    /// "in" or "out".
    pub direction: String,
}

/// Labels of substream bytes by application protocol.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolBytesLabels {
    /// "items", "kad", "identify", "ping" or "other".
    pub protocol: &'static str,
    /// "in" or "out".
    pub direction: &'static str,
}

/// Labels of put values by the form they were sent in.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ValueFormLabels {
    /// "plain", "zstd" or "patch".
    pub form: &'static str,
}

/// Labels of refused kad records.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KadRejectLabels {
    /// The [`dht_core::ReasonCode`] name, or "rate_limited" or "internal" (the store
    /// failed).
    pub reason: String,
}

/// Labels of gets.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GetLabels {
    /// "first" or "quorum".
    pub mode: String,
}

/// The salts counted by name in `dht_items_accepted_by_salt_total`; every other salt (a
/// publisher may invent any) is counted as "other", so the label set stays bounded.
pub const KNOWN_SALTS: &[&str] = &["tp", "svc", "dmsg"];

/// The `salt` label of a salt: its name when known, else "other".
pub fn salt_label(salt: &[u8]) -> &'static str {
    KNOWN_SALTS
        .iter()
        .find(|k| k.as_bytes() == salt)
        .copied()
        .unwrap_or("other")
}

/// Labels by salt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SaltLabels {
    /// The salt: "tp", "svc", "dmsg", or "other" for every other salt.
    pub salt: String,
}

/// The node's metrics, all registered in one registry ([`Metrics::encode`] writes it out).
pub struct Metrics {
    /// Peers in the routing table.
    pub routing_table_peers: Gauge,
    /// Connected peers.
    pub connected_peers: Gauge,
    /// Connections established (inbound and outbound): its rate is the handshakes this
    /// node pays for.
    pub connections_opened: Counter,
    /// Items in the local store (including tombstones).
    pub items_stored: Gauge,
    /// Bytes in the local store.
    pub store_bytes: Gauge<u64, AtomicU64>,
    /// Puts arriving at this node's store, by result and reason.
    pub puts: Family<PutLabels, Counter>,
    /// Inbound requests by kind.
    pub inbound_requests: Family<RequestLabels, Counter>,
    /// Requests this node sent: kad `find_node` requests of its lookups (from the query
    /// statistics) and item requests by kind.
    pub outbound_requests: Family<RequestLabels, Counter>,
    /// Inbound requests refused by the rate limiter.
    pub rate_limited: Counter,
    /// Latency of this node's gets.
    pub get_latency: Family<GetLabels, Histogram>,
    /// Items accepted by salt.
    pub items_accepted_by_salt: Family<SaltLabels, Counter>,
    /// Peers suspected after a failed dial or request.
    pub peers_suspected: Counter,
    /// Peers declared dead (out of the routing table) after a long outage.
    pub peers_declared_dead: Counter,
    /// Puts that returned before every replica asked had answered (the rest finished in
    /// the background).
    pub puts_returned_early: Counter,
    /// Puts whose report found no majority of the responsible set holding the item.
    pub puts_without_majority: Counter,
    /// Requests of puts and gets sent to another peer because one asked was slow (past
    /// its deadline from the observed round trips) or failed.
    pub hedged_requests: Counter,
    /// Equal-seq conflicts resolved by the total order (a different item at the same seq
    /// won or lost).
    pub equivocations: Counter,
    /// Items copied to a peer that became responsible after another was declared dead.
    pub items_rereplicated: Counter,
    /// New items refused from peers outside the routing table whose budget was spent.
    pub strangers_throttled: Counter,
    /// Bytes of item-protocol frames read and written (length prefix included; frames
    /// refused from their prefix count the bytes skipped).
    pub item_protocol_bytes: Family<TrafficLabels, Counter>,
    /// `rate_limited` refusals to strangers held back a second before they were sent.
    pub refusals_held: Counter,
    /// Peers banned for breaking the item protocol on purpose (frames far over the
    /// limit, a stranger's oversized frames past its byte budget, a stranger that kept
    /// sending past its refusals).
    pub peers_banned: Counter,
    /// New inbound connections dropped before their handshake: from the address of a
    /// banned peer, over its one a second.
    pub connections_throttled: Counter,
    /// Substream bytes by application protocol and direction (multistream-select
    /// negotiation included; noise and yamux framing excluded).
    pub protocol_bytes: Family<ProtocolBytesLabels, Counter>,
    /// Put values sent to replicas, by the form they travelled in (one per replica asked,
    /// retries included).
    pub put_value_forms: Family<ValueFormLabels, Counter>,
    /// Replicas that answered a patch with "need base" (the full value was sent again).
    pub put_need_base: Counter,
    /// Put items that shared a request with others bound for the same peer.
    pub put_items_batched: Counter,
    /// Value bytes not sent thanks to compression and patches (full value length minus
    /// the coded form's length, per replica).
    pub put_value_bytes_saved: Counter,
    /// Inbound kad `PUT_VALUE` records refused (never stored), by reason: kad
    /// acknowledges before the record is checked, so this is the only trace.
    pub kad_put_rejected: Family<KadRejectLabels, Counter>,
    registry: Mutex<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let m = Metrics {
            routing_table_peers: Gauge::default(),
            connected_peers: Gauge::default(),
            items_stored: Gauge::default(),
            store_bytes: Gauge::default(),
            puts: Family::default(),
            inbound_requests: Family::default(),
            outbound_requests: Family::default(),
            rate_limited: Counter::default(),
            get_latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            items_accepted_by_salt: Family::default(),
            peers_suspected: Counter::default(),
            connections_opened: Counter::default(),
            peers_declared_dead: Counter::default(),
            puts_returned_early: Counter::default(),
            puts_without_majority: Counter::default(),
            hedged_requests: Counter::default(),
            equivocations: Counter::default(),
            items_rereplicated: Counter::default(),
            item_protocol_bytes: Family::default(),
            protocol_bytes: Family::default(),
            refusals_held: Counter::default(),
            peers_banned: Counter::default(),
            connections_throttled: Counter::default(),
            strangers_throttled: Counter::default(),
            put_value_forms: Family::default(),
            put_need_base: Counter::default(),
            put_items_batched: Counter::default(),
            put_value_bytes_saved: Counter::default(),
            kad_put_rejected: Family::default(),
            registry: Mutex::new(Registry::with_prefix("dht")),
        };
        {
            let mut r = m.registry.lock();
            r.register(
                "strangers_throttled",
                "New items refused from peers outside the routing table (budget spent)",
                m.strangers_throttled.clone(),
            );
            r.register(
                "kad_put_rejected",
                "Inbound kad PUT_VALUE records refused (not stored) by reason",
                m.kad_put_rejected.clone(),
            );
            r.register(
                "put_value_forms",
                "Put values sent to replicas by wire form (plain, zstd, patch)",
                m.put_value_forms.clone(),
            );
            r.register(
                "put_need_base",
                "Replicas that lacked a patch's base and were sent the full value",
                m.put_need_base.clone(),
            );
            r.register(
                "put_items_batched",
                "Put items that shared a request with others bound for the same peer",
                m.put_items_batched.clone(),
            );
            r.register(
                "put_value_bytes_saved",
                "Value bytes not sent to replicas thanks to compression and patches",
                m.put_value_bytes_saved.clone(),
            );
            r.register(
                "item_protocol_bytes",
                "Bytes of item-protocol frames by direction",
                m.item_protocol_bytes.clone(),
            );
            r.register(
                "refusals_held",
                "Refusals to rate-limited strangers held back a second before they were sent",
                m.refusals_held.clone(),
            );
            r.register(
                "peers_banned",
                "Peers banned for 30 s for breaking the item protocol on purpose",
                m.peers_banned.clone(),
            );
            r.register(
                "connections_throttled",
                "New inbound connections dropped before their handshake (from a banned peer's address, over one a second)",
                m.connections_throttled.clone(),
            );
            r.register(
                "protocol_bytes",
                "Substream bytes by application protocol (items, kad, identify, ping, other) and direction",
                m.protocol_bytes.clone(),
            );
            r.register(
                "connections_opened",
                "Connections established, inbound and outbound (each one a handshake)",
                m.connections_opened.clone(),
            );
            r.register(
                "peers_suspected",
                "Peers suspected after a failed dial or request",
                m.peers_suspected.clone(),
            );
            r.register(
                "peers_declared_dead",
                "Peers declared dead and removed from the routing table",
                m.peers_declared_dead.clone(),
            );
            r.register(
                "puts_returned_early",
                "Puts that returned once a majority stored, before every replica answered",
                m.puts_returned_early.clone(),
            );
            r.register(
                "puts_without_majority",
                "Puts after which no majority of the responsible set held the item",
                m.puts_without_majority.clone(),
            );
            r.register(
                "hedged_requests",
                "Requests sent to another peer because one asked was slow or failed",
                m.hedged_requests.clone(),
            );
            r.register(
                "equivocations",
                "Equal-seq conflicts resolved by the total order",
                m.equivocations.clone(),
            );
            r.register(
                "items_rereplicated",
                "Items copied to new replicas after a peer was declared dead",
                m.items_rereplicated.clone(),
            );
            r.register(
                "routing_table_peers",
                "Peers in the routing table",
                m.routing_table_peers.clone(),
            );
            r.register(
                "connected_peers",
                "Connected peers",
                m.connected_peers.clone(),
            );
            r.register(
                "items_stored",
                "Items in the local store",
                m.items_stored.clone(),
            );
            r.register(
                "store_bytes",
                "Bytes in the local store",
                m.store_bytes.clone(),
            );
            r.register(
                "puts",
                "Puts into the local store by result and reason",
                m.puts.clone(),
            );
            r.register(
                "outbound_requests",
                "Requests sent: kad find_node of lookups, item requests by kind",
                m.outbound_requests.clone(),
            );
            r.register(
                "inbound_requests",
                "Inbound item requests by kind",
                m.inbound_requests.clone(),
            );
            r.register(
                "rate_limited",
                "Inbound requests refused by the rate limiter",
                m.rate_limited.clone(),
            );
            r.register(
                "get_latency_seconds",
                "Latency of gets issued by this node",
                m.get_latency.clone(),
            );
            r.register(
                "items_accepted_by_salt",
                "Items accepted into the local store by salt",
                m.items_accepted_by_salt.clone(),
            );
        }
        m
    }

    /// Lets a host register its own metrics next to the node's.
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.registry.lock());
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry.lock()).is_err() {
            out.clear();
        }
        out
    }

    /// Counts one put outcome.
    pub fn count_put(
        &self,
        salt: &[u8],
        result: Result<dht_core::Admission, dht_core::ReasonCode>,
    ) {
        let (result, reason) = match result {
            Ok(a) => {
                self.items_accepted_by_salt
                    .get_or_create(&SaltLabels {
                        salt: salt_label(salt).into(),
                    })
                    .inc();
                ("accepted", crate::report::admission_name(a))
            }
            Err(code) => ("rejected", code.as_str()),
        };
        self.puts
            .get_or_create(&PutLabels {
                result: result.into(),
                reason: reason.into(),
            })
            .inc();
    }
}
