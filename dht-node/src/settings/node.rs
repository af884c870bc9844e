//! The node's keys: [`NodeSettings`] (file and environment), [`NodeFlags`] (flags), their
//! documentation ([`NODE_KEYS`]), validation and the [`NodeConfig`] they describe.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use dht_core::{Policy, PublicKey};
use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

use super::{in_range, Invalid, KeyDoc, Schema};
use crate::process::LogFormat;
use crate::{NodeConfig, NodeMode, DEFAULT_PORT};

/// Largest `max_value_len` accepted (frames and buffers grow with it).
pub const MAX_VALUE_LEN_LIMIT: usize = 64 * 1024 * 1024;
const YEAR_SECS: u64 = 365 * 24 * 60 * 60;
const MIB: u64 = 1024 * 1024;

/// The keys of [`NodeSettings`].
pub const NODE_KEYS: &[KeyDoc] = &[
    KeyDoc {
        key: "data_dir",
        example: "\"/var/lib/dht-node\"",
        doc: "key, redb store, saved routing table [./dht-data]",
    },
    KeyDoc {
        key: "mode",
        example: "\"full\"",
        doc: "full (stores and routes for others) or client [full]",
    },
    KeyDoc {
        key: "identity_key",
        example: "\"/etc/dmsg/secret.key\"",
        doc: "Skywire secp256k1 secret key file as node identity [an ed25519 key in data_dir]",
    },
    KeyDoc {
        key: "port",
        example: "9480",
        doc: "TCP and QUIC port on all IPv4 and IPv6 interfaces [9480]",
    },
    KeyDoc {
        key: "listen",
        example: "[\"/ip4/0.0.0.0/tcp/9480\"]",
        doc: "listen addresses; replace port [none: from port]",
    },
    KeyDoc {
        key: "announce",
        example: "[\"/ip4/203.0.113.7/tcp/9480\"]",
        doc: "external addresses peers should dial (NAT, containers) [none]",
    },
    KeyDoc {
        key: "bootstrap",
        example: "[\"/ip4/../tcp/../p2p/<id>\"]",
        doc: "peers to join through [none: a bootstrap node]",
    },
    KeyDoc {
        key: "max_value_len",
        example: "1048576",
        doc: "largest value accepted, bytes [1 MiB; 1 to 64 MiB]",
    },
    KeyDoc {
        key: "ttl_secs",
        example: "21600",
        doc: "longest an item is kept after a put [6 h; 1 s to 1 year]",
    },
    KeyDoc {
        key: "replication",
        example: "20",
        doc: "replicas per item, Kademlia k [20; 1 to 100]",
    },
    KeyDoc {
        key: "republish_interval_secs",
        example: "3600",
        doc: "republish pass interval [1 h; 1 s to 1 year]",
    },
    KeyDoc {
        key: "max_connected_peers",
        example: "320",
        doc: "most peers kept connected; every full node of a membership up to three quarters of it is kept connected [320; 1 to 100000]",
    },
    KeyDoc {
        key: "max_client_peers",
        example: "4096",
        doc: "most client-mode peers (visors) kept connected, apart from max_connected_peers [4096; 1 to 100000]",
    },
    KeyDoc {
        key: "client_connections",
        example: "3",
        doc: "client mode: most full nodes kept connected [3; 1 to 1000]",
    },
    KeyDoc {
        key: "max_store_bytes",
        example: "4294967296",
        doc: "store size past which strangers' items are evicted [4 GiB; 1 MiB to 1 PiB]",
    },
    KeyDoc {
        key: "max_items_per_signer",
        example: "64",
        doc: "live items one non-authorized signer may hold [64; 1 to 1000000]",
    },
    KeyDoc {
        key: "metrics_listen",
        example: "\"127.0.0.1:9100\"",
        doc: "serve /metrics and /health here [off]",
    },
    KeyDoc {
        key: "log_format",
        example: "\"text\"",
        doc: "text or json [text]",
    },
    KeyDoc {
        key: "repair_store",
        example: "false",
        doc: "move a damaged store aside and start empty [false]",
    },
    KeyDoc {
        key: "authorized_publishers",
        example: "{ tp = [\"02ab...\"] }",
        doc: "salt -> hex public keys allowed to publish any subject [none]",
    },
];

/// Keys of earlier versions: `(old, new)`.
pub const NODE_RENAMED: &[(&str, &str)] = &[("skywire_key", "identity_key")];

/// The settings of a node, shared by both binaries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeSettings {
    /// Key, redb store, saved routing table.
    pub data_dir: PathBuf,
    /// Full node or client.
    pub mode: NodeMode,
    /// A Skywire secp256k1 secret key file used as the node identity.
    pub identity_key: Option<PathBuf>,
    /// TCP and QUIC port on all interfaces (when `listen` is empty).
    pub port: u16,
    /// Listen addresses (replace `port`).
    #[serde(deserialize_with = "string_list")]
    pub listen: Vec<String>,
    /// External addresses advertised to peers.
    #[serde(deserialize_with = "string_list")]
    pub announce: Vec<String>,
    /// Bootstrap peers.
    #[serde(deserialize_with = "string_list")]
    pub bootstrap: Vec<String>,
    /// Largest value accepted.
    pub max_value_len: usize,
    /// Longest an item is kept after a put.
    pub ttl_secs: u64,
    /// Replicas per item.
    pub replication: usize,
    /// Republish pass interval.
    pub republish_interval_secs: u64,
    /// Most peers kept connected.
    pub max_connected_peers: usize,
    /// Most client-mode peers kept connected (full nodes).
    pub max_client_peers: usize,
    /// Most full nodes kept connected (client mode).
    pub client_connections: usize,
    /// Store size past which non-authorized items are evicted.
    pub max_store_bytes: u64,
    /// Live items of one non-authorized signer.
    pub max_items_per_signer: u64,
    /// Where to serve /metrics and /health.
    pub metrics_listen: Option<SocketAddr>,
    /// Log format.
    pub log_format: LogFormat,
    /// Move a damaged store aside and start empty.
    pub repair_store: bool,
    /// Salt -> hex keys allowed to publish about any subject.
    pub authorized_publishers: BTreeMap<String, Vec<String>>,
}

impl Default for NodeSettings {
    fn default() -> Self {
        let config = NodeConfig::default();
        NodeSettings {
            data_dir: PathBuf::from("dht-data"),
            mode: NodeMode::Full,
            identity_key: None,
            port: DEFAULT_PORT,
            listen: Vec::new(),
            announce: Vec::new(),
            bootstrap: Vec::new(),
            max_value_len: config.policy.max_value_len,
            ttl_secs: config.policy.ttl.as_secs(),
            replication: config.replication,
            republish_interval_secs: config.republish_interval.as_secs(),
            max_connected_peers: config.max_connected_peers,
            max_client_peers: config.max_client_peers,
            client_connections: config.client_connections,
            max_store_bytes: config.store_limits.max_total_bytes,
            max_items_per_signer: config.store_limits.max_items_per_signer,
            metrics_listen: None,
            log_format: LogFormat::Text,
            repair_store: false,
            authorized_publishers: BTreeMap::new(),
        }
    }
}

fn addrs(key: &str, list: &[String]) -> Result<Vec<Multiaddr>, Invalid> {
    list.iter()
        .map(|a| {
            a.parse()
                .map_err(|e| Invalid::new(key, format!("has an invalid address {a:?}: {e}")))
        })
        .collect()
}

impl Schema for NodeSettings {
    fn renamed() -> &'static [(&'static str, &'static str)] {
        NODE_RENAMED
    }

    fn validate(&self) -> Result<(), Invalid> {
        in_range("max_value_len", self.max_value_len, 1, MAX_VALUE_LEN_LIMIT)?;
        in_range("ttl_secs", self.ttl_secs, 1, YEAR_SECS)?;
        in_range("replication", self.replication, 1, 100)?;
        in_range(
            "republish_interval_secs",
            self.republish_interval_secs,
            1,
            YEAR_SECS,
        )?;
        in_range("max_connected_peers", self.max_connected_peers, 1, 100_000)?;
        in_range("max_client_peers", self.max_client_peers, 1, 100_000)?;
        in_range("client_connections", self.client_connections, 1, 1000)?;
        in_range("max_store_bytes", self.max_store_bytes, MIB, MIB << 30)?;
        in_range(
            "max_items_per_signer",
            self.max_items_per_signer,
            1,
            1_000_000,
        )?;
        addrs("listen", &self.listen)?;
        addrs("announce", &self.announce)?;
        addrs("bootstrap", &self.bootstrap)?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(Invalid::new("data_dir", "is empty"));
        }
        self.policy()?;
        Ok(())
    }
}

impl NodeSettings {
    /// The item policy: value limit, TTL, authorized publishers (keys parsed; an
    /// off-curve or malformed key is refused with its salt).
    pub fn policy(&self) -> Result<Policy, Invalid> {
        let mut policy = Policy {
            max_value_len: self.max_value_len,
            ttl: Duration::from_secs(self.ttl_secs),
            ..Policy::default()
        };
        for (salt, keys) in &self.authorized_publishers {
            for k in keys {
                let key = PublicKey::parse_strict(k).map_err(|e| {
                    Invalid::new(
                        format!("authorized_publishers.{salt}"),
                        format!("has an invalid key {k:?}: {e}"),
                    )
                })?;
                policy = policy.authorize(salt.clone().into_bytes(), key);
            }
        }
        Ok(policy)
    }

    /// The listen addresses: `listen`, or TCP and QUIC on `port` on every IPv4 interface
    /// and, when this host has IPv6, every IPv6 interface (a warning is logged without).
    pub fn listen_addrs(&self) -> Result<Vec<Multiaddr>, Invalid> {
        if !self.listen.is_empty() {
            return addrs("listen", &self.listen);
        }
        let port = self.port;
        let mut list = vec![
            format!("/ip4/0.0.0.0/tcp/{port}"),
            format!("/ip4/0.0.0.0/udp/{port}/quic-v1"),
        ];
        match ipv6_available() {
            Ok(()) => {
                list.push(format!("/ip6/::/tcp/{port}"));
                list.push(format!("/ip6/::/udp/{port}/quic-v1"));
            }
            Err(e) => {
                tracing::warn!(error = %e, "IPv6 is not available on this host: listening on IPv4 only")
            }
        }
        addrs("port", &list)
    }

    /// The node configuration these settings describe (after [`Schema::validate`]; the
    /// identity key file is read by the caller).
    pub fn node_config(&self) -> Result<NodeConfig, Invalid> {
        self.validate()?;
        let mut config = NodeConfig {
            mode: self.mode,
            listen: self.listen_addrs()?,
            external_addresses: addrs("announce", &self.announce)?,
            bootstrap: addrs("bootstrap", &self.bootstrap)?,
            data_dir: Some(self.data_dir.clone()),
            policy: self.policy()?,
            replication: self.replication,
            republish_interval: Duration::from_secs(self.republish_interval_secs),
            max_connected_peers: self.max_connected_peers,
            max_client_peers: self.max_client_peers,
            client_connections: self.client_connections,
            repair_store: self.repair_store,
            ..NodeConfig::default()
        };
        config.store_limits.max_total_bytes = self.max_store_bytes;
        config.store_limits.max_items_per_signer = self.max_items_per_signer;
        config.quic = config.listen.iter().any(|a| {
            a.iter()
                .any(|p| matches!(p, libp2p::multiaddr::Protocol::QuicV1))
        });
        Ok(config)
    }
}

/// Whether an IPv6 socket can be bound on this host.
fn ipv6_available() -> std::io::Result<()> {
    std::net::TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, 0)).map(drop)
}

/// A list of strings, or one string of comma-separated items (`DHT_BOOTSTRAP=a,b`).
fn string_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        OneOrMany::Many(v) => v,
    })
}

/// The command-line flags of the node settings, shared by `dht-node run` and
/// `dht-sidecar`; each overrides the key of the same name.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct NodeFlags {
    /// Data directory (key, redb store, saved routing table) [key: data_dir].
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Full node or client [key: mode].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<NodeMode>,
    /// Run under this Skywire secp256k1 secret key (file with 64 hex chars) as the node
    /// identity, instead of the ed25519 key kept in the data directory [key: identity_key].
    #[arg(long, alias = "skywire-key", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_key: Option<PathBuf>,
    /// TCP and QUIC port on all interfaces [key: port].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Listen address; repeatable; replaces --port [key: listen].
    #[arg(long, value_name = "MULTIADDR")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<Multiaddr>,
    /// External address to advertise (NAT, containers); repeatable [key: announce].
    #[arg(long, value_name = "MULTIADDR")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub announce: Vec<Multiaddr>,
    /// Bootstrap peer address (`/ip4/../tcp/../p2p/<id>`); repeatable or comma-separated
    /// [key: bootstrap].
    #[arg(long, value_delimiter = ',', value_name = "MULTIADDR")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bootstrap: Vec<Multiaddr>,
    /// Largest value accepted, in bytes [key: max_value_len].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_value_len: Option<usize>,
    /// Replicas per item [key: replication].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<usize>,
    /// Longest an item is kept after a put, in seconds [key: ttl_secs].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// Serve GET /metrics (Prometheus) and GET /health here [key: metrics_listen].
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Authorized publisher as SALT=HEXKEY; repeatable; replaces the configured list of
    /// that salt [key: authorized_publishers].
    #[arg(long = "authorize", value_name = "SALT=HEXKEY", value_parser = salt_and_key)]
    #[serde(
        rename = "authorized_publishers",
        serialize_with = "by_salt",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub authorize: Vec<(String, String)>,
    /// Move a damaged or vanished item store aside and start empty; the node then
    /// rebuilds what it is responsible for from the network [key: repair_store].
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub repair_store: bool,
}

fn salt_and_key(s: &str) -> Result<(String, String), String> {
    let (salt, key) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected SALT=HEXKEY"))?;
    PublicKey::parse_strict(key).map_err(|e| format!("{key:?}: {e}"))?;
    Ok((salt.to_owned(), key.to_owned()))
}

fn by_salt<S: serde::Serializer>(list: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (salt, key) in list {
        map.entry(salt).or_default().push(key);
    }
    map.serialize(s)
}
