//! Byte counting on a downstream connection the proxy serves itself (HTTP, and the
//! upgrades inside it), so `pillion_tcp_{sent,received}_bytes_total` tell the truth
//! for every connection, not only for relayed ones: what the client sent is counted
//! as it is read, what it is answered as it is written. One atomic add per read or
//! write; nothing is allocated.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::forward::ByteCounters;

/// `io`, counting the bytes read from it as sent and the bytes written to it as
/// received (the downstream client's view of the relay's directions).
#[derive(Debug)]
pub(crate) struct Counted<IO> {
    io: IO,
    counters: ByteCounters,
}

impl<IO> Counted<IO> {
    /// Counts `io`'s bytes into `counters`.
    pub(crate) fn new(io: IO, counters: ByteCounters) -> Counted<IO> {
        Counted { io, counters }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            this.counters.sent.inc_by(read as u64);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        this.counters.received.inc_by(written as u64);
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        this.counters.received.inc_by(written as u64);
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_what_is_read_as_sent_and_what_is_written_as_received() {
        let counters = ByteCounters {
            sent: Counter::default(),
            received: Counter::default(),
        };
        let (a, mut client) = duplex(64);
        let mut counted = Counted::new(a, counters.clone());
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 18];
        counted.read_exact(&mut buf).await.unwrap();
        counted.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        let mut back = [0u8; 17];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!((counters.sent.get(), counters.received.get()), (18, 17));
    }
}
