//! The handle to the swarm task: what queries, maintenance and the node API use to
//! reach peers. Requests go out typed and come back decoded (or as frames, for callers
//! that decode a large answer off the async threads).

use std::sync::Arc;
use std::time::Duration;

use dht_core::wire::DecodeLimits;
use dht_core::Target;
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};

use super::{Command, PeerList};
use crate::protocol::{ItemRequest, Request, Response, ResponseFrame};
use crate::state::NodeState;
use crate::NodeError;

/// Slack over the swarm's own request timeout before a caller gives up on its answer.
const REQUEST_SLACK: Duration = Duration::from_millis(500);
/// Slack over kad's query timeout before a caller gives up on a lookup.
const LOOKUP_SLACK: Duration = Duration::from_secs(1);

/// A handle to the swarm task. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Client {
    commands: mpsc::Sender<Command>,
    state: Arc<NodeState>,
    limits: DecodeLimits,
    request_timeout: Duration,
    lookup_timeout: Duration,
}

impl Client {
    /// A handle sending to `commands`.
    pub fn new(
        commands: mpsc::Sender<Command>,
        state: Arc<NodeState>,
        limits: DecodeLimits,
        request_timeout: Duration,
        lookup_timeout: Duration,
    ) -> Self {
        Client {
            commands,
            state,
            limits,
            request_timeout,
            lookup_timeout,
        }
    }

    /// Sends a command to the swarm task.
    pub async fn command(&self, cmd: Command) -> Result<(), NodeError> {
        self.commands
            .send(cmd)
            .await
            .map_err(|_| NodeError::Shutdown)
    }

    /// The limits responses are decoded with.
    pub fn limits(&self) -> &DecodeLimits {
        &self.limits
    }

    /// Iterative lookup of the peers closest to `target`, nearest first.
    pub async fn lookup(&self, target: Target) -> Result<PeerList, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Lookup { target, reply: tx }).await?;
        match tokio::time::timeout(self.lookup_timeout + LOOKUP_SLACK, rx).await {
            Ok(Ok(peers)) => Ok(peers),
            Ok(Err(_)) => Err(NodeError::Shutdown),
            Err(_) => Err(NodeError::Timeout),
        }
    }

    /// One request to one peer, with the request timeout; the answer as it came.
    pub async fn send(
        &self,
        peer: PeerId,
        request: ItemRequest,
    ) -> Result<ResponseFrame, NodeError> {
        let addrs = self.state.view.addresses(&peer);
        let (tx, rx) = oneshot::channel();
        self.command(Command::Request {
            peer,
            addrs,
            request,
            reply: tx,
        })
        .await?;
        match tokio::time::timeout(self.request_timeout + REQUEST_SLACK, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(NodeError::Shutdown),
            Err(_) => Err(NodeError::Timeout),
        }
    }

    /// One request to one peer; the answer decoded.
    pub async fn request(&self, peer: PeerId, request: Request) -> Result<Response, NodeError> {
        let frame = self.send(peer, request.into()).await?;
        Response::decode(frame, &self.limits).map_err(|_| NodeError::BadResponse("empty response"))
    }
}
