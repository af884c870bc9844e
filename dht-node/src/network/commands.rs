//! What the node asks of the swarm task: lookups, requests, answers to inbound
//! requests, dials, blocks.

use std::time::Instant;

use tracing::{debug, warn};

use super::driver::{Driver, PendingRequest};
use super::Command;
use crate::metrics::RequestLabels;

impl Driver {
    pub(super) fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Lookup { target, reply } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_closest_peers(target.as_bytes().to_vec());
                self.lookups.insert(id, reply);
            }
            Command::Request {
                peer,
                addrs,
                request,
                reply,
            } => {
                self.touch(&peer);
                self.state
                    .metrics
                    .outbound_requests
                    .get_or_create(&RequestLabels {
                        kind: request.kind().into(),
                    })
                    .inc();
                let id = self
                    .swarm
                    .behaviour_mut()
                    .items
                    .send_request_with_addresses(&peer, request, addrs);
                let sent = self.swarm.is_connected(&peer).then(Instant::now);
                self.requests.insert(id, PendingRequest { reply, sent });
            }
            Command::ReleaseHeld {
                peer,
                channel,
                response,
            } => {
                if let Some(n) = self.held.get_mut(&peer) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.held.remove(&peer);
                    }
                }
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .items
                    .send_response(channel, response);
            }
            Command::Respond {
                peer,
                channel,
                response,
            } => {
                if let Some(n) = self.handling.get_mut(&peer) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.handling.remove(&peer);
                    }
                }
                if self
                    .swarm
                    .behaviour_mut()
                    .items
                    .send_response(channel, response)
                    .is_err()
                {
                    debug!("response dropped: requester went away");
                }
            }
            Command::Dial(addr) => {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    warn!(%addr, error = %e, "dial failed");
                }
            }
            Command::AddPeer(peer, addr) => {
                self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                // Known at once to the query code (a restarted node reads before the
                // next periodic refresh).
                self.refresh_view();
            }
            Command::Bootstrap => {
                if let Err(e) = self.swarm.behaviour_mut().kad.bootstrap() {
                    debug!(error = %e, "bootstrap: no known peers");
                }
            }
            Command::SelfLookup => {
                let me = *self.swarm.local_peer_id();
                self.swarm.behaviour_mut().kad.get_closest_peers(me);
            }
            Command::Block(peer) => {
                // Blocked until unblocked, whatever a ban's end.
                self.bans.forget(&peer);
                self.swarm.behaviour_mut().blocked.block_peer(peer);
                // Unreachable from now on: skip it as any failed peer.
                self.suspect(peer, "blocked");
            }
            Command::Unblock(peer) => {
                self.swarm.behaviour_mut().blocked.unblock_peer(peer);
                // Dial it now rather than at the next backoff step.
                let addrs = self.state.view.addresses(&peer);
                self.redial(peer, addrs);
            }
            Command::ConnectedPeers(reply) => {
                let _ = reply.send(self.swarm.connected_peers().count());
            }
            Command::Shutdown => {}
        }
    }
}
