//! The proxy's side of issuance: a fresh key that never leaves the process, and a CSR.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use thiserror::Error;

use crate::spiffe::SpiffeId;

/// Failure to make a key or CSR.
#[derive(Debug, Error)]
pub enum CsrError {
    /// The P-256 key could not be generated.
    #[error("generating the workload key: {0}")]
    KeyGeneration(#[source] rcgen::Error),
    /// The CSR could not be encoded or signed.
    #[error("building the CSR for {id}: {source}")]
    Build {
        /// The identity requested.
        id: SpiffeId,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
}

/// Generates an ECDSA P-256 key in memory and a CSR naming `id` as its only URI SAN.
///
/// The key stays with the caller (hand it to `CertStore::set_leaf` once signed);
/// only the CSR PEM travels to the agent.
pub fn generate(id: &SpiffeId) -> Result<(KeyPair, String), CsrError> {
    let key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CsrError::KeyGeneration)?;
    let build = |source| CsrError::Build {
        id: id.clone(),
        source,
    };
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(id.as_str().try_into().map_err(build)?)];
    let csr = params.serialize_request(&key).map_err(build)?;
    let pem = csr.pem().map_err(build)?;
    Ok((key, pem))
}
