//! Upstreams: where a request or a connection leaves the proxy. An [`endpoint`] of
//! a service keeps its latency estimate and its [`Upstream`]; a backend is a set of
//! endpoints with its balancer and outlier detector; every connection is opened by
//! [`connect`] (plain TCP, or the one mesh TLS handshake) and HTTP reuses them
//! through [`pool`].
//!
//! One [`Upstream`] holds the connections of one upstream (an endpoint, or the local
//! application on one port): HTTP/1.1 keep-alive connections and one multiplexed
//! HTTP/2 connection, made lazily and shared by every request to that upstream.
//!
//! A request keeps the version its client spoke, also inside mesh TLS, unless the
//! proxy runs with `--mesh-protocol http2`: then every request to a meshed endpoint
//! rides its one HTTP/2 connection and the far proxy turns it back into the client's
//! version. Upgrades (WebSocket, `CONNECT`) take a fresh connection of their own,
//! outside the pools.

use std::sync::Arc;

use http::{Request, Response};

pub(crate) mod connect;
pub(crate) mod endpoint;
pub(crate) mod pool;

use crate::http::body::RequestBody;
use connect::{UpstreamConnectError, UpstreamConnector, UpstreamIo};
use pool::{Http1Pool, Http2Conn, SendError, UpstreamBody};

/// Which wire protocol a request to an upstream uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// HTTP/1.x on pooled keep-alive connections.
    Http1,
    /// HTTP/2 on one shared connection.
    Http2,
}

/// One upstream's connector and connections.
#[derive(Debug)]
pub(crate) struct Upstream {
    connector: UpstreamConnector,
    /// Whether HTTP/1.x requests to this (meshed) upstream travel as HTTP/2.
    mesh_http2: bool,
    http1: Arc<Http1Pool>,
    http2: Http2Conn,
}

impl Upstream {
    /// Pools for the upstream `connector` reaches; nothing connects until a request.
    pub(crate) fn new(connector: UpstreamConnector) -> Upstream {
        Upstream {
            connector,
            mesh_http2: false,
            http1: Arc::default(),
            http2: Http2Conn::default(),
        }
    }

    /// With `on`, requests to a meshed upstream all travel on its one HTTP/2
    /// connection, whatever version the client spoke ([`MeshProtocol::Http2`]).
    ///
    /// [`MeshProtocol::Http2`]: crate::app::settings::MeshProtocol::Http2
    pub(crate) fn mesh_http2(mut self, on: bool) -> Upstream {
        self.mesh_http2 = on;
        self
    }

    /// The circuit breaker's bounds on this upstream's HTTP/1.1 connections.
    pub(crate) fn set_connection_limits(&self, max_connections: u32, max_pending: u32) {
        self.http1.limits().set(max_connections, max_pending);
    }

    /// Lowers the bounds to these where they are lower (an endpoint two ports list).
    pub(crate) fn tighten_connection_limits(&self, max_connections: u32, max_pending: u32) {
        self.http1.limits().tighten(max_connections, max_pending);
    }

    /// The connector (address and TLS) of this upstream.
    pub(crate) fn connector(&self) -> &UpstreamConnector {
        &self.connector
    }

    /// The wire protocol for a request the client sent as `wants`: what the client
    /// spoke, or HTTP/2 towards a meshed upstream when upgrading is on.
    pub(crate) fn wire_for(&self, wants: Wire) -> Wire {
        if self.mesh_http2 && self.connector.is_mesh() {
            Wire::Http2
        } else {
            wants
        }
    }

    /// Sends a request (absolute URI, version matching `wire`) on a pooled connection.
    pub(crate) async fn send(
        &self,
        wire: Wire,
        request: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        match wire {
            Wire::Http1 => self.http1.send(&self.connector, request).await,
            Wire::Http2 => self.http2.send(&self.connector, request).await,
        }
    }

    /// A fresh connection outside the pools, for an upgrade.
    pub(crate) async fn open(&self) -> Result<UpstreamIo, UpstreamConnectError> {
        self.connector.open().await
    }

    /// A fresh connection outside the pools for opaque bytes (see
    /// [`UpstreamConnector::open_opaque`]).
    pub(crate) async fn open_opaque(&self) -> Result<UpstreamIo, UpstreamConnectError> {
        self.connector.open_opaque().await
    }
}
