//! The swarm task and its handle. The task ([`Driver`]) owns the libp2p swarm (kad for
//! routing, identify, ping and the item protocol), runs lookups and requests for the
//! rest of the node, hands inbound requests to [`crate::inbound`] and keeps the routing
//! view of [`crate::state::NodeState`] current. Everything else talks to it through a
//! [`Client`].
//!
//! - [`transport`]: the swarm: transports, behaviours, listening;
//! - [`driver`]: the event loop, liveness probes and the connection budget;
//! - [`commands`]: what the node asks of the task;
//! - [`kad_events`]: routing-table updates and inbound kad records;
//! - [`item_requests`]: inbound and outbound item-protocol traffic, with
//!   [`rate_limit`]'s per-peer buckets in front and [`bans`] for peers that break the
//!   protocol on purpose ([`gate`] throttles new connections from their addresses);
//! - [`client`]: the handle (typed requests, lookups, commands).

mod bans;
mod client;
mod coalesce;
mod commands;
mod driver;
mod gate;
mod item_requests;
mod kad_events;
mod rate_limit;
mod transport;

use dht_core::Target;
use libp2p::request_response::ResponseChannel;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::oneshot;

pub(crate) use client::Client;
pub(crate) use driver::Driver;
pub(crate) use transport::{build_swarm, listen};

use crate::protocol::{ItemRequest, ResponseFrame};
use crate::NodeError;

/// Peers with their addresses, nearest first.
pub(crate) type PeerList = Vec<(PeerId, Vec<Multiaddr>)>;

/// What the node asks of the swarm task.
pub(crate) enum Command {
    /// Iterative lookup of the closest peers to a target.
    Lookup {
        /// Target.
        target: Target,
        /// Answer: peers with addresses, nearest first.
        reply: oneshot::Sender<PeerList>,
    },
    /// One item-protocol request to one peer.
    Request {
        /// Peer.
        peer: PeerId,
        /// Addresses to dial if not connected.
        addrs: Vec<Multiaddr>,
        /// Request.
        request: ItemRequest,
        /// Answer.
        reply: oneshot::Sender<Result<ResponseFrame, NodeError>>,
    },
    /// Answer an inbound request.
    Respond {
        /// The requester.
        peer: PeerId,
        /// Channel of the inbound request.
        channel: ResponseChannel<ResponseFrame>,
        /// Response.
        response: ResponseFrame,
    },
    /// Send a refusal held back from a flooding stranger.
    ReleaseHeld {
        /// The requester.
        peer: PeerId,
        /// Channel of the inbound request.
        channel: ResponseChannel<ResponseFrame>,
        /// The refusal.
        response: ResponseFrame,
    },
    /// Dial an address (bootstrap).
    Dial(Multiaddr),
    /// Add a known peer address to the routing table.
    AddPeer(PeerId, Multiaddr),
    /// Run a kad bootstrap (a lookup of this node's own id, then one per bucket).
    Bootstrap,
    /// Look up this node's own id only: finds its neighbours (and announces this node
    /// to them) at a fraction of a bootstrap's cost.
    SelfLookup,
    /// Refuse every connection to and from a peer (and close the open ones).
    Block(PeerId),
    /// Lift a [`Command::Block`].
    Unblock(PeerId),
    /// Number of connected peers.
    ConnectedPeers(oneshot::Sender<usize>),
    /// Stop the swarm task.
    Shutdown,
}
