//! The library entry point: bind every listener up front (so bind errors surface
//! before anything runs), then run the stacks until a shutdown drains them.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use pillion_api::duration::HumaneDuration;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::config::{ConfigError, ProxyConfig};
use super::inputs::Inputs;
use super::rlimit;
use super::settings::Settings;
use crate::admin::readiness::{Condition, Readiness};
use crate::admin::{AdminError, AdminServer, AdminState, ConfigDump};
use crate::control::Resolver;
use crate::detect::first_word::MAX_PROBES;
use crate::gateway::certs::Certs;
use crate::gateway::redirect::Redirect;
use crate::gateway::Gateway;
use crate::inbound::Inbound;
use crate::outbound::Outbound;
use crate::state::{self, Compiler, Store, Views};
use crate::telemetry::metrics::http::HttpMetrics;
use crate::telemetry::metrics::mesh::MeshMetrics;
use crate::telemetry::metrics::tcp::{DirectionMetrics, TcpMetrics};
use crate::telemetry::metrics::Direction;
use crate::transport::accept::{AcceptLoop, Stack};
use crate::transport::budget::Budget;
use crate::transport::drain::{Drain, DrainReport};
use crate::transport::listen::{bind_all, BindError};
use crate::transport::loop_guard::LoopGuard;
use crate::transport::orig_dst::{KernelOrigDst, OrigDstLookup};
use crate::transport::relay::Relay;
use crate::transport::tls::MeshTls;

/// What the proxy needs when a control plane is configured: mesh TLS (over the
/// certificate store the control plane fills) and the views it publishes. Without
/// it the proxy is the plain L4 proxy: everything passes through.
#[derive(Clone, Debug)]
pub struct Mesh {
    /// Client and server TLS configs over the proxy's certificate store.
    pub tls: MeshTls,
    /// The agent's views, compiled into the proxy's state as they arrive.
    pub views: Views,
    /// On-demand discovery of destinations the state does not know; `None`: the
    /// views hold every service, and the unknown passes through.
    pub resolver: Option<Arc<Resolver>>,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A traffic listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The admin listener could not be bound.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The gateway's server certificates cannot be loaded.
    #[error("--gateway-certs: {0}")]
    GatewayCerts(#[from] crate::gateway::certs::CertsError),
    /// The gateway's TLS configuration cannot be built.
    #[error("the gateway's TLS configuration: {0}")]
    GatewayTls(#[from] rustls::Error),
    /// A bound listener's address could not be read back.
    #[error("cannot read the local address of a bound {flag} listener: {source}")]
    LocalAddr {
        /// The flag of the listener.
        flag: &'static str,
        /// The kernel's reason.
        #[source]
        source: io::Error,
    },
}

/// Name of the readiness condition the proxy meets once its listeners are bound.
pub const READY_LISTENERS: &str = "listeners bound";
/// Name of the readiness condition that fails once draining starts.
pub const READY_NOT_DRAINING: &str = "proxy not draining";
/// Name of the readiness condition met once the first view's state is served.
pub const READY_STATE: &str = "view compiled";

/// Options for [`Proxy`] beyond its [`ProxyConfig`]; start with [`Proxy::builder`].
pub struct ProxyBuilder {
    config: ProxyConfig,
    orig_dst: Arc<dyn OrigDstLookup>,
    registry: Registry,
    readiness: Readiness,
    mesh: Option<Mesh>,
    settings: Settings,
}

/// A bound proxy: listeners and admin server are open, nothing is served
/// until [`Proxy::run`].
///
/// ```no_run
/// # async fn demo() -> Result<(), pillion_proxy::ProxyError> {
/// let proxy = pillion_proxy::Proxy::bind(pillion_proxy::ProxyConfig::default()).await?;
/// tracing::info!(admin = %proxy.admin_addr(), "bound");
/// let report = proxy.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
/// tracing::info!(forced = report.forced, "drained");
/// # Ok(()) }
/// ```
pub struct Proxy {
    config: ProxyConfig,
    outbound: Vec<TcpListener>,
    inbound: Vec<TcpListener>,
    outbound_addrs: Vec<SocketAddr>,
    inbound_addrs: Vec<SocketAddr>,
    gateway: Option<GatewayListeners>,
    admin: AdminServer,
    registry: Arc<Registry>,
    tcp: TcpMetrics,
    mesh_metrics: MeshMetrics,
    readiness: Readiness,
    not_draining: Condition,
    drain: Drain,
    orig_dst: Arc<dyn OrigDstLookup>,
    mesh: Option<Mesh>,
    state_ready: Option<Condition>,
    settings: Settings,
    http_metrics: HttpMetrics,
}

/// The gateway role's bound listeners and loaded certificates.
struct GatewayListeners {
    https: Vec<TcpListener>,
    http: Vec<TcpListener>,
    https_addrs: Vec<SocketAddr>,
    http_addrs: Vec<SocketAddr>,
    redirect_port: u16,
    hsts: std::time::Duration,
    certs: Arc<Certs>,
}

impl GatewayListeners {
    /// Loads the certificates and binds the listeners of `config`; `None` for a sidecar.
    fn bind(config: &ProxyConfig) -> Result<Option<GatewayListeners>, ProxyError> {
        let gateway = &config.gateway;
        if gateway.https_addrs.is_empty() {
            return Ok(None);
        }
        let certs = Certs::load(&gateway.cert_dirs)?;
        let https = bind_all("--gateway-https", &gateway.https_addrs, config.backlog)?;
        let http = match gateway.http_addrs.is_empty() {
            true => Vec::new(),
            false => bind_all("--gateway-http", &gateway.http_addrs, config.backlog)?,
        };
        Ok(Some(GatewayListeners {
            https_addrs: local_addrs("--gateway-https", &https)?,
            http_addrs: local_addrs("--gateway-http", &http)?,
            https,
            http,
            redirect_port: gateway.redirect_port,
            hsts: gateway.hsts,
            certs,
        }))
    }
}

impl ProxyBuilder {
    /// Replaces the original-destination lookup (default: the kernel's
    /// `SO_ORIGINAL_DST`), e.g. with a fixed address in tests.
    pub fn orig_dst(mut self, lookup: impl OrigDstLookup) -> Self {
        self.orig_dst = Arc::new(lookup);
        self
    }

    /// Starts from a registry that already holds the caller's own metrics;
    /// the TCP metrics are added to it.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Shares a readiness state whose extra conditions (certificate, first
    /// view, ...) `/ready` should also wait for.
    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// Turns on the mesh: mutual TLS to meshed endpoints, TLS termination and
    /// inbound policy, all following `mesh`'s certificate store and views.
    pub fn mesh(mut self, mesh: Mesh) -> Self {
        self.mesh = Some(mesh);
        self
    }

    /// Sets the data path's knobs (detection, balancing, outlier detection,
    /// telemetry); HTTP is served whenever the mesh is on.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Validates the config and binds every listener. Must run inside a tokio runtime.
    pub async fn bind(self) -> Result<Proxy, ProxyError> {
        let Self {
            config,
            orig_dst,
            mut registry,
            readiness,
            mesh,
            settings,
        } = self;
        config.validate()?;
        let listeners_bound = readiness.condition(READY_LISTENERS);
        let not_draining = readiness.condition(READY_NOT_DRAINING);
        not_draining.set(true);
        let state_ready = mesh.as_ref().map(|_| readiness.condition(READY_STATE));

        let outbound = bind_all("--outbound-addrs", &config.outbound_addrs, config.backlog)?;
        let inbound = bind_all("--inbound-addrs", &config.inbound_addrs, config.backlog)?;
        let gateway = GatewayListeners::bind(&config)?;
        let admin = AdminServer::bind(config.admin_addr)?;
        let outbound_addrs = local_addrs("--outbound-addrs", &outbound)?;
        let inbound_addrs = local_addrs("--inbound-addrs", &inbound)?;

        let tcp = TcpMetrics::register(&mut registry);
        let mesh_metrics = MeshMetrics::register(&mut registry);
        let http_metrics = HttpMetrics::register(&mut registry);
        crate::telemetry::metrics::cache::register(&mut registry, Arc::clone(&settings.responses));
        listeners_bound.set(true);
        Ok(Proxy {
            config,
            outbound,
            inbound,
            outbound_addrs,
            inbound_addrs,
            gateway,
            admin,
            registry: Arc::new(registry),
            tcp,
            mesh_metrics,
            readiness,
            not_draining,
            drain: Drain::new(),
            orig_dst,
            mesh,
            state_ready,
            settings,
            http_metrics,
        })
    }
}

impl Proxy {
    /// A builder for options beyond the config (lookup, registry, readiness).
    pub fn builder(config: ProxyConfig) -> ProxyBuilder {
        ProxyBuilder {
            config,
            orig_dst: Arc::new(KernelOrigDst),
            registry: Registry::default(),
            readiness: Readiness::new(),
            mesh: None,
            settings: Settings::default(),
        }
    }

    /// Validates `config` and binds with the default options. Must run inside a tokio runtime.
    pub async fn bind(config: ProxyConfig) -> Result<Proxy, ProxyError> {
        Self::builder(config).bind().await
    }

    /// The outbound listener addresses actually bound (IPv6 may have been skipped).
    pub fn outbound_addrs(&self) -> &[SocketAddr] {
        &self.outbound_addrs
    }

    /// The inbound listener addresses actually bound.
    pub fn inbound_addrs(&self) -> &[SocketAddr] {
        &self.inbound_addrs
    }

    /// The gateway's HTTPS listener addresses actually bound (none for a sidecar).
    pub fn gateway_https_addrs(&self) -> &[SocketAddr] {
        self.gateway.as_ref().map_or(&[], |g| &g.https_addrs)
    }

    /// The admin server's bound address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    /// The readiness state `/ready` reports; add conditions to hold it back.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// The drain; `drain().trigger()` starts the same shutdown as SIGTERM.
    pub fn drain(&self) -> &Drain {
        &self.drain
    }

    /// One direction's metric handles, e.g. to read counters in tests.
    pub fn metrics(&self, direction: Direction) -> DirectionMetrics {
        self.tcp.direction(direction)
    }

    /// The mesh metric handles (TLS, passthrough, denials), e.g. for tests.
    pub fn mesh_metrics(&self) -> &MeshMetrics {
        &self.mesh_metrics
    }

    /// The metrics registry `/metrics` renders.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Serves until `shutdown` resolves or the drain is triggered (e.g. by
    /// `POST /shutdown`), then closes the listeners, waits up to the drain
    /// timeout for open connections and force-closes the rest.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> DrainReport {
        let serving = self.serve();
        tokio::select! {
            () = shutdown => tracing::info!("shutdown signal received; draining"),
            () = serving.drain.started() => tracing::info!("shutdown requested; draining"),
        }
        serving.finish().await
    }

    /// Builds the inputs both stacks share and starts every task: the state
    /// compiler (with a mesh), the accept loops and the admin server.
    fn serve(self) -> Serving {
        let config = self.config;
        let dump = config_dump(&config, self.mesh.as_ref());
        let max_connections = self.settings.max_connections;
        let settings = Arc::new(Settings {
            connect_timeout: config.connect_timeout,
            mesh_client: self.mesh.as_ref().map(|m| m.tls.client().clone()),
            mesh_metrics: self.mesh_metrics.clone(),
            ..self.settings
        });
        let store = Arc::new(Store::new());
        let compiling = match (&self.mesh, self.state_ready) {
            (Some(mesh), Some(ready)) => Some(tokio::spawn(state::follow(
                mesh.views.clone(),
                Arc::clone(&store),
                Compiler {
                    settings: Arc::clone(&settings),
                    metrics: self.http_metrics.clone(),
                    ready,
                },
            ))),
            _ => None,
        };
        let budget = Budget::new(
            max_connections
                .unwrap_or_else(|| rlimit::nofile().map_or(usize::MAX, Budget::for_open_files)),
        );
        tracing::info!(max_connections = budget.limit(), "connection budget");
        let inputs = Arc::new(Inputs {
            settings,
            state: store,
            resolver: self.mesh.as_ref().and_then(|m| m.resolver.clone()),
            tls: self.mesh.map(|m| m.tls),
            mesh_metrics: self.mesh_metrics,
            http_metrics: self.http_metrics,
            drain: self.drain.clone(),
            probes: Budget::new(MAX_PROBES),
        });
        let listeners = || {
            self.outbound_addrs
                .iter()
                .chain(&self.inbound_addrs)
                .map(SocketAddr::port)
        };
        // Inbound also guards the admin port: an off-pod caller redirected there
        // would reach the admin server from loopback, where `/shutdown` obeys.
        let admin_port = self.admin.local_addr().port();
        let tcp = self.tcp;
        let relay =
            |guard, direction| Relay::new(guard, config.connect_timeout, tcp.direction(direction));
        let outbound = Arc::new(Outbound::new(
            relay(LoopGuard::new(listeners()), Direction::Outbound),
            Arc::clone(&inputs),
        ));
        let inbound_guard = LoopGuard::new(listeners().chain([admin_port]));
        let gateway_inputs = Arc::clone(&inputs);
        let inbound = Arc::new(Inbound::new(
            relay(inbound_guard, Direction::Inbound),
            inputs,
        ));
        let shared = Shared {
            orig_dst: &self.orig_dst,
            tcp: &tcp,
            drain: &self.drain,
            budget: &budget,
        };
        let mut accepting: Vec<_> = self
            .outbound
            .into_iter()
            .map(|l| accept_loop(l, Arc::clone(&outbound), &shared))
            .map(tokio::spawn)
            .collect();
        accepting.extend(
            self.inbound
                .into_iter()
                .map(|l| accept_loop(l, Arc::clone(&inbound), &shared))
                .map(tokio::spawn),
        );
        if let Some(gateway) = self.gateway {
            accepting.extend(serve_gateway(gateway, gateway_inputs, &shared));
        }
        let admin_stop = CancellationToken::new();
        let admin_state = AdminState {
            readiness: self.readiness,
            registry: self.registry,
            drain: self.drain.clone(),
            config: dump,
            log: crate::app::logging::installed(),
        };
        let admin_task = tokio::spawn(
            self.admin
                .serve(admin_state, admin_stop.clone().cancelled_owned()),
        );
        tracing::info!(
            outbound = ?self.outbound_addrs,
            inbound = ?self.inbound_addrs,
            "proxy serving"
        );
        Serving {
            drain_timeout: config.drain_timeout,
            drain: self.drain,
            not_draining: self.not_draining,
            accepting,
            admin_stop,
            admin_task,
            compiling,
        }
    }
}

/// A proxy's running tasks, until [`Serving::finish`] drains them.
struct Serving {
    drain_timeout: std::time::Duration,
    drain: Drain,
    not_draining: Condition,
    accepting: Vec<tokio::task::JoinHandle<()>>,
    admin_stop: CancellationToken,
    admin_task: tokio::task::JoinHandle<()>,
    compiling: Option<tokio::task::JoinHandle<()>>,
}

impl Serving {
    /// Closes the listeners, waits up to the drain timeout for open connections,
    /// force-closes the rest and stops the admin server and the compiler.
    async fn finish(self) -> DrainReport {
        self.not_draining.set(false);
        self.drain.trigger();
        for task in self.accepting {
            if let Err(err) = task.await {
                tracing::error!(error = %err, "accept loop failed");
            }
        }
        tracing::info!(
            open = self.drain.active(),
            timeout = %HumaneDuration(self.drain_timeout),
            "listeners closed; waiting for open connections"
        );
        let report = self.drain.finish(self.drain_timeout).await;
        if report.forced > 0 {
            tracing::warn!(
                forced = report.forced,
                "drain timeout elapsed; force-closed the remaining connections"
            );
        } else {
            tracing::info!(
                elapsed_ms = report.elapsed.as_millis() as u64,
                "drain complete"
            );
        }
        self.admin_stop.cancel();
        if let Err(err) = self.admin_task.await {
            tracing::error!(error = %err, "admin server failed");
        }
        if let Some(task) = self.compiling {
            task.abort();
        }
        report
    }
}

/// Starts the gateway role's accept loops and its certificate reloads.
fn serve_gateway(
    gateway: GatewayListeners,
    inputs: Arc<Inputs>,
    shared: &Shared<'_>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let stop = shared.drain.clone();
    tokio::spawn(Arc::clone(&gateway.certs).watch(async move { stop.started().await }));
    let redirect = Arc::new(Redirect::new(Arc::clone(&inputs), gateway.redirect_port));
    let stack = match Gateway::new(inputs, gateway.certs, gateway.hsts) {
        Ok(stack) => Arc::new(stack),
        Err(error) => {
            tracing::error!(%error, "the gateway's TLS configuration cannot be built; the gateway listeners stay closed");
            return Vec::new();
        }
    };
    tracing::info!(https = ?gateway.https_addrs, http = ?gateway.http_addrs, "gateway serving");
    let https = (gateway.https.into_iter())
        .map(|l| tokio::spawn(accept_loop(l, Arc::clone(&stack), shared)));
    let http = (gateway.http.into_iter())
        .map(|l| tokio::spawn(accept_loop(l, Arc::clone(&redirect), shared)));
    https.chain(http).collect()
}

/// What every listener's accept loop shares.
struct Shared<'a> {
    orig_dst: &'a Arc<dyn OrigDstLookup>,
    tcp: &'a TcpMetrics,
    drain: &'a Drain,
    budget: &'a Arc<Budget>,
}

/// Builds and runs one listener's accept loop.
fn accept_loop<S: Stack>(
    listener: TcpListener,
    stack: Arc<S>,
    shared: &Shared<'_>,
) -> impl Future<Output = ()> + Send + 'static {
    let metrics = shared.tcp.direction(stack.direction());
    AcceptLoop {
        listener,
        stack,
        orig_dst: Arc::clone(shared.orig_dst),
        metrics,
        drain: shared.drain.clone(),
        budget: Arc::clone(shared.budget),
    }
    .run()
}

/// The addresses the kernel actually bound (resolves port 0).
fn local_addrs(
    flag: &'static str,
    listeners: &[TcpListener],
) -> Result<Vec<SocketAddr>, ProxyError> {
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map_err(|source| ProxyError::LocalAddr { flag, source })
        })
        .collect()
}

/// What `/config` shows: the effective configuration, the certificate's serial and
/// expiry (never the key) and the newest view from the agent.
fn config_dump(config: &ProxyConfig, mesh: Option<&Mesh>) -> ConfigDump {
    let settings = format!("{config:#?}");
    let mesh = mesh.cloned();
    ConfigDump(Arc::new(move || {
        let (certificate, view) = match &mesh {
            Some(mesh) => {
                let store = mesh.tls.store();
                let expires = store
                    .expires_at()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs());
                (
                    serde_json::json!({
                        "identity": store.local_id().to_string(),
                        "serial": store.current_serial(),
                        "expires_at_unix": expires,
                    }),
                    serde_json::to_value(mesh.views.latest().as_deref()).unwrap_or_default(),
                )
            }
            None => (serde_json::Value::Null, serde_json::Value::Null),
        };
        serde_json::json!({
            "settings": settings,
            "certificate": certificate,
            "view": view,
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binding_resolves_ports_and_meets_readiness() {
        let proxy = Proxy::bind(ProxyConfig::loopback_ephemeral())
            .await
            .unwrap();
        assert!(proxy.outbound_addrs().iter().all(|a| a.port() != 0));
        assert!(proxy.inbound_addrs().iter().all(|a| a.port() != 0));
        assert_ne!(proxy.admin_addr().port(), 0);
        assert!(proxy.readiness().is_ready());
        // A later layer can hold readiness back.
        let cert = proxy.readiness().condition("certificate");
        assert_eq!(proxy.readiness().missing().len(), 1);
        cert.set(true);
        assert!(proxy.readiness().is_ready());
    }

    #[tokio::test]
    async fn invalid_config_is_rejected_before_binding() {
        let config = ProxyConfig {
            connect_timeout: std::time::Duration::ZERO,
            ..ProxyConfig::loopback_ephemeral()
        };
        assert!(matches!(
            Proxy::bind(config).await,
            Err(ProxyError::Config(ConfigError::ZeroConnectTimeout { .. }))
        ));
    }

    #[tokio::test]
    async fn a_taken_inbound_address_names_its_flag() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let config = ProxyConfig {
            inbound_addrs: vec![addr],
            ..ProxyConfig::loopback_ephemeral()
        };
        let Err(err) = Proxy::bind(config).await else {
            panic!("bound a taken address");
        };
        assert_eq!(
            err.to_string(),
            format!(
                "cannot bind --inbound-addrs address {addr}: Address already in use (os error 98)"
            )
        );
    }

    #[tokio::test]
    async fn extra_metrics_share_the_registry() {
        let mut registry = Registry::default();
        let extra = prometheus_client::metrics::counter::Counter::<u64>::default();
        registry.register("pillion_extra", "a later layer's metric", extra.clone());
        extra.inc();
        let proxy = Proxy::builder(ProxyConfig::loopback_ephemeral())
            .registry(registry)
            .bind()
            .await
            .unwrap();
        let text = crate::telemetry::metrics::encode(proxy.registry()).unwrap();
        assert!(text.contains("pillion_extra_total 1"));
        assert!(text.contains("pillion_tcp_connections_opened_total{direction=\"inbound\"} 0"));
    }
}
