//! The data path's knobs, set once at start (from flags, see [`super::flags`]) and
//! shared by every connection and every compile of the state.

use std::sync::Arc;
use std::time::Duration;

use pillion_api::defaults::{
    CONNECT_TIMEOUT, DETECT_TIMEOUT, RESPONSE_CACHE_BYTES, SERVER_FIRST_AFTER,
};

use crate::policy::balance::p2c::Strategy;
use crate::policy::cache::store::Store;
use crate::policy::outlier::OutlierConfig;
use crate::telemetry::metrics::mesh::MeshMetrics;
use crate::telemetry::Recorders;
use crate::transport::tls::MeshClient;

/// How the data path behaves.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Time to open an upstream TCP connection (502 when it passes).
    pub connect_timeout: Duration,
    /// Time a connection may take to show its protocol (mesh TLS or HTTP).
    pub detect_timeout: Duration,
    /// Silence from a new client after which the upstream is opened to hear
    /// whether the server speaks first (zero: never; detection then waits).
    pub server_first_after: Duration,
    /// Most connections handled at once across both listeners; past it new ones
    /// are refused at accept (`None`: what the open-files limit carries).
    pub max_connections: Option<usize>,
    /// Ports that skip detection besides `defaults::OPAQUE_PORTS`.
    pub opaque_ports: Vec<u16>,
    /// Inbound ports forwarded to the application on loopback (an opt-in for
    /// loopback-only servers); the rest go to the pod's own address.
    pub loopback_ports: Vec<u16>,
    /// Outlier detection of every backend.
    pub outlier: OutlierConfig,
    /// Endpoint choice within a backend.
    pub strategy: Strategy,
    /// The mesh TLS client configs; without them meshed endpoints cannot be reached.
    pub mesh_client: Option<MeshClient>,
    /// Spans and access log lines of every request (default: off).
    pub recorders: Recorders,
    /// Which HTTP version requests take between two proxies.
    pub mesh_protocol: MeshProtocol,
    /// Where every upstream mesh TLS connection and handshake failure is counted
    /// (the proxy's own families; a default one counts into nothing registered).
    pub mesh_metrics: MeshMetrics,
    /// The answers kept for routes with a cache, bounded over all of them.
    pub responses: Arc<Store>,
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

impl Default for Settings {
    fn default() -> Self {
        Settings {
            connect_timeout: CONNECT_TIMEOUT,
            detect_timeout: DETECT_TIMEOUT,
            server_first_after: SERVER_FIRST_AFTER,
            max_connections: None,
            opaque_ports: Vec::new(),
            loopback_ports: Vec::new(),
            outlier: OutlierConfig::default(),
            strategy: Strategy::PowerOfTwoChoices,
            mesh_client: None,
            recorders: Recorders::default(),
            mesh_protocol: MeshProtocol::default(),
            mesh_metrics: MeshMetrics::default(),
            responses: Arc::new(Store::new(RESPONSE_CACHE_BYTES)),
        }
    }
}

#[cfg(test)]
impl Settings {
    /// Defaults with a mesh client config over an empty certificate store (meshed
    /// endpoints compile; handshakes would fail).
    pub(crate) fn with_mesh_client_for_tests() -> Settings {
        use std::sync::Arc;
        let id = pillion_identity::SpiffeId::new("cluster.local", "demo", "client")
            .expect("a valid test identity");
        let store = Arc::new(pillion_identity::CertStore::new(id));
        Settings {
            mesh_client: Some(MeshClient {
                detect: pillion_identity::tls::client_config(Arc::clone(&store))
                    .expect("a client config"),
                opaque: pillion_identity::tls::opaque_client_config(store)
                    .expect("a client config"),
            }),
            ..Settings::default()
        }
    }
}
