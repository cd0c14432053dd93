//! Inbound protocol detection: is this connection mesh TLS (a ClientHello offering
//! ALPN `pillion/1`) or anything else? Bounded in bytes and in time, and lossless:
//! whatever is not mesh TLS comes back with every byte still readable.

use std::time::Duration;

use pillion_api::defaults::MESH_ALPN;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::Instant;
use tokio_rustls::{LazyConfigAcceptor, StartHandshake};

use super::rewind::Rewind;

/// Most bytes detection reads before it gives up on seeing a whole ClientHello
/// (a ClientHello fits one 16 KiB record; a few records allow for splitting).
pub const MAX_DETECT_BYTES: usize = 64 * 1024;

/// The TLS record type of a handshake message: the first byte of any ClientHello.
const TLS_HANDSHAKE: u8 = 0x16;

/// What the first bytes of a connection turned out to be.
pub enum Detected<IO> {
    /// A ClientHello offering `pillion/1`; finish the handshake with the mesh config.
    Mesh(Box<StartHandshake<Rewind<IO>>>),
    /// Anything else (plaintext, TLS for the application, nothing in time); reading
    /// the stream yields every byte from the first.
    Plain(PlainReason, Rewind<IO>),
    /// The stream was lost inside detection (not expected to happen); close.
    Gone,
}

/// Why a connection was taken as plaintext (for logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlainReason {
    /// The first byte is not a TLS handshake record.
    NotTls,
    /// A TLS ClientHello without the mesh ALPN (the application's own TLS).
    OtherAlpn,
    /// Bytes looked like TLS but no valid ClientHello could be read.
    BadHello,
    /// The peer sent nothing (or not a whole ClientHello) before the timeout; server-
    /// speaks-first protocols look like this.
    Timeout,
    /// The peer closed before sending anything that looked like TLS.
    Eof,
}

impl PlainReason {
    /// For logs.
    pub fn as_str(self) -> &'static str {
        match self {
            PlainReason::NotTls => "not_tls",
            PlainReason::OtherAlpn => "other_alpn",
            PlainReason::BadHello => "bad_client_hello",
            PlainReason::Timeout => "timeout",
            PlainReason::Eof => "eof",
        }
    }
}

/// Reads the connection's first bytes (at most [`MAX_DETECT_BYTES`], within
/// `timeout`) and decides whether it is mesh TLS.
pub async fn detect<IO>(io: IO, timeout: Duration) -> Detected<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = Instant::now() + timeout;
    let mut rewind = Rewind::recording(io, MAX_DETECT_BYTES);
    let mut first = [0u8; 1];
    let reason = match tokio::time::timeout_at(deadline, rewind.read(&mut first)).await {
        Err(_) => Some(PlainReason::Timeout),
        Ok(Ok(0)) => Some(PlainReason::Eof),
        Ok(Ok(_)) if first[0] != TLS_HANDSHAKE => Some(PlainReason::NotTls),
        Ok(Ok(_)) => None,
        // The stream failed; hand it on as it is, the relay will see the error too.
        Ok(Err(_)) => Some(PlainReason::Eof),
    };
    if let Some(reason) = reason {
        return plain(reason, rewind);
    }
    rewind.rewind();
    let mut acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), rewind);
    let reason = match tokio::time::timeout_at(deadline, &mut acceptor).await {
        Ok(Ok(mut start)) => {
            if offers_mesh_alpn(&start) {
                start.io.stop_recording();
                return Detected::Mesh(Box::new(start));
            }
            let mut io = start.io;
            io.rewind();
            return plain_parts(PlainReason::OtherAlpn, io);
        }
        Ok(Err(_)) => PlainReason::BadHello,
        Err(_) => PlainReason::Timeout,
    };
    match acceptor.take_io() {
        Some(io) => plain(reason, io),
        // The acceptor keeps its stream until it succeeds, so this does not happen.
        None => Detected::Gone,
    }
}

fn offers_mesh_alpn<IO>(start: &StartHandshake<IO>) -> bool
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    start
        .client_hello()
        .alpn()
        .is_some_and(|mut protocols| protocols.any(|p| p == MESH_ALPN))
}

fn plain<IO>(reason: PlainReason, mut io: Rewind<IO>) -> Detected<IO> {
    io.rewind();
    plain_parts(reason, io)
}

fn plain_parts<IO>(reason: PlainReason, mut io: Rewind<IO>) -> Detected<IO> {
    io.stop_recording();
    Detected::Plain(reason, io)
}
