//! The injector's cluster-wide configuration: which images to run, where the agent is,
//! the proxy's default resources and whether to use native sidecars. Defaults come
//! from `pillion_api::defaults`; per-pod annotations override parts of it.

use pillion_api::defaults;

use crate::error::ConfigError;
use crate::values::{self, Quantity};

/// Image that holds all three Pillion binaries (see `deploy/Dockerfile`).
pub const DEFAULT_IMAGE_REPO: &str = "ghcr.io/pillion/pillion";
/// Name of the agent's Service (in [`defaults::AGENT_NAMESPACE`]).
pub const AGENT_SERVICE: &str = "pillion-agent";
/// ConfigMap with the PEM trust anchors, published by the agent in every namespace
/// whose pods it injects (a pod can mount ConfigMaps of its own namespace only).
pub const TRUST_ANCHORS_CONFIGMAP: &str = "pillion-trust-anchors";
/// Key of the PEM bundle inside [`TRUST_ANCHORS_CONFIGMAP`].
pub const TRUST_ANCHORS_KEY: &str = "ca.pem";
/// Audience of the projected ServiceAccount token the proxy presents to the agent.
pub const TOKEN_AUDIENCE: &str = "pillion";
/// Lifetime asked for the projected token; the kubelet rotates it at 80 %.
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3600;

/// The OTLP/gRPC endpoint of the Jaeger that `deploy/` installs in the `pillion` namespace.
pub fn default_otlp_endpoint() -> String {
    format!(
        "http://jaeger.{}.svc:{}",
        defaults::AGENT_NAMESPACE,
        defaults::telemetry::OTLP_GRPC_PORT
    )
}

/// `host:port` of the agent's API as injected proxies reach it.
pub fn default_agent_addr() -> String {
    format!(
        "{AGENT_SERVICE}.{}.svc:{}",
        defaults::AGENT_NAMESPACE,
        defaults::AGENT_PORT
    )
}

/// The SPIFFE id the agent's certificate carries in a trust domain.
pub fn agent_identity(trust_domain: &str) -> String {
    format!(
        "spiffe://{trust_domain}/ns/{}/sa/{}",
        defaults::AGENT_NAMESPACE,
        defaults::AGENT_SERVICE_ACCOUNT
    )
}

/// CPU and memory requests and limits of the proxy container.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyResources {
    /// CPU the scheduler reserves for the proxy.
    pub cpu_request: Quantity,
    /// CPU the proxy may use at most.
    pub cpu_limit: Quantity,
    /// Memory the scheduler reserves for the proxy.
    pub memory_request: Quantity,
    /// Memory beyond which the proxy is OOM-killed.
    pub memory_limit: Quantity,
}

impl Default for ProxyResources {
    /// 10m / 32Mi requested, 1 CPU / 128Mi at most: enough for a busy sidecar, small
    /// enough that injecting every pod of a namespace does not crowd a node.
    fn default() -> Self {
        let q = |text: &str, value: f64| Quantity {
            text: text.to_owned(),
            value,
        };
        Self {
            cpu_request: q("10m", 0.01),
            cpu_limit: q("1", 1.0),
            memory_request: q("32Mi", 32.0 * 1024.0 * 1024.0),
            memory_limit: q("128Mi", 128.0 * 1024.0 * 1024.0),
        }
    }
}

/// Everything the injector needs besides the pod itself.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectConfig {
    /// Image of the proxy container.
    pub proxy_image: String,
    /// Image of the `pillion-init` container (the same image by default).
    pub init_image: String,
    /// `imagePullPolicy` of both containers.
    pub image_pull_policy: String,
    /// `host:port` of the agent's API.
    pub agent_addr: String,
    /// SPIFFE id the agent's certificate must carry.
    pub agent_identity: String,
    /// Trust domain of workload identities.
    pub trust_domain: String,
    /// Default resources of the proxy container.
    pub resources: ProxyResources,
    /// Run the proxy as a native sidecar (Kubernetes 1.29+); off for older clusters.
    pub native_sidecars: bool,
    /// Default log filter of the proxy.
    pub log_level: String,
    /// Default log format of the proxy, `text` or `json`.
    pub log_format: String,
    /// Default inbound ports that skip protocol detection.
    pub opaque_ports: Vec<u16>,
    /// Default ratio of new traces the proxy samples.
    pub trace_sampling: f64,
    /// OTLP/gRPC collector the proxies export spans to (the Jaeger of `deploy/`);
    /// `None` leaves tracing off.
    pub otlp_endpoint: Option<String>,
    /// Value of the `pillion.io/injected` marker (the injector's version).
    pub version: String,
}

impl Default for InjectConfig {
    fn default() -> Self {
        let version = env!("CARGO_PKG_VERSION").to_owned();
        let image = format!("{DEFAULT_IMAGE_REPO}:{version}");
        Self {
            proxy_image: image.clone(),
            init_image: image,
            image_pull_policy: "IfNotPresent".to_owned(),
            agent_addr: default_agent_addr(),
            agent_identity: agent_identity(defaults::TRUST_DOMAIN),
            trust_domain: defaults::TRUST_DOMAIN.to_owned(),
            resources: ProxyResources::default(),
            native_sidecars: true,
            log_level: "info".to_owned(),
            log_format: "json".to_owned(),
            opaque_ports: defaults::OPAQUE_PORTS.to_vec(),
            trace_sampling: 0.1,
            otlp_endpoint: Some(default_otlp_endpoint()),
            version,
        }
    }
}

/// Flags that build an [`InjectConfig`]; `#[command(flatten)]` them into a binary
/// (the `pillion-inject` CLI, and the agent for its webhook) so both agree.
#[derive(Debug, Clone, clap::Args)]
pub struct InjectArgs {
    /// Image of the injected proxy container.
    #[arg(long, env = "PILLION_PROXY_IMAGE", value_name = "IMAGE")]
    pub proxy_image: Option<String>,
    /// Image of the injected `pillion-init` container; defaults to the proxy image.
    #[arg(long, env = "PILLION_INIT_IMAGE", value_name = "IMAGE")]
    pub init_image: Option<String>,
    /// `imagePullPolicy` of the injected containers.
    #[arg(long, env = "PILLION_IMAGE_PULL_POLICY", default_value = "IfNotPresent",
          value_parser = ["Always", "IfNotPresent", "Never"])]
    pub image_pull_policy: String,
    /// `host:port` of the agent's API as the proxies reach it.
    #[arg(
        long = "inject-agent-addr",
        env = "PILLION_INJECT_AGENT_ADDR",
        value_name = "HOST:PORT"
    )]
    pub agent_addr: Option<String>,
    /// Trust domain of workload identities.
    #[arg(long = "inject-trust-domain", env = "PILLION_INJECT_TRUST_DOMAIN",
          default_value = defaults::TRUST_DOMAIN, value_name = "DOMAIN")]
    pub trust_domain: String,
    /// Run the proxy as a regular first container instead of a native sidecar, for
    /// clusters older than Kubernetes 1.29.
    #[arg(long, env = "PILLION_NO_NATIVE_SIDECARS")]
    pub no_native_sidecars: bool,
    /// Default CPU request of the proxy.
    #[arg(long, env = "PILLION_PROXY_CPU_REQUEST", default_value = "10m", value_parser = values::parse_quantity)]
    pub proxy_cpu_request: Quantity,
    /// Default CPU limit of the proxy.
    #[arg(long, env = "PILLION_PROXY_CPU_LIMIT", default_value = "1", value_parser = values::parse_quantity)]
    pub proxy_cpu_limit: Quantity,
    /// Default memory request of the proxy.
    #[arg(long, env = "PILLION_PROXY_MEMORY_REQUEST", default_value = "32Mi", value_parser = values::parse_quantity)]
    pub proxy_memory_request: Quantity,
    /// Default memory limit of the proxy.
    #[arg(long, env = "PILLION_PROXY_MEMORY_LIMIT", default_value = "128Mi", value_parser = values::parse_quantity)]
    pub proxy_memory_limit: Quantity,
    /// Default log filter of injected proxies.
    #[arg(long, env = "PILLION_PROXY_LOG_LEVEL", default_value = "info", value_parser = values::parse_log_level)]
    pub proxy_log_level: String,
    /// Default ratio of traces injected proxies sample, 0 to 1.
    #[arg(long, env = "PILLION_PROXY_TRACE_SAMPLING", default_value = "0.1", value_parser = values::parse_sampling)]
    pub proxy_trace_sampling: f64,
    /// OTLP/gRPC collector of injected proxies; an empty value turns export off.
    #[arg(long, env = "PILLION_PROXY_OTLP_ENDPOINT", value_name = "URL")]
    pub proxy_otlp_endpoint: Option<String>,
}

impl InjectArgs {
    /// Builds and checks the configuration the flags describe.
    pub fn into_config(self) -> Result<InjectConfig, ConfigError> {
        let base = InjectConfig::default();
        let proxy_image = self.proxy_image.unwrap_or(base.proxy_image);
        let config = InjectConfig {
            init_image: self.init_image.unwrap_or_else(|| proxy_image.clone()),
            proxy_image,
            image_pull_policy: self.image_pull_policy,
            agent_addr: self.agent_addr.unwrap_or(base.agent_addr),
            agent_identity: agent_identity(&self.trust_domain),
            trust_domain: self.trust_domain,
            resources: ProxyResources {
                cpu_request: self.proxy_cpu_request,
                cpu_limit: self.proxy_cpu_limit,
                memory_request: self.proxy_memory_request,
                memory_limit: self.proxy_memory_limit,
            },
            native_sidecars: !self.no_native_sidecars,
            log_level: self.proxy_log_level,
            trace_sampling: self.proxy_trace_sampling,
            otlp_endpoint: match self.proxy_otlp_endpoint {
                Some(url) if url.trim().is_empty() => None,
                Some(url) => Some(url),
                None => base.otlp_endpoint.clone(),
            },
            ..base
        };
        config.validate()?;
        Ok(config)
    }
}

impl InjectConfig {
    /// Checks values that would otherwise produce pods the API server rejects.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        for (what, value) in [
            ("proxy image", &self.proxy_image),
            ("init image", &self.init_image),
            ("agent address", &self.agent_addr),
            ("trust domain", &self.trust_domain),
        ] {
            if value.trim().is_empty() {
                problems.push(format!("the {what} is empty"));
            }
        }
        let r = &self.resources;
        for (what, request, limit) in [
            ("CPU", &r.cpu_request, &r.cpu_limit),
            ("memory", &r.memory_request, &r.memory_limit),
        ] {
            if request.value > limit.value {
                problems.push(format!(
                    "the proxy's {what} request {} is above its limit {}",
                    request.text, limit.text
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.trace_sampling) {
            problems.push(format!(
                "trace sampling {} is outside 0..1",
                self.trace_sampling
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        inject: InjectArgs,
    }

    #[test]
    fn defaults_come_from_the_api_crate() {
        let c = InjectConfig::default();
        c.validate().unwrap();
        assert_eq!(c.agent_addr, "pillion-agent.pillion.svc:15012");
        assert_eq!(
            c.agent_identity,
            "spiffe://cluster.local/ns/pillion/sa/agent"
        );
        assert_eq!(c.opaque_ports, defaults::OPAQUE_PORTS);
        assert!(c.native_sidecars);
        assert_eq!(c.proxy_image, c.init_image);
    }

    #[test]
    fn flags_default_to_the_same_config() {
        let from_flags = Cli::parse_from(["x"]).inject.into_config().unwrap();
        assert_eq!(from_flags, InjectConfig::default());
    }

    #[test]
    fn flags_override_and_are_checked() {
        let c = Cli::parse_from([
            "x",
            "--proxy-image",
            "registry.example/p:1",
            "--no-native-sidecars",
            "--inject-trust-domain",
            "example.org",
        ])
        .inject
        .into_config()
        .unwrap();
        assert_eq!(c.init_image, "registry.example/p:1");
        assert!(!c.native_sidecars);
        assert_eq!(c.agent_identity, "spiffe://example.org/ns/pillion/sa/agent");

        let err = Cli::parse_from(["x", "--proxy-cpu-request", "2", "--proxy-cpu-limit", "1"])
            .inject
            .into_config()
            .unwrap_err();
        assert!(err.to_string().contains("CPU request 2"), "{err}");
        assert!(Cli::try_parse_from(["x", "--proxy-memory-limit", "lots"]).is_err());
    }
}
