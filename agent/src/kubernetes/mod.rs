//! `--kubernetes` mode: the agent learns services, endpoints, identities and policy
//! from the cluster instead of its YAML file, checks proxies' projected
//! ServiceAccount tokens with TokenReview, and serves the sidecar injector.
//!
//! - [`translate`]: typed objects in, the same [`crate::source::Catalog`] the YAML
//!   source builds out (pure, unit-tested on fixtures).
//! - [`cluster`]: the watched objects by namespace, and the namespaces a change
//!   touched.
//! - [`watch`]: kube-runtime watchers feed the cluster; after every (debounced)
//!   change the namespaces it touched are translated again into the snapshot
//!   channel the server reads.
//! - [`token_review`]: the TokenReview authenticator, with a short positive cache.
//! - [`publish`]: fills the webhook's caBundle and publishes the trust anchors
//!   ConfigMap into injected namespaces.

pub mod cluster;
pub mod crd;
pub mod leader;
pub mod publish;
pub mod token_review;
pub mod translate;
pub mod watch;

use std::time::Duration;

/// How the agent reaches the API server and how it treats what it learns.
#[derive(Debug, Clone)]
pub struct KubernetesSpec {
    /// Where the API server is and how to authenticate to it.
    pub client: ClientSpec,
    /// Wait between a change and its translation.
    pub debounce: Duration,
    /// How long a positive TokenReview is trusted (≤ 60 s).
    pub token_cache_ttl: Duration,
    /// The Lease that picks the one replica that writes.
    pub leader: leader::LeaderSpec,
}

impl KubernetesSpec {
    /// Defaults (100 ms debounce, 30 s token cache) for `client`.
    pub fn new(client: ClientSpec) -> Self {
        Self {
            client,
            debounce: watch::DEFAULT_DEBOUNCE,
            token_cache_ttl: crate::config::DEFAULT_TOKEN_CACHE_TTL,
            leader: leader::LeaderSpec::new(
                pillion_api::defaults::AGENT_NAMESPACE,
                "pillion-agent",
            ),
        }
    }

    /// A client for the API server.
    pub fn connect(&self) -> Result<kube::Client, String> {
        let config = match &self.client {
            ClientSpec::InCluster => kube::Config::incluster().map_err(|e| {
                format!("cannot read the in-cluster configuration (is the agent running in a pod with a ServiceAccount?): {e}")
            })?,
            ClientSpec::Config(config) => (**config).clone(),
        };
        kube::Client::try_from(config)
            .map_err(|e| format!("cannot build the Kubernetes client: {e}"))
    }
}

/// Where the API server is.
#[derive(Debug, Clone)]
pub enum ClientSpec {
    /// The pod's ServiceAccount and `KUBERNETES_SERVICE_*` (the deployment).
    InCluster,
    /// A given configuration (tests, or an agent outside the cluster).
    Config(Box<kube::Config>),
}
