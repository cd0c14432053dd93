//! The proxy's side of the control plane: certificates from the agent (fetched at
//! start, renewed before expiry), the agent's view stream, and on-demand discovery
//! of the services the workload uses ([`resolve`]). They run as background tasks;
//! the data path only reads what they install, so it keeps working on the cached
//! certificate, view and answers while the agent is away.

pub(crate) mod anchors;
pub(crate) mod certificates;
pub(crate) mod client;
pub(crate) mod config;
pub(crate) mod lines;
pub(crate) mod metrics;
pub(crate) mod resolve;
pub(crate) mod watch;

use std::sync::Arc;
use std::time::Duration;

use pillion_identity::{BundleSource, CertStore, TlsError};
use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::readiness::Readiness;
use crate::app::proxy::Mesh;
use crate::state::Views;
use crate::transport::tls::MeshTls;
use anchors::AnchorsFile;
use certificates::Renewer;
use metrics::ControlMetrics;
use watch::Watcher;

pub use client::{AgentClient, AgentError, ClientError};
pub use config::{ControlConfig, Discovery};
pub use resolve::Resolver;
pub use watch::ISSUER_SWITCH_SPREAD;

/// Readiness condition met once the proxy holds a certificate.
pub const READY_CERTIFICATE: &str = "certificate";
/// Readiness condition met once the first view arrived.
pub const READY_VIEW: &str = "view";

/// Time `stop` waits for the background tasks.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The running control plane: the store and views it fills, and its tasks.
#[derive(Debug)]
pub struct ControlPlane {
    store: Arc<CertStore>,
    views: Views,
    resolver: Option<Arc<Resolver>>,
    metrics: ControlMetrics,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl ControlPlane {
    /// Registers its metrics and readiness conditions, then starts the certificate
    /// and watch loops. Must run inside a tokio runtime.
    pub fn start(
        config: &ControlConfig,
        registry: &mut Registry,
        readiness: &Readiness,
    ) -> Result<ControlPlane, ClientError> {
        let store = Arc::new(CertStore::new(config.workload.clone()));
        let metrics = ControlMetrics::register(registry);
        let offered = store.offer_trust_bundle(&config.trust_anchors_pem, BundleSource::File, None);
        metrics.bundle_offered(BundleSource::File, &offered, &store);
        offered?;
        let client = Arc::new(AgentClient::following(config, Arc::clone(&store))?);
        let views = Views::new();
        let shutdown = CancellationToken::new();
        let renew_now = Arc::new(Notify::new());
        let renewer = Renewer {
            client: Arc::clone(&client),
            store: Arc::clone(&store),
            metrics: metrics.clone(),
            ready: readiness.condition(READY_CERTIFICATE),
            renew_now: Arc::clone(&renew_now),
        };
        let anchors = config.trust_anchors_path.clone().map(|path| AnchorsFile {
            path,
            store: Arc::clone(&store),
            client: Arc::clone(&client),
            metrics: metrics.clone(),
            renew_now: Arc::clone(&renew_now),
            last: config.trust_anchors_pem.clone(),
        });
        let resolver = match config.discovery {
            Discovery::Full => None,
            Discovery::OnDemand { idle } => Some(Arc::new(Resolver::new(
                Arc::clone(&client),
                views.clone(),
                idle,
                metrics.clone(),
            ))),
        };
        let watcher = Watcher {
            on_demand: resolver.is_some(),
            client,
            views: views.clone(),
            identity: config.workload.clone(),
            metrics: metrics.clone(),
            ready: readiness.condition(READY_VIEW),
            store: Arc::clone(&store),
            renew_now: Arc::clone(&renew_now),
            renewing_for: std::sync::Mutex::new(None),
        };
        tracing::info!(agent = %config.agent_addr, agent_identity = %config.agent_identity,
            identity = %config.workload, pod = config.pod_name.as_deref().unwrap_or(""),
            "control plane starting");
        let mut tasks = vec![
            tokio::spawn(renewer.run(shutdown.clone())),
            tokio::spawn(watcher.run(shutdown.clone())),
        ];
        if let Some(anchors) = anchors {
            tasks.push(tokio::spawn(anchors.run(shutdown.clone())));
        }
        if let Some(resolver) = &resolver {
            tasks.push(tokio::spawn(Arc::clone(resolver).run(shutdown.clone())));
        }
        Ok(ControlPlane {
            store,
            views,
            resolver,
            metrics,
            shutdown,
            tasks,
        })
    }

    /// The mesh the stacks use: TLS over this control plane's store, and its views.
    pub fn mesh(&self) -> Result<Mesh, TlsError> {
        Ok(Mesh {
            tls: MeshTls::new(Arc::clone(&self.store))?,
            views: self.views.clone(),
            resolver: self.resolver.clone(),
        })
    }

    /// The certificate store the renewal loop fills.
    pub fn store(&self) -> &Arc<CertStore> {
        &self.store
    }

    /// The views the watch loop fills.
    pub fn views(&self) -> &Views {
        &self.views
    }

    /// On-demand discovery; `None` with a full view.
    pub fn resolver(&self) -> Option<&Arc<Resolver>> {
        self.resolver.as_ref()
    }

    /// The control-plane metric handles.
    pub fn metrics(&self) -> &ControlMetrics {
        &self.metrics
    }

    /// Stops its loops and waits (briefly) for them.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let tasks = std::mem::take(&mut self.tasks);
        let all = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(STOP_TIMEOUT, all).await.is_err() {
            tracing::warn!("control-plane tasks did not stop in time");
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
