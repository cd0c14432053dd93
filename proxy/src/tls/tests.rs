//! Detection, outbound and inbound mesh TLS against real rustls peers over
//! in-memory pipes, with certificates from test CAs.

use std::sync::Arc;
use std::time::Duration;

use pillion_identity::{Ca, CertStore, SpiffeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::accept::accept;
use super::connect::connect;
use super::detect::{detect, Detected, PlainReason};
use super::MeshTls;
use crate::mesh_metrics::HandshakeFailure;

const TD: &str = "cluster.local";

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(TD, "demo", sa).unwrap()
}

/// A store for `sa` holding a leaf from `ca` and `ca`'s bundle.
fn store(ca: &Ca, sa: &str) -> Arc<CertStore> {
    let store = Arc::new(CertStore::new(id(sa)));
    let (issued, key) = ca.issue(&id(sa), Duration::from_secs(3600)).unwrap();
    store.set_leaf_pem(&issued.chain_pem, &key).unwrap();
    store.set_trust_bundle(&ca.trust_bundle_pem()).unwrap();
    store
}

fn mesh(ca: &Ca, sa: &str) -> MeshTls {
    MeshTls::new(store(ca, sa)).unwrap()
}

fn pipe() -> (DuplexStream, DuplexStream) {
    tokio::io::duplex(64 * 1024)
}

#[tokio::test]
async fn plaintext_is_plain_and_lossless() {
    let (mut client, server) = pipe();
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let Detected::Plain(reason, mut io) = detect(server, Duration::from_secs(5)).await else {
        panic!("plaintext detected as mesh TLS");
    };
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
    let Detected::Plain(reason, mut io) = detect(server, Duration::from_millis(100)).await else {
        panic!("a partial record detected as mesh TLS");
    };
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
    let Detected::Plain(reason, mut io) = detect(server, Duration::from_secs(5)).await else {
        panic!("garbage detected as mesh TLS");
    };
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
    let server_cfg = pillion_identity::tls::agent_server_config(&issued.chain_pem, &key).unwrap();
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
    let Detected::Plain(reason, io) = detect(server_io, Duration::from_secs(5)).await else {
        panic!("ALPN h2 detected as mesh TLS");
    };
    assert_eq!(reason, PlainReason::OtherAlpn);
    let mut tls = TlsAcceptor::from(server_cfg).accept(io).await.unwrap();
    let mut got = [0u8; 5];
    tls.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"inner");
    tls.write_all(b"outer").await.unwrap();
    tls.flush().await.unwrap();
    assert_eq!(&client.await.unwrap(), b"outer");
}

/// Runs a mesh client (`client` expecting `expected`) against a mesh server
/// (`server`) through detection; returns both sides' outcomes.
async fn mesh_pair(
    client: MeshTls,
    server: MeshTls,
    expected: SpiffeId,
) -> (
    Result<(), super::HandshakeError>,
    Result<SpiffeId, super::HandshakeError>,
) {
    let (client_io, server_io) = pipe();
    let client_side = tokio::spawn(async move {
        let mut tls = connect(&client, client_io, &expected, Duration::from_secs(5)).await?;
        // TLS 1.3: a server's refusal of our certificate shows on the first read.
        tls.write_all(b"ping")
            .await
            .map_err(super::HandshakeError::from_io)?;
        let mut back = [0u8; 4];
        tls.read_exact(&mut back)
            .await
            .map_err(super::HandshakeError::from_io)?;
        assert_eq!(&back, b"pong");
        Ok(())
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let server_side = match detect(server_io, Duration::from_secs(5)).await {
        Detected::Mesh(start) => match accept(&server, *start, deadline).await {
            Ok((mut tls, peer)) => {
                let mut got = [0u8; 4];
                tls.read_exact(&mut got).await.unwrap();
                assert_eq!(&got, b"ping");
                tls.write_all(b"pong").await.unwrap();
                tls.flush().await.unwrap();
                Ok(peer)
            }
            Err(e) => Err(e),
        },
        Detected::Plain(reason, _) => panic!("mesh TLS detected as plain ({reason:?})"),
        Detected::Gone => panic!("stream lost"),
    };
    (client_side.await.unwrap(), server_side)
}

#[tokio::test]
async fn mutual_tls_with_the_right_identity() {
    let ca = Ca::generate(TD).unwrap();
    let (client, server) = mesh_pair(mesh(&ca, "client"), mesh(&ca, "server"), id("server")).await;
    client.unwrap();
    assert_eq!(server.unwrap(), id("client"));
}

#[tokio::test]
async fn a_server_with_another_identity_is_refused() {
    let ca = Ca::generate(TD).unwrap();
    let (client, server) = mesh_pair(mesh(&ca, "client"), mesh(&ca, "server"), id("billing")).await;
    assert_eq!(
        client.unwrap_err().reason,
        HandshakeFailure::IdentityMismatch
    );
    assert!(server.is_err());
}

#[tokio::test]
async fn a_client_from_another_ca_is_refused() {
    let ours = Ca::generate(TD).unwrap();
    let theirs = Ca::generate(TD).unwrap();
    // The intruder trusts our CA (so it accepts our server) but its own leaf is
    // signed by another CA.
    let intruder = Arc::new(CertStore::new(id("client")));
    let (issued, key) = theirs
        .issue(&id("client"), Duration::from_secs(3600))
        .unwrap();
    intruder.set_leaf_pem(&issued.chain_pem, &key).unwrap();
    intruder.set_trust_bundle(&ours.trust_bundle_pem()).unwrap();
    let (client, server) = mesh_pair(
        MeshTls::new(intruder).unwrap(),
        mesh(&ours, "server"),
        id("server"),
    )
    .await;
    assert_eq!(server.unwrap_err().reason, HandshakeFailure::UnknownCa);
    assert!(client.is_err());
}

#[tokio::test]
async fn a_server_from_another_ca_is_refused() {
    let ours = Ca::generate(TD).unwrap();
    let theirs = Ca::generate(TD).unwrap();
    let (client, _server) =
        mesh_pair(mesh(&ours, "client"), mesh(&theirs, "server"), id("server")).await;
    assert_eq!(client.unwrap_err().reason, HandshakeFailure::UnknownCa);
}

#[tokio::test]
async fn a_proxy_without_a_certificate_cannot_connect() {
    let ca = Ca::generate(TD).unwrap();
    let empty = Arc::new(CertStore::new(id("client")));
    empty.set_trust_bundle(&ca.trust_bundle_pem()).unwrap();
    let (client, server) = mesh_pair(
        MeshTls::new(empty).unwrap(),
        mesh(&ca, "server"),
        id("server"),
    )
    .await;
    assert!(client.is_err());
    assert_eq!(server.unwrap_err().reason, HandshakeFailure::BadCertificate);
}
