//! Framing of the item protocol: a 4-byte big-endian length, then one protobuf message.
//! The length is checked against the configured limit before anything is allocated.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prost::Message;

use super::wire::{request_proto, RequestProto, ResponseProto};
use crate::metrics::{TrafficLabels, ValueFormLabels};

/// An inbound request as the codec hands it over: decoded, or refused from its length
/// prefix alone (its body was never buffered).
#[derive(Debug, Clone, PartialEq)]
pub enum ItemRequest {
    /// A request within the limits.
    Message(RequestProto),
    /// A frame longer than the limit, refused from its length prefix: its body was
    /// either skipped in small chunks (never held) so the sender can read a typed
    /// answer, or left unread (the stream is dropped after the answer).
    Oversized {
        /// The announced length.
        len: usize,
        /// The limit.
        limit: usize,
        /// Whether the body was skipped; if not, it was left unread: far over the limit
        /// (see [`ItemRequest::far_over_limit`]), or the node-wide budget for skipping
        /// oversized frames was spent.
        skipped: bool,
    },
}

impl ItemRequest {
    /// The name of the request's kind, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ItemRequest::Message(m) => match &m.kind {
                Some(request_proto::Kind::Put(_)) => "put",
                Some(request_proto::Kind::Get(_)) => "get",
                Some(request_proto::Kind::Sync(_)) => "sync",
                Some(request_proto::Kind::Members(_)) => "members",
                None => "unknown",
            },
            ItemRequest::Oversized { .. } => "oversized",
        }
    }

    /// Whether the request is a frame so far over the limit that it is no honest
    /// mistake (its body is never read).
    pub fn far_over_limit(&self) -> bool {
        matches!(self, ItemRequest::Oversized { len, limit, .. } if *len > limit.saturating_mul(DRAIN_FACTOR))
    }

    /// The bytes the request carries, as counted by the per-peer byte budget: its
    /// values, with a floor per item and per request.
    pub fn cost(&self) -> usize {
        const BASE: usize = 256;
        match self {
            ItemRequest::Oversized { len, .. } => *len,
            ItemRequest::Message(m) => match &m.kind {
                Some(request_proto::Kind::Put(p)) => p
                    .items
                    .iter()
                    .map(|i| {
                        BASE + i
                            .envelope
                            .as_ref()
                            .and_then(|e| e.item.as_ref())
                            .map_or(0, |it| it.value.len())
                            + i.coded.as_ref().map_or(0, |c| c.data.len())
                    })
                    .sum::<usize>()
                    .max(BASE),
                _ => BASE,
            },
        }
    }
}

/// Puts one form of each put value on the wire: the coded form with an empty value for
/// a peer speaking [`super::ITEM_PROTOCOL_CODED`], the value as is for any other.
/// Counts the forms sent in `forms`.
fn for_protocol(m: &mut RequestProto, protocol: &StreamProtocol, forms: &Forms) {
    let Some(request_proto::Kind::Put(p)) = &mut m.kind else {
        return;
    };
    let coded = *protocol == super::ITEM_PROTOCOL_CODED;
    for i in &mut p.items {
        let value = i.envelope.as_mut().and_then(|e| e.item.as_mut());
        match (&i.coded, value) {
            (Some(c), Some(item)) if coded => {
                let full = std::mem::take(&mut item.value).len();
                let sent = c.data.len() + c.base_hash.len() + 8 * usize::from(c.form == 2);
                forms.count(if c.form == 2 { "patch" } else { "zstd" });
                forms.saved.inc_by(full.saturating_sub(sent) as u64);
            }
            _ => {
                i.coded = None;
                forms.count("plain");
            }
        }
    }
}

/// Frames up to this many times the limit are skipped (so that the sender learns
/// `too_large` from a typed answer); longer ones reset the stream at once.
const DRAIN_FACTOR: usize = 4;

/// Bytes of oversized frames skipped per second over all peers, in largest messages:
/// an honest peer with a larger limit gets its typed answer, a flood of oversized
/// frames gets reset streams and costs this node next to nothing.
const DRAIN_PER_SECOND: f64 = 2.0;

/// The node-wide budget of oversized-frame bytes the codec may skip: a token bucket.
#[derive(Debug)]
pub struct DrainBudget {
    per_second: f64,
    burst: f64,
    bucket: parking_lot::Mutex<(f64, std::time::Instant)>,
}

impl DrainBudget {
    /// A budget of `per_second` bytes, `burst` at once.
    pub fn new(per_second: f64, burst: f64) -> Self {
        DrainBudget {
            per_second,
            burst,
            bucket: parking_lot::Mutex::new((burst, std::time::Instant::now())),
        }
    }

    /// Takes `bytes` if they are there.
    fn take(&self, bytes: usize) -> bool {
        let now = std::time::Instant::now();
        let mut b = self.bucket.lock();
        let (tokens, last) = *b;
        let tokens =
            (tokens + now.duration_since(last).as_secs_f64() * self.per_second).min(self.burst);
        if tokens >= bytes as f64 {
            *b = (tokens - bytes as f64, now);
            true
        } else {
            *b = (tokens, now);
            false
        }
    }
}

/// Bytes of inbound frames being read at once, over all peers.
pub const INBOUND_BUFFER_BUDGET: usize = 48 * 1024 * 1024;

/// Length-prefixed prost codec for the item protocol. The length prefix is checked
/// before any of the body is read: a frame over the limit is never buffered, and all
/// inbound frames being read at once share `INBOUND_BUFFER_BUDGET` bytes.
#[derive(Debug, Clone)]
pub struct ItemCodec {
    /// Largest message accepted or sent.
    pub max_message_len: usize,
    /// Bytes of inbound bodies being buffered, over every stream of the node.
    pub inbound_budget: std::sync::Arc<tokio::sync::Semaphore>,
    /// Bytes of oversized frames that may be skipped, over every stream of the node.
    drain_budget: std::sync::Arc<DrainBudget>,
    traffic: Traffic,
    forms: Forms,
}

/// Counters of the forms of put values written.
#[derive(Debug, Clone, Default)]
struct Forms {
    by_form: Family<ValueFormLabels, Counter>,
    saved: Counter,
}

impl Forms {
    fn count(&self, form: &'static str) {
        self.by_form.get_or_create(&ValueFormLabels { form }).inc();
    }
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
            drain_budget: std::sync::Arc::new(DrainBudget::new(
                DRAIN_PER_SECOND * max_message_len as f64,
                (DRAIN_FACTOR * max_message_len) as f64,
            )),
            traffic: Traffic {
                inbound: get("in"),
                outbound: get("out"),
            },
            forms: Forms::default(),
        }
    }

    /// Counts the forms of the put values it writes in `by_form`, and the value bytes
    /// coding saved in `saved`.
    pub fn counting_forms(
        mut self,
        by_form: &Family<ValueFormLabels, Counter>,
        saved: &Counter,
    ) -> Self {
        self.forms = Forms {
            by_form: by_form.clone(),
            saved: saved.clone(),
        };
        self
    }
}

/// What a frame's length prefix allowed.
#[derive(Debug)]
enum Frame {
    Body(Vec<u8>),
    /// Over the limit: its length, and whether its body was skipped (else unread).
    Oversized(usize, bool),
}

/// How an inbound frame's length prefix is checked: the node-wide budgets (requests);
/// none for responses, which are never over the limit from an honest peer.
struct Budgets<'a> {
    buffers: &'a tokio::sync::Semaphore,
    drain: &'a DrainBudget,
}

async fn read_frame<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
    budget: Option<Budgets<'_>>,
) -> io::Result<Frame> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        let Some(budget) = budget else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("message of {len} bytes exceeds the limit of {max}"),
            ));
        };
        // Far over the limit, or too many oversized bytes skipped lately: the body is
        // left unread (the node answers, and drops the stream).
        if len > max.saturating_mul(DRAIN_FACTOR) || !budget.drain.take(len) {
            return Ok(Frame::Oversized(len, false));
        }
        // Skip the body in small chunks, so the sender gets a typed refusal.
        let mut chunk = [0u8; 8192];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            io.read_exact(&mut chunk[..n]).await?;
            left -= n;
        }
        return Ok(Frame::Oversized(len, true));
    }
    let budget = budget.map(|b| b.buffers);
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
    // Prefix and body in one write: each write on a substream is a yamux frame of its
    // own (12 bytes of header).
    let mut frame = Vec::with_capacity(4 + msg.len());
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    io.write_all(&frame).await?;
    // No close here: request-response closes the stream after the message, and a
    // second close of a yamux stream the peer has not closed yet sends a second FIN
    // frame (30 bytes and a TCP segment per request on the wire).
    io.flush().await
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
        let budgets = Budgets {
            buffers: &self.inbound_budget,
            drain: &self.drain_budget,
        };
        match read_frame(io, self.max_message_len, Some(budgets)).await? {
            Frame::Body(b) => {
                self.traffic.inbound.inc_by(4 + b.len() as u64);
                decode(&b).map(ItemRequest::Message)
            }
            Frame::Oversized(len, skipped) => {
                self.traffic
                    .inbound
                    .inc_by(4 + if skipped { len as u64 } else { 0 });
                Ok(ItemRequest::Oversized {
                    len,
                    limit: self.max_message_len,
                    skipped,
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
            Frame::Oversized(len, _) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("response of {len} bytes exceeds the limit"),
            )),
        }
    }

    async fn write_request<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        req: ItemRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match req {
            ItemRequest::Message(mut m) => {
                for_protocol(&mut m, protocol, &self.forms);
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
        let drain = DrainBudget::new(0.0, 8_000.0);
        let budgets = || {
            Some(Budgets {
                buffers: &budget,
                drain: &drain,
            })
        };
        // Announced 4,000 bytes against a limit of 1,000: skipped, typed refusal.
        let mut io = Cursor::new(framed(4_000, &vec![7u8; 4_000]));
        match read_frame(&mut io, 1_000, budgets()).await.unwrap() {
            Frame::Oversized(len, skipped) => assert_eq!((len, skipped), (4_000, true)),
            Frame::Body(_) => panic!("buffered an oversized frame"),
        }
        // Far over: refused without reading a byte of the body.
        let mut io = Cursor::new(framed(1_000_000, &[9u8; 10_000]));
        assert!(matches!(
            read_frame(&mut io, 1_000, budgets()).await.unwrap(),
            Frame::Oversized(1_000_000, false)
        ));
        assert_eq!(io.position(), 4, "read past the length prefix");
        // Within the limit but over the node-wide budget: refused too.
        let mut io = Cursor::new(framed(900, &[1u8; 900]));
        let small = tokio::sync::Semaphore::new(100);
        let tight = Some(Budgets {
            buffers: &small,
            drain: &drain,
        });
        assert!(read_frame(&mut io, 1_000, tight).await.is_err());
        // Within both: read, and the budget is given back.
        let mut io = Cursor::new(framed(900, &[1u8; 900]));
        assert!(matches!(
            read_frame(&mut io, 1_000, budgets()).await.unwrap(),
            Frame::Body(b) if b.len() == 900
        ));
        assert_eq!(budget.available_permits(), 1024);
    }

    #[tokio::test]
    async fn oversized_frames_past_the_drain_budget_are_refused_unread() {
        let budget = tokio::sync::Semaphore::new(1024);
        // Room to skip 5,000 bytes, refilled at nothing per second.
        let drain = DrainBudget::new(0.0, 5_000.0);
        let mut skipped = 0;
        for _ in 0..3 {
            let mut io = Cursor::new(framed(2_000, &[7u8; 2_000]));
            let budgets = Some(Budgets {
                buffers: &budget,
                drain: &drain,
            });
            match read_frame(&mut io, 1_000, budgets).await.unwrap() {
                Frame::Oversized(2_000, true) => skipped += 1,
                Frame::Oversized(2_000, false) => {
                    assert_eq!(io.position(), 4, "read past the length prefix")
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(skipped, 2);
    }
}
