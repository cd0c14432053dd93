//! Checks a loaded CA certificate and the chain above it up to a self-signed root.

use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;

use super::error::CaError;
use crate::cert_info;

/// The CA chain split the way the CA uses it.
#[derive(Debug)]
pub(crate) struct CheckedChain {
    /// Certificates appended after every leaf: the CA's own certificate and any
    /// intermediates above it, but not the root. Empty when the CA is the root.
    pub intermediates: Vec<CertificateDer<'static>>,
    /// The self-signed root that goes into the trust bundle.
    pub root: CertificateDer<'static>,
}

/// Checks that `certs[0]` is a CA, each certificate is signed by the next, and the
/// last one is a self-signed CA root.
pub(crate) fn check_chain(certs: &[CertificateDer<'static>]) -> Result<CheckedChain, CaError> {
    let parsed = certs
        .iter()
        .map(|c| cert_info::parse(c).map_err(|e| CaError::Certificate(e.to_string())))
        .collect::<Result<Vec<X509Certificate<'_>>, CaError>>()?;
    let Some(last) = parsed.last() else {
        return Err(CaError::MissingRoot);
    };
    for (index, cert) in parsed.iter().enumerate() {
        if !cert.is_ca() {
            return Err(CaError::NotCa {
                index,
                subject: cert.subject().to_string(),
            });
        }
    }
    for (index, pair) in parsed.windows(2).enumerate() {
        let (child, parent) = (&pair[0], &pair[1]);
        let broken = |reason: String| CaError::BrokenChain {
            index,
            next: index + 1,
            reason,
        };
        if child.issuer().as_raw() != parent.subject().as_raw() {
            return Err(broken(format!(
                "issuer {} is not the next subject {}",
                child.issuer(),
                parent.subject()
            )));
        }
        child
            .verify_signature(Some(parent.public_key()))
            .map_err(|e| broken(format!("signature does not verify: {e}")))?;
    }
    let self_signed =
        last.issuer().as_raw() == last.subject().as_raw() && last.verify_signature(None).is_ok();
    if !self_signed {
        return Err(CaError::MissingRoot);
    }
    let n = certs.len();
    Ok(CheckedChain {
        intermediates: certs[..n - 1].to_vec(),
        root: certs[n - 1].clone(),
    })
}
