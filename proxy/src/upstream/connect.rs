//! Opening a connection to one upstream: plain TCP within the connect timeout, then
//! for a meshed endpoint the one mesh TLS handshake ([`crate::transport::tls::connect`],
//! verifying the SPIFFE id the view expects; ALPN `pillion/1`, or `pillion/1.opaque`
//! for bytes already found opaque). Every connection to an upstream — pooled HTTP,
//! upgrades, opaque bytes — is made here, the same way.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::telemetry::metrics::mesh::MeshMetrics;
use crate::telemetry::metrics::Direction;
use crate::transport::connect::{connect, ConnectError};
use crate::transport::tls::{self, HandshakeError, MeshClient};

/// Why an upstream connection could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamConnectError {
    /// The TCP connect failed or timed out.
    #[error(transparent)]
    Tcp(#[from] ConnectError),
    /// The mesh TLS handshake failed or timed out (wrong identity, no certificate
    /// yet, ...).
    #[error("mesh TLS handshake with {addr} failed: {source}")]
    Tls {
        /// The upstream address.
        addr: SocketAddr,
        /// What went wrong, with its metric reason.
        #[source]
        source: HandshakeError,
    },
}

/// Mesh TLS towards one endpoint: the shared client config, the name that encodes
/// the identity the endpoint must prove, and where its handshakes are counted.
#[derive(Clone, Debug)]
pub(crate) struct MeshTarget {
    /// The mesh client configs (SPIFFE verification; which ALPN says what the
    /// server side does with the bytes).
    pub config: MeshClient,
    /// `server_name_for(expected identity)`.
    pub name: ServerName<'static>,
    /// The identity itself, the `peer` label of what is counted.
    pub identity: Arc<str>,
    /// Counts each connection made and each handshake that failed, on every path
    /// (pooled HTTP, upgrades, opaque bytes).
    pub metrics: MeshMetrics,
}

/// Connects to one upstream address, plain or over mesh TLS.
#[derive(Clone, Debug)]
pub(crate) struct UpstreamConnector {
    addr: SocketAddr,
    mesh: Option<MeshTarget>,
    timeout: Duration,
}

/// A connection to an upstream.
#[derive(Debug)]
pub(crate) enum UpstreamIo {
    /// Plain TCP.
    Plain(TcpStream),
    /// Mesh TLS over TCP (boxed: a TLS session is large).
    Mesh(Box<TlsStream<TcpStream>>),
}

impl UpstreamConnector {
    /// A connector for `addr`; `mesh` set means mutual TLS with that identity.
    pub(crate) fn new(addr: SocketAddr, mesh: Option<MeshTarget>, timeout: Duration) -> Self {
        UpstreamConnector {
            addr,
            mesh,
            timeout,
        }
    }

    /// The upstream address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether connections are mesh TLS.
    pub(crate) fn is_mesh(&self) -> bool {
        self.mesh.is_some()
    }

    /// Opens one connection; a meshed peer detects what it carries.
    pub(crate) async fn open(&self) -> Result<UpstreamIo, UpstreamConnectError> {
        self.open_offering(|mesh| &mesh.detect).await
    }

    /// Opens one connection for bytes this side found opaque; a meshed peer relays
    /// them without detecting.
    pub(crate) async fn open_opaque(&self) -> Result<UpstreamIo, UpstreamConnectError> {
        self.open_offering(|mesh| &mesh.opaque).await
    }

    async fn open_offering(
        &self,
        config: fn(&MeshClient) -> &Arc<rustls::ClientConfig>,
    ) -> Result<UpstreamIo, UpstreamConnectError> {
        let tcp = connect(self.addr, self.timeout).await?;
        let Some(mesh) = &self.mesh else {
            return Ok(UpstreamIo::Plain(tcp));
        };
        match tls::connect(config(&mesh.config), mesh.name.clone(), tcp).await {
            Ok(tls) => {
                mesh.metrics
                    .tls_connection(Direction::Outbound, &mesh.identity);
                Ok(UpstreamIo::Mesh(Box::new(tls)))
            }
            Err(source) => {
                mesh.metrics
                    .handshake_failed(Direction::Outbound, source.reason);
                Err(UpstreamConnectError::Tls {
                    addr: self.addr,
                    source,
                })
            }
        }
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Mesh(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Mesh(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Mesh(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Mesh(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Mesh(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Mesh(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
