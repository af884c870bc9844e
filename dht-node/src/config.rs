//! Node configuration, with defaults fit for a production full node.

use std::path::PathBuf;
use std::time::Duration;

use dht_core::store::StoreLimits;
use dht_core::Policy;
use libp2p::Multiaddr;

/// Room in a frame beside one value: keys, salt, signature, envelope and framing.
pub const FRAME_OVERHEAD: usize = 64 * 1024;

/// Default TCP (and UDP for QUIC) port of a full node.
pub const DEFAULT_PORT: u16 = 9480;

/// Whether the node stores and routes for others.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum NodeMode {
    /// Full node: in routing tables, stores items for others, answers queries.
    Full,
    /// Client (visors): queries and publishes, never enters routing tables, stores nothing
    /// for others.
    Client,
}

/// Per-peer inbound limits (token buckets): requests, and the bytes they carry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Burst size.
    pub burst: f64,
    /// Sustained bytes per second (values carried by puts, frames refused as too large).
    pub bytes_per_second: f64,
    /// Burst size in bytes.
    pub burst_bytes: f64,
}

impl Default for RateLimit {
    fn default() -> Self {
        // Full nodes exchange a lot (a DMSG server mirroring a discovery sends one put per
        // touched key to each replica): generous for peers, still a bound for floods.
        RateLimit {
            per_second: 2_000.0,
            burst: 20_000.0,
            bytes_per_second: 16.0 * 1024.0 * 1024.0,
            burst_bytes: 64.0 * 1024.0 * 1024.0,
        }
    }
}

/// Everything a node needs to run.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Full node or client.
    pub mode: NodeMode,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Addresses peers should dial this node at besides its listen addresses (a NAT's or
    /// a container host's public address): advertised by identify, hence in the others'
    /// routing tables.
    pub external_addresses: Vec<Multiaddr>,
    /// Bootstrap peers (`/ip4/../tcp/../p2p/<peer id>`).
    pub bootstrap: Vec<Multiaddr>,
    /// Where the redb store, the node key and the saved routing table live. `None`: an
    /// in-memory store and nothing saved.
    pub data_dir: Option<PathBuf>,
    /// What items are accepted.
    pub policy: Policy,
    /// Store quotas.
    pub store_limits: StoreLimits,
    /// Replicas per item (Kademlia k).
    pub replication: usize,
    /// Peers asked in parallel by the fast read path (Kademlia alpha).
    pub parallelism: usize,
    /// Time allowed for one request to one peer.
    pub request_timeout: Duration,
    /// Time allowed for a lookup of the closest peers.
    pub lookup_timeout: Duration,
    /// Floor of a request's hedge deadline. Puts and gets treat a peer that has not
    /// answered within its deadline (derived from its observed round trips, see
    /// `rtt`) as slow and move on to other peers without cancelling the request; the
    /// floor keeps loopback's microsecond round trips from making every request late
    /// on a busy machine.
    pub min_request_deadline: Duration,
    /// A first-valid get asks the alpha closest known peers first and starts a lookup
    /// only if none answered with the item within this delay (or all missed).
    pub get_hedge_delay: Duration,
    /// A peer suspected (its dial or a request failed) for this long is declared dead:
    /// it leaves the routing table and its items are re-replicated at once.
    pub dead_after: Duration,
    /// When a put's responsible set is smaller than `replication` (a young routing
    /// table, or a small network), how long it waits for its lookup once a majority
    /// stored.
    pub put_lookup_grace: Duration,
    /// Interval of the republish pass (jittered by +-10%).
    pub republish_interval: Duration,
    /// Interval of the expiry sweep.
    pub sweep_interval: Duration,
    /// How often the routing table is saved to the data directory.
    pub save_interval: Duration,
    /// Idle connections are kept this long.
    pub idle_connection_timeout: Duration,
    /// Most peers kept connected; past it the least recently used are disconnected (down
    /// to three quarters). Routing-table peers are dialled again on demand. While the
    /// whole membership of full nodes fits in three quarters of it, a full node keeps a
    /// connection to every one (see [`NodeConfig::bucket_size`]): each request is then
    /// one round trip over a warm connection.
    pub max_connected_peers: usize,
    /// Capacity of each k-bucket of the routing table (Kademlia's k is `replication`;
    /// FIND_NODE answers still carry at most 20 peers). Larger than k so that a network
    /// of up to `bucket_size` full nodes (Skywire's DMSG servers) is held whole: while
    /// the table is smaller than one bucket and the members exchange brings nothing new,
    /// every node computes the responsible set of any target from its own table (one
    /// hop, no lookup). Larger networks route by lookups as Kademlia does.
    pub bucket_size: usize,
    /// Full nodes: most client-mode peers (visors) kept connected, a budget apart from
    /// `max_connected_peers`, so that a fleet of visors neither crowds full nodes out
    /// nor is trimmed with them (a visor whose connection is trimmed dials again at its
    /// next read: trimming a fleet turns into a reconnection storm).
    pub max_client_peers: usize,
    /// Client mode: most full nodes kept connected. Reads go first to the connected
    /// full nodes among the responsible set (one round trip over a warm connection);
    /// the extra connections a lookup opens are closed again after a grace period.
    pub client_connections: usize,
    /// Per-peer inbound rate limit.
    pub rate_limit: RateLimit,
    /// New items (targets not yet held, non-authorized signers) a peer outside the
    /// routing table may create.
    pub stranger_items_per_peer: crate::admission::Budget,
    /// The same, shared by every peer of one IPv4 /24 or IPv6 /48.
    pub stranger_items_per_range: crate::admission::Budget,
    /// Bytes of new items all strangers together may create (per second and burst).
    /// Items expire within the TTL, so strangers' live bytes stay under
    /// `burst + per_second * ttl` (80 MiB with the defaults).
    pub stranger_bytes: crate::admission::Budget,
    /// Most routing-table peers from one IPv4 /24 or IPv6 /48 (loopback exempt, so local
    /// testnets work). `None`: no limit.
    pub max_peers_per_ip_range: Option<usize>,
    /// Count loopback addresses against the IP-range bound too (for testing the bound on
    /// one machine).
    pub ip_range_limit_loopback: bool,
    /// Also listen on QUIC (UDP) beside TCP.
    pub quic: bool,
    /// Move a damaged or vanished item store aside and start empty (the node rebuilds
    /// what it is responsible for from the network) instead of refusing to start.
    pub repair_store: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            mode: NodeMode::Full,
            listen: vec![
                format!("/ip4/0.0.0.0/tcp/{DEFAULT_PORT}")
                    .parse()
                    .expect("valid multiaddr"),
                format!("/ip4/0.0.0.0/udp/{DEFAULT_PORT}/quic-v1")
                    .parse()
                    .expect("valid multiaddr"),
            ],
            external_addresses: Vec::new(),
            bootstrap: Vec::new(),
            data_dir: None,
            policy: Policy::default(),
            store_limits: StoreLimits::default(),
            replication: 20,
            parallelism: 3,
            request_timeout: Duration::from_secs(5),
            lookup_timeout: Duration::from_secs(10),
            min_request_deadline: Duration::from_millis(150),
            get_hedge_delay: Duration::from_millis(50),
            dead_after: Duration::from_secs(10),
            put_lookup_grace: Duration::from_millis(500),
            republish_interval: Duration::from_secs(60 * 60),
            sweep_interval: Duration::from_secs(60),
            save_interval: Duration::from_secs(30),
            idle_connection_timeout: Duration::from_secs(600),
            max_connected_peers: 320,
            bucket_size: 256,
            max_client_peers: 4096,
            client_connections: 3,
            rate_limit: RateLimit::default(),
            stranger_items_per_peer: crate::admission::Budget {
                per_second: 2.0,
                burst: 64.0,
            },
            stranger_items_per_range: crate::admission::Budget {
                per_second: 10.0,
                burst: 256.0,
            },
            // 64 MiB per default TTL (6 h), 16 MiB at once.
            stranger_bytes: crate::admission::Budget {
                per_second: 64.0 * 1024.0 * 1024.0 / (6.0 * 3600.0),
                burst: 16.0 * 1024.0 * 1024.0,
            },
            max_peers_per_ip_range: Some(8),
            ip_range_limit_loopback: false,
            quic: true,
            repair_store: false,
        }
    }
}

impl NodeConfig {
    /// A config for a node on 127.0.0.1 with OS-chosen ports (tests, testnets).
    pub fn local() -> Self {
        NodeConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr")],
            quic: false,
            ..NodeConfig::default()
        }
    }

    /// Largest item-protocol message: one full value plus room for the rest of an item.
    /// A put whose value is over the limit is refused from its length prefix; batches
    /// (hand-off, republish, sync pages) are cut to fit.
    pub fn max_message_len(&self) -> usize {
        self.policy.max_value_len.saturating_add(FRAME_OVERHEAD)
    }
}
