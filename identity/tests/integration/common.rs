//! Helpers shared by the integration tests.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::RootCertStore;

pub fn certs(pem_text: &str) -> Vec<CertificateDer<'static>> {
    pem::parse_many(pem_text)
        .unwrap()
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect()
}

pub fn roots(pem_text: &str) -> Arc<RootCertStore> {
    let mut store = RootCertStore::empty();
    for c in certs(pem_text) {
        store.add(c).unwrap();
    }
    Arc::new(store)
}

/// Path-validates `chain_pem` (leaf first) against `roots_pem` with webpki, as a
/// TLS server certificate would be.
pub fn verify_chain(chain_pem: &str, roots_pem: &str) -> Result<(), rustls::Error> {
    let chain = certs(chain_pem);
    let leaf = ParsedCertificate::try_from(&chain[0])?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &leaf,
        &roots(roots_pem),
        &chain[1..],
        UnixTime::now(),
        provider.signature_verification_algorithms.all,
    )
}

/// A root CA made directly with rcgen (not by `Ca::generate`): (cert, key).
pub fn rcgen_root(cn: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (params.self_signed(&key).unwrap(), key)
}

/// An intermediate CA signed by `root`: (cert, key).
pub fn rcgen_intermediate(
    root: &rcgen::Certificate,
    root_key: &KeyPair,
) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "pillion test");
    dn.push(DnType::CommonName, "intermediate");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    (params.signed_by(&key, root, root_key).unwrap(), key)
}

/// A fresh, empty directory under the system temp dir; removed by the guard.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!(
            "pillion-identity-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
