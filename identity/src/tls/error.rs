//! Errors of building TLS configurations and of rejecting a peer.

use thiserror::Error;

use crate::cert_info::CertInfoError;
use crate::pem_blocks::PemError;
use crate::spiffe::SpiffeId;

/// Failure to build a TLS configuration.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls refused the configuration.
    #[error("configuring rustls: {0}")]
    Rustls(#[from] rustls::Error),
    /// A PEM input is unusable.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// A trust anchor cannot be used.
    #[error("trust anchor {index} cannot be used: {reason}")]
    BadAnchor {
        /// Position in the PEM text.
        index: usize,
        /// webpki's complaint.
        reason: String,
    },
    /// The id cannot be carried in a TLS server name.
    #[error("{id} cannot be encoded as a TLS server name: {reason}")]
    UnencodableId {
        /// The identity.
        id: SpiffeId,
        /// Why.
        reason: &'static str,
    },
}

/// Why a mesh handshake refused the peer; carried inside rustls'
/// `CertificateError::Other` so logs and callers see the context.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PeerRejected {
    /// The peer is not the identity this connection was meant for.
    #[error("the peer is {found}, but {expected} was expected")]
    WrongIdentity {
        /// Who we wanted.
        expected: SpiffeId,
        /// Who answered.
        found: SpiffeId,
    },
    /// The peer's certificate does not carry exactly one valid SPIFFE id.
    #[error("the peer certificate has no usable SPIFFE id: {0}")]
    NoIdentity(#[source] CertInfoError),
    /// The peer belongs to another trust domain.
    #[error("the peer {found} is outside the trust domain {trust_domain:?}")]
    ForeignTrustDomain {
        /// Who connected.
        found: SpiffeId,
        /// Our trust domain.
        trust_domain: String,
    },
    /// The server name of the connection does not encode a SPIFFE id.
    #[error("the server name {0:?} does not encode a SPIFFE id; use tls::server_name_for")]
    BadServerName(String),
    /// No trust bundle is installed yet, so no peer can be trusted.
    #[error("no trust bundle is installed yet")]
    NoTrustBundle,
}

impl PeerRejected {
    /// Wraps the rejection as the rustls error a verifier returns.
    pub(crate) fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            std::sync::Arc::new(self),
        )))
    }
}
