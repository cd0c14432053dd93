//! The agent's use of the mesh CA: where it lives (a directory or memory), signing
//! workload CSRs, and the agent's own serving certificate.

use pillion_api::defaults;
use pillion_identity::ca::{Ca, CaError, IssueError, Issued};
use pillion_identity::{SpiffeId, Zeroizing};
use std::path::PathBuf;
use std::time::Duration;

/// DNS names of the agent's Service (`deploy/agent/service.yaml`) on its serving
/// certificate: the Kubernetes API server verifies the webhook by them.
pub const AGENT_DNS_NAMES: [&str; 2] = [
    "pillion-agent.pillion.svc",
    "pillion-agent.pillion.svc.cluster.local",
];

/// Where the CA's certificate and key come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSpec {
    /// A fresh root, generated at start and kept in memory only.
    InMemory,
    /// `ca.pem` and `ca-key.pem` in this directory, generated (key 0600) if absent.
    Dir(PathBuf),
    /// An issuer under a separate root: `tls.crt`, `tls.key` and `ca.crt` in this
    /// directory (a mounted Secret); never generated.
    IssuerDir(PathBuf),
}

/// Why the CA could not be set up, naming where it was looked for (the message
/// carries the cause).
#[derive(Debug, thiserror::Error)]
pub enum CaSetupError {
    /// Generating an in-memory root failed.
    #[error("cannot generate an in-memory CA: {0}")]
    Generate(CaError),
    /// Loading or generating the CA in a directory failed.
    #[error("cannot load or create the CA in {}: {error}", dir.display())]
    Dir {
        /// The `--ca-dir` given.
        dir: PathBuf,
        /// What went wrong.
        error: CaError,
    },
    /// Loading the issuer failed.
    #[error("cannot load the issuer from --issuer-dir {}: {error}", dir.display())]
    Issuer {
        /// The `--issuer-dir` given.
        dir: PathBuf,
        /// What went wrong.
        error: CaError,
    },
    /// The trust domain can't form the agent's identity.
    #[error("cannot form the agent's identity in trust domain {trust_domain:?}: {reason}")]
    AgentIdentity {
        /// The trust domain.
        trust_domain: String,
        /// Why.
        reason: String,
    },
}

/// The mesh CA as the agent uses it.
#[derive(Debug)]
pub struct AgentCa {
    ca: Ca,
    agent_identity: SpiffeId,
}

impl AgentCa {
    /// Opens (or creates) the CA for `trust_domain`.
    pub fn open(spec: &CaSpec, trust_domain: &str) -> Result<Self, CaSetupError> {
        let ca = match spec {
            CaSpec::InMemory => Ca::generate(trust_domain).map_err(CaSetupError::Generate)?,
            CaSpec::Dir(dir) => {
                Ca::load_or_generate(dir, trust_domain).map_err(|error| CaSetupError::Dir {
                    dir: dir.clone(),
                    error,
                })?
            }
            CaSpec::IssuerDir(dir) => {
                Ca::load_issuer_dir(dir, trust_domain).map_err(|error| CaSetupError::Issuer {
                    dir: dir.clone(),
                    error,
                })?
            }
        };
        Ok(Self {
            ca,
            agent_identity: agent_identity(trust_domain)?,
        })
    }

    /// The roots proxies trust, PEM.
    pub fn trust_bundle_pem(&self) -> String {
        self.ca.trust_bundle_pem()
    }

    /// The SPIFFE id of the agent's own certificate.
    pub fn agent_identity(&self) -> &SpiffeId {
        &self.agent_identity
    }

    /// Signs a workload's CSR for exactly `identity`.
    pub fn sign_workload(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        lifetime: Duration,
    ) -> Result<Issued, IssueError> {
        self.ca.sign_csr(csr_pem, identity, lifetime)
    }

    /// Issues the agent's own serving certificate and key: its SPIFFE id for the
    /// proxies, plus [`AGENT_DNS_NAMES`] for the API server calling the webhook.
    pub fn issue_agent_cert(
        &self,
        lifetime: Duration,
    ) -> Result<(Issued, Zeroizing<String>), CaError> {
        self.ca
            .issue_with_dns_names(&self.agent_identity, &AGENT_DNS_NAMES, lifetime)
    }
}

/// `spiffe://<td>/ns/pillion/sa/agent`: the identity proxies expect of the agent.
pub fn agent_identity(trust_domain: &str) -> Result<SpiffeId, CaSetupError> {
    SpiffeId::new(
        trust_domain,
        defaults::AGENT_NAMESPACE,
        defaults::AGENT_SERVICE_ACCOUNT,
    )
    .map_err(|e| CaSetupError::AgentIdentity {
        trust_domain: trust_domain.to_string(),
        reason: e.to_string(),
    })
}
