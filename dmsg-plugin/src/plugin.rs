//! What a DMSG server embeds: start a full node with the server's identity and config,
//! get an axum `Router` (the gateway) to mount, optionally serve the HTTP push for
//! discovery services in other languages, and shut everything down gracefully.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use dht_core::SigningKey;
use dht_node::{identity, Node, NodeConfig};
use tokio::task::JoinHandle;

use crate::dht_to_http::{self, PusherConfig, PusherError};
use crate::gateway::{self, GatewayConfig};
use crate::mirror::Mirror;

/// Settings of the HTTP push API.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Where to listen (loopback unless `allow_non_loopback`).
    pub listen: SocketAddr,
    /// Bearer token every request must carry.
    pub token: String,
    /// Allow binding to a non-loopback address.
    pub allow_non_loopback: bool,
}

/// Everything the plugin needs.
#[derive(Debug, Clone, Default)]
pub struct PluginConfig {
    /// The full node (bootstrap peers, data directory, authorized publishers per salt in
    /// `node.policy`).
    pub node: NodeConfig,
    /// Gateway settings.
    pub gateway: GatewayConfig,
    /// Salt -> the key this server mirrors that discovery's data with.
    pub mirror_keys: HashMap<String, SigningKey>,
    /// The HTTP push for services that cannot link Rust.
    pub push: Option<PushConfig>,
    /// DHT -> HTTP discovery push, per salt (off for "tp" and "svc").
    pub pusher: PusherConfig,
    /// How long the mirrors' adapters hold a touched key before putting its latest value
    /// (`None`: [`crate::mirror::DEFAULT_COALESCE_WINDOW`]).
    pub mirror_coalesce: Option<std::time::Duration>,
}

/// A failure starting the plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The node failed to start.
    #[error(transparent)]
    Node(#[from] dht_node::NodeError),
    /// Invalid configuration.
    #[error("config: {0}")]
    Config(String),
    /// The push listener failed.
    #[error("push api: {0}")]
    Io(#[from] std::io::Error),
    /// The pusher configuration is invalid.
    #[error(transparent)]
    Pusher(#[from] PusherError),
}

/// A running DHT full node inside a DMSG server.
pub struct DhtPlugin {
    node: Node,
    gateway: GatewayConfig,
    mirrors: HashMap<String, Arc<Mirror>>,
    push_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl DhtPlugin {
    /// Starts the node (with `identity`, e.g. the DMSG server's Skywire key via
    /// [`dht_node::keypair_from_skywire_secret`]) and the configured services.
    pub async fn start(
        identity: Option<identity::Keypair>,
        config: PluginConfig,
    ) -> Result<Self, PluginError> {
        config.pusher.validate()?;
        if let Some(push) = &config.push {
            if !push.listen.ip().is_loopback() && !push.allow_non_loopback {
                return Err(PluginError::Config(format!(
                    "push api on {} is not loopback; set allow_non_loopback to expose it",
                    push.listen
                )));
            }
            if push.token.len() < 16 {
                return Err(PluginError::Config(
                    "push api token must be at least 16 characters".into(),
                ));
            }
        }
        let mut builder = Node::builder().config(config.node.clone());
        if let Some(k) = identity {
            builder = builder.keypair(k);
        }
        let node = builder.build().await?;
        let mirrors: HashMap<String, Arc<Mirror>> = config
            .mirror_keys
            .iter()
            .map(|(salt, key)| {
                (
                    salt.clone(),
                    Arc::new(
                        Mirror::new(node.clone(), key.clone(), salt.clone().into_bytes())
                            .with_coalesce_window(
                                config
                                    .mirror_coalesce
                                    .unwrap_or(crate::mirror::DEFAULT_COALESCE_WINDOW),
                            ),
                    ),
                )
            })
            .collect();
        let mut tasks = Vec::new();
        let mut push_addr = None;
        if let Some(push) = &config.push {
            let listener = tokio::net::TcpListener::bind(push.listen).await?;
            push_addr = Some(listener.local_addr()?);
            let app = crate::mirror_api::router(
                mirrors.clone(),
                push.token.clone(),
                config.gateway.max_body,
            );
            tasks.push(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "push api stopped");
                }
            }));
        }
        tasks.push(tokio::spawn(dht_to_http::run(
            node.clone(),
            config.pusher.clone(),
        )));
        Ok(DhtPlugin {
            node,
            gateway: config.gateway,
            mirrors,
            push_addr,
            tasks,
        })
    }

    /// The gateway routes, for the host to mount.
    pub fn router(&self) -> axum::Router {
        gateway::router(self.node.clone(), self.gateway.clone())
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The mirror publishing under `salt`, if a key is configured for it.
    pub fn mirror(&self, salt: &str) -> Option<Arc<Mirror>> {
        self.mirrors.get(salt).cloned()
    }

    /// Where the push API listens.
    pub fn push_addr(&self) -> Option<SocketAddr> {
        self.push_addr
    }

    /// Stops the push API, the pusher and the node (saving its routing table).
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        self.node.shutdown().await;
    }
}
