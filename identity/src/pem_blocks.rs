//! Reading and writing the PEM blocks this crate exchanges: certificates, CSRs, keys.

use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};
use thiserror::Error;

/// PEM label of an X.509 certificate.
const CERTIFICATE: &str = "CERTIFICATE";
/// PEM label of a PKCS#10 request (and its legacy spelling).
const CSR_LABELS: [&str; 2] = ["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"];

/// PEM input that cannot be used, saying which input and why.
#[derive(Debug, Error)]
pub enum PemError {
    /// The text is not PEM at all, or a block's base64 is broken.
    #[error("{what} is not valid PEM: {reason}")]
    Invalid {
        /// Which input (e.g. "trust bundle").
        what: &'static str,
        /// The decoder's complaint.
        reason: String,
    },
    /// The text holds no block of the wanted kind.
    #[error("{what} holds no {label} PEM block")]
    Missing {
        /// Which input.
        what: &'static str,
        /// The wanted label.
        label: &'static str,
    },
    /// More blocks than the input may hold.
    #[error("{what} holds {count} {label} PEM blocks, expected exactly one")]
    TooMany {
        /// Which input.
        what: &'static str,
        /// The wanted label.
        label: &'static str,
        /// How many were found.
        count: usize,
    },
}

fn parse_all(text: &str, what: &'static str) -> Result<Vec<pem::Pem>, PemError> {
    pem::parse_many(text).map_err(|e| PemError::Invalid {
        what,
        reason: e.to_string(),
    })
}

/// All certificates of a PEM text, in order; at least one.
pub(crate) fn certs_from_pem(
    text: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs: Vec<CertificateDer<'static>> = parse_all(text, what)?
        .into_iter()
        .filter(|p| p.tag() == CERTIFICATE)
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err(PemError::Missing {
            what,
            label: CERTIFICATE,
        });
    }
    Ok(certs)
}

/// The DER of the single certificate request in a PEM text.
pub(crate) fn csr_from_pem(text: &str, what: &'static str) -> Result<Vec<u8>, PemError> {
    let mut csrs: Vec<Vec<u8>> = parse_all(text, what)?
        .into_iter()
        .filter(|p| CSR_LABELS.contains(&p.tag()))
        .map(pem::Pem::into_contents)
        .collect();
    match csrs.len() {
        0 => Err(PemError::Missing {
            what,
            label: CSR_LABELS[0],
        }),
        1 => Ok(csrs.remove(0)),
        count => Err(PemError::TooMany {
            what,
            label: CSR_LABELS[0],
            count,
        }),
    }
}

/// The single private key of a PEM text: PKCS#8, SEC1 (EC) or PKCS#1 (RSA).
pub(crate) fn private_key_from_pem(
    text: &str,
    what: &'static str,
) -> Result<PrivateKeyDer<'static>, PemError> {
    let mut keys: Vec<PrivateKeyDer<'static>> = parse_all(text, what)?
        .into_iter()
        .filter_map(|p| match p.tag() {
            "PRIVATE KEY" => Some(PrivatePkcs8KeyDer::from(p.into_contents()).into()),
            "EC PRIVATE KEY" => Some(PrivateSec1KeyDer::from(p.into_contents()).into()),
            "RSA PRIVATE KEY" => Some(PrivatePkcs1KeyDer::from(p.into_contents()).into()),
            _ => None,
        })
        .collect();
    match keys.len() {
        0 => Err(PemError::Missing {
            what,
            label: "PRIVATE KEY",
        }),
        1 => Ok(keys.remove(0)),
        count => Err(PemError::TooMany {
            what,
            label: "PRIVATE KEY",
            count,
        }),
    }
}

/// One certificate as a PEM block with `\n` line endings.
pub(crate) fn cert_to_pem(der: &[u8]) -> String {
    let block = pem::Pem::new(CERTIFICATE, der);
    pem::encode_config(
        &block,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_round_trip_and_errors() {
        let pem_text = format!("junk before\n{}{}", cert_to_pem(b"abc"), cert_to_pem(b"de"));
        let certs = certs_from_pem(&pem_text, "test").unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0].as_ref(), b"abc");
        assert!(matches!(
            certs_from_pem("", "test"),
            Err(PemError::Missing { .. })
        ));
        assert!(matches!(
            certs_from_pem(
                "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
                "t"
            ),
            Err(PemError::Invalid { .. })
        ));
    }

    #[test]
    fn exactly_one_csr() {
        let one = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", b"x".to_vec()));
        assert_eq!(csr_from_pem(&one, "csr").unwrap(), b"x");
        let two = format!("{one}{one}");
        assert!(matches!(
            csr_from_pem(&two, "csr"),
            Err(PemError::TooMany { count: 2, .. })
        ));
        assert!(matches!(
            csr_from_pem(&cert_to_pem(b"x"), "csr"),
            Err(PemError::Missing { .. })
        ));
    }
}
