//! The configuration schema of a node, shared by `dht-node run` and `dht-sidecar` (which
//! adds its own sections): every key with its default and range, layered
//! file < environment < flags with [figment], validated at start with an error that names
//! the key and where its value came from.
//!
//! * file: TOML (`--config`), keys as in [`NodeSettings`];
//! * environment: `DHT_<KEY>` (upper case; a section's key as `DHT_<SECTION>__<KEY>`,
//!   e.g. `DHT_GATEWAY__LISTEN`); lists as `a,b` or `[a, b]`;
//! * flags: [`NodeFlags`], shared by both binaries.
//!
//! Unknown keys are refused (from the file and from `DHT_*` variables alike), as are
//! values out of range (`replication = 0`, `ttl_secs = 0`, `max_value_len = 0`, ...).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dht_core::{Policy, PublicKey};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use libp2p::Multiaddr;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::process::LogFormat;
use crate::{NodeConfig, NodeMode, DEFAULT_PORT};

/// Prefix of the environment variables (`DHT_DATA_DIR`, `DHT_GATEWAY__LISTEN`, ...).
pub const ENV_PREFIX: &str = "DHT_";

/// Largest `max_value_len` accepted (frames and buffers grow with it).
pub const MAX_VALUE_LEN_LIMIT: usize = 64 * 1024 * 1024;
const YEAR_SECS: u64 = 365 * 24 * 60 * 60;
const MIB: u64 = 1024 * 1024;

/// A configuration that could not be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The configuration file could not be read.
    #[error("reading {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A value does not parse, or has the wrong type.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A key the schema does not have.
    #[error("invalid configuration: unknown key `{key}`{from}{hint}")]
    UnknownKey {
        /// The key (`section.key` inside a section).
        key: String,
        /// Where it was set (` in FILE`, ` in environment variable DHT_...`).
        from: String,
        /// What it is called now, for a renamed key.
        hint: String,
    },
    /// A value out of its range or otherwise refused.
    #[error("invalid configuration: {key} {message}{from}")]
    Invalid {
        /// The key.
        key: String,
        /// Where it was set.
        from: String,
        /// What is wrong.
        message: String,
    },
}

/// A refused value: the key and what is wrong (see [`Schema::validate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The key (`section.key` inside a section).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl Invalid {
    /// A refusal of `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A configuration schema: defaults, validation, renamed keys.
pub trait Schema: Serialize + DeserializeOwned + Default {
    /// Checks every value; the first refusal names its key.
    fn validate(&self) -> Result<(), Invalid>;

    /// `(old key, new key)` of renamed keys, named in the unknown-key error.
    fn renamed() -> &'static [(&'static str, &'static str)] {
        &[]
    }
}

/// One documented key: its name, an example value (the default unless said) and what it
/// does. The help of both binaries lists them; a test checks that every key of the schema
/// is here and in the example files.
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    /// The key.
    pub key: &'static str,
    /// `key = <this>` in TOML.
    pub example: &'static str,
    /// What it does, default and range.
    pub doc: &'static str,
}

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
        example: "256",
        doc: "most peers kept connected [256; 1 to 100000]",
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
            max_store_bytes: config.store_limits.max_total_bytes,
            max_items_per_signer: config.store_limits.max_items_per_signer,
            metrics_listen: None,
            log_format: LogFormat::Text,
            repair_store: false,
            authorized_publishers: BTreeMap::new(),
        }
    }
}

/// `value` within `min..=max`, else a refusal naming `key`.
fn in_range<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), Invalid> {
    if value < min || value > max {
        return Err(Invalid::new(
            key,
            format!("= {value} is out of range (expected {min} to {max})"),
        ));
    }
    Ok(())
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
    /// Bootstrap peer address (/ip4/../tcp/../p2p/<id>); repeatable or comma-separated
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

/// A figment provider named after its origin (so errors say "command-line flags").
struct Named {
    name: &'static str,
    data: Serialized<serde_json::Value>,
}

impl Provider for Named {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.data.data()
    }
}

/// The layers of a configuration: defaults < `file` < `DHT_*` variables (but those in
/// `env_ignore`, lower case without the prefix, e.g. `config`) < `flags` (an object of
/// the keys given on the command line).
pub struct Layers<'a> {
    /// The TOML file, if any (it must exist).
    pub file: Option<&'a Path>,
    /// `DHT_*` variables that are not keys (they name the file).
    pub env_ignore: &'a [&'a str],
    /// The flags given, as an object of keys.
    pub flags: serde_json::Value,
}

/// A loaded configuration, and warnings for the log (unknown `DHT_*` variables).
#[derive(Debug)]
pub struct Loaded<T> {
    /// The validated settings.
    pub value: T,
    /// To log once logging is set up.
    pub warnings: Vec<String>,
}

/// Loads, checks for unknown keys and validates a configuration.
pub fn load<T: Schema>(layers: Layers<'_>) -> Result<Loaded<T>, SettingsError> {
    let mut figment = Figment::new().merge(Named {
        name: "the defaults",
        data: Serialized::defaults(
            serde_json::to_value(T::default()).map_err(|e| SettingsError::Parse(e.to_string()))?,
        ),
    });
    if let Some(path) = layers.file {
        std::fs::metadata(path)
            .and_then(|m| {
                if m.is_file() {
                    Ok(())
                } else {
                    Err(std::io::Error::other("not a file"))
                }
            })
            .map_err(|source| SettingsError::File {
                path: path.to_owned(),
                source,
            })?;
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment
        .merge(
            Env::prefixed(ENV_PREFIX)
                .split("__")
                .ignore(layers.env_ignore),
        )
        .merge(Named {
            name: "command-line flags",
            data: Serialized::defaults(layers.flags),
        });
    let value: T = figment.extract().map_err(|e| parse_error(&figment, e))?;
    let warnings = check_unknown::<T>(&figment, &value)?;
    value.validate().map_err(|e| SettingsError::Invalid {
        from: origin(&figment, &e.key),
        key: e.key,
        message: e.message,
    })?;
    Ok(Loaded { value, warnings })
}

/// Where `key` was set: ` (in FILE)`, ` (in environment variable DHT_...)`, ` (in
/// command-line flags)`; empty for a default.
fn origin(figment: &Figment, key: &str) -> String {
    // A key inside a map (authorized_publishers.tp) is found at its deepest known level.
    let mut path = key.to_owned();
    loop {
        if let Some(md) = figment.find_metadata(&path) {
            return describe(md, &path);
        }
        match path.rsplit_once('.') {
            Some((parent, _)) => path = parent.to_owned(),
            None => return String::new(),
        }
    }
}

fn describe(md: &Metadata, key: &str) -> String {
    if md.name == "the defaults" {
        return String::new();
    }
    match &md.source {
        Some(figment::Source::File(p)) => format!(" (in {})", p.display()),
        _ if md.name.contains("environment") => {
            let var = key.to_uppercase().replace('.', "__");
            format!(" (in environment variable {ENV_PREFIX}{var})")
        }
        _ => format!(" (in {})", md.name),
    }
}

fn parse_error(figment: &Figment, e: figment::Error) -> SettingsError {
    let messages: Vec<String> = e
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let from = e
                .metadata
                .as_ref()
                .map(|md| describe(md, &key))
                .unwrap_or_default();
            let from = if from.is_empty() && !key.is_empty() {
                origin(figment, &key)
            } else {
                from
            };
            if key.is_empty() {
                format!("{}{from}", e.kind)
            } else {
                format!("{key}{from}: {}", e.kind)
            }
        })
        .collect();
    SettingsError::Parse(messages.join("; "))
}

/// Every key given in the file or by flags must be one the schema keeps; unknown `DHT_*`
/// variables (other programs' settings, typos) are only warned about.
fn check_unknown<T: Schema>(figment: &Figment, value: &T) -> Result<Vec<String>, SettingsError> {
    let known = serde_json::to_value(value).map_err(|e| SettingsError::Parse(e.to_string()))?;
    let given: serde_json::Value = figment
        .extract()
        .map_err(|e| SettingsError::Parse(e.to_string()))?;
    let mut unknown = Vec::new();
    collect_unknown(&given, &known, "", &mut unknown);
    let mut warnings = Vec::new();
    for key in unknown {
        let from = origin(figment, &key);
        if from.contains("environment variable") {
            let var = from.trim().trim_start_matches("(in ").trim_end_matches(')');
            warnings.push(format!(
                "ignoring {var}: not a configuration key{}",
                renamed_hint::<T>(&key)
            ));
            continue;
        }
        let hint = renamed_hint::<T>(&key);
        return Err(SettingsError::UnknownKey { from, key, hint });
    }
    Ok(warnings)
}

fn renamed_hint<T: Schema>(key: &str) -> String {
    T::renamed()
        .iter()
        .find(|(old, _)| *old == key)
        .map(|(_, new)| format!(" (renamed: now `{new}`)"))
        .unwrap_or_default()
}

fn collect_unknown(
    given: &serde_json::Value,
    known: &serde_json::Value,
    at: &str,
    out: &mut Vec<String>,
) {
    let (serde_json::Value::Object(given), serde_json::Value::Object(known)) = (given, known)
    else {
        return;
    };
    for (k, v) in given {
        let path = if at.is_empty() {
            k.clone()
        } else {
            format!("{at}.{k}")
        };
        match known.get(k) {
            None => out.push(path),
            Some(kv) => collect_unknown(v, kv, &path, out),
        }
    }
}

/// The keys of a schema's defaults (sections as `section.key`), for documentation tests.
pub fn keys_of<T: Schema>() -> Vec<String> {
    fn walk(v: &serde_json::Value, at: &str, out: &mut Vec<String>) {
        if let serde_json::Value::Object(m) = v {
            for (k, v) in m {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                if v.is_object() && !v.as_object().is_some_and(|o| o.is_empty()) {
                    walk(v, &path, out);
                } else {
                    out.push(path);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &serde_json::to_value(T::default()).unwrap_or_default(),
        "",
        &mut out,
    );
    out
}

/// The help text listing `keys` (for `--help`).
pub fn keys_help(keys: &[KeyDoc]) -> String {
    let mut out = String::new();
    for k in keys {
        let line = format!("  {} = {}", k.key, k.example);
        if line.len() < 40 {
            out.push_str(&format!("{line:<40}{}\n", k.doc));
        } else {
            out.push_str(&format!("{line}\n{:<40}{}\n", "", k.doc));
        }
    }
    out
}

/// Both binaries' settings printed by `--check`: TOML of the effective values.
pub fn to_toml<T: Serialize>(value: &T) -> String {
    toml::to_string_pretty(value).unwrap_or_else(|e| format!("# not printable: {e}\n"))
}
