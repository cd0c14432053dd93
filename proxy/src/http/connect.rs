//! Opening a connection to one upstream: plain TCP, or mesh TLS (ALPN `pillion/1`)
//! verifying the SPIFFE id the view expects, within the connect timeout. Every
//! pooled connection of that upstream is made here, so all are made the same way.

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
use tokio_rustls::TlsConnector;

use crate::transport::connect::{connect, ConnectError};

/// Time a mesh TLS handshake may take after the TCP connect.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an upstream connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamConnectError {
    /// The TCP connect failed or timed out.
    #[error(transparent)]
    Tcp(#[from] ConnectError),
    /// The mesh TLS handshake failed (wrong identity, no certificate yet, ...).
    #[error("mesh TLS handshake with {addr} failed: {source}")]
    Tls {
        /// The upstream address.
        addr: SocketAddr,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The handshake did not finish in time.
    #[error("mesh TLS handshake with {addr} timed out")]
    TlsTimeout {
        /// The upstream address.
        addr: SocketAddr,
    },
}

/// Mesh TLS towards one endpoint: the shared client config and the name that
/// encodes the identity the endpoint must prove.
#[derive(Clone, Debug)]
pub struct MeshTarget {
    /// The mesh client config (ALPN `pillion/1`, SPIFFE verification).
    pub config: Arc<rustls::ClientConfig>,
    /// `server_name_for(expected identity)`.
    pub name: ServerName<'static>,
}

/// Connects to one upstream address, plain or over mesh TLS.
#[derive(Clone, Debug)]
pub struct UpstreamConnector {
    addr: SocketAddr,
    mesh: Option<MeshTarget>,
    timeout: Duration,
}

/// A connection to an upstream.
#[derive(Debug)]
pub enum UpstreamIo {
    /// Plain TCP.
    Plain(TcpStream),
    /// Mesh TLS over TCP (boxed: a TLS session is large).
    Mesh(Box<TlsStream<TcpStream>>),
}

impl UpstreamConnector {
    /// A connector for `addr`; `mesh` set means mutual TLS with that identity.
    pub fn new(addr: SocketAddr, mesh: Option<MeshTarget>, timeout: Duration) -> Self {
        UpstreamConnector {
            addr,
            mesh,
            timeout,
        }
    }

    /// The upstream address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether connections are mesh TLS.
    pub fn is_mesh(&self) -> bool {
        self.mesh.is_some()
    }

    /// Opens one connection.
    pub async fn open(&self) -> Result<UpstreamIo, UpstreamConnectError> {
        let tcp = connect(self.addr, self.timeout).await?;
        let Some(mesh) = &self.mesh else {
            return Ok(UpstreamIo::Plain(tcp));
        };
        let connector = TlsConnector::from(Arc::clone(&mesh.config));
        match tokio::time::timeout(
            TLS_HANDSHAKE_TIMEOUT,
            connector.connect(mesh.name.clone(), tcp),
        )
        .await
        {
            Ok(Ok(tls)) => Ok(UpstreamIo::Mesh(Box::new(tls))),
            Ok(Err(source)) => Err(UpstreamConnectError::Tls {
                addr: self.addr,
                source,
            }),
            Err(_) => Err(UpstreamConnectError::TlsTimeout { addr: self.addr }),
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
