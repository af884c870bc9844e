//! Events a host can observe.

use dht_core::Target;
use libp2p::PeerId;

/// Something that happened in the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A peer entered the routing table.
    PeerAdded(PeerId),
    /// A dial or request to a peer failed: puts and gets skip it while it is re-dialled.
    PeerSuspected(PeerId),
    /// A peer's outage lasted long enough to declare it dead: it left the routing table
    /// and its items are being re-replicated.
    PeerDeparted(PeerId),
    /// A suspected or dead peer answered again: missed changes are exchanged.
    PeerReturned(PeerId),
    /// A kad bootstrap round finished.
    BootstrapFinished,
    /// An item was stored (or refreshed) in the local store.
    ItemStored {
        /// Its target.
        target: Target,
        /// Its seq.
        seq: u64,
        /// Whether it is a tombstone.
        tombstone: bool,
    },
    /// The start-up catch-up sync finished.
    CatchUpFinished {
        /// Items pulled and accepted.
        items: usize,
        /// Peers synced from.
        peers: usize,
    },
    /// A put that returned before every replica asked had answered (its report named
    /// them pending) finished in the background: what is true now.
    PutFinished {
        /// Its target.
        target: Target,
        /// Its seq.
        seq: u64,
        /// Responsible nodes holding the item (this one included).
        responsible_stored: usize,
        /// Whether they are a majority of the responsible set.
        majority: bool,
    },
    /// Items were handed to peers that became responsible for them.
    HandedOff {
        /// Items sent.
        items: usize,
    },
}
