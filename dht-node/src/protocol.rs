//! The item protocol: this project's own request-response protocol for put (with a
//! truthful per-replica answer), get and bulk sync. Routing (FIND_NODE) uses libp2p-kad
//! under [`KAD_PROTOCOL`]; items never travel in kad records.
//!
//! Framing: a 4-byte big-endian length, then one protobuf message. The length is checked
//! against the configured limit before anything is allocated.

use std::io;

use bytes::Bytes;
use dht_core::wire::{DecodeLimits, EnvelopeProto, ItemProto};
use dht_core::{Admission, Cas, MutableItem, PutOptions, ReasonCode, Target};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prost::Message;

use crate::metrics::TrafficLabels;

/// The kad protocol name of this DHT (never the IPFS one).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/skywire-dht/kad/1.0.0");
/// The item protocol name.
pub const ITEM_PROTOCOL: StreamProtocol = StreamProtocol::new("/skywire-dht/item/1.0.0");

/// A request of the item protocol.
#[derive(Clone, PartialEq, Message)]
pub struct RequestProto {
    /// The request.
    #[prost(oneof = "request_proto::Kind", tags = "1, 2, 3")]
    pub kind: Option<request_proto::Kind>,
}

/// The kinds of [`RequestProto`].
pub mod request_proto {
    /// Request kinds.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// Store items.
        #[prost(message, tag = "1")]
        Put(super::PutRequestProto),
        /// Read the item at a target.
        #[prost(message, tag = "2")]
        Get(super::GetRequestProto),
        /// Bulk, change-ordered sync of what the requester should hold.
        #[prost(message, tag = "3")]
        Sync(super::SyncRequestProto),
    }
}

/// One item to store.
#[derive(Clone, PartialEq, Message)]
pub struct PutItemProto {
    /// The item and the expiry it carries.
    #[prost(message, optional, tag = "1")]
    pub envelope: Option<EnvelopeProto>,
    /// 0 none, 1 only if absent, 2 only if the stored seq is `cas_seq`.
    #[prost(uint32, tag = "2")]
    pub cas_kind: u32,
    /// Expected stored seq for `cas_kind == 2`.
    #[prost(uint64, tag = "3")]
    pub cas_seq: u64,
}

/// Store one or more items.
#[derive(Clone, PartialEq, Message)]
pub struct PutRequestProto {
    /// Items.
    #[prost(message, repeated, tag = "1")]
    pub items: Vec<PutItemProto>,
}

/// Read one target.
#[derive(Clone, PartialEq, Message)]
pub struct GetRequestProto {
    /// 32-byte target.
    #[prost(bytes = "bytes", tag = "1")]
    pub target: Bytes,
}

/// Sync: items changed after `since` (responder's change sequence) that the requester is
/// responsible for.
#[derive(Clone, PartialEq, Message)]
pub struct SyncRequestProto {
    /// Cursor: responder-local change sequence, exclusive.
    #[prost(uint64, tag = "1")]
    pub since: u64,
    /// Most items in the answer.
    #[prost(uint32, tag = "2")]
    pub limit: u32,
    /// Only items with this salt (empty: all salts).
    #[prost(bytes = "bytes", tag = "3")]
    pub salt: Bytes,
}

/// A response of the item protocol.
#[derive(Clone, PartialEq, Message)]
pub struct ResponseProto {
    /// The response.
    #[prost(oneof = "response_proto::Kind", tags = "1, 2, 3, 4")]
    pub kind: Option<response_proto::Kind>,
}

/// The kinds of [`ResponseProto`].
pub mod response_proto {
    /// Response kinds.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// Outcome per item.
        #[prost(message, tag = "1")]
        Put(super::PutResponseProto),
        /// The item, if held.
        #[prost(message, tag = "2")]
        Get(super::GetResponseProto),
        /// A page of items.
        #[prost(message, tag = "3")]
        Sync(super::SyncResponseProto),
        /// The request was refused as a whole.
        #[prost(message, tag = "4")]
        Error(super::ErrorProto),
    }
}

/// The outcome of one put item.
#[derive(Clone, PartialEq, Message)]
pub struct PutResultProto {
    /// 1 inserted, 2 replaced, 3 refreshed, 4 superseded (a different item at the same
    /// seq lost to this one in the total order), 0 rejected.
    #[prost(uint32, tag = "1")]
    pub outcome: u32,
    /// [`ReasonCode::tag`] when rejected.
    #[prost(uint32, tag = "2")]
    pub reason: u32,
    /// Human-readable detail.
    #[prost(string, tag = "3")]
    pub detail: String,
    /// The seq replaced (outcome 2) or superseded (outcome 4).
    #[prost(uint64, tag = "4")]
    pub previous_seq: u64,
}

/// Outcome per item, in request order.
#[derive(Clone, PartialEq, Message)]
pub struct PutResponseProto {
    /// One per requested item.
    #[prost(message, repeated, tag = "1")]
    pub results: Vec<PutResultProto>,
}

/// The item held at a target.
#[derive(Clone, PartialEq, Message)]
pub struct GetResponseProto {
    /// Absent when nothing is held.
    #[prost(message, optional, tag = "1")]
    pub envelope: Option<EnvelopeProto>,
}

/// A page of sync.
#[derive(Clone, PartialEq, Message)]
pub struct SyncResponseProto {
    /// Items (with their expiries).
    #[prost(message, repeated, tag = "1")]
    pub items: Vec<EnvelopeProto>,
    /// Cursor for the next request.
    #[prost(uint64, tag = "2")]
    pub next: u64,
    /// Nothing more after this page.
    #[prost(bool, tag = "3")]
    pub done: bool,
    /// The responder's store epoch: cursors are only meaningful within one epoch (a
    /// store created anew starts a new one).
    #[prost(uint64, tag = "4")]
    pub epoch: u64,
}

/// A refused request.
#[derive(Clone, PartialEq, Message)]
pub struct ErrorProto {
    /// Stable code: "rate_limited", "malformed", "not_serving", "internal".
    #[prost(string, tag = "1")]
    pub code: String,
    /// Detail.
    #[prost(string, tag = "2")]
    pub detail: String,
}

/// Typed form of a put item.
pub fn put_item_proto(item: &MutableItem, opts: PutOptions) -> PutItemProto {
    let (cas_kind, cas_seq) = match opts.cas {
        None => (0, 0),
        Some(Cas::Absent) => (1, 0),
        Some(Cas::Seq(s)) => (2, s),
    };
    PutItemProto {
        envelope: Some(EnvelopeProto {
            version: dht_core::wire::ENVELOPE_VERSION,
            item: Some(ItemProto::from(item)),
            expires_at_ms: opts.expires_at_ms.unwrap_or(0),
        }),
        cas_kind,
        cas_seq,
    }
}

/// Parses a put item from the wire.
pub fn parse_put_item(
    p: PutItemProto,
    limits: &DecodeLimits,
) -> Result<(MutableItem, PutOptions), dht_core::Rejection> {
    let env = p
        .envelope
        .ok_or_else(|| dht_core::Rejection::Malformed("put without item".into()))?
        .into_envelope(limits)?;
    let cas = match p.cas_kind {
        0 => None,
        1 => Some(Cas::Absent),
        2 => Some(Cas::Seq(p.cas_seq)),
        k => {
            return Err(dht_core::Rejection::Malformed(format!(
                "unknown cas kind {k}"
            )))
        }
    };
    Ok((
        env.item,
        PutOptions {
            cas,
            expires_at_ms: env.expires_at_ms,
        },
    ))
}

/// An envelope for an item with an expiry.
pub fn envelope(item: &MutableItem, expires_at_ms: u64) -> EnvelopeProto {
    EnvelopeProto {
        version: dht_core::wire::ENVELOPE_VERSION,
        item: Some(ItemProto::from(item)),
        expires_at_ms,
    }
}

/// A rejected put result.
pub fn rejected(reason: ReasonCode, detail: String) -> PutResultProto {
    PutResultProto {
        outcome: 0,
        reason: reason.tag(),
        detail,
        previous_seq: 0,
    }
}

/// The wire form of an accepted put.
pub fn accepted(admission: Admission) -> PutResultProto {
    let (outcome, previous_seq) = match admission {
        Admission::Insert => (1, 0),
        Admission::Replace { previous_seq } => (2, previous_seq),
        Admission::Refresh => (3, 0),
        Admission::Supersede { seq } => (4, seq),
    };
    PutResultProto {
        outcome,
        reason: 0,
        detail: String::new(),
        previous_seq,
    }
}

/// What a replica did, from its put result.
pub fn replica_result(res: PutResultProto) -> crate::report::ReplicaResult {
    use crate::report::ReplicaResult;
    match res.outcome {
        1 => ReplicaResult::Stored(Admission::Insert),
        2 => ReplicaResult::Stored(Admission::Replace {
            previous_seq: res.previous_seq,
        }),
        3 => ReplicaResult::Stored(Admission::Refresh),
        4 => ReplicaResult::Stored(Admission::Supersede {
            seq: res.previous_seq,
        }),
        _ => ReplicaResult::Rejected {
            code: ReasonCode::from_tag(res.reason).unwrap_or(ReasonCode::Malformed),
            detail: res.detail,
        },
    }
}

/// The name of a request's kind, for metrics and logs.
pub fn request_kind(request: &RequestProto) -> &'static str {
    match &request.kind {
        Some(request_proto::Kind::Put(_)) => "put",
        Some(request_proto::Kind::Get(_)) => "get",
        Some(request_proto::Kind::Sync(_)) => "sync",
        None => "unknown",
    }
}

/// A whole-request error response.
pub fn error_response(code: &str, detail: impl Into<String>) -> ResponseProto {
    ResponseProto {
        kind: Some(response_proto::Kind::Error(ErrorProto {
            code: code.into(),
            detail: detail.into(),
        })),
    }
}

/// Parses a target from the wire.
pub fn parse_target(bytes: &[u8]) -> Option<Target> {
    Target::from_slice(bytes)
}

/// An inbound request as the codec hands it over: decoded, or refused from its length
/// prefix alone (its body was never buffered).
#[derive(Debug, Clone, PartialEq)]
pub enum ItemRequest {
    /// A request within the limits.
    Message(RequestProto),
    /// A frame longer than the limit: its body was skipped in small chunks, never held.
    Oversized {
        /// The announced length.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

/// Frames up to this many times the limit are skipped (so that the sender learns
/// `too_large` from a typed answer); longer ones reset the stream at once.
const DRAIN_FACTOR: usize = 4;

/// Bytes of inbound frames being read at once, over all peers.
pub const INBOUND_BUFFER_BUDGET: usize = 48 * 1024 * 1024;

/// Length-prefixed prost codec for the item protocol. The length prefix is checked
/// before any of the body is read: a frame over the limit is never buffered, and all
/// inbound frames being read at once share [`INBOUND_BUFFER_BUDGET`] bytes.
#[derive(Debug, Clone)]
pub struct ItemCodec {
    /// Largest message accepted or sent.
    pub max_message_len: usize,
    /// Bytes of inbound bodies being buffered, over every stream of the node.
    pub inbound_budget: std::sync::Arc<tokio::sync::Semaphore>,
    traffic: Traffic,
}

/// Byte counters of the codec.
#[derive(Debug, Clone, Default)]
struct Traffic {
    inbound: Counter,
    outbound: Counter,
}

impl ItemCodec {
    /// A codec with its own inbound budget, counting its bytes in `traffic`.
    pub fn new(max_message_len: usize, traffic: &Family<TrafficLabels, Counter>) -> Self {
        let get = |d: &str| {
            traffic
                .get_or_create(&TrafficLabels {
                    direction: d.into(),
                })
                .clone()
        };
        ItemCodec {
            max_message_len,
            inbound_budget: std::sync::Arc::new(tokio::sync::Semaphore::new(INBOUND_BUFFER_BUDGET)),
            traffic: Traffic {
                inbound: get("in"),
                outbound: get("out"),
            },
        }
    }
}

/// What a frame's length prefix allowed.
enum Frame {
    Body(Vec<u8>),
    Oversized(usize),
}

async fn read_frame<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
    budget: Option<&tokio::sync::Semaphore>,
) -> io::Result<Frame> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        if budget.is_none() || len > max.saturating_mul(DRAIN_FACTOR) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("message of {len} bytes exceeds the limit of {max}"),
            ));
        }
        // Skip the body in small chunks, so the sender gets a typed refusal.
        let mut chunk = [0u8; 8192];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            io.read_exact(&mut chunk[..n]).await?;
            left -= n;
        }
        return Ok(Frame::Oversized(len));
    }
    // Reserve the body's bytes from the node-wide budget before allocating them.
    let _permit = match budget {
        Some(b) => Some(
            b.try_acquire_many(u32::try_from(len).unwrap_or(u32::MAX))
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::OutOfMemory,
                        "inbound buffer budget exhausted",
                    )
                })?,
        ),
        None => None,
    };
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(Frame::Body(buf))
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    msg: Vec<u8>,
    max: usize,
) -> io::Result<()> {
    if msg.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("message of {} bytes exceeds the limit of {max}", msg.len()),
        ));
    }
    io.write_all(&(msg.len() as u32).to_be_bytes()).await?;
    io.write_all(&msg).await?;
    io.close().await
}

fn decode<M: Message + Default>(buf: &[u8]) -> io::Result<M> {
    M::decode(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

impl libp2p::request_response::Codec for ItemCodec {
    type Protocol = StreamProtocol;
    type Request = ItemRequest;
    type Response = ResponseProto;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<ItemRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        match read_frame(io, self.max_message_len, Some(&self.inbound_budget)).await? {
            Frame::Body(b) => {
                self.traffic.inbound.inc_by(4 + b.len() as u64);
                decode(&b).map(ItemRequest::Message)
            }
            Frame::Oversized(len) => {
                self.traffic.inbound.inc_by(4 + len as u64);
                Ok(ItemRequest::Oversized {
                    len,
                    limit: self.max_message_len,
                })
            }
        }
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<ResponseProto>
    where
        T: AsyncRead + Unpin + Send,
    {
        match read_frame(io, self.max_message_len, None).await? {
            Frame::Body(b) => {
                self.traffic.inbound.inc_by(4 + b.len() as u64);
                decode(&b)
            }
            Frame::Oversized(len) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("response of {len} bytes exceeds the limit"),
            )),
        }
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: ItemRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match req {
            ItemRequest::Message(m) => {
                let bytes = m.encode_to_vec();
                self.traffic.outbound.inc_by(4 + bytes.len() as u64);
                write_frame(io, bytes, self.max_message_len).await
            }
            ItemRequest::Oversized { .. } => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an oversized marker is never sent",
            )),
        }
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: ResponseProto,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let bytes = res.encode_to_vec();
        self.traffic.outbound.inc_by(4 + bytes.len() as u64);
        write_frame(io, bytes, self.max_message_len).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    fn framed(len_prefix: u32, body: &[u8]) -> Vec<u8> {
        let mut v = len_prefix.to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_from_its_header_and_never_buffered() {
        let budget = tokio::sync::Semaphore::new(1024);
        // Announced 4,000 bytes against a limit of 1,000: skipped, typed refusal.
        let mut io = Cursor::new(framed(4_000, &vec![7u8; 4_000]));
        match read_frame(&mut io, 1_000, Some(&budget)).await.unwrap() {
            Frame::Oversized(len) => assert_eq!(len, 4_000),
            Frame::Body(_) => panic!("buffered an oversized frame"),
        }
        // Far over: refused before reading a byte of the body (here, none is there).
        let mut io = Cursor::new(framed(1_000_000, b""));
        assert!(read_frame(&mut io, 1_000, Some(&budget)).await.is_err());
        // Within the limit but over the node-wide budget: refused too.
        let mut io = Cursor::new(framed(900, &[1u8; 900]));
        let small = tokio::sync::Semaphore::new(100);
        assert!(read_frame(&mut io, 1_000, Some(&small)).await.is_err());
        // Within both: read, and the budget is given back.
        let mut io = Cursor::new(framed(900, &[1u8; 900]));
        assert!(matches!(
            read_frame(&mut io, 1_000, Some(&budget)).await.unwrap(),
            Frame::Body(b) if b.len() == 900
        ));
        assert_eq!(budget.available_permits(), 1024);
    }

    #[test]
    fn put_results_round_trip_with_their_admission() {
        use crate::report::ReplicaResult;
        for a in [
            Admission::Insert,
            Admission::Replace { previous_seq: 7 },
            Admission::Refresh,
            Admission::Supersede { seq: 9 },
        ] {
            assert_eq!(replica_result(accepted(a)), ReplicaResult::Stored(a));
        }
        let r = replica_result(rejected(ReasonCode::Stale, "old".into()));
        assert!(matches!(
            r,
            ReplicaResult::Rejected {
                code: ReasonCode::Stale,
                ..
            }
        ));
    }
}
