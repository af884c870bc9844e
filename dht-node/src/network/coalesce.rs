//! Yamux frames written together leave in one noise frame and one TCP segment.
//!
//! yamux flushes its connection after every frame it writes, and noise turns every
//! flush into a frame of its own (2-byte length, 16-byte tag); with `TCP_NODELAY` each
//! is a segment (52 bytes of IP and TCP headers on the wire, and usually an ACK). A
//! request on a new substream is three frames written at once (the multistream-select
//! proposal with the stream's SYN, the request, the FIN), its answer two (the response
//! and the FIN): five segments where two do.
//!
//! [`Coalesce`] sits between yamux and noise and holds a flush back until the yamux
//! connection has written everything it had to send: a flush after a write is put off
//! twice (the task is woken at once each time, so nothing waits for a timer), and the
//! flush that goes through carries every frame written meanwhile. Nothing waits for
//! more than two wake-ups of the connection's task. The wire format is unchanged:
//! peers cannot tell.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};

/// An I/O stream whose flushes are held back while writes keep coming.
#[derive(Debug)]
pub(crate) struct Coalesce<T> {
    inner: T,
    /// A write happened since the last call to `poll_flush`.
    wrote: bool,
    /// Written bytes not flushed yet.
    dirty: bool,
    /// Calls to `poll_flush` put off since the last write.
    quiet_calls: u8,
}

/// Calls to `poll_flush` put off after a write: the one right after it, and one more
/// with no write in between. One is not enough: yamux flushes before it takes the
/// frames its streams queued meanwhile, so a frame the connection sent by itself (a
/// yamux ping, on a connection quiet for ten seconds) would leave alone, one wake-up
/// before the request that woke the connection.
const QUIET_CALLS: u8 = 2;

impl<T> Coalesce<T> {
    pub(crate) fn new(inner: T) -> Self {
        Coalesce {
            inner,
            wrote: false,
            dirty: false,
            quiet_calls: 0,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }

    fn poll_read_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read_vectored(cx, bufs)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = futures::ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.wrote |= n > 0;
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = futures::ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        self.wrote |= n > 0;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if std::mem::take(&mut this.wrote) {
            this.dirty = true;
            this.quiet_calls = 0;
        }
        if this.dirty && this.quiet_calls < QUIET_CALLS {
            // More may follow in this same wake-up: flush on a later call instead, and
            // make sure there is one.
            this.quiet_calls += 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        futures::ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        this.dirty = false;
        this.quiet_calls = 0;
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.wrote = false;
        self.dirty = false;
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// A connection upgrade (the muxer's) whose I/O is wrapped in [`Coalesce`] first.
#[derive(Debug, Clone)]
pub(crate) struct Coalesced<U>(pub U);

impl<U: UpgradeInfo> UpgradeInfo for Coalesced<U> {
    type Info = U::Info;
    type InfoIter = U::InfoIter;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.protocol_info()
    }
}

impl<C, U> InboundConnectionUpgrade<C> for Coalesced<U>
where
    U: InboundConnectionUpgrade<Coalesce<C>>,
{
    type Output = U::Output;
    type Error = U::Error;
    type Future = U::Future;

    fn upgrade_inbound(self, io: C, info: Self::Info) -> Self::Future {
        self.0.upgrade_inbound(Coalesce::new(io), info)
    }
}

impl<C, U> OutboundConnectionUpgrade<C> for Coalesced<U>
where
    U: OutboundConnectionUpgrade<Coalesce<C>>,
{
    type Output = U::Output;
    type Error = U::Error;
    type Future = U::Future;

    fn upgrade_outbound(self, io: C, info: Self::Info) -> Self::Future {
        self.0.upgrade_outbound(Coalesce::new(io), info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::noop_waker;

    /// A sink counting what reaches it.
    #[derive(Default)]
    struct Counting {
        written: usize,
        flushes: usize,
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.written += buf.len();
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn writes_between_flushes_leave_in_one_flush() {
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut io = Coalesce::new(Counting::default());
        let mut io = Pin::new(&mut io);
        assert!(io.as_mut().poll_write(&mut cx, b"ping").is_ready());
        assert!(io.as_mut().poll_flush(&mut cx).is_pending());
        // Nothing written since: still put off once more, then frames queued meanwhile
        // join it.
        assert!(io.as_mut().poll_flush(&mut cx).is_pending());
        assert!(io.as_mut().poll_write(&mut cx, b"request").is_ready());
        assert!(io.as_mut().poll_flush(&mut cx).is_pending());
        assert!(io.as_mut().poll_write(&mut cx, b"fin").is_ready());
        assert!(io.as_mut().poll_flush(&mut cx).is_pending());
        assert!(io.as_mut().poll_flush(&mut cx).is_pending());
        assert_eq!(io.inner.flushes, 0);
        assert!(io.as_mut().poll_flush(&mut cx).is_ready());
        assert_eq!((io.inner.written, io.inner.flushes), (14, 1));
        // Nothing left: a flush goes straight through.
        assert!(io.as_mut().poll_flush(&mut cx).is_ready());
        assert_eq!(io.inner.flushes, 2);
    }
}
