//! A test CA: one per test, handing out certificate stores that hold a leaf for an
//! identity and the CA's trust bundle, as the agent would.

use std::sync::Arc;
use std::time::Duration;

use pillion_identity::{csr, Ca, CertStore, SpiffeId};

/// The trust domain of every test identity.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
pub fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(TRUST_DOMAIN, ns, sa).expect("a valid test identity")
}

/// A CA of [`TRUST_DOMAIN`] and the stores it issues.
pub struct Pki {
    ca: Ca,
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

impl Pki {
    /// A fresh CA.
    pub fn new() -> Pki {
        Pki {
            ca: Ca::generate(TRUST_DOMAIN).expect("a test CA"),
        }
    }

    /// The CA itself.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// A store for `id` (a SPIFFE id) with a one-hour leaf signed through a CSR, and
    /// the CA's bundle.
    pub fn store(&self, id: &str) -> Arc<CertStore> {
        let id: SpiffeId = id.parse().expect("a valid SPIFFE id");
        let store = Arc::new(CertStore::new(id.clone()));
        let (key, csr_pem) = csr::generate(&id).expect("a CSR");
        let issued = self
            .ca
            .sign_csr(&csr_pem, &id, Duration::from_secs(3600))
            .expect("a signed leaf");
        store
            .set_leaf(&issued.chain_pem, &key)
            .expect("the leaf installs");
        store
            .set_trust_bundle(&self.ca.trust_bundle_pem())
            .expect("the bundle installs");
        store
    }

    /// A store for `id` that trusts this CA but holds no certificate of its own.
    pub fn empty_store(&self, id: &str) -> Arc<CertStore> {
        let id: SpiffeId = id.parse().expect("a valid SPIFFE id");
        let store = Arc::new(CertStore::new(id));
        store
            .set_trust_bundle(&self.ca.trust_bundle_pem())
            .expect("the bundle installs");
        store
    }
}

/// A CA and a server certificate it signed, in PEM: what a gateway serves at the
/// edge and what its clients trust.
pub struct EdgeCert {
    /// The CA certificate clients verify with.
    pub ca_pem: String,
    /// The server's chain (its leaf).
    pub chain_pem: String,
    /// The server's private key.
    pub key_pem: String,
}

impl EdgeCert {
    /// A fresh CA and a leaf for each of `names` (DNS names, `*.` wildcards allowed).
    pub fn new(ca_name: &str, names: &[&str]) -> Result<EdgeCert, rcgen::Error> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        let ca = ca_params.self_signed(&ca_key)?;
        let key = rcgen::KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let leaf = rcgen::CertificateParams::new(names)?.signed_by(&key, &ca, &ca_key)?;
        Ok(EdgeCert {
            ca_pem: ca.pem(),
            chain_pem: leaf.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
