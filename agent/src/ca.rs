//! The agent's use of the mesh CA: where it lives (a directory or memory), signing
//! workload CSRs, and the agent's own serving certificate.

use arc_swap::ArcSwap;
use pillion_api::defaults;
use pillion_identity::ca::{
    Ca, CaError, IssueError, Issued, ISSUER_CERT_FILE, ISSUER_KEY_FILE, TRUST_BUNDLE_FILE,
};
use pillion_identity::{SpiffeId, Zeroizing};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

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

/// The mesh CA as the agent uses it. With `--issuer-dir` it follows the directory
/// while the agent runs ([`AgentCa::reload`]): a rotation's new bundle or issuer is
/// used from the next signature on, and `changes` tells the serving certificate
/// and the view streams.
#[derive(Debug)]
pub struct AgentCa {
    ca: ArcSwap<Ca>,
    agent_identity: SpiffeId,
    spec: CaSpec,
    trust_domain: String,
    /// Bumped on every change of issuer or bundle.
    changes: watch::Sender<u64>,
    /// Digest of the issuer files last loaded (never the key itself).
    seen: Mutex<Option<Vec<u8>>>,
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
            ca: ArcSwap::from_pointee(ca),
            agent_identity: agent_identity(trust_domain)?,
            spec: spec.clone(),
            trust_domain: trust_domain.to_string(),
            changes: watch::Sender::new(0),
            seen: Mutex::new(None),
        })
    }

    /// Re-reads `--issuer-dir` and, when its issuer or bundle changed, signs with
    /// it from now on. `Ok(true)` when it changed; an unusable directory is an
    /// error, and the last good issuer keeps signing. Other specs never change.
    pub fn reload(&self) -> Result<bool, CaSetupError> {
        let CaSpec::IssuerDir(dir) = &self.spec else {
            return Ok(false);
        };
        let failed = |error| CaSetupError::Issuer {
            dir: dir.clone(),
            error,
        };
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| {
                failed(CaError::Io {
                    op: "reading",
                    path,
                    source,
                })
            })
        };
        let bundle = read(TRUST_BUNDLE_FILE)?;
        let issuer = read(ISSUER_CERT_FILE)?;
        let key = Zeroizing::new(read(ISSUER_KEY_FILE)?);
        // The files are read every tick; they are parsed only when they changed.
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [&bundle, &issuer, &*key] {
            digest.update(&(part.len() as u64).to_be_bytes());
            digest.update(part.as_bytes());
        }
        let digest = digest.finish();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.as_deref() == Some(digest.as_ref()) {
            return Ok(false);
        }
        let next = Ca::from_issuer(&issuer, &key, &bundle, &self.trust_domain).map_err(failed)?;
        *seen = Some(digest.as_ref().to_vec());
        let current = self.ca.load();
        if next.cert_pem() == current.cert_pem()
            && next.trust_bundle_pem() == current.trust_bundle_pem()
        {
            return Ok(false);
        }
        self.ca.store(Arc::new(next));
        self.changes.send_modify(|n| *n += 1);
        Ok(true)
    }

    /// The SHA-256 (hex) of the certificate that signs workload leaves now.
    pub fn issuer_sha256(&self) -> String {
        self.ca.load().issuer_sha256().to_string()
    }

    /// Sees every change of issuer or bundle.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The roots proxies trust, PEM.
    pub fn trust_bundle_pem(&self) -> String {
        self.ca.load().trust_bundle_pem()
    }

    /// The SPIFFE id of the agent's own certificate.
    pub fn agent_identity(&self) -> &SpiffeId {
        &self.agent_identity
    }

    /// Signs a workload's CSR for exactly `identity`; the bundle that goes with
    /// the leaf comes from the same issuer, whatever a reload does meanwhile.
    pub fn sign_workload(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        lifetime: Duration,
    ) -> Result<(Issued, String), IssueError> {
        let ca = self.ca.load();
        let issued = ca.sign_csr(csr_pem, identity, lifetime)?;
        Ok((issued, ca.trust_bundle_pem()))
    }

    /// Issues the agent's own serving certificate and key: its SPIFFE id for the
    /// proxies, plus [`AGENT_DNS_NAMES`] for the API server calling the webhook.
    pub fn issue_agent_cert(
        &self,
        lifetime: Duration,
    ) -> Result<(Issued, Zeroizing<String>), CaError> {
        self.ca
            .load()
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
