//! Errors of the node.

use dht_core::{Rejection, StoreError};

/// A failure of a node operation.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The item was refused by this node's own validation.
    #[error("item rejected: {0}")]
    Rejected(Rejection),
    /// The local store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Setting up the transport or listening failed.
    #[error("transport: {0}")]
    Transport(String),
    /// A request to a peer failed.
    #[error("request failed: {0}")]
    Request(String),
    /// A peer answered with something unexpected.
    #[error("bad response: {0}")]
    BadResponse(String),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// The node is shut down.
    #[error("node is shut down")]
    Shutdown,
    /// Filesystem trouble (data directory, key file, saved routing table).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A background task of the node failed (panicked or was cancelled).
    #[error("task failed: {0}")]
    Task(String),
    /// Invalid configuration or identity.
    #[error("config: {0}")]
    Config(String),
}
