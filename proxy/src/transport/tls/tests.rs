//! Outbound and inbound mesh TLS handshakes against real rustls peers over
//! in-memory pipes, with certificates from test CAs.

use std::sync::Arc;
use std::time::Duration;

use pillion_identity::{Ca, CertStore, SpiffeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;

use super::{accept, connect, MeshTls};
use crate::detect::tls::{detect, Detected};
use crate::detect::Peek;
use crate::telemetry::metrics::mesh::HandshakeFailure;

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
        let name = pillion_identity::tls::server_name_for(&expected).unwrap();
        let mut tls = connect(client.client_config(), name, client_io).await?;
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
    let server_side = match detect(Peek::new(server_io, Duration::from_secs(5))).await {
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
