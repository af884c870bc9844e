//! Real local networks of nodes on 127.0.0.1, in one process: for tests, examples and
//! benchmarks.

use std::net::Ipv4Addr;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

use crate::config::{NodeConfig, NodeMode};
use crate::node::Node;
use crate::NodeError;

/// A set of full nodes on 127.0.0.1 (OS-chosen TCP ports), all bootstrapped from the first.
pub struct Testnet {
    /// The nodes; `nodes[0]` is the bootstrap node.
    pub nodes: Vec<Node>,
    /// Keeps the data directories of redb-backed testnets alive.
    pub dirs: Vec<tempfile::TempDir>,
    template: NodeConfig,
}

/// Builds a [`Testnet`].
pub struct TestnetBuilder {
    size: usize,
    config: NodeConfig,
    on_disk: bool,
}

impl Testnet {
    /// A builder for `size` nodes.
    pub fn builder(size: usize) -> TestnetBuilder {
        TestnetBuilder {
            size,
            config: NodeConfig::local(),
            on_disk: false,
        }
    }

    /// The bootstrap address (first node).
    pub fn bootstrap_addr(&self) -> Option<Multiaddr> {
        self.nodes.first().and_then(Node::bootstrap_addr)
    }

    /// Starts one more node of the same configuration and adds it to the network.
    pub async fn add_node(&mut self, mode: NodeMode) -> Result<Node, NodeError> {
        let mut config = self.template.clone();
        config.mode = mode;
        config.bootstrap = self.bootstrap_addr().into_iter().collect();
        if config.data_dir.is_some() || !self.dirs.is_empty() {
            let dir = tempfile::tempdir()?;
            config.data_dir = Some(dir.path().to_path_buf());
            self.dirs.push(dir);
        }
        let node = Node::builder().config(config).build().await?;
        self.nodes.push(node.clone());
        Ok(node)
    }

    /// Stops node `i` (its data directory, if any, is kept for [`Testnet::restart`]).
    pub async fn stop(&self, i: usize) {
        self.nodes[i].shutdown().await;
    }

    /// Starts node `i` again from its data directory, with NO bootstrap addresses: it
    /// rejoins from its saved routing table. Requires an on-disk testnet.
    pub async fn restart(&mut self, i: usize) -> Result<Node, NodeError> {
        let mut config = self.nodes[i].config().clone();
        if config.data_dir.is_none() {
            return Err(NodeError::Config("restart needs an on-disk testnet"));
        }
        config.bootstrap.clear();
        let node = Node::builder().config(config).build().await?;
        self.nodes[i] = node.clone();
        Ok(node)
    }

    /// Waits until every full node knows at least `min_peers` peers (or the timeout).
    pub async fn wait_for_routing(&self, min_peers: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ready = self
                .nodes
                .iter()
                .filter(|n| n.config().mode == NodeMode::Full)
                .all(|n| n.routing_table().len() >= min_peers);
            if ready {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Cuts the network in two: every node of `side_a` refuses every node of `side_b`
    /// and the other way round (connections close, dials are denied), as a real
    /// partition does.
    pub async fn partition(&self, side_a: &[usize], side_b: &[usize]) -> Result<(), NodeError> {
        for &a in side_a {
            for &b in side_b {
                self.nodes[a].block_peer(self.nodes[b].peer_id()).await?;
                self.nodes[b].block_peer(self.nodes[a].peer_id()).await?;
            }
        }
        Ok(())
    }

    /// Heals a [`Testnet::partition`].
    pub async fn heal(&self, side_a: &[usize], side_b: &[usize]) -> Result<(), NodeError> {
        for &a in side_a {
            for &b in side_b {
                self.nodes[a].unblock_peer(self.nodes[b].peer_id()).await?;
                self.nodes[b].unblock_peer(self.nodes[a].peer_id()).await?;
            }
        }
        Ok(())
    }

    /// Waits until every full node finished its start-up catch-up (or the timeout).
    pub async fn wait_for_catch_up(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.nodes.iter().all(Node::caught_up) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// Stops every node.
    pub async fn shutdown(&self) {
        for n in &self.nodes {
            n.shutdown().await;
        }
    }
}

/// The soft limit on open files of this process (Linux `/proc/self/limits`; 1024 if
/// unknown).
fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .and_then(|v| {
            if v == "unlimited" {
                Some(1 << 20)
            } else {
                v.parse().ok()
            }
        })
        .unwrap_or(1024)
}

impl TestnetBuilder {
    /// The configuration template of every node (listen is set per node). Its bootstrap
    /// addresses, if any, make the first node join that network (the others join through
    /// the first).
    pub fn config(mut self, config: NodeConfig) -> Self {
        self.config = config;
        self
    }

    /// Give every node a redb store in its own temporary directory.
    pub fn on_disk(mut self, on_disk: bool) -> Self {
        self.on_disk = on_disk;
        self
    }

    /// Starts the nodes and waits until their routing tables are populated.
    pub async fn build(self) -> Result<Testnet, NodeError> {
        let mut template = self.config;
        template.listen = vec![Multiaddr::empty()
            .with(Protocol::Ip4(Ipv4Addr::LOCALHOST))
            .with(Protocol::Tcp(0))];
        template.quic = false;
        // The template's bootstrap addresses (an existing network to join) go to the
        // first node; the others bootstrap from it.
        let join = std::mem::take(&mut template.bootstrap);
        template.data_dir = None;
        // Every node's connections are file descriptors of this one process: share three
        // quarters of the process's limit so that no node runs out (accept failures
        // would leave dialers waiting for handshakes until they time out).
        let per_node = open_files_limit().saturating_sub(1024) * 3 / 4 / self.size.max(1);
        template.max_connected_peers = template.max_connected_peers.min(per_node.max(8));
        template.max_client_peers = template.max_client_peers.min(per_node.max(8));
        let mut net = Testnet {
            nodes: Vec::with_capacity(self.size),
            dirs: Vec::new(),
            template: template.clone(),
        };
        for i in 0..self.size {
            let mut config = template.clone();
            config.bootstrap = if i == 0 {
                join.clone()
            } else {
                net.bootstrap_addr().into_iter().collect()
            };
            if self.on_disk {
                let dir = tempfile::tempdir()?;
                config.data_dir = Some(dir.path().to_path_buf());
                net.dirs.push(dir);
            }
            net.nodes
                .push(Node::builder().config(config).build().await?);
        }
        let want = (self.size.saturating_sub(1)).min(template.replication);
        net.wait_for_routing(want, Duration::from_secs(10 + self.size as u64 / 5))
            .await;
        net.wait_for_catch_up(Duration::from_secs(10)).await;
        Ok(net)
    }
}
