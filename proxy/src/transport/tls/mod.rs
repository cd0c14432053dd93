//! Mutual TLS between proxies: the rustls configurations (from `pillion-identity`,
//! following the [`CertStore`] as certificates rotate) and the two handshakes, the
//! one way a proxy reaches a meshed peer ([`connect`]) and the one way it accepts
//! one ([`accept`]), both bounded by [`HANDSHAKE_TIMEOUT`].

pub(crate) mod failure;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use pillion_identity::tls::{client_config, opaque_client_config, server_config};
use pillion_identity::{CertStore, SpiffeId, TlsError};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_rustls::{client, server, StartHandshake, TlsConnector};

use crate::telemetry::metrics::mesh::HandshakeFailure;

/// Time a mesh TLS handshake may take, either direction.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The proxy's mesh TLS: its certificate store and the configs built on it once.
#[derive(Clone, Debug)]
pub struct MeshTls {
    store: Arc<CertStore>,
    client: MeshClient,
    server: Arc<ServerConfig>,
}

/// The outbound side's two configs over one store. They differ only in the ALPN
/// they offer: whether the server side detects the bytes inside (`pillion/1`), or
/// relays them at once because this side already found them opaque
/// (`pillion/1.opaque`, so a server that speaks first is heard without delay).
#[derive(Clone, Debug)]
pub struct MeshClient {
    /// For HTTP and anything the server side should detect.
    pub detect: Arc<ClientConfig>,
    /// For bytes this side relays as opaque.
    pub opaque: Arc<ClientConfig>,
}

impl MeshTls {
    /// Builds the client and server configs over `store` (which may still be empty:
    /// handshakes fail until it holds a certificate and a trust bundle).
    pub fn new(store: Arc<CertStore>) -> Result<MeshTls, TlsError> {
        Ok(MeshTls {
            client: MeshClient {
                detect: client_config(Arc::clone(&store))?,
                opaque: opaque_client_config(Arc::clone(&store))?,
            },
            server: server_config(Arc::clone(&store))?,
            store,
        })
    }

    /// The certificate store both configs read.
    pub fn store(&self) -> &Arc<CertStore> {
        &self.store
    }

    /// The outbound (client) config whose server side detects.
    pub fn client_config(&self) -> &Arc<ClientConfig> {
        &self.client.detect
    }

    /// Both outbound (client) configs.
    pub fn client(&self) -> &MeshClient {
        &self.client
    }

    /// The inbound (server) config.
    pub fn server_config(&self) -> &Arc<ServerConfig> {
        &self.server
    }
}

/// A mesh handshake that failed, with the metric reason and the error to log.
#[derive(Debug, thiserror::Error)]
#[error("mesh TLS handshake failed ({}): {source}", reason.as_str())]
pub(crate) struct HandshakeError {
    /// The bounded reason, for `pillion_tls_handshake_failures_total`.
    pub reason: HandshakeFailure,
    /// What went wrong.
    #[source]
    pub source: io::Error,
}

impl HandshakeError {
    /// Wraps an I/O error from a handshake, classifying it.
    pub(crate) fn from_io(source: io::Error) -> HandshakeError {
        HandshakeError {
            reason: failure::classify(&source),
            source,
        }
    }

    /// A handshake that ran out of time.
    pub(crate) fn timeout() -> HandshakeError {
        HandshakeError {
            reason: HandshakeFailure::Timeout,
            source: io::Error::new(io::ErrorKind::TimedOut, "the mesh TLS handshake timed out"),
        }
    }
}

/// The client handshake over `io` within [`HANDSHAKE_TIMEOUT`]: `name` encodes the
/// SPIFFE id the server must prove (`pillion_identity::tls::server_name_for`).
pub(crate) async fn connect<IO>(
    config: &Arc<ClientConfig>,
    name: ServerName<'static>,
    io: IO,
) -> Result<client::TlsStream<IO>, HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let connector = TlsConnector::from(Arc::clone(config));
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, io)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(err)) => Err(HandshakeError::from_io(err)),
        Err(_) => Err(HandshakeError::timeout()),
    }
}

/// Completes the server handshake detection started, by `deadline`; the client must
/// present a certificate of our trust bundle, whose identity is returned.
pub(crate) async fn accept<IO>(
    tls: &MeshTls,
    start: StartHandshake<IO>,
    deadline: Instant,
) -> Result<(server::TlsStream<IO>, SpiffeId), HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = start.into_stream(Arc::clone(tls.server_config()));
    let stream = match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => return Err(HandshakeError::from_io(err)),
        Err(_) => return Err(HandshakeError::timeout()),
    };
    match pillion_identity::tls::peer_identity(stream.get_ref().1) {
        Some(id) => Ok((stream, id)),
        None => Err(HandshakeError {
            reason: HandshakeFailure::BadCertificate,
            source: io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the client presented no certificate with a SPIFFE id",
            ),
        }),
    }
}

#[cfg(test)]
mod tests;
