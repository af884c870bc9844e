//! The sidecar's configuration: the node's keys of [`dht_node::settings::NodeSettings`]
//! (same names, defaults and ranges as `dht-node run`) plus the sections `[gateway]`,
//! `[push]`, `[mirror_keys]`, `[mirror]` and `[pusher]`, layered and validated the same way
//! ([`dht_node::settings::load`]). A DMSG server embedding the plugin can read the same
//! file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use dht_core::SigningKey;
use dht_node::settings::{Invalid, KeyDoc, NodeSettings, Schema, NODE_RENAMED};
use serde::{Deserialize, Serialize};

use crate::{PluginConfig, PushConfig};

/// Default gateway address.
pub const DEFAULT_GATEWAY: &str = "127.0.0.1:9481";

/// The keys of the sidecar's own sections (after the node's).
pub const SIDECAR_KEYS: &[KeyDoc] = &[
    KeyDoc {
        key: "gateway.listen",
        example: "\"127.0.0.1:9481\"",
        doc: "the HTTP gateway's address (--http) [127.0.0.1:9481]",
    },
    KeyDoc {
        key: "gateway.max_body",
        example: "2097152",
        doc: "largest request body, bytes [2 MiB; 1 KiB to 128 MiB]",
    },
    KeyDoc {
        key: "gateway.read_timeout_secs",
        example: "5",
        doc: "time allowed for one DHT read [5; 1 to 300]",
    },
    KeyDoc {
        key: "push.listen",
        example: "\"127.0.0.1:9482\"",
        doc: "the HTTP push API's address [off]",
    },
    KeyDoc {
        key: "push.token",
        example: "\"<16+ characters>\"",
        doc: "bearer token of the push API (needed with push.listen)",
    },
    KeyDoc {
        key: "push.allow_non_loopback",
        example: "false",
        doc: "allow push.listen on a non-loopback address [false]",
    },
    KeyDoc {
        key: "mirror_keys",
        example: "{ tp = \"/etc/dht/tp-mirror.key\" }",
        doc: "salt -> this server's mirror secret key file [none]",
    },
    KeyDoc {
        key: "mirror.coalesce_ms",
        example: "250",
        doc:
            "the adapters put a touched key once per window, its latest value, ms [250; 0 to 10000]",
    },
    KeyDoc {
        key: "pusher",
        example: "{ dmsg = \"http://127.0.0.1:9090/\" }",
        doc: "salt -> URL DHT values are pushed back to (not tp/svc) [none]",
    },
];

/// The sidecar's configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SidecarSettings {
    /// The node, with the keys of `dht-node run`.
    #[serde(flatten)]
    pub node: NodeSettings,
    /// `[gateway]`.
    pub gateway: GatewaySettings,
    /// `[push]`.
    pub push: PushSettings,
    /// `[mirror_keys]`: salt -> mirror secret key file.
    pub mirror_keys: BTreeMap<String, PathBuf>,
    /// `[pusher]`: salt -> URL.
    pub pusher: BTreeMap<String, String>,
    /// `[mirror]`.
    pub mirror: MirrorSettings,
}

/// `[mirror]`: how the discovery adapters publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MirrorSettings {
    /// The coalescing window, ms: a touched key is put once per window, with its latest
    /// value ([`crate::mirror::DEFAULT_COALESCE_WINDOW`]).
    pub coalesce_ms: u64,
}

impl Default for MirrorSettings {
    fn default() -> Self {
        MirrorSettings {
            coalesce_ms: crate::mirror::DEFAULT_COALESCE_WINDOW.as_millis() as u64,
        }
    }
}

/// `[gateway]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewaySettings {
    /// Where the gateway listens.
    pub listen: SocketAddr,
    /// Largest request body.
    pub max_body: usize,
    /// Time allowed for one DHT read.
    pub read_timeout_secs: u64,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        let config = crate::GatewayConfig::default();
        GatewaySettings {
            listen: DEFAULT_GATEWAY.parse().expect("valid address"),
            max_body: config.max_body,
            read_timeout_secs: config.read_timeout.as_secs(),
        }
    }
}

/// `[push]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PushSettings {
    /// Where the push API listens (off when absent).
    pub listen: Option<SocketAddr>,
    /// Its bearer token.
    pub token: Option<String>,
    /// Allow a non-loopback `listen`.
    pub allow_non_loopback: bool,
}

const RENAMED: &[(&str, &str)] = &[
    ("http_listen", "gateway.listen"),
    ("push_listen", "push.listen"),
    ("push_token", "push.token"),
    ("push_allow_non_loopback", "push.allow_non_loopback"),
];

impl Schema for SidecarSettings {
    fn renamed() -> &'static [(&'static str, &'static str)] {
        // Both lists are short; leaking one combined list once is fine.
        static ALL: std::sync::OnceLock<Vec<(&'static str, &'static str)>> =
            std::sync::OnceLock::new();
        ALL.get_or_init(|| NODE_RENAMED.iter().chain(RENAMED).copied().collect())
    }

    fn validate(&self) -> Result<(), Invalid> {
        self.node.validate()?;
        let g = &self.gateway;
        if g.max_body < 1024 || g.max_body > 128 * 1024 * 1024 {
            return Err(Invalid::new(
                "gateway.max_body",
                format!(
                    "= {} is out of range (expected 1024 to {})",
                    g.max_body,
                    128 * 1024 * 1024
                ),
            ));
        }
        if g.read_timeout_secs == 0 || g.read_timeout_secs > 300 {
            return Err(Invalid::new(
                "gateway.read_timeout_secs",
                format!(
                    "= {} is out of range (expected 1 to 300)",
                    g.read_timeout_secs
                ),
            ));
        }
        if let Some(listen) = self.push.listen {
            match &self.push.token {
                None => return Err(Invalid::new("push.token", "is needed with push.listen")),
                Some(t) if t.len() < 16 => {
                    return Err(Invalid::new(
                        "push.token",
                        "is too short (at least 16 characters)",
                    ))
                }
                Some(_) => {}
            }
            if !listen.ip().is_loopback() && !self.push.allow_non_loopback {
                return Err(Invalid::new(
                    "push.listen",
                    format!(
                        "= {listen} is not loopback (set push.allow_non_loopback to expose it)"
                    ),
                ));
            }
        }
        if self.mirror.coalesce_ms > 10_000 {
            return Err(Invalid::new(
                "mirror.coalesce_ms",
                format!(
                    "= {} is out of range (expected 0 to 10000)",
                    self.mirror.coalesce_ms
                ),
            ));
        }
        for salt in self.pusher.keys() {
            if salt == "tp" || salt == "svc" {
                return Err(Invalid::new(
                    format!("pusher.{salt}"),
                    "is refused: the DHT value of tp and svc is a full list, which the \
                     HTTP discoveries cannot take back",
                ));
            }
        }
        for (salt, url) in &self.pusher {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Invalid::new(
                    format!("pusher.{salt}"),
                    format!("= {url:?} is not an http:// or https:// URL"),
                ));
            }
        }
        Ok(())
    }
}

/// A failure building the plugin configuration from the settings.
#[derive(Debug, thiserror::Error)]
pub enum SidecarSettingsError {
    /// A value is refused.
    #[error("invalid configuration: {} {}", .0.key, .0.message)]
    Invalid(Invalid),
    /// A key file could not be read or parsed.
    #[error("{key}: {path}: {message}")]
    KeyFile {
        /// The configuration key naming the file.
        key: String,
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Reads a secret key file (`secp256k1:<hex>`, `ed25519:<hex>` or bare hex).
pub fn read_secret(key: &str, path: &std::path::Path) -> Result<SigningKey, SidecarSettingsError> {
    let err = |message: String| SidecarSettingsError::KeyFile {
        key: key.to_owned(),
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    SigningKey::from_key_file(&text).map_err(|e| err(format!("malformed key: {e}")))
}

impl SidecarSettings {
    /// The plugin configuration (reads the mirror key files).
    pub fn plugin_config(&self) -> Result<PluginConfig, SidecarSettingsError> {
        let node = self
            .node
            .node_config()
            .map_err(SidecarSettingsError::Invalid)?;
        let mut config = PluginConfig {
            node,
            ..PluginConfig::default()
        };
        config.gateway.max_body = self.gateway.max_body;
        config.gateway.read_timeout =
            std::time::Duration::from_secs(self.gateway.read_timeout_secs);
        config.mirror_coalesce = Some(std::time::Duration::from_millis(self.mirror.coalesce_ms));
        for (salt, path) in &self.mirror_keys {
            let key = read_secret(&format!("mirror_keys.{salt}"), path)?;
            config.mirror_keys.insert(salt.clone(), key);
        }
        if let Some(listen) = self.push.listen {
            config.push = Some(PushConfig {
                listen,
                token: self.push.token.clone().unwrap_or_default(),
                allow_non_loopback: self.push.allow_non_loopback,
            });
        }
        config.pusher.endpoints = self
            .pusher
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(config)
    }
}
