//! Server certificates for the edge: a chain and its key in PEM (a Kubernetes TLS
//! Secret's `tls.crt` and `tls.key`), checked once when loaded and turned into what
//! rustls signs handshakes with, plus the DNS names the leaf covers, so a gateway
//! can pick a certificate by the name a client asks for. Unlike the mesh's leaves
//! these come from a public or corporate CA and name hosts, not SPIFFE ids.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

use crate::cert_info::{parse, to_system_time};
use crate::pem_blocks::{certs_from_pem, private_key_from_pem, PemError};

/// Why a server certificate cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ServerCertError {
    /// The chain or key PEM is unusable.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// The leaf cannot be parsed.
    #[error("the certificate cannot be parsed: {0}")]
    Parse(String),
    /// The leaf names no DNS host.
    #[error("the certificate names no DNS host in its subject alternative names")]
    NoDnsNames,
    /// The key does not match the certificate, or is of a kind rustls cannot sign with.
    #[error("the key cannot sign for this certificate: {0}")]
    Key(rustls::Error),
}

/// A loaded server certificate.
#[derive(Debug, Clone)]
pub struct ServerCert {
    /// What rustls presents and signs with.
    pub key: Arc<CertifiedKey>,
    /// The leaf's DNS names, lowercase (`*.example.com` wildcards as written).
    pub dns_names: Vec<String>,
    /// When the leaf expires.
    pub not_after: SystemTime,
}

impl ServerCert {
    /// Loads a chain (leaf first) and its private key (PKCS#8, SEC1 or PKCS#1).
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<ServerCert, ServerCertError> {
        let chain = certs_from_pem(chain_pem, "the certificate chain")?;
        let key = private_key_from_pem(key_pem, "the private key")?;
        let (dns_names, not_after) = {
            let leaf = parse(&chain[0]).map_err(|e| ServerCertError::Parse(e.to_string()))?;
            let san = leaf
                .subject_alternative_name()
                .map_err(|e| ServerCertError::Parse(e.to_string()))?;
            let names: Vec<String> = san
                .iter()
                .flat_map(|ext| &ext.value.general_names)
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect();
            (names, to_system_time(leaf.validity().not_after.timestamp()))
        };
        if dns_names.is_empty() {
            return Err(ServerCertError::NoDnsNames);
        }
        let provider = provider();
        let certified =
            CertifiedKey::from_der(chain, key, &provider).map_err(ServerCertError::Key)?;
        Ok(ServerCert {
            key: Arc::new(certified),
            dns_names,
            not_after,
        })
    }

    /// Whether the leaf covers `host` (lowercase, no port): a DNS name equal to it, or
    /// a `*.` wildcard standing for its first label.
    pub fn covers(&self, host: &str) -> bool {
        self.dns_names
            .iter()
            .any(|name| match name.strip_prefix("*.") {
                None => name == host,
                Some(rest) => host
                    .split_once('.')
                    .is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
            })
    }
}

/// The crypto provider the mesh uses everywhere.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn self_signed(names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn loads_names_and_covers_hosts() {
        let (chain, key) = self_signed(&["Shop.Example.com", "*.api.example.com"]);
        let cert = ServerCert::from_pem(&chain, &key).unwrap();
        assert_eq!(cert.dns_names, ["shop.example.com", "*.api.example.com"]);
        assert!(cert.covers("shop.example.com"));
        assert!(cert.covers("v1.api.example.com"));
        assert!(!cert.covers("api.example.com"));
        assert!(!cert.covers("a.v1.api.example.com"));
        assert!(!cert.covers("other.example.com"));
        assert!(cert.not_after > SystemTime::now());
    }

    #[test]
    fn refuses_what_cannot_be_served() {
        let (chain, key) = self_signed(&["shop.example.com"]);
        let (_, other_key) = self_signed(&["shop.example.com"]);
        assert!(matches!(
            ServerCert::from_pem(&chain, &other_key),
            Err(ServerCertError::Key(_))
        ));
        assert!(matches!(
            ServerCert::from_pem("not pem", &key),
            Err(ServerCertError::Pem(_))
        ));
        assert!(matches!(
            ServerCert::from_pem(&chain, ""),
            Err(ServerCertError::Pem(_))
        ));
        // A certificate without DNS names (an IP-only one) names no host to serve.
        let (ip_only, ip_key) = self_signed(&["198.18.0.1"]);
        assert!(matches!(
            ServerCert::from_pem(&ip_only, &ip_key),
            Err(ServerCertError::NoDnsNames)
        ));
    }
}
