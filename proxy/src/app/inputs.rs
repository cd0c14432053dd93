//! What every connection's path reads, built once by [`super::proxy::Proxy::run`]
//! and shared as `Arc<Inputs>` by both stacks (ztunnel's proxy inputs, in spirit):
//! the settings, the one compiled state, mesh TLS when a control plane is on, the
//! metric families, the drain and the bound on server-first probes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::settings::Settings;
use crate::control::Resolver;
use crate::state::Store;
use crate::telemetry::metrics::http::HttpMetrics;
use crate::telemetry::metrics::mesh::MeshMetrics;
use crate::transport::accept::ConnInfo;
use crate::transport::budget::Budget;
use crate::transport::drain::Drain;
use crate::transport::tls::MeshTls;

/// The shared inputs of the data path.
#[derive(Debug)]
pub(crate) struct Inputs {
    /// Detection, timeouts, balancing, telemetry recorders.
    pub settings: Arc<Settings>,
    /// The current compiled state (empty without a control plane: everything
    /// passes through).
    pub state: Arc<Store>,
    /// Mesh TLS; `None` runs the plain L4 proxy.
    pub tls: Option<MeshTls>,
    /// On-demand discovery: asked about destinations the state does not know.
    pub resolver: Option<Arc<Resolver>>,
    /// TLS, passthrough and refusal counters.
    pub mesh_metrics: MeshMetrics,
    /// The per-route families (inbound ports without policy get theirs on first use).
    pub http_metrics: HttpMetrics,
    /// The proxy's drain.
    pub drain: Drain,
    /// The early connections of server-first detection both listeners share.
    pub probes: Arc<Budget>,
}

impl Inputs {
    /// Silence after which a client's upstream is opened to hear a server that
    /// speaks first; zero (never) for a connection accepted while the connection
    /// budget was crowded.
    pub(crate) fn server_first_after(&self, info: &ConnInfo) -> Duration {
        if info.crowded {
            Duration::ZERO
        } else {
            self.settings.server_first_after
        }
    }

    /// Resolves when draining starts: the shutdown signal of every HTTP connection.
    pub(crate) fn shutdown(&self) -> impl Future<Output = ()> + Send + 'static {
        let drain = self.drain.clone();
        async move { drain.started().await }
    }
}
