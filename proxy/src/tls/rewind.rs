//! A stream that can record what is read from it and play it back, so protocol
//! detection can look at the first bytes and still hand every byte to whoever
//! handles the connection next.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Wraps `IO`; while recording, every byte read is kept (up to a limit) and writes
/// are swallowed (detection never answers the peer); [`Rewind::rewind`] makes the
/// recorded bytes readable again before the rest of the stream.
#[derive(Debug)]
pub struct Rewind<IO> {
    inner: IO,
    buf: Vec<u8>,
    pos: usize,
    recording: bool,
    limit: usize,
}

impl<IO> Rewind<IO> {
    /// Starts recording reads from `inner`, keeping at most `limit` bytes; reads past
    /// the limit fail rather than lose bytes.
    pub fn recording(inner: IO, limit: usize) -> Rewind<IO> {
        Rewind {
            inner,
            buf: Vec::new(),
            pos: 0,
            recording: true,
            limit,
        }
    }

    /// Makes every recorded byte readable again, from the first.
    pub fn rewind(&mut self) {
        self.pos = 0;
    }

    /// Stops recording (and lets writes through); bytes not yet replayed stay queued.
    pub fn stop_recording(&mut self) {
        self.recording = false;
        if self.pos == self.buf.len() {
            self.buf = Vec::new();
            self.pos = 0;
        }
    }

    /// Bytes recorded so far.
    pub fn recorded(&self) -> &[u8] {
        &self.buf
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &IO {
        &self.inner
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.buf.len() {
            let n = out.remaining().min(this.buf.len() - this.pos);
            out.put_slice(&this.buf[this.pos..this.pos + n]);
            this.pos += n;
            if !this.recording && this.pos == this.buf.len() {
                this.buf = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if !this.recording {
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        let room = this.limit.saturating_sub(this.buf.len());
        if room == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "more than {} bytes read while detecting the protocol",
                    this.limit
                ),
            )));
        }
        // Never read more than can be recorded, so no byte is ever lost.
        let want = out.remaining().min(room);
        let mut limited = ReadBuf::new(out.initialize_unfilled_to(want));
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
        let n = limited.filled().len();
        this.buf.extend_from_slice(limited.filled());
        out.advance(n);
        this.pos = this.buf.len();
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.recording {
            return Poll::Ready(Ok(data.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.recording {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.recording {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.recording {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn replays_recorded_bytes_then_the_rest() {
        let (mut peer, ours) = tokio::io::duplex(64);
        peer.write_all(b"hello world").await.unwrap();
        let mut r = Rewind::recording(ours, 1024);
        let mut first = [0u8; 5];
        r.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"hello");
        assert_eq!(r.recorded(), b"hello");
        // Detection writes nothing to the peer.
        r.write_all(b"alert").await.unwrap();
        r.rewind();
        r.stop_recording();
        peer.shutdown().await.unwrap();
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"hello world");
        r.write_all(b"back").await.unwrap();
        let mut got = [0u8; 4];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"back");
    }

    #[tokio::test]
    async fn never_reads_past_the_limit() {
        let (mut peer, ours) = tokio::io::duplex(64);
        peer.write_all(b"0123456789").await.unwrap();
        let mut r = Rewind::recording(ours, 4);
        let mut buf = [0u8; 10];
        let n = r.read(&mut buf).await.unwrap();
        assert_eq!(n, 4);
        let err = r.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        r.rewind();
        r.stop_recording();
        let mut got = vec![0u8; 10];
        r.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"0123456789");
    }
}
