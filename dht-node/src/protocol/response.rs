//! The typed responses of the item protocol and their wire form.

use bytes::Bytes;
use dht_core::wire::{DecodeLimits, Envelope};
use dht_core::{Admission, MutableItem, ReasonCode};
use libp2p::{Multiaddr, PeerId};

use super::wire::{self, response_proto};
use super::{decode_envelope, encode_envelope, Decoded, ResponseFrame};
use crate::report::ReplicaResult;

/// What a replica did with one put item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PutResult {
    /// Stored, and how.
    Stored(Admission),
    /// A patch against a base this replica does not hold: nothing was stored, the
    /// sender should send the full value. Only answered on the coded protocol.
    NeedBase {
        /// The seq held at the target (0: nothing).
        held_seq: u64,
    },
    /// Refused, with the stable reason code.
    Rejected {
        /// The reason.
        code: ReasonCode,
        /// Human-readable detail.
        detail: String,
    },
}

impl From<PutResult> for ReplicaResult {
    fn from(r: PutResult) -> Self {
        match r {
            PutResult::Stored(a) => ReplicaResult::Stored(a),
            PutResult::Rejected { code, detail } => ReplicaResult::Rejected { code, detail },
            // The sender retries with the full value; one left over is a failure.
            PutResult::NeedBase { held_seq } => ReplicaResult::Failed(format!(
                "replica lacks the patch's base (holds seq {held_seq})"
            )),
        }
    }
}

impl From<&PutResult> for wire::PutResultProto {
    fn from(r: &PutResult) -> Self {
        let (outcome, previous_seq) = match r {
            PutResult::Stored(Admission::Insert) => (1, 0),
            PutResult::Stored(Admission::Replace { previous_seq }) => (2, *previous_seq),
            PutResult::Stored(Admission::Refresh) => (3, 0),
            PutResult::Stored(Admission::Supersede { seq }) => (4, *seq),
            PutResult::NeedBase { held_seq } => (5, *held_seq),
            PutResult::Rejected { code, detail } => {
                return wire::PutResultProto {
                    outcome: 0,
                    reason: code.tag(),
                    detail: detail.clone(),
                    previous_seq: 0,
                }
            }
        };
        wire::PutResultProto {
            outcome,
            reason: 0,
            detail: String::new(),
            previous_seq,
        }
    }
}

impl From<wire::PutResultProto> for PutResult {
    fn from(r: wire::PutResultProto) -> Self {
        match r.outcome {
            1 => PutResult::Stored(Admission::Insert),
            2 => PutResult::Stored(Admission::Replace {
                previous_seq: r.previous_seq,
            }),
            3 => PutResult::Stored(Admission::Refresh),
            4 => PutResult::Stored(Admission::Supersede {
                seq: r.previous_seq,
            }),
            5 => PutResult::NeedBase {
                held_seq: r.previous_seq,
            },
            _ => PutResult::Rejected {
                code: ReasonCode::from_tag(r.reason).unwrap_or(ReasonCode::Malformed),
                detail: r.detail,
            },
        }
    }
}

/// A page of sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyncPage {
    /// Items with their deadlines.
    pub items: Vec<Decoded<Envelope>>,
    /// Cursor for the next request.
    pub next: u64,
    /// Nothing more after this page.
    pub done: bool,
    /// The responder's store epoch: cursors are only meaningful within one epoch.
    pub epoch: u64,
}

/// A request refused as a whole, with a stable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// [`Refusal::RATE_LIMITED`], [`Refusal::MALFORMED`], [`Refusal::NOT_SERVING`],
    /// [`Refusal::CATCHING_UP`], [`Refusal::INTERNAL`], or a [`ReasonCode`] name.
    pub code: String,
    /// Detail.
    pub detail: String,
}

impl Refusal {
    /// Too many requests (per-peer rate limit or requests in flight).
    pub const RATE_LIMITED: &'static str = "rate_limited";
    /// The request does not decode.
    pub const MALFORMED: &'static str = "malformed";
    /// A client-mode node serves no requests.
    pub const NOT_SERVING: &'static str = "not_serving";
    /// The node is still catching up and answers no reads.
    pub const CATCHING_UP: &'static str = "catching_up";
    /// The store failed.
    pub const INTERNAL: &'static str = "internal";

    /// A refusal with `code`.
    pub fn new(code: &str, detail: impl Into<String>) -> Self {
        Refusal {
            code: code.into(),
            detail: detail.into(),
        }
    }

    /// The reason code the refusal names, if it is one (a frame over the limit is
    /// refused as `too_large`).
    pub fn reason(&self) -> Option<ReasonCode> {
        ReasonCode::from_name(&self.code)
    }
}

/// A response of the item protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Response {
    /// Outcome per put item, in request order.
    Put(Vec<PutResult>),
    /// The item held at the target, if any.
    Get(Option<Decoded<Envelope>>),
    /// A page of sync.
    Sync(SyncPage),
    /// The request was refused as a whole.
    Refused(Refusal),
    /// The full nodes the responder knows, with their addresses (entries that do not
    /// decode are dropped; at most [`MAX_MEMBERS`], [`MAX_MEMBER_ADDRS`] addresses each).
    Members(Vec<(PeerId, Vec<Multiaddr>)>),
}

/// Most members a members answer carries (more are ignored).
pub(crate) const MAX_MEMBERS: usize = 1024;
/// Most addresses of one member (more are ignored).
pub(crate) const MAX_MEMBER_ADDRS: usize = 8;

/// The members of an answer that decode, within the bounds.
fn decode_members(members: Vec<wire::MemberProto>) -> Vec<(PeerId, Vec<Multiaddr>)> {
    members
        .into_iter()
        .take(MAX_MEMBERS)
        .filter_map(|m| {
            let peer = PeerId::from_bytes(&m.peer_id).ok()?;
            let addrs: Vec<Multiaddr> = m
                .addrs
                .into_iter()
                .take(MAX_MEMBER_ADDRS)
                .filter_map(|a| Multiaddr::try_from(a.to_vec()).ok())
                .collect();
            (!addrs.is_empty()).then_some((peer, addrs))
        })
        .collect()
}

/// A response frame with no kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("empty response")]
pub(crate) struct EmptyResponse;

impl Response {
    /// Decodes a response read from the wire; every item it carries is decoded on its
    /// own.
    pub fn decode(frame: ResponseFrame, limits: &DecodeLimits) -> Result<Self, EmptyResponse> {
        Ok(match frame.kind.ok_or(EmptyResponse)? {
            response_proto::Kind::Put(p) => {
                Response::Put(p.results.into_iter().map(PutResult::from).collect())
            }
            response_proto::Kind::Get(g) => {
                Response::Get(g.envelope.map(|e| decode_envelope(e, limits)))
            }
            response_proto::Kind::Sync(s) => Response::Sync(SyncPage {
                items: s
                    .items
                    .into_iter()
                    .map(|e| decode_envelope(e, limits))
                    .collect(),
                next: s.next,
                done: s.done,
                epoch: s.epoch,
            }),
            response_proto::Kind::Error(e) => Response::Refused(Refusal {
                code: e.code,
                detail: e.detail,
            }),
            response_proto::Kind::Members(m) => Response::Members(decode_members(m.members)),
        })
    }

    /// A refusal with `code`.
    pub fn refused(code: &str, detail: impl Into<String>) -> Self {
        Response::Refused(Refusal::new(code, detail))
    }

    /// The held copy of a get answer: the stored item and its deadline (0: none).
    pub fn held(item: MutableItem, expires_at_ms: u64) -> Self {
        Response::Get(Some(Ok(Envelope {
            item,
            expires_at_ms: (expires_at_ms != 0).then_some(expires_at_ms),
        })))
    }
}

impl From<Response> for ResponseFrame {
    fn from(response: Response) -> Self {
        let kind = match response {
            Response::Put(results) => response_proto::Kind::Put(wire::PutResponseProto {
                results: results.iter().map(wire::PutResultProto::from).collect(),
            }),
            Response::Get(envelope) => response_proto::Kind::Get(wire::GetResponseProto {
                envelope: envelope.as_ref().map(encode_envelope),
            }),
            Response::Sync(page) => response_proto::Kind::Sync(wire::SyncResponseProto {
                items: page.items.iter().map(encode_envelope).collect(),
                next: page.next,
                done: page.done,
                epoch: page.epoch,
            }),
            Response::Refused(r) => response_proto::Kind::Error(wire::ErrorProto {
                code: r.code,
                detail: r.detail,
            }),
            Response::Members(members) => {
                response_proto::Kind::Members(wire::MembersResponseProto {
                    members: members
                        .into_iter()
                        .take(MAX_MEMBERS)
                        .map(|(peer, addrs)| wire::MemberProto {
                            peer_id: Bytes::from(peer.to_bytes()),
                            addrs: addrs
                                .into_iter()
                                .take(MAX_MEMBER_ADDRS)
                                .map(|a| Bytes::from(a.to_vec()))
                                .collect(),
                        })
                        .collect(),
                })
            }
        };
        wire::ResponseProto { kind: Some(kind) }
    }
}
