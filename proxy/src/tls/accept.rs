//! Inbound mesh TLS: finishes the handshake that detection started and reads the
//! client's SPIFFE id from its verified certificate.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::StartHandshake;

use pillion_identity::SpiffeId;

use super::{HandshakeError, MeshTls};
use crate::mesh_metrics::HandshakeFailure;

/// Completes the server handshake by `deadline`; the client must present a
/// certificate of our trust bundle, whose identity is returned.
pub async fn accept<IO>(
    tls: &MeshTls,
    start: StartHandshake<IO>,
    deadline: Instant,
) -> Result<(TlsStream<IO>, SpiffeId), HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let stream =
        match tokio::time::timeout_at(deadline, start.into_stream(tls.server_config().clone()))
            .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => return Err(HandshakeError::from_io(err)),
            Err(_) => return Err(HandshakeError::timeout("the mesh TLS handshake timed out")),
        };
    match pillion_identity::tls::peer_identity(stream.get_ref().1) {
        Some(id) => Ok((stream, id)),
        None => Err(HandshakeError {
            reason: HandshakeFailure::BadCertificate,
            source: std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the client presented no certificate with a SPIFFE id",
            ),
        }),
    }
}
