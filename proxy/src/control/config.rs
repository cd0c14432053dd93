//! The control-plane settings (`--agent-addr` and friends), checked at start with
//! messages that name the flag and say what to fix.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pillion_api::defaults;
use pillion_identity::SpiffeId;

/// The flags as given, before checking; `agent_addr: None` means no control plane.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ControlFlags {
    /// `--agent-addr`: host:port of the agent's API.
    pub agent_addr: Option<String>,
    /// `--agent-identity`: the SPIFFE id the agent must prove.
    pub agent_identity: Option<String>,
    /// `--trust-anchors`: PEM file of the roots that verify the agent.
    pub trust_anchors: Option<PathBuf>,
    /// `--token-file`: the credential proving the workload's identity.
    pub token_file: Option<PathBuf>,
    /// `--trust-domain`.
    pub trust_domain: String,
    /// `--namespace`.
    pub namespace: Option<String>,
    /// `--service-account`.
    pub service_account: Option<String>,
    /// `--pod-name`, for telemetry.
    pub pod_name: Option<String>,
    /// `--discovery`.
    pub discovery: DiscoveryMode,
    /// `--discovery-idle`.
    pub discovery_idle: Duration,
}

/// `--discovery`: how the proxy learns the mesh's services.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DiscoveryMode {
    /// Resolve each destination the workload uses, when first used.
    #[default]
    OnDemand,
    /// Hold every service of the mesh (what proxies did before on-demand discovery).
    Full,
}

/// Shortest `--discovery-idle`: the usage clock counts whole seconds.
const MIN_DISCOVERY_IDLE: Duration = Duration::from_secs(2);

/// How the proxy learns services, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discovery {
    /// Every service, in the view.
    Full,
    /// Each destination on first use; forgotten after `idle` without a use.
    OnDemand {
        /// How long an unused destination is kept.
        idle: Duration,
    },
}

/// A checked control-plane configuration.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// host:port of the agent's API.
    pub agent_addr: String,
    /// The SPIFFE id the agent's certificate must carry.
    pub agent_identity: SpiffeId,
    /// The roots that verify the agent and mesh peers at start, PEM.
    pub trust_anchors_pem: String,
    /// Where they came from, followed while the proxy runs (`None`: read once).
    pub trust_anchors_path: Option<PathBuf>,
    /// Re-read before every request: projected tokens rotate.
    pub token_file: PathBuf,
    /// This workload's identity.
    pub workload: SpiffeId,
    /// The pod's name, if known.
    pub pod_name: Option<String>,
    /// How services are learned.
    pub discovery: Discovery,
}

/// A control-plane flag that cannot work.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ControlConfigError {
    /// A flag needed with `--agent-addr` is missing.
    #[error("{flag} is required with --agent-addr: {what}")]
    Missing {
        /// The missing flag.
        flag: &'static str,
        /// What to give.
        what: &'static str,
    },
    /// A flag that only makes sense with an agent was given without one.
    #[error(
        "{flag} only applies with --agent-addr; set --agent-addr host:port or leave {flag} out"
    )]
    NeedsAgent {
        /// The flag given alone.
        flag: &'static str,
    },
    /// The agent address is not host:port (or a list of them).
    #[error("--agent-addr must be host:port, or several separated by commas, e.g. pillion-agent.pillion.svc:{port}; got {got:?}", port = defaults::AGENT_PORT)]
    AgentAddr {
        /// The value given.
        got: String,
    },
    /// An identity flag does not form a SPIFFE id.
    #[error("{flags} do not form a valid SPIFFE id: {reason}")]
    Identity {
        /// The flags involved.
        flags: &'static str,
        /// Why.
        reason: String,
    },
    /// A file cannot be read.
    #[error("{flag}: cannot read {}: {source}", path.display())]
    Read {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `--discovery-idle` is too short.
    #[error(
        "--discovery-idle must be at least {min:?} (the usage clock counts seconds); got {got:?}"
    )]
    DiscoveryIdle {
        /// The shortest allowed.
        min: Duration,
        /// The value given.
        got: Duration,
    },
    /// The trust anchors are not usable PEM roots.
    #[error("--trust-anchors: {} holds no usable root certificate: {reason}", path.display())]
    TrustAnchors {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl ControlFlags {
    /// Checks the flags; `Ok(None)` when no agent is configured (plain L4 proxy).
    pub(crate) fn resolve(&self) -> Result<Option<ControlConfig>, ControlConfigError> {
        let Some(agent_addr) = &self.agent_addr else {
            for (flag, given) in [
                ("--agent-identity", self.agent_identity.is_some()),
                ("--trust-anchors", self.trust_anchors.is_some()),
                ("--token-file", self.token_file.is_some()),
            ] {
                if given {
                    return Err(ControlConfigError::NeedsAgent { flag });
                }
            }
            return Ok(None);
        };
        for replica in agent_addr.split(',').map(str::trim) {
            check_addr(replica).map_err(|_| ControlConfigError::AgentAddr {
                got: agent_addr.clone(),
            })?;
        }
        let td = &self.trust_domain;
        let agent_identity = match &self.agent_identity {
            Some(text) => SpiffeId::parse(text).map_err(|e| ControlConfigError::Identity {
                flags: "--agent-identity",
                reason: e.to_string(),
            })?,
            None => SpiffeId::new(
                td,
                defaults::AGENT_NAMESPACE,
                defaults::AGENT_SERVICE_ACCOUNT,
            )
            .map_err(|e| ControlConfigError::Identity {
                flags: "--trust-domain",
                reason: e.to_string(),
            })?,
        };
        let namespace = self
            .namespace
            .as_deref()
            .ok_or(ControlConfigError::Missing {
                flag: "--namespace",
                what: "give the workload's namespace (in Kubernetes, from the downward API)",
            })?;
        let service_account =
            self.service_account
                .as_deref()
                .ok_or(ControlConfigError::Missing {
                    flag: "--service-account",
                    what: "give the workload's service account (in Kubernetes, from the pod spec)",
                })?;
        let workload = SpiffeId::new(td, namespace, service_account).map_err(|e| {
            ControlConfigError::Identity {
                flags: "--trust-domain, --namespace and --service-account",
                reason: e.to_string(),
            }
        })?;
        let anchors_path = self
            .trust_anchors
            .as_ref()
            .ok_or(ControlConfigError::Missing {
                flag: "--trust-anchors",
                what: "give the PEM file of the mesh's root certificate(s) that verify the agent",
            })?;
        let trust_anchors_pem = read("--trust-anchors", anchors_path)?;
        pillion_identity::TrustBundle::parse(&trust_anchors_pem, td, std::time::SystemTime::now())
            .map_err(|e| ControlConfigError::TrustAnchors {
                path: anchors_path.clone(),
                reason: e.to_string(),
            })?;
        let token_file = self.token_file.clone().ok_or(ControlConfigError::Missing {
            flag: "--token-file",
            what: "give the file holding the workload's token (a projected ServiceAccount token in Kubernetes)",
        })?;
        // Read once now so a wrong path fails at start; it is re-read per request.
        read("--token-file", &token_file)?;
        let discovery = match self.discovery {
            DiscoveryMode::Full => Discovery::Full,
            DiscoveryMode::OnDemand if self.discovery_idle < MIN_DISCOVERY_IDLE => {
                return Err(ControlConfigError::DiscoveryIdle {
                    min: MIN_DISCOVERY_IDLE,
                    got: self.discovery_idle,
                })
            }
            DiscoveryMode::OnDemand => Discovery::OnDemand {
                idle: self.discovery_idle,
            },
        };
        Ok(Some(ControlConfig {
            agent_addr: agent_addr.clone(),
            agent_identity,
            trust_anchors_pem,
            trust_anchors_path: Some(anchors_path.clone()),
            token_file,
            workload,
            pod_name: self.pod_name.clone(),
            discovery,
        }))
    }
}

/// host:port with a non-empty host and a numeric port (IPv6 hosts in brackets).
fn check_addr(addr: &str) -> Result<(), ControlConfigError> {
    let bad = || ControlConfigError::AgentAddr {
        got: addr.to_string(),
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && (host.starts_with('[') == host.ends_with(']'))
        && !host.contains(char::is_whitespace)
        && (host.starts_with('[') || !host.contains(':'));
    if port == 0 || !host_ok {
        return Err(bad());
    }
    Ok(())
}

fn read(flag: &'static str, path: &Path) -> Result<String, ControlConfigError> {
    std::fs::read_to_string(path).map_err(|source| ControlConfigError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> ControlFlags {
        ControlFlags {
            trust_domain: defaults::TRUST_DOMAIN.into(),
            ..ControlFlags::default()
        }
    }

    #[test]
    fn no_agent_is_no_control_plane() {
        assert!(flags().resolve().unwrap().is_none());
        let f = ControlFlags {
            namespace: Some("demo".into()),
            ..flags()
        };
        assert!(f.resolve().unwrap().is_none());
        let f = ControlFlags {
            token_file: Some("/t".into()),
            ..flags()
        };
        let err = f.resolve().unwrap_err().to_string();
        assert!(
            err.contains("--token-file only applies with --agent-addr"),
            "{err}"
        );
    }

    #[test]
    fn agent_needs_identity_anchors_and_token() {
        let f = ControlFlags {
            agent_addr: Some("198.18.0.1:15012".into()),
            ..flags()
        };
        let err = f.resolve().unwrap_err().to_string();
        assert!(
            err.starts_with("--namespace is required with --agent-addr"),
            "{err}"
        );
        let f = ControlFlags {
            namespace: Some("demo".into()),
            service_account: Some("Bad_SA".into()),
            ..f
        };
        let err = f.resolve().unwrap_err().to_string();
        assert!(err.contains("do not form a valid SPIFFE id"), "{err}");
        let f = ControlFlags {
            service_account: Some("client".into()),
            ..f
        };
        let err = f.resolve().unwrap_err().to_string();
        assert!(err.starts_with("--trust-anchors is required"), "{err}");
        let f = ControlFlags {
            trust_anchors: Some("/nonexistent/ca.pem".into()),
            ..f
        };
        let err = f.resolve().unwrap_err().to_string();
        assert!(
            err.starts_with("--trust-anchors: cannot read /nonexistent/ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn agent_replicas() {
        let f = |addr: &str| ControlFlags {
            agent_addr: Some(addr.into()),
            namespace: Some("demo".into()),
            service_account: Some("client".into()),
            ..flags()
        };
        // A good list gets as far as the next missing flag; a bad member is named.
        let err = f("198.18.0.1:15012, 198.18.0.2:15012")
            .resolve()
            .unwrap_err();
        assert!(
            err.to_string().starts_with("--trust-anchors is required"),
            "{err}"
        );
        for bad in [
            "198.18.0.1:15012,",
            "198.18.0.1:15012,nope",
            ",198.18.0.1:15012",
        ] {
            let err = f(bad).resolve().unwrap_err().to_string();
            assert!(
                err.starts_with("--agent-addr must be host:port"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn agent_addresses() {
        for good in [
            "198.18.0.1:15012",
            "agent.pillion.svc:15012",
            "[2001:2::1]:15012",
        ] {
            check_addr(good).unwrap();
        }
        for bad in [
            "198.18.0.1",
            ":15012",
            "a:0",
            "a:b",
            "2001:2::1:15012",
            "[::1:1",
        ] {
            assert!(check_addr(bad).is_err(), "{bad}");
        }
    }
}
