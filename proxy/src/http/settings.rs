//! The HTTP layer's knobs, set once at start (from flags), shared by every
//! connection.

use std::sync::Arc;
use std::time::Duration;

use pillion_api::defaults::{CONNECT_TIMEOUT, DETECT_TIMEOUT};

use crate::policy::balance::p2c::Strategy;
use crate::policy::outlier::OutlierConfig;
use crate::telemetry::Recorders;

/// Largest request head (request line and headers) accepted; larger ones get 431.
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;
/// Time a client may take to send a request head on an idle HTTP/1 connection.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How the HTTP layer behaves.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// Time to open an upstream TCP connection (502 when it passes).
    pub connect_timeout: Duration,
    /// Time a connection may take to show its protocol.
    pub detect_timeout: Duration,
    /// Ports that skip detection besides `defaults::OPAQUE_PORTS`.
    pub opaque_ports: Vec<u16>,
    /// Outlier detection of every backend.
    pub outlier: OutlierConfig,
    /// Endpoint choice within a backend.
    pub strategy: Strategy,
    /// The mesh TLS client config; without it meshed endpoints cannot be reached.
    pub mesh_client: Option<Arc<rustls::ClientConfig>>,
    /// Spans and access log lines of every request (default: off).
    pub recorders: Recorders,
    /// Which HTTP version requests take between two proxies.
    pub mesh_protocol: MeshProtocol,
}

/// Which HTTP version requests take on the mesh hop (docs/decisions.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MeshProtocol {
    /// The version the client spoke: HTTP/1.1 on pooled keep-alive connections,
    /// HTTP/2 on one multiplexed connection. Cheapest for the server's proxy.
    #[default]
    Keep,
    /// Every request on one multiplexed HTTP/2 connection per endpoint; HTTP/1.x
    /// carries its version in `pillion-orig-proto`. Fewest mesh connections.
    Http2,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            connect_timeout: CONNECT_TIMEOUT,
            detect_timeout: DETECT_TIMEOUT,
            opaque_ports: Vec::new(),
            outlier: OutlierConfig::default(),
            strategy: Strategy::PowerOfTwoChoices,
            mesh_client: None,
            recorders: Recorders::default(),
            mesh_protocol: MeshProtocol::default(),
        }
    }
}
