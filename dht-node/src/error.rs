//! Errors of the node.

use std::path::PathBuf;

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
    /// Setting up the transport failed.
    #[error("transport: {0}")]
    Transport(String),
    /// A listen address could not be bound (port in use, address not on this host, ...).
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: libp2p::Multiaddr,
        /// The operating system's cause.
        #[source]
        source: std::io::Error,
    },
    /// Another process (a node running on the same data directory) holds the store.
    #[error(
        "{} is locked by another process: is a node already running on this data directory?",
        path.display()
    )]
    StoreInUse {
        /// The store file.
        path: std::path::PathBuf,
    },
    /// A request to a peer failed (dial, timeout, stream, unsupported protocol).
    #[error("request failed: {0}")]
    Request(#[from] libp2p::request_response::OutboundFailure),
    /// A peer answered with something the protocol does not allow.
    #[error("bad response: {0}")]
    BadResponse(&'static str),
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
    Task(#[from] tokio::task::JoinError),
    /// The node key file in the data directory is unusable.
    #[error("config: {}: {problem}", path.display())]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong and what to do.
        problem: &'static str,
    },
    /// A key could not be decoded or encoded.
    #[error("config: {what}: {source}")]
    Key {
        /// Which key.
        what: &'static str,
        /// The cause.
        source: libp2p::identity::DecodingError,
    },
    /// A request the configuration does not allow (e.g. restarting a node of an
    /// in-memory testnet).
    #[error("config: {0}")]
    Config(&'static str),
}

impl NodeError {
    /// A failed `listen_on`, with its cause kept as the error's source.
    pub(crate) fn listen(
        addr: &libp2p::Multiaddr,
        e: libp2p::TransportError<std::io::Error>,
    ) -> Self {
        match e {
            libp2p::TransportError::MultiaddrNotSupported(a) => NodeError::Listen {
                addr: a,
                source: std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "no transport of this node takes this address",
                ),
            },
            libp2p::TransportError::Other(source) => NodeError::Listen {
                addr: addr.clone(),
                source,
            },
        }
    }

    /// A store that failed to open: a lock held by another process names the file.
    pub(crate) fn from_store_open(path: std::path::PathBuf, e: StoreError) -> Self {
        match &e {
            StoreError::Database(msg) if msg.contains("already open") => {
                NodeError::StoreInUse { path }
            }
            _ => NodeError::Store(e),
        }
    }
}
