//! Framing of the item protocol: a 4-byte big-endian length, then one protobuf message.
//! The length is checked against the configured limit before anything is allocated.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prost::Message;

use super::wire::{request_proto, RequestProto, ResponseProto};
use crate::metrics::TrafficLabels;

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

impl ItemRequest {
    /// The name of the request's kind, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ItemRequest::Message(m) => match &m.kind {
                Some(request_proto::Kind::Put(_)) => "put",
                Some(request_proto::Kind::Get(_)) => "get",
                Some(request_proto::Kind::Sync(_)) => "sync",
                None => "unknown",
            },
            ItemRequest::Oversized { .. } => "oversized",
        }
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
                    })
                    .sum::<usize>()
                    .max(BASE),
                _ => BASE,
            },
        }
    }
}

/// Frames up to this many times the limit are skipped (so that the sender learns
/// `too_large` from a typed answer); longer ones reset the stream at once.
const DRAIN_FACTOR: usize = 4;

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
}
