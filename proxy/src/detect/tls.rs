//! Mesh TLS detection (inbound): is this connection a ClientHello offering ALPN
//! `pillion/1`, or anything else? The ClientHello is read into the shared [`Peek`]
//! buffer and fed to rustls's [`Acceptor`]; mesh TLS goes on to the handshake with
//! rustls holding those bytes, anything else comes back with every byte still
//! readable for HTTP detection. Detection never writes to the peer.

use pillion_api::defaults::MESH_ALPN;
use rustls::server::{Accepted, Acceptor};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::StartHandshake;

use super::{Peek, Read};

/// The TLS record type of a handshake message: the first byte of any ClientHello.
const TLS_HANDSHAKE: u8 = 0x16;

/// What the first bytes of a connection turned out to be.
pub(crate) enum Detected<IO> {
    /// A ClientHello offering `pillion/1`; finish the handshake with the mesh config.
    Mesh(Box<StartHandshake<IO>>),
    /// Anything else (plaintext, TLS for the application, nothing in time); the
    /// buffered bytes and the rest of the stream, for HTTP detection.
    Plain(PlainReason, Peek<IO>),
}

/// Why a connection was taken as plaintext (for logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PlainReason {
    /// The first byte is not a TLS handshake record.
    NotTls,
    /// A TLS ClientHello without the mesh ALPN (the application's own TLS).
    OtherAlpn,
    /// Bytes looked like TLS but no valid ClientHello could be read.
    BadHello,
    /// The peer sent nothing (or not a whole ClientHello) before the deadline;
    /// server-speaks-first protocols look like this.
    Timeout,
    /// The peer closed before sending anything.
    Eof,
}

impl PlainReason {
    /// For logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PlainReason::NotTls => "not_tls",
            PlainReason::OtherAlpn => "other_alpn",
            PlainReason::BadHello => "bad_client_hello",
            PlainReason::Timeout => "timeout",
            PlainReason::Eof => "eof",
        }
    }
}

/// Reads the connection's first bytes (within the [`Peek`]'s limit and deadline)
/// and decides whether it is mesh TLS.
pub(crate) async fn detect<IO>(mut peek: Peek<IO>) -> Detected<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    if peek.buffered().is_empty() {
        match peek.read_more().await {
            Read::More => {}
            Read::Eof | Read::Full => return Detected::Plain(PlainReason::Eof, peek),
            Read::Timeout => return Detected::Plain(PlainReason::Timeout, peek),
        }
    }
    if peek.buffered().first() != Some(&TLS_HANDSHAKE) {
        return Detected::Plain(PlainReason::NotTls, peek);
    }
    let mut acceptor = Acceptor::default();
    let mut fed = 0;
    loop {
        while fed < peek.buffered().len() {
            match acceptor.read_tls(&mut &peek.buffered()[fed..]) {
                Ok(n) if n > 0 => fed += n,
                // A full message buffer: no ClientHello is this large.
                _ => return Detected::Plain(PlainReason::BadHello, peek),
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) if offers_mesh_alpn(&accepted) => {
                // rustls holds every byte read so far; the handshake reads on from `io`.
                return Detected::Mesh(Box::new(StartHandshake::from_parts(
                    accepted,
                    peek.into_io(),
                )));
            }
            Ok(Some(_)) => return Detected::Plain(PlainReason::OtherAlpn, peek),
            Ok(None) => {}
            // The alert rustls would send is dropped: detection never answers.
            Err(_) => return Detected::Plain(PlainReason::BadHello, peek),
        }
        match peek.read_more().await {
            Read::More => {}
            Read::Eof | Read::Full => return Detected::Plain(PlainReason::BadHello, peek),
            Read::Timeout => return Detected::Plain(PlainReason::Timeout, peek),
        }
    }
}

fn offers_mesh_alpn(accepted: &Accepted) -> bool {
    accepted
        .client_hello()
        .alpn()
        .is_some_and(|mut protocols| protocols.any(|p| p == MESH_ALPN))
}

#[cfg(test)]
mod tests {
    //! Detection against real rustls peers over in-memory pipes.

    use std::time::Duration;

    use pillion_identity::{Ca, SpiffeId};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::time::Instant;
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;

    const TD: &str = "cluster.local";

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new(TD, "demo", sa).unwrap()
    }

    fn pipe() -> (DuplexStream, DuplexStream) {
        tokio::io::duplex(64 * 1024)
    }

    async fn detect(io: DuplexStream, timeout: Duration) -> Detected<DuplexStream> {
        super::detect(Peek::new(io, timeout)).await
    }

    #[tokio::test]
    async fn plaintext_is_plain_and_lossless() {
        let (mut client, server) = pipe();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let Detected::Plain(reason, peek) = detect(server, Duration::from_secs(5)).await else {
            panic!("plaintext detected as mesh TLS");
        };
        let mut io = peek.into_rewind();
        assert_eq!(reason, PlainReason::NotTls);
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        io.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n");
        // Writes reach the client again once detection is over.
        io.write_all(b"ok").await.unwrap();
        let mut reply = [0u8; 2];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"ok");
    }

    #[tokio::test]
    async fn a_short_plaintext_greeting_is_decided_at_once() {
        let (mut client, server) = pipe();
        client.write_all(b"hi").await.unwrap();
        let started = Instant::now();
        let detected = detect(server, Duration::from_secs(10)).await;
        assert!(matches!(detected, Detected::Plain(PlainReason::NotTls, _)));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn silence_and_slow_tls_time_out_as_plain() {
        let (_client, server) = pipe();
        let started = Instant::now();
        let detected = detect(server, Duration::from_millis(100)).await;
        assert!(matches!(detected, Detected::Plain(PlainReason::Timeout, _)));
        assert!(started.elapsed() < Duration::from_secs(2));

        // One byte of a TLS record, then nothing: timeout, and the byte is kept.
        let (mut client, server) = pipe();
        client.write_all(&[0x16, 0x03]).await.unwrap();
        let Detected::Plain(reason, peek) = detect(server, Duration::from_millis(100)).await else {
            panic!("a partial record detected as mesh TLS");
        };
        let mut io = peek.into_rewind();
        assert_eq!(reason, PlainReason::Timeout);
        drop(client);
        let mut got = Vec::new();
        io.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, [0x16, 0x03]);

        let (client, server) = pipe();
        drop(client);
        assert!(matches!(
            detect(server, Duration::from_secs(5)).await,
            Detected::Plain(PlainReason::Eof, _)
        ));
    }

    #[tokio::test]
    async fn garbage_after_a_handshake_byte_is_plain_and_lossless() {
        let (mut client, server) = pipe();
        let junk = [0x16, 0x03, 0x01, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o'];
        client.write_all(&junk).await.unwrap();
        client.shutdown().await.unwrap();
        let Detected::Plain(reason, peek) = detect(server, Duration::from_secs(5)).await else {
            panic!("garbage detected as mesh TLS");
        };
        let mut io = peek.into_rewind();
        assert_eq!(reason, PlainReason::BadHello);
        let mut got = Vec::new();
        io.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, junk);
    }

    #[tokio::test]
    async fn the_applications_own_tls_passes_through_untouched() {
        // An app-level TLS client (ALPN h2) must reach an app-level TLS server through
        // detection: the ClientHello bytes are replayed.
        let ca = Ca::generate(TD).unwrap();
        let (issued, key) = ca.issue(&id("app"), Duration::from_secs(3600)).unwrap();
        let server_cfg =
            pillion_identity::tls::agent_server_config(&issued.chain_pem, &key).unwrap();
        let client_cfg =
            pillion_identity::tls::agent_client_config(&ca.trust_bundle_pem(), &id("app")).unwrap();
        let (client_io, server_io) = pipe();
        let client = tokio::spawn(async move {
            let name = rustls::pki_types::ServerName::try_from("app.example").unwrap();
            let mut tls = TlsConnector::from(client_cfg)
                .connect(name, client_io)
                .await
                .unwrap();
            tls.write_all(b"inner").await.unwrap();
            tls.flush().await.unwrap();
            let mut back = [0u8; 5];
            tls.read_exact(&mut back).await.unwrap();
            back
        });
        let Detected::Plain(reason, peek) = detect(server_io, Duration::from_secs(5)).await else {
            panic!("ALPN h2 detected as mesh TLS");
        };
        let io = peek.into_rewind();
        assert_eq!(reason, PlainReason::OtherAlpn);
        let mut tls = TlsAcceptor::from(server_cfg).accept(io).await.unwrap();
        let mut got = [0u8; 5];
        tls.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"inner");
        tls.write_all(b"outer").await.unwrap();
        tls.flush().await.unwrap();
        assert_eq!(&client.await.unwrap(), b"outer");
    }
}
