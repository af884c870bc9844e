//! Bytes in and out per application protocol (kad, identify, ping, items).
//!
//! libp2p's own bandwidth wrapper labels bytes by transport stack only. This one wraps
//! each connection's stream muxer and labels every substream by the protocol its
//! multistream-select negotiation names: the side that opens a substream first writes
//! `/multistream/1.0.0\n` and then the protocol it proposes, each a varint-length-prefixed
//! line. The counters see the substream's payload bytes (negotiation included; noise and
//! yamux framing excluded). Labels come from a fixed set, so a peer proposing invented
//! protocol names adds no series.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures::io::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerBox, StreamMuxerEvent};
use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::core::Transport;
use libp2p::{Multiaddr, PeerId};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::ProtocolBytesLabels;

/// The label a negotiated protocol name is counted under.
pub(crate) fn protocol_label(name: &str) -> &'static str {
    match name {
        n if n.starts_with("/skywire-dht/item/") => "items",
        n if n.starts_with("/skywire-dht/kad/") || n.starts_with("/ipfs/kad/") => "kad",
        n if n.starts_with("/skywire-dht/id/") || n.starts_with("/ipfs/id/") => "identify",
        n if n.starts_with("/ipfs/ping/") => "ping",
        _ => "other",
    }
}

/// Most bytes looked at to find the protocol name; past this the substream is "other".
const SNIFF_LIMIT: usize = 256;
const MULTISTREAM_HEADER: &[u8] = b"/multistream/1.0.0\n";

/// What the sniffer has found so far.
#[derive(Debug, PartialEq, Eq)]
enum Sniffed {
    /// Not enough bytes yet.
    Pending,
    /// The proposed protocol's label.
    Found(&'static str),
}

/// Finds the first protocol proposed in the negotiation bytes `buf`.
fn sniff(buf: &[u8]) -> Sniffed {
    let mut rest = buf;
    loop {
        let Some((len, used)) = read_varint(rest) else {
            return if rest.len() >= 10 || buf.len() >= SNIFF_LIMIT {
                Sniffed::Found("other")
            } else {
                Sniffed::Pending
            };
        };
        let Some(message) = rest.get(used..used.saturating_add(len)) else {
            return if buf.len() >= SNIFF_LIMIT || len > SNIFF_LIMIT {
                Sniffed::Found("other")
            } else {
                Sniffed::Pending
            };
        };
        rest = &rest[used + len..];
        if message == MULTISTREAM_HEADER {
            continue;
        }
        return match message.strip_suffix(b"\n").map(std::str::from_utf8) {
            Some(Ok(name)) => Sniffed::Found(protocol_label(name)),
            _ => Sniffed::Found("other"),
        };
    }
}

/// An unsigned LEB128 varint of at most 9 bytes: (value, bytes used).
fn read_varint(buf: &[u8]) -> Option<(usize, usize)> {
    let mut value: usize = 0;
    for (i, byte) in buf.iter().take(9).enumerate() {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The per-protocol, per-direction counters.
#[derive(Clone)]
pub(crate) struct ProtocolBytes {
    family: Family<ProtocolBytesLabels, Counter>,
}

impl ProtocolBytes {
    pub(crate) fn new(family: Family<ProtocolBytesLabels, Counter>) -> Self {
        ProtocolBytes { family }
    }

    fn counter(&self, protocol: &'static str, inbound: bool) -> Counter {
        self.family
            .get_or_create(&ProtocolBytesLabels {
                protocol,
                direction: if inbound { "in" } else { "out" },
            })
            .clone()
    }
}

/// A transport whose connections count substream bytes per protocol.
pub(crate) struct Metered<T> {
    inner: T,
    bytes: ProtocolBytes,
}

impl<T> Metered<T> {
    pub(crate) fn new(inner: T, bytes: ProtocolBytes) -> Self {
        Metered { inner, bytes }
    }
}

type Upgraded = (PeerId, StreamMuxerBox);

impl<T> Transport for Metered<T>
where
    T: Transport<Output = Upgraded> + Unpin,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
{
    type Output = Upgraded;
    type Error = T::Error;
    type ListenerUpgrade = futures::future::BoxFuture<'static, Result<Upgraded, T::Error>>;
    type Dial = futures::future::BoxFuture<'static, Result<Upgraded, T::Error>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<T::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<T::Error>> {
        let bytes = self.bytes.clone();
        let dial = self.inner.dial(addr, opts)?;
        Ok(Box::pin(async move {
            let (peer, muxer) = dial.await?;
            Ok((
                peer,
                StreamMuxerBox::new(MeteredMuxer {
                    inner: muxer,
                    bytes,
                }),
            ))
        }))
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let bytes = self.bytes.clone();
        Pin::new(&mut self.inner).poll(cx).map(|event| {
            event.map_upgrade(move |upgrade| -> Self::ListenerUpgrade {
                Box::pin(async move {
                    let (peer, muxer) = upgrade.await?;
                    Ok((
                        peer,
                        StreamMuxerBox::new(MeteredMuxer {
                            inner: muxer,
                            bytes,
                        }),
                    ))
                })
            })
        })
    }
}

/// A connection's stream muxer whose substreams count their bytes.
struct MeteredMuxer {
    inner: StreamMuxerBox,
    bytes: ProtocolBytes,
}

impl StreamMuxer for MeteredMuxer {
    type Substream = MeteredStream<<StreamMuxerBox as StreamMuxer>::Substream>;
    type Error = <StreamMuxerBox as StreamMuxer>::Error;

    fn poll_inbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let stream = ready!(Pin::new(&mut self.inner).poll_inbound(cx))?;
        Poll::Ready(Ok(MeteredStream::new(stream, self.bytes.clone(), false)))
    }

    fn poll_outbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let stream = ready!(Pin::new(&mut self.inner).poll_outbound(cx))?;
        Poll::Ready(Ok(MeteredStream::new(stream, self.bytes.clone(), true)))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

/// Where a substream is in finding its protocol.
enum Label {
    /// Sniffing: the first bytes the opener sent, and bytes counted so far per direction.
    Unknown {
        head: Vec<u8>,
        read: u64,
        written: u64,
    },
    /// Found: the counters to add to.
    Known { inbound: Counter, outbound: Counter },
}

/// A substream counting its bytes under its protocol's label.
pub(crate) struct MeteredStream<S> {
    inner: S,
    bytes: ProtocolBytes,
    /// Whether this side opened the substream (and so writes the proposal).
    opened_here: bool,
    label: Label,
}

impl<S> MeteredStream<S> {
    fn new(inner: S, bytes: ProtocolBytes, opened_here: bool) -> Self {
        MeteredStream {
            inner,
            bytes,
            opened_here,
            label: Label::Unknown {
                head: Vec::new(),
                read: 0,
                written: 0,
            },
        }
    }

    /// Counts `n` bytes moved in one direction; `data` is what moved.
    fn count(&mut self, data: &[u8], inbound: bool) {
        let n = data.len() as u64;
        let found = match &mut self.label {
            Label::Known {
                inbound: i,
                outbound: o,
            } => {
                if inbound {
                    i.inc_by(n)
                } else {
                    o.inc_by(n)
                };
                return;
            }
            Label::Unknown {
                head,
                read,
                written,
            } => {
                if inbound {
                    *read += n
                } else {
                    *written += n
                };
                // The opener's direction carries the proposal.
                if inbound != self.opened_here {
                    let room = SNIFF_LIMIT.saturating_sub(head.len());
                    head.extend_from_slice(&data[..data.len().min(room)]);
                }
                match sniff(head) {
                    Sniffed::Pending => return,
                    Sniffed::Found(label) => (label, *read, *written),
                }
            }
        };
        let (label, read, written) = found;
        let inbound_counter = self.bytes.counter(label, true);
        let outbound_counter = self.bytes.counter(label, false);
        inbound_counter.inc_by(read);
        outbound_counter.inc_by(written);
        self.label = Label::Known {
            inbound: inbound_counter,
            outbound: outbound_counter,
        };
    }
}

impl<S> Drop for MeteredStream<S> {
    fn drop(&mut self) {
        // A substream closed before naming a protocol still moved bytes.
        if let Label::Unknown { read, written, .. } = self.label {
            self.bytes.counter("other", true).inc_by(read);
            self.bytes.counter("other", false).inc_by(written);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for MeteredStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        self.count(&buf[..n], true);
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MeteredStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.count(&buf[..n], false);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(line: &str) -> Vec<u8> {
        let mut out = vec![line.len() as u8];
        out.extend_from_slice(line.as_bytes());
        out
    }

    #[test]
    fn the_first_proposal_names_the_substream() {
        let mut head = message("/multistream/1.0.0\n");
        assert_eq!(sniff(&head), Sniffed::Pending);
        head.extend(message("/skywire-dht/kad/1.0.0\n"));
        assert_eq!(sniff(&head), Sniffed::Found("kad"));
        let mut items = message("/multistream/1.0.0\n");
        items.extend(message("/skywire-dht/item/1.0.0\n"));
        items.extend_from_slice(b"payload follows");
        assert_eq!(sniff(&items), Sniffed::Found("items"));
    }

    #[test]
    fn split_and_garbled_negotiations() {
        let mut head = message("/multistream/1.0.0\n");
        head.extend(message("/ipfs/ping/1.0.0\n"));
        for cut in 0..head.len() {
            assert_eq!(sniff(&head[..cut]), Sniffed::Pending, "cut at {cut}");
        }
        assert_eq!(sniff(&head), Sniffed::Found("ping"));
        assert_eq!(sniff(&[0xff; 12]), Sniffed::Found("other"));
        assert_eq!(sniff(&message("/invented/9\n")), Sniffed::Found("other"));
        assert_eq!(sniff(&[200, 1]), Sniffed::Pending);
        assert_eq!(sniff(&[0x80; 300]), Sniffed::Found("other"));
    }
}
