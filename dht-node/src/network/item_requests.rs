//! Item-protocol traffic of the swarm task: answers to this node's requests, and
//! inbound requests, which pass the per-peer rate limit and the in-flight cap before
//! [`crate::inbound`] handles them off the swarm task.

use std::time::{Duration, Instant};

use dht_core::ReasonCode;
use libp2p::request_response::{self, OutboundFailure, ResponseChannel};
use libp2p::PeerId;
use tracing::{debug, info};

use super::bans::BAN_TIME;
use super::driver::Driver;
use super::Command;
use crate::protocol::{ItemRequest, Refusal, Response, ResponseFrame};

/// Inbound requests of one peer outside the routing table handled at once; more are
/// refused `rate_limited` at once rather than queued in front of other peers' requests.
const MAX_HANDLING_PER_STRANGER: usize = 8;
/// The same for full nodes of the routing table (a DMSG server mirroring a discovery
/// sends dozens of puts at once).
const MAX_HANDLING_PER_FULL_NODE: usize = 128;
/// How long a stranger's `rate_limited` refusal is held before it is sent. A client
/// that keeps sending regardless then has its streams (at most
/// `MAX_STREAMS_PER_CONNECTION` per connection) tied up waiting, and its flood slows
/// to a trickle instead of costing this node a refusal per request.
const HOLD_REFUSAL: Duration = Duration::from_secs(1);
/// Refusals held per stranger at once (half of one connection's streams); past it they
/// are sent at once, so that a stranger sending regardless of them soon has its refusals
/// counted and is banned (rather than its streams being dropped unseen at capacity).
const HELD_PER_STRANGER: usize = 16;
/// Refusals held for all strangers together.
const HELD_IN_ALL: usize = 4_096;

impl Driver {
    pub(super) fn on_items(&mut self, event: request_response::Event<ItemRequest, ResponseFrame>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    self.touch(&peer);
                    self.on_inbound(peer, request, channel);
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    self.heard_from(peer);
                    if let Some(pending) = self.requests.remove(&request_id) {
                        if let Some(sent) = pending.sent {
                            self.state.rtt.observe(peer, sent.elapsed());
                        }
                        let _ = pending.reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                debug!(%peer, %error, "request failed");
                // A closed connection is judged where it closes (`ConnectionClosed`):
                // a peer trimming its connections is not suspect.
                if !matches!(
                    error,
                    OutboundFailure::UnsupportedProtocols | OutboundFailure::ConnectionClosed
                ) {
                    self.suspect(peer, "request failed");
                }
                if let Some(pending) = self.requests.remove(&request_id) {
                    let _ = pending.reply.send(Err(error.into()));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "inbound request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_inbound(
        &mut self,
        peer: PeerId,
        request: ItemRequest,
        channel: ResponseChannel<ResponseFrame>,
    ) {
        let Some(inbound) = self.inbound.clone() else {
            self.refuse(channel, Refusal::NOT_SERVING, "client-mode node");
            return;
        };
        let stranger = self.is_stranger(&peer);
        if let ItemRequest::Oversized { .. } = request {
            self.on_oversized(peer, request, channel, stranger);
            return;
        }
        if !self.limiter.allow(peer, request.cost(), stranger) {
            self.state.metrics.rate_limited.inc();
            self.refuse_rate_limited(peer, stranger, channel, "too many requests");
            return;
        }
        // Fair service: one peer's requests never queue up in front of everyone else's.
        let cap = if stranger {
            MAX_HANDLING_PER_STRANGER
        } else {
            MAX_HANDLING_PER_FULL_NODE
        };
        let handling = self.handling.entry(peer).or_default();
        if *handling >= cap {
            self.state.metrics.rate_limited.inc();
            self.refuse_rate_limited(peer, stranger, channel, "too many requests in flight");
            return;
        }
        *handling += 1;
        let tx = self.self_tx.clone();
        let ip = self.remote_ips.get(&peer).copied();
        let stall = self.state.answer_delay();
        tokio::spawn(async move {
            if !stall.is_zero() {
                tokio::time::sleep(stall).await;
            }
            let response = inbound.handle(peer, ip, request).await;
            let _ = tx
                .send(Command::Respond {
                    peer,
                    channel,
                    response: response.into(),
                })
                .await;
        });
    }

    /// A frame over the limit, refused from its length prefix. Far over the limit is
    /// no honest mistake: the peer is banned, so the bytes in flight behind the frame
    /// stop costing anything. Otherwise the announced length is charged to the peer's
    /// byte budget; a stranger past it is banned, anyone else answered `too_large`.
    fn on_oversized(
        &mut self,
        peer: PeerId,
        request: ItemRequest,
        channel: ResponseChannel<ResponseFrame>,
        stranger: bool,
    ) {
        let ItemRequest::Oversized { len, limit, .. } = request else {
            return;
        };
        self.state.metrics.count_put(b"", Err(ReasonCode::TooLarge));
        if request.far_over_limit() {
            self.ban(peer, "a frame far over the limit");
            return;
        }
        if !self.limiter.allow(peer, len, stranger) {
            self.state.metrics.rate_limited.inc();
            if stranger {
                self.ban(peer, "oversized frames past its byte budget");
            } else {
                self.refuse(channel, Refusal::RATE_LIMITED, "too many oversized frames");
            }
            return;
        }
        self.refuse(
            channel,
            ReasonCode::TooLarge.as_str(),
            format!("message of {len} bytes exceeds the limit of {limit}"),
        );
    }

    /// Bans `peer` for [`BAN_TIME`]: its connections are closed and refused until then,
    /// and new connections from its address are throttled (see `gate`).
    fn ban(&mut self, peer: PeerId, why: &'static str) {
        if self.bans.ban(peer, Instant::now()) {
            self.state.metrics.peers_banned.inc();
            info!(%peer, why, secs = BAN_TIME.as_secs(), "peer banned");
            if let Some(ip) = self.remote_ips.get(&peer).copied() {
                self.swarm.behaviour_mut().gate.throttle(ip, BAN_TIME);
            }
            self.swarm.behaviour_mut().blocked.block_peer(peer);
        } else {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// Lifts the bans that are over.
    pub(super) fn lift_expired_bans(&mut self) {
        for peer in self.bans.take_expired(Instant::now()) {
            debug!(%peer, "ban lifted");
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
        }
    }

    /// Refuses `rate_limited`: at once for a full node; for a stranger after
    /// [`HOLD_REFUSAL`], while fewer than [`HELD_PER_STRANGER`] of its refusals (and
    /// [`HELD_IN_ALL`] in all) are held. A stranger that keeps sending past its
    /// refusals (more than its burst's worth beyond its rate) is banned instead.
    fn refuse_rate_limited(
        &mut self,
        peer: PeerId,
        stranger: bool,
        channel: ResponseChannel<ResponseFrame>,
        detail: &'static str,
    ) {
        if stranger && self.limiter.strike(peer) {
            self.ban(peer, "kept sending past its rate-limit refusals");
            return;
        }
        let held_in_all: usize = self.held.values().sum();
        let held = self.held.entry(peer).or_default();
        if !stranger || *held >= HELD_PER_STRANGER || held_in_all >= HELD_IN_ALL {
            if *held == 0 {
                self.held.remove(&peer);
            }
            self.refuse(channel, Refusal::RATE_LIMITED, detail);
            return;
        }
        *held += 1;
        self.state.metrics.refusals_held.inc();
        let tx = self.self_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(HOLD_REFUSAL).await;
            let response = Response::refused(Refusal::RATE_LIMITED, detail).into();
            let _ = tx
                .send(Command::ReleaseHeld {
                    peer,
                    channel,
                    response,
                })
                .await;
        });
    }

    /// Refuses an inbound request as a whole, at once.
    fn refuse(
        &mut self,
        channel: ResponseChannel<ResponseFrame>,
        code: &str,
        detail: impl Into<String>,
    ) {
        let _ = self
            .swarm
            .behaviour_mut()
            .items
            .send_response(channel, Response::refused(code, detail).into());
    }
}
