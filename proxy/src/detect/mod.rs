//! Protocol detection: what a connection speaks, from its first bytes.
//!
//! One buffer, [`Peek`], reads a connection's first bytes — at most
//! [`MAX_DETECT_BYTES`], within one deadline (`--detect-timeout`, 10 s by default) —
//! and both detectors look at it: [`tls`] asks whether they are a ClientHello
//! offering the mesh ALPN (inbound), [`http`] whether they are an HTTP/1.x request
//! line or the HTTP/2 preface. Whatever is not consumed by a TLS handshake is handed
//! on, every byte from the first, through the one replay type [`rewind::Rewind`], so
//! detection works the same on a plain socket and inside mesh TLS.
//!
//! Ports a service marks `opaque`, and the mesh's [`OPAQUE_PORTS`], skip detection
//! ([`skips_detection`]); a port that declares its protocol needs none
//! ([`declared`]). On the others a server that speaks first is heard within a
//! fraction of a second ([`first_word`]), and a connection where nobody says
//! anything by the deadline is closed, never relayed idle.

pub(crate) mod first_word;
pub(crate) mod http;
pub(crate) mod rewind;
pub(crate) mod tls;

use std::time::Duration;

use bytes::BytesMut;
use pillion_api::defaults::OPAQUE_PORTS;
use pillion_api::view::Protocol as PortProtocol;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use crate::transport::budget::Silence;
pub(crate) use http::{Protocol, Strict};
use rewind::Rewind;

/// Most bytes detection reads: a whole ClientHello (one 16 KiB record, split into a
/// few at most) or an HTTP request head as large as the proxy serves.
pub(crate) const MAX_DETECT_BYTES: usize = 64 * 1024;

/// The first bytes of a connection, read so far, and the connection itself.
#[derive(Debug)]
pub(crate) struct Peek<IO> {
    buf: BytesMut,
    io: IO,
    deadline: Instant,
}

/// How one more read went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    /// More bytes arrived.
    More,
    /// The peer closed (or the stream failed; whoever reads next sees it again).
    Eof,
    /// The deadline passed.
    Timeout,
    /// [`MAX_DETECT_BYTES`] are buffered; nothing more is read.
    Full,
}

impl<IO: AsyncRead + Unpin> Peek<IO> {
    /// Starts detection on `io`, which must show its protocol within `timeout`.
    pub(crate) fn new(io: IO, timeout: Duration) -> Peek<IO> {
        Peek {
            buf: BytesMut::new(),
            io,
            deadline: Instant::now() + timeout,
        }
    }

    /// Gives the peer until `timeout` from now (never less than it had): a port where
    /// only HTTP is served waits for a late first byte instead of giving up on it.
    pub(crate) fn wait_at_least(&mut self, timeout: Duration) {
        self.deadline = self.deadline.max(Instant::now() + timeout);
    }

    /// The bytes read so far.
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Reads whatever arrives next, up to the byte limit, before the deadline.
    pub(crate) async fn read_more(&mut self) -> Read {
        let room = MAX_DETECT_BYTES.saturating_sub(self.buf.len());
        if room == 0 {
            return Read::Full;
        }
        self.buf.reserve(room.min(4096));
        let first = self.buf.is_empty();
        if first {
            Silence::waiting();
        }
        let mut limited = (&mut self.io).take(room as u64);
        match tokio::time::timeout_at(self.deadline, limited.read_buf(&mut self.buf)).await {
            Err(_) => Read::Timeout,
            Ok(Ok(0)) | Ok(Err(_)) => Read::Eof,
            Ok(Ok(_)) => {
                if first {
                    Silence::spoke();
                }
                Read::More
            }
        }
    }

    /// Ends detection: a stream that yields every byte read so far, then the rest.
    pub(crate) fn into_rewind(self) -> Rewind<IO> {
        Silence::settled();
        Rewind::new(self.buf.freeze(), self.io)
    }

    /// The connection itself, for a TLS handshake that took the buffered bytes.
    fn into_io(self) -> IO {
        Silence::settled();
        self.io
    }
}

/// Whether a port is served without detection: the service marks it `opaque`, or it
/// is one of the mesh's server-speaks-first ports (`extra_opaque` adds the proxy's own
/// configured list).
pub(crate) fn skips_detection(
    port: u16,
    protocol: Option<PortProtocol>,
    extra_opaque: &[u16],
) -> bool {
    match protocol {
        Some(PortProtocol::Opaque) => true,
        Some(PortProtocol::Http1 | PortProtocol::Http2) => false,
        Some(PortProtocol::Auto) | None => {
            OPAQUE_PORTS.contains(&port) || extra_opaque.contains(&port)
        }
    }
}

/// The protocol a port declares without detection, if any (`http1`, `http2`,
/// `opaque`); `auto` (and unknown ports) need [`detect`].
pub(crate) fn declared(protocol: PortProtocol) -> Option<Protocol> {
    match protocol {
        PortProtocol::Auto => None,
        PortProtocol::Http1 => Some(Protocol::Http1),
        PortProtocol::Http2 => Some(Protocol::Http2),
        PortProtocol::Opaque => Some(Protocol::Opaque),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn opaque_ports_skip_detection() {
        assert!(skips_detection(5432, None, &[]));
        assert!(skips_detection(5432, Some(PortProtocol::Auto), &[]));
        assert!(skips_detection(8080, Some(PortProtocol::Opaque), &[]));
        assert!(!skips_detection(8080, None, &[]));
        assert!(skips_detection(8080, None, &[8080]));
        // A service that says its port speaks HTTP wins over the default list.
        assert!(!skips_detection(3306, Some(PortProtocol::Http1), &[]));
        assert_eq!(declared(PortProtocol::Http2), Some(Protocol::Http2));
        assert_eq!(declared(PortProtocol::Auto), None);
    }

    #[tokio::test]
    async fn the_buffer_stops_at_the_limit() {
        let (a, mut b) = tokio::io::duplex(16 * 1024);
        tokio::spawn(async move {
            let _ = b.write_all(&vec![b'x'; MAX_DETECT_BYTES + 10]).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let mut peek = Peek::new(a, Duration::from_secs(5));
        while peek.read_more().await == Read::More {}
        assert_eq!(peek.buffered().len(), MAX_DETECT_BYTES);
        assert_eq!(peek.read_more().await, Read::Full);
    }

    #[tokio::test(start_paused = true)]
    async fn one_deadline_for_all_reads() {
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(b"G").await.unwrap();
        let mut peek = Peek::new(a, Duration::from_secs(10));
        assert_eq!(peek.read_more().await, Read::More);
        let started = Instant::now();
        assert_eq!(peek.read_more().await, Read::Timeout);
        assert!(started.elapsed() <= Duration::from_secs(10));
        drop(b);
        let (a, b) = tokio::io::duplex(64);
        drop(b);
        assert_eq!(
            Peek::new(a, Duration::from_secs(1)).read_more().await,
            Read::Eof
        );
    }
}
