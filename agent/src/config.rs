//! The agent's command line (every flag also an environment variable `PILLION_*`),
//! checked at start into an [`AgentConfig`] with messages that say what to fix.

use crate::ca::CaSpec;
use crate::kubernetes::{ClientSpec, KubernetesSpec};
use crate::source::SourceSpec;
use clap::{Parser, ValueEnum};
use pillion_api::defaults;
use pillion_api::duration::HumaneDuration;
use pillion_inject::{InjectArgs, InjectConfig};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// How often the source file is checked for changes unless told otherwise.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_millis(500);
/// Lifetime of the agent's own serving certificate (renewed at
/// [`defaults::RENEW_AT_FRACTION`] of it), independent of `--leaf-lifetime`.
pub const AGENT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Shortest leaf lifetime accepted: anything shorter cannot be renewed in time.
const MIN_LEAF_LIFETIME: Duration = Duration::from_secs(1);
/// Longest leaf lifetime accepted.
const MAX_LEAF_LIFETIME: Duration = Duration::from_secs(366 * 24 * 3600);
/// Reload interval bounds: fast enough for tests, slow enough to be sane.
const MIN_RELOAD_INTERVAL: Duration = Duration::from_millis(10);
const MAX_RELOAD_INTERVAL: Duration = Duration::from_secs(3600);

/// How long a positive TokenReview is cached unless told otherwise.
pub const DEFAULT_TOKEN_CACHE_TTL: Duration = Duration::from_secs(30);

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Command line of `pillion-agent`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "pillion-agent",
    version,
    about = "Pillion's central agent: signs workload certificates and streams discovery and policy to the proxies."
)]
pub struct AgentArgs {
    /// YAML source (workloads, tokens, services, policy), re-read when it changes: a
    /// file, or a directory whose `*.yaml` files are each a part of the mesh (a
    /// change then costs the files it touched). Without it the agent serves the
    /// embedded local-demo default.
    #[arg(long, env = "PILLION_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Watch the cluster (Services, EndpointSlices, Pods, Namespaces, pillion.io
    /// policies) instead of a YAML source, check proxy tokens with TokenReview, and
    /// publish the webhook's caBundle and the trust anchors. Uses the in-cluster
    /// ServiceAccount.
    #[arg(long, env = "PILLION_KUBERNETES", conflicts_with = "config")]
    pub kubernetes: bool,

    /// This replica's name in the leader election (the Lease `pillion-agent`): in
    /// Kubernetes its pod name, from the downward API [default: the host name].
    #[arg(long, env = "PILLION_POD_NAME", value_name = "NAME")]
    pub pod_name: Option<String>,

    /// Namespace of the agent's Lease (its own namespace, from the downward API).
    #[arg(long, env = "PILLION_POD_NAMESPACE", value_name = "NAMESPACE",
          default_value = pillion_api::defaults::AGENT_NAMESPACE)]
    pub pod_namespace: String,

    /// How long a TokenReview that accepted a token is trusted, at most 60s.
    #[arg(long, env = "PILLION_TOKEN_CACHE_TTL", value_name = "DURATION",
          default_value_t = HumaneDuration(DEFAULT_TOKEN_CACHE_TTL))]
    pub token_cache_ttl: HumaneDuration,

    /// The sidecar injector's settings (`POST /v1/inject`); its trust domain is
    /// always the agent's `--trust-domain`.
    #[command(flatten)]
    pub inject: InjectArgs,

    /// Address of the HTTPS (HTTP/2 and HTTP/1.1) API.
    #[arg(long, env = "PILLION_LISTEN", value_name = "ADDR",
          default_value_t = SocketAddr::from((Ipv4Addr::UNSPECIFIED, defaults::AGENT_PORT)))]
    pub listen: SocketAddr,

    /// Directory holding the CA (`ca.pem`, `ca-key.pem`); generated there if absent.
    /// Without it the CA lives in memory and changes at every start.
    #[arg(
        long,
        env = "PILLION_CA_DIR",
        value_name = "PATH",
        conflicts_with = "issuer_dir"
    )]
    pub ca_dir: Option<PathBuf>,

    /// Directory holding the issuer the agent signs with, in the files of a
    /// `kubernetes.io/tls` Secret: `tls.crt`, `tls.key` and the trust bundle
    /// `ca.crt` (made by `pillion ca init` or cert-manager). Never generated: the
    /// CA outlives the agent, and every replica signs under the same roots.
    #[arg(long, env = "PILLION_ISSUER_DIR", value_name = "PATH")]
    pub issuer_dir: Option<PathBuf>,

    /// Trust domain of every identity the agent issues.
    #[arg(id = "agent_trust_domain", long = "trust-domain", env = "PILLION_TRUST_DOMAIN", value_name = "DOMAIN",
          default_value = defaults::TRUST_DOMAIN)]
    pub trust_domain: String,

    /// Lifetime of issued workload certificates, like `24h` or `10s`.
    #[arg(long, env = "PILLION_LEAF_LIFETIME", value_name = "DURATION",
          default_value_t = HumaneDuration(defaults::LEAF_LIFETIME))]
    pub leaf_lifetime: HumaneDuration,

    /// Write the CA's root certificate (PEM) here at start, so proxies can verify the agent.
    #[arg(long, env = "PILLION_TRUST_ANCHOR_OUT", value_name = "PATH")]
    pub trust_anchor_out: Option<PathBuf>,

    /// How often to check the source file for changes, like `500ms`.
    #[arg(long, env = "PILLION_RELOAD_INTERVAL", value_name = "DURATION",
          default_value_t = HumaneDuration(DEFAULT_RELOAD_INTERVAL))]
    pub reload_interval: HumaneDuration,

    /// PEM roots that verify the servers of token providers' `jwks_uri`; default the
    /// system's roots (and `SSL_CERT_FILE`).
    #[arg(long, env = "PILLION_JWKS_CA_FILE", value_name = "PATH")]
    pub jwks_ca_file: Option<PathBuf>,

    /// How often each `jwks_uri` is fetched again, like `30s`.
    #[arg(long, env = "PILLION_JWKS_REFRESH", value_name = "DURATION",
          default_value_t = HumaneDuration(pillion_api::jwt::JWKS_REFRESH))]
    pub jwks_refresh: HumaneDuration,

    /// Log line format.
    #[arg(long, env = "PILLION_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, like `info` or `pillion_agent=debug,info`.
    #[arg(
        long,
        env = "PILLION_LOG_LEVEL",
        value_name = "FILTER",
        default_value = "info"
    )]
    pub log_level: String,
}

/// Everything an agent needs to start, already checked.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where workloads, services and policy come from.
    pub source: SourceSpec,
    /// Address of the HTTPS API (port 0 picks a free port; see `local_addr`).
    pub listen: SocketAddr,
    /// Where the CA lives.
    pub ca: CaSpec,
    /// Trust domain of every identity.
    pub trust_domain: String,
    /// Lifetime of issued workload certificates.
    pub leaf_lifetime: Duration,
    /// Lifetime of the agent's own serving certificate.
    pub agent_cert_lifetime: Duration,
    /// Where to write the root certificate at start, if anywhere.
    pub trust_anchor_out: Option<PathBuf>,
    /// How often to poll the source file.
    pub reload_interval: Duration,
    /// Watch the cluster instead of `source` (and authenticate with TokenReview).
    pub kubernetes: Option<KubernetesSpec>,
    /// What the webhook injects.
    pub inject: InjectConfig,
    /// Roots for `jwks_uri` servers (`None`: the system's).
    pub jwks_ca_file: Option<PathBuf>,
    /// How often each `jwks_uri` is fetched again.
    pub jwks_refresh: Duration,
}

/// A flag value that cannot work, with what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {reason}")]
pub struct ConfigError {
    /// The offending flag, like `--leaf-lifetime`.
    pub flag: &'static str,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl AgentConfig {
    /// A configuration with every default, serving `source`; tests then set `listen`
    /// to a loopback address with port 0.
    pub fn new(source: SourceSpec) -> Self {
        Self {
            source,
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, defaults::AGENT_PORT)),
            ca: CaSpec::InMemory,
            trust_domain: defaults::TRUST_DOMAIN.to_string(),
            leaf_lifetime: defaults::LEAF_LIFETIME,
            agent_cert_lifetime: AGENT_CERT_LIFETIME,
            trust_anchor_out: None,
            reload_interval: DEFAULT_RELOAD_INTERVAL,
            kubernetes: None,
            inject: InjectConfig::default(),
            jwks_ca_file: None,
            jwks_refresh: pillion_api::jwt::JWKS_REFRESH,
        }
    }

    /// Checks values that don't depend on the command line, for library callers too.
    pub fn validate(&self) -> Result<(), ConfigError> {
        pillion_identity::spiffe::validate_trust_domain(&self.trust_domain).map_err(|e| {
            ConfigError {
                flag: "--trust-domain",
                reason: format!(
                    "{e}; use a lowercase DNS-like name such as `{}`",
                    defaults::TRUST_DOMAIN
                ),
            }
        })?;
        check_range(
            "--leaf-lifetime",
            self.leaf_lifetime,
            MIN_LEAF_LIFETIME,
            MAX_LEAF_LIFETIME,
        )?;
        if let Some(k) = &self.kubernetes {
            if k.token_cache_ttl > crate::kubernetes::token_review::MAX_CACHE_TTL {
                return Err(ConfigError {
                    flag: "--token-cache-ttl",
                    reason: format!(
                        "{} is too long: a revoked token must stop working within a minute; use at most 60s",
                        HumaneDuration(k.token_cache_ttl)
                    ),
                });
            }
        }
        check_range(
            "--reload-interval",
            self.reload_interval,
            MIN_RELOAD_INTERVAL,
            MAX_RELOAD_INTERVAL,
        )?;
        if let SourceSpec::File(path) = &self.source {
            if !path.is_file() && !path.is_dir() {
                return Err(ConfigError {
                    flag: "--config",
                    reason: format!(
                        "{} is neither a file nor a directory; give the agent's YAML source \
                         (a file, or a directory of *.yaml files), or leave --config out to \
                         serve the embedded demo default",
                        path.display()
                    ),
                });
            }
        }
        if let CaSpec::Dir(dir) = &self.ca {
            if dir.exists() && !dir.is_dir() {
                return Err(ConfigError {
                    flag: "--ca-dir",
                    reason: format!(
                        "{} exists but is not a directory; give a directory for ca.pem and ca-key.pem",
                        dir.display()
                    ),
                });
            }
        }
        if let CaSpec::IssuerDir(dir) = &self.ca {
            if !dir.is_dir() {
                return Err(ConfigError {
                    flag: "--issuer-dir",
                    reason: format!(
                        "{} is not a directory; give the directory of tls.crt, tls.key and \
                         ca.crt (the mounted issuer Secret, or `pillion ca init --out DIR`)",
                        dir.display()
                    ),
                });
            }
        }
        if let Some(path) = &self.jwks_ca_file {
            if !path.is_file() {
                return Err(ConfigError {
                    flag: "--jwks-ca-file",
                    reason: format!(
                        "{} is not a file; give a PEM file of the CA certificates that sign \
                         your identity provider's HTTPS certificate, or leave it out to use \
                         the system's roots",
                        path.display()
                    ),
                });
            }
        }
        if self.jwks_refresh.is_zero() {
            return Err(ConfigError {
                flag: "--jwks-refresh",
                reason: "must be longer than zero, like 30s".into(),
            });
        }
        if let Some(out) = &self.trust_anchor_out {
            let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
            if parent.is_some_and(|p| !p.is_dir()) || out.is_dir() {
                return Err(ConfigError {
                    flag: "--trust-anchor-out",
                    reason: format!(
                        "cannot write {}: its directory must exist and the path must not be a directory",
                        out.display()
                    ),
                });
            }
        }
        Ok(())
    }
}

impl AgentArgs {
    /// Turns the command line into a checked [`AgentConfig`].
    pub fn to_config(&self) -> Result<AgentConfig, ConfigError> {
        let config = AgentConfig {
            source: match &self.config {
                Some(path) => SourceSpec::File(path.clone()),
                None => SourceSpec::Embedded,
            },
            listen: self.listen,
            ca: match (&self.issuer_dir, &self.ca_dir) {
                (Some(dir), _) => CaSpec::IssuerDir(dir.clone()),
                (None, Some(dir)) => CaSpec::Dir(dir.clone()),
                (None, None) => CaSpec::InMemory,
            },
            trust_domain: self.trust_domain.clone(),
            leaf_lifetime: self.leaf_lifetime.into(),
            agent_cert_lifetime: AGENT_CERT_LIFETIME,
            trust_anchor_out: self.trust_anchor_out.clone(),
            reload_interval: self.reload_interval.into(),
            kubernetes: self.kubernetes.then(|| KubernetesSpec {
                token_cache_ttl: self.token_cache_ttl.into(),
                leader: crate::kubernetes::leader::LeaderSpec::new(
                    &self.pod_namespace,
                    &self.pod_name.clone().unwrap_or_else(host_name),
                ),
                ..KubernetesSpec::new(ClientSpec::InCluster)
            }),
            inject: self.inject.clone().into_config().map_err(|e| ConfigError {
                flag: "--proxy-*",
                reason: e.to_string(),
            })?,
            jwks_ca_file: self.jwks_ca_file.clone(),
            jwks_refresh: self.jwks_refresh.into(),
        };
        config.validate()?;
        Ok(config)
    }
}

fn check_range(
    flag: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError {
            flag,
            reason: format!(
                "{} is out of range; use between {} and {}",
                HumaneDuration(value),
                HumaneDuration(min),
                HumaneDuration(max)
            ),
        });
    }
    Ok(())
}

/// The host name (a pod's name, in Kubernetes), or a fixed name if unreadable.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "pillion-agent".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<AgentArgs, clap::Error> {
        AgentArgs::try_parse_from(std::iter::once("pillion-agent").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_come_from_the_api_defaults() {
        let config = parse(&[]).unwrap().to_config().unwrap();
        assert_eq!(config.source, SourceSpec::Embedded);
        assert_eq!(config.listen.port(), defaults::AGENT_PORT);
        assert_eq!(config.trust_domain, defaults::TRUST_DOMAIN);
        assert_eq!(config.leaf_lifetime, defaults::LEAF_LIFETIME);
        assert_eq!(config.reload_interval, Duration::from_millis(500));
        assert_eq!(config.ca, CaSpec::InMemory);
    }

    #[test]
    fn an_issuer_dir_is_an_existing_directory_and_excludes_ca_dir() {
        assert!(parse(&["--issuer-dir", "/a", "--ca-dir", "/b"]).is_err());
        let dir = std::env::temp_dir();
        let dir = dir.to_str().unwrap();
        let config = parse(&["--issuer-dir", dir]).unwrap().to_config().unwrap();
        assert_eq!(config.ca, CaSpec::IssuerDir(dir.into()));
        let missing = parse(&["--issuer-dir", "/nonexistent/pillion-issuer"])
            .unwrap()
            .to_config()
            .unwrap_err();
        assert_eq!(missing.flag, "--issuer-dir");
        assert!(missing.reason.contains("tls.crt"), "{}", missing.reason);
    }

    #[test]
    fn humane_durations_parse() {
        let args = parse(&["--leaf-lifetime", "10s", "--reload-interval", "50ms"]).unwrap();
        let config = args.to_config().unwrap();
        assert_eq!(config.leaf_lifetime, Duration::from_secs(10));
        assert_eq!(config.reload_interval, Duration::from_millis(50));
        assert!(parse(&["--leaf-lifetime", "ten seconds"]).is_err());
    }

    #[test]
    fn bad_values_say_what_to_fix() {
        let e = parse(&["--leaf-lifetime", "0s"])
            .unwrap()
            .to_config()
            .unwrap_err();
        assert_eq!(e.flag, "--leaf-lifetime");
        assert!(e.reason.contains("use between"), "{e}");

        let e = parse(&["--trust-domain", "Bad Domain"])
            .unwrap()
            .to_config()
            .unwrap_err();
        assert_eq!(e.flag, "--trust-domain");

        let e = parse(&["--config", "/nonexistent/pillion.yaml"])
            .unwrap()
            .to_config()
            .unwrap_err();
        assert_eq!(e.flag, "--config");
        assert!(e.reason.contains("embedded demo default"), "{e}");

        let e = parse(&["--kubernetes", "--token-cache-ttl", "5m"])
            .unwrap()
            .to_config()
            .unwrap_err();
        assert_eq!(e.flag, "--token-cache-ttl");
        assert!(parse(&["--kubernetes", "--config", "x.yaml"]).is_err());
    }

    #[test]
    fn kubernetes_mode_and_injector_flags() {
        let config = parse(&["--kubernetes", "--proxy-image", "registry.example/p:1"])
            .unwrap()
            .to_config()
            .unwrap();
        let k = config.kubernetes.expect("kubernetes mode");
        assert!(matches!(k.client, ClientSpec::InCluster));
        assert_eq!(k.token_cache_ttl, DEFAULT_TOKEN_CACHE_TTL);
        assert_eq!(config.inject.proxy_image, "registry.example/p:1");
        assert!(parse(&[])
            .unwrap()
            .to_config()
            .unwrap()
            .kubernetes
            .is_none());
    }
}
