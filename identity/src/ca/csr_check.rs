//! Checks a workload's CSR before the CA signs anything for it.
//!
//! Only the public key and the requested URI SAN are taken from a CSR; every other
//! field of the issued certificate is decided by the CA.

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519, OID_SIG_ED448,
};
use x509_parser::prelude::FromDer;

use super::error::IssueError;
use crate::pem_blocks::csr_from_pem;

/// Length of an uncompressed P-256 point: 0x04 || X (32) || Y (32).
const P256_POINT_LEN: usize = 65;

/// The parts of a verified CSR the CA uses.
#[derive(Debug)]
pub(crate) struct CheckedCsr {
    /// The subject's uncompressed P-256 public point.
    pub public_point: Vec<u8>,
    /// The URI SANs the CSR requests (normally one SPIFFE id, possibly none).
    pub requested_uris: Vec<String>,
}

/// Parses a PEM CSR, checks its key is ECDSA P-256 and its self-signature holds.
pub(crate) fn check_csr(csr_pem: &str) -> Result<CheckedCsr, IssueError> {
    let der = csr_from_pem(csr_pem, "CSR").map_err(|e| IssueError::Malformed(e.to_string()))?;
    let csr = match X509CertificationRequest::from_der(&der) {
        Ok(([], csr)) => csr,
        Ok(_) => return Err(IssueError::Malformed("trailing bytes after the CSR".into())),
        Err(e) => return Err(IssueError::Malformed(format!("not a PKCS#10 request: {e}"))),
    };
    let info = &csr.certification_request_info;
    let public_point = p256_point(&info.subject_pki)?;
    csr.verify_signature()
        .map_err(|e| IssueError::Malformed(format!("the CSR's signature does not verify: {e}")))?;
    Ok(CheckedCsr {
        public_point,
        requested_uris: requested_uris(&csr)?,
    })
}

/// The raw public point if the key is ECDSA P-256, else the reason it is refused.
fn p256_point(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<Vec<u8>, IssueError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_PKCS1_RSAENCRYPTION {
        return Err(IssueError::WeakKey("RSA key".into()));
    }
    if *alg == OID_SIG_ED25519 || *alg == OID_SIG_ED448 {
        return Err(IssueError::WeakKey("EdDSA key".into()));
    }
    if *alg != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err(IssueError::WeakKey(format!("unknown key algorithm {alg}")));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .ok_or_else(|| IssueError::WeakKey("EC key without a named curve".into()))?;
    if curve == OID_NIST_EC_P384 || curve == OID_NIST_EC_P521 {
        return Err(IssueError::WeakKey(format!(
            "EC curve {curve} is not P-256"
        )));
    }
    if curve != OID_EC_P256 {
        return Err(IssueError::WeakKey(format!("unsupported EC curve {curve}")));
    }
    let point = spki.subject_public_key.data.as_ref();
    if point.len() != P256_POINT_LEN || point.first() != Some(&0x04) {
        return Err(IssueError::Malformed(
            "P-256 public key is not an uncompressed point".into(),
        ));
    }
    Ok(point.to_vec())
}

/// The URI SANs of the CSR's extension request.
fn requested_uris(csr: &X509CertificationRequest<'_>) -> Result<Vec<String>, IssueError> {
    let mut uris = Vec::new();
    let Some(exts) = csr.requested_extensions() else {
        return Ok(uris);
    };
    for ext in exts {
        match ext {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    if let GeneralName::URI(u) = name {
                        uris.push((*u).to_string());
                    }
                }
            }
            ParsedExtension::ParseError { error } => {
                return Err(IssueError::Malformed(format!(
                    "a requested extension cannot be parsed: {error}"
                )));
            }
            _ => {}
        }
    }
    Ok(uris)
}
