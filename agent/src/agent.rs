//! Starting and stopping a whole agent: source, CA, trust anchor, serving
//! certificate and server, in that order. The binary and the tests both use it.

use crate::ca::{AgentCa, CaSetupError};
use crate::config::{AgentConfig, ConfigError};
use crate::kubernetes::{self, leader, publish, token_review::TokenReviewer, watch::KubeSource};
use crate::metrics::AgentMetrics;
use crate::server::auth::{StaticTokens, TokenAuthenticator};
use crate::server::inject::{NamespaceSource, NoNamespaces};
use crate::server::tls::{ServingCert, ServingCertError};
use crate::server::{self, Shared};
use crate::source::{self, Snapshot, SourceError, SourceHandle};
use crate::trust_anchor::{self, WriteAnchorError};
use pillion_identity::SpiffeId;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Time `shutdown` waits for the server and background tasks to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the agent could not start. Each message already carries its cause, so no
/// `source()` chain repeats it.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A configuration value cannot work.
    #[error("invalid configuration: {0}")]
    Config(ConfigError),
    /// The source file is missing or broken.
    #[error("cannot load the source: {0}")]
    Source(SourceError),
    /// The CA cannot be loaded or created.
    #[error("{0}")]
    Ca(CaSetupError),
    /// The trust anchor cannot be written.
    #[error("{0}")]
    TrustAnchor(WriteAnchorError),
    /// The agent's own certificate cannot be made.
    #[error("{0}")]
    ServingCert(ServingCertError),
    /// The Kubernetes API cannot be reached or configured.
    #[error("--kubernetes: {0}")]
    Kubernetes(String),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {error}; pick a free address with --listen")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
}

macro_rules! start_error_from {
    ($($variant:ident($ty:ty)),*) => {$(
        impl From<$ty> for StartError {
            fn from(e: $ty) -> Self {
                StartError::$variant(e)
            }
        }
    )*};
}

start_error_from!(
    Config(ConfigError),
    Source(SourceError),
    Ca(CaSetupError),
    TrustAnchor(WriteAnchorError),
    ServingCert(ServingCertError)
);

/// Entry point for starting an agent.
#[derive(Debug)]
pub struct Agent;

/// A started agent: where it listens, what it trusts, and how to stop it. Dropping
/// it stops the agent too (without waiting).
#[derive(Debug)]
pub struct RunningAgent {
    local_addr: SocketAddr,
    trust_anchor_pem: String,
    agent_identity: SpiffeId,
    source: Source,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// Where the served snapshots come from.
#[derive(Debug)]
enum Source {
    /// The YAML file or the embedded default.
    File(SourceHandle),
    /// The cluster's watch.
    Kubernetes(KubeSource),
}

impl Source {
    fn subscribe(&self) -> tokio::sync::watch::Receiver<Snapshot> {
        match self {
            Source::File(h) => h.subscribe(),
            Source::Kubernetes(k) => k.snapshots.clone(),
        }
    }

    /// Counts every published version and every refused file in `metrics`, until
    /// `shutdown` fires.
    fn count_updates(
        &self,
        metrics: &Arc<AgentMetrics>,
        shutdown: &CancellationToken,
    ) -> Vec<JoinHandle<()>> {
        let mut snapshots = self.subscribe();
        let (m, stop) = (Arc::clone(metrics), shutdown.clone());
        let mut tasks = vec![tokio::spawn(async move {
            loop {
                let version = snapshots.borrow_and_update().version;
                m.source_update("published", version);
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = snapshots.changed() => if changed.is_err() { return },
                }
            }
        })];
        if let Source::File(h) = self {
            let mut errors = h.subscribe_errors();
            let (m, stop) = (Arc::clone(metrics), shutdown.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        changed = errors.changed() => if changed.is_err() { return },
                    }
                    if errors.borrow_and_update().is_some() {
                        m.source_update("refused", 0);
                    }
                }
            }));
        }
        tasks
    }
}

/// What the server needs besides the CA, per mode.
struct ModeParts {
    auth: Arc<dyn TokenAuthenticator>,
    ready: tokio::sync::watch::Receiver<bool>,
    namespaces: Arc<dyn NamespaceSource>,
    tasks: Vec<JoinHandle<()>>,
}

impl Agent {
    /// Starts an agent: everything that can fail does so here, before it serves.
    /// Must be called inside a tokio runtime.
    pub async fn start(config: AgentConfig) -> Result<RunningAgent, StartError> {
        config.validate()?;
        let shutdown = CancellationToken::new();
        let (source, client) = match &config.kubernetes {
            None => {
                let handle = source::start(
                    &config.source,
                    &config.trust_domain,
                    config.reload_interval,
                    shutdown.child_token(),
                )
                .inspect_err(|_| shutdown.cancel())?;
                (Source::File(handle), None)
            }
            Some(spec) => {
                let client = spec.connect().map_err(StartError::Kubernetes)?;
                let kube = kubernetes::watch::start(
                    client.clone(),
                    config.trust_domain.clone(),
                    spec.debounce,
                    shutdown.child_token(),
                );
                (Source::Kubernetes(kube), Some(client))
            }
        };
        let started = Self::start_serving(&config, &source, client, &shutdown).await;
        let (local_addr, ca, tasks) = match started {
            Ok(started) => started,
            Err(e) => {
                shutdown.cancel();
                return Err(e);
            }
        };
        tracing::info!(%local_addr, identity = %ca.agent_identity(),
            trust_domain = %config.trust_domain,
            mode = if config.kubernetes.is_some() { "kubernetes" } else { "file" },
            "agent serving");
        Ok(RunningAgent {
            local_addr,
            trust_anchor_pem: ca.trust_bundle_pem(),
            agent_identity: ca.agent_identity().clone(),
            source,
            shutdown,
            tasks,
        })
    }

    /// The authenticator, readiness and namespace source of the mode, with the
    /// Kubernetes publishers started.
    fn mode_parts(
        config: &AgentConfig,
        source: &Source,
        client: Option<kube::Client>,
        ca: &Arc<AgentCa>,
        metrics: &Arc<AgentMetrics>,
        shutdown: &CancellationToken,
    ) -> ModeParts {
        match (source, client, &config.kubernetes) {
            (Source::Kubernetes(kube), Some(client), Some(spec)) => {
                let (leader, election) =
                    leader::elect(client.clone(), spec.leader.clone(), shutdown.clone());
                let leading = {
                    let (mut elected, m) = (leader.elected.clone(), Arc::clone(metrics));
                    tokio::spawn(async move {
                        loop {
                            m.set_leader(*elected.borrow_and_update());
                            if elected.changed().await.is_err() {
                                return;
                            }
                        }
                    })
                };
                let webhook = publish::spawn_webhook_patcher(
                    client.clone(),
                    Arc::clone(ca),
                    leader.clone(),
                    shutdown.clone(),
                );
                let (namespaces, anchors) = publish::start_trust_anchors(
                    client.clone(),
                    &kube.stores,
                    Arc::clone(ca),
                    leader,
                    shutdown.clone(),
                );
                ModeParts {
                    auth: Arc::new(TokenReviewer::new(
                        client,
                        &config.trust_domain,
                        spec.token_cache_ttl,
                    )),
                    ready: kube.ready.clone(),
                    namespaces,
                    tasks: vec![election, leading, webhook, anchors],
                }
            }
            _ => ModeParts {
                auth: Arc::new(StaticTokens::new(source.subscribe())),
                ready: tokio::sync::watch::channel(true).1,
                namespaces: Arc::new(NoNamespaces),
                tasks: Vec::new(),
            },
        }
    }

    async fn start_serving(
        config: &AgentConfig,
        source: &Source,
        client: Option<kube::Client>,
        shutdown: &CancellationToken,
    ) -> Result<(SocketAddr, Arc<AgentCa>, Vec<JoinHandle<()>>), StartError> {
        let ca = Arc::new(AgentCa::open(&config.ca, &config.trust_domain)?);
        let jwks_roots = match &config.jwks_ca_file {
            None => None,
            Some(path) => Some(crate::jwks::roots_from_pem(path).map_err(|reason| {
                StartError::Config(ConfigError {
                    flag: "--jwks-ca-file",
                    reason,
                })
            })?),
        };
        let jwks = Arc::new(crate::jwks::JwksStore::default());
        if let Some(path) = &config.trust_anchor_out {
            trust_anchor::write_atomic(path, &ca.trust_bundle_pem())?;
        }
        let (cert, expires_at) = ServingCert::issue(&ca, config.agent_cert_lifetime)?;
        let cert = Arc::new(cert);
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|error| StartError::Bind {
                addr: config.listen,
                error,
            })?;
        let local_addr = listener.local_addr().map_err(|error| StartError::Bind {
            addr: config.listen,
            error,
        })?;
        let metrics = AgentMetrics::new();
        let parts = Self::mode_parts(config, source, client, &ca, &metrics, shutdown);
        let mut inject = config.inject.clone();
        inject.trust_domain = config.trust_domain.clone();
        inject.agent_identity = ca.agent_identity().to_string();
        let shared = Arc::new(Shared {
            source: source.subscribe(),
            ca: ca.clone(),
            leaf_lifetime: config.leaf_lifetime,
            shutdown: shutdown.clone(),
            auth: parts.auth,
            ready: parts.ready,
            inject: Arc::new(inject),
            namespaces: parts.namespaces,
            metrics: Arc::clone(&metrics),
            answers: Arc::default(),
            jwks: Arc::clone(&jwks),
        });
        let mut tasks = vec![
            tokio::spawn(server::serve(listener, cert.clone(), shared)),
            tokio::spawn(cert.keep_renewed(ca.clone(), expires_at, shutdown.clone())),
        ];
        tasks.extend(parts.tasks);
        tasks.push(tokio::spawn(Arc::clone(&jwks).keep_fetched(
            jwks_roots,
            config.jwks_refresh,
            metrics.jwks_fetch_failures.clone(),
            shutdown.clone(),
        )));
        tasks.extend(source.count_updates(&metrics, shutdown));
        if matches!(config.ca, crate::ca::CaSpec::IssuerDir(_)) {
            tasks.push(tokio::spawn(follow_issuer(
                Arc::clone(&ca),
                config.reload_interval,
                config.trust_anchor_out.clone(),
                shutdown.clone(),
            )));
        }
        Ok((local_addr, ca, tasks))
    }
}

impl RunningAgent {
    /// The address the API listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The root certificate(s) that verify the agent and every workload, PEM.
    pub fn trust_anchor_pem(&self) -> &str {
        &self.trust_anchor_pem
    }

    /// The SPIFFE id the agent's serving certificate carries.
    pub fn agent_identity(&self) -> &SpiffeId {
        &self.agent_identity
    }

    /// The catalog version being served now.
    pub fn version(&self) -> u64 {
        self.snapshot().version
    }

    /// The snapshot being served now.
    pub fn snapshot(&self) -> Snapshot {
        self.source.subscribe().borrow().clone()
    }

    /// Why the newest source file was refused, until a good one replaces it (never
    /// in Kubernetes mode, where odd objects are skipped one by one).
    pub fn last_error(&self) -> Option<SourceError> {
        match &self.source {
            Source::File(h) => h.last_error(),
            Source::Kubernetes(_) => None,
        }
    }

    /// A receiver of every snapshot published from now on.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Snapshot> {
        self.source.subscribe()
    }

    /// A handle that stops the agent when cancelled (for signal handlers).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, ends watch streams, lets open requests finish briefly, and
    /// waits for the background tasks.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        let tasks = std::mem::take(&mut self.tasks);
        let all = async {
            for task in tasks {
                let _ = task.await;
            }
            match &mut self.source {
                Source::File(h) => h.stopped().await,
                Source::Kubernetes(k) => k.stopped().await,
            }
        };
        if tokio::time::timeout(STOP_TIMEOUT, all).await.is_err() {
            tracing::warn!("agent tasks did not stop in time");
        }
        tracing::info!("agent stopped");
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Re-reads `--issuer-dir` every `interval` until `shutdown`: a changed issuer or
/// bundle signs from then on (and is written to `--trust-anchor-out`); a broken one
/// is logged once per distinct problem while the last good one keeps signing.
async fn follow_issuer(
    ca: Arc<AgentCa>,
    interval: Duration,
    anchor_out: Option<std::path::PathBuf>,
    shutdown: CancellationToken,
) {
    let mut failing: Option<String> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match ca.reload() {
            Ok(false) => failing = None,
            Ok(true) => {
                failing = None;
                let bundle = ca.trust_bundle_pem();
                tracing::info!(
                    roots = bundle.matches("BEGIN CERTIFICATE").count(),
                    "the issuer or its trust bundle changed; signing with the new one"
                );
                if let Some(path) = &anchor_out {
                    if let Err(error) = trust_anchor::write_atomic(path, &bundle) {
                        tracing::error!(%error, "cannot rewrite the trust anchor file");
                    }
                }
            }
            Err(error) => {
                let text = error.to_string();
                if failing.as_ref() != Some(&text) {
                    tracing::error!(error = %text,
                        "the issuer directory cannot be used; the last good issuer keeps signing");
                    failing = Some(text);
                }
            }
        }
    }
}
