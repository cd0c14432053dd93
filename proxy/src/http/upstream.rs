//! The connection pools of one upstream (an endpoint, or the local application on
//! one port): HTTP/1.1 keep-alive connections and one multiplexed HTTP/2
//! connection, made lazily and shared by every request to that upstream.
//!
//! A meshed endpoint is only ever spoken to over HTTP/2 inside mesh TLS, whatever the
//! client spoke: the far proxy turns it back into the client's version. Upgrades
//! (WebSocket, `CONNECT`) take a fresh connection of their own, outside the pools.

use std::sync::OnceLock;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, Error as ClientError};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::RequestBody;
use super::connect::{UpstreamConnectError, UpstreamConnector, UpstreamIo};

/// How long an idle pooled connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Largest response head accepted from an upstream (HTTP/1 buffer, HTTP/2 header list).
pub const MAX_UPSTREAM_HEAD: usize = 64 * 1024;

/// Which wire protocol a request to an upstream uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// HTTP/1.x on pooled keep-alive connections.
    Http1,
    /// HTTP/2 on one shared connection.
    Http2,
}

type Pool = Client<UpstreamConnector, RequestBody>;

/// One upstream's connector and pools.
#[derive(Debug)]
pub struct Upstream {
    connector: UpstreamConnector,
    http1: OnceLock<Pool>,
    http2: OnceLock<Pool>,
}

impl Upstream {
    /// Pools for the upstream `connector` reaches; nothing connects until a request.
    pub fn new(connector: UpstreamConnector) -> Upstream {
        Upstream {
            connector,
            http1: OnceLock::new(),
            http2: OnceLock::new(),
        }
    }

    /// The connector (address and TLS) of this upstream.
    pub fn connector(&self) -> &UpstreamConnector {
        &self.connector
    }

    /// The wire protocol for a request the client sent as `wants`: HTTP/2 for every
    /// mesh connection, otherwise what the client spoke.
    pub fn wire_for(&self, wants: Wire) -> Wire {
        if self.connector.is_mesh() {
            Wire::Http2
        } else {
            wants
        }
    }

    fn pool(&self, wire: Wire) -> &Pool {
        let (cell, http2) = match wire {
            Wire::Http1 => (&self.http1, false),
            Wire::Http2 => (&self.http2, true),
        };
        cell.get_or_init(|| {
            let mut builder = Client::builder(TokioExecutor::new());
            builder
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .http1_max_buf_size(MAX_UPSTREAM_HEAD)
                .http2_max_header_list_size(MAX_UPSTREAM_HEAD as u32)
                .http2_adaptive_window(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .http2_keep_alive_timeout(Duration::from_secs(10))
                .http2_only(http2);
            builder.build(self.connector.clone())
        })
    }

    /// Sends a request (absolute URI, version matching `wire`) on a pooled connection.
    pub async fn send(
        &self,
        wire: Wire,
        request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, ClientError> {
        self.pool(wire).request(request).await
    }

    /// A fresh connection outside the pools, for an upgrade.
    pub async fn open(&self) -> Result<UpstreamIo, UpstreamConnectError> {
        self.connector.open().await
    }
}
