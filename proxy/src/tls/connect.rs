//! Outbound mesh TLS: the client side of a handshake with a meshed endpoint, which
//! must prove the SPIFFE id the view lists for it.

use std::time::Duration;

use pillion_identity::tls::server_name_for;
use pillion_identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::{HandshakeError, MeshTls};
use crate::mesh_metrics::HandshakeFailure;

/// Runs the client handshake over `io` within `timeout`, requiring the server to
/// prove `expected`.
pub async fn connect<IO>(
    tls: &MeshTls,
    io: IO,
    expected: &SpiffeId,
    timeout: Duration,
) -> Result<TlsStream<IO>, HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let name = server_name_for(expected).map_err(|e| HandshakeError {
        reason: HandshakeFailure::Other,
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    })?;
    let connector = TlsConnector::from(tls.client_config().clone());
    match tokio::time::timeout(timeout, connector.connect(name, io)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(err)) => Err(HandshakeError::from_io(err)),
        Err(_) => Err(HandshakeError::timeout("the mesh TLS handshake timed out")),
    }
}
