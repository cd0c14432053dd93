//! Why the CA could not be built, loaded or asked to issue.

use std::path::PathBuf;

use thiserror::Error;

use crate::pem_blocks::PemError;
use crate::spiffe::{IdError, SpiffeId};

/// Failure to create, load or store the certificate authority.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CaError {
    /// The trust domain given for a new CA is not valid.
    #[error("invalid trust domain for the CA: {0}")]
    TrustDomain(#[source] IdError),
    /// A PEM input (certificate, chain or key) is unusable.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// The CA key cannot be used (not PKCS#8, unsupported algorithm, ...).
    #[error("the CA private key cannot be used: {0}")]
    Key(String),
    /// The CA certificate cannot be parsed or re-used for signing.
    #[error("the CA certificate cannot be used: {0}")]
    Certificate(String),
    /// The private key is not the one of the CA certificate.
    #[error("the CA private key does not belong to the CA certificate")]
    KeyMismatch,
    /// A certificate of the CA chain is not a CA (basicConstraints CA:true).
    #[error("certificate {index} of the CA chain ({subject}) is not a CA certificate")]
    NotCa {
        /// 0 is the CA's own certificate, then the chain upwards.
        index: usize,
        /// Its subject, for the operator.
        subject: String,
    },
    /// The CA certificate may not sign certificates (keyUsage without keyCertSign).
    #[error("the CA certificate's key usage does not allow signing certificates")]
    NoKeyCertSign,
    /// A certificate of the chain is not signed by the next one.
    #[error("the CA chain is broken between certificates {index} and {next}: {reason}")]
    BrokenChain {
        /// The child's position.
        index: usize,
        /// The parent's position.
        next: usize,
        /// What does not fit.
        reason: String,
    },
    /// The chain does not end in a self-signed root to put into the trust bundle.
    #[error("the CA chain does not end in a self-signed root; pass the chain up to the root")]
    MissingRoot,
    /// The CA certificate is past its notAfter.
    #[error("the CA certificate expired")]
    Expired,
    /// The trust bundle given with an issuer is refused.
    #[error("the trust bundle (ca.crt) cannot be used: {0}")]
    Bundle(#[from] crate::bundle::BundleError),
    /// No root of the trust bundle signed the issuer.
    #[error(
        "the issuer (tls.crt) is signed by {issuer:?}, which is not a root in the trust \
         bundle (ca.crt); put that root in ca.crt"
    )]
    IssuerNotInBundle {
        /// The name of the missing signer.
        issuer: String,
    },
    /// The CA on disk belongs to another trust domain than the one asked for.
    #[error("the CA is for trust domain {ca:?}, but {requested:?} was asked for")]
    TrustDomainMismatch {
        /// The CA's trust domain.
        ca: String,
        /// The one asked for.
        requested: String,
    },
    /// Only one of the two CA files exists; refusing to guess.
    #[error("{present} exists but {missing} does not; restore both or remove both")]
    PartialFiles {
        /// The file found.
        present: PathBuf,
        /// The file missing.
        missing: PathBuf,
    },
    /// Reading or writing a CA file failed.
    #[error("{op} {path}: {source}", path = .path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Generating a key or certificate failed inside rcgen.
    #[error("{what}: {source}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// Issuing a certificate failed.
    #[error(transparent)]
    Issue(#[from] IssueError),
}

/// Why a certificate was not issued for a CSR or identity.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum IssueError {
    /// The CSR cannot be parsed, is not self-consistent, or its signature does not verify.
    #[error("malformed CSR: {0}")]
    Malformed(String),
    /// The CSR's key is not ECDSA P-256 (RSA, other curves, Ed25519, unknown).
    #[error("refused key: {0}; the mesh requires ECDSA P-256")]
    WeakKey(String),
    /// The CSR asks for another identity than the credential proves.
    #[error(
        "identity mismatch: the CSR requests {requested:?} but the credential allows {allowed}"
    )]
    IdentityMismatch {
        /// The URI the CSR asked for.
        requested: String,
        /// The identity the caller is allowed.
        allowed: SpiffeId,
    },
    /// The identity is outside the CA's trust domain.
    #[error("{id} is outside this CA's trust domain {ca_trust_domain:?}")]
    WrongTrustDomain {
        /// The identity asked for.
        id: SpiffeId,
        /// The CA's trust domain.
        ca_trust_domain: String,
    },
    /// A DNS name for a serving certificate is not a valid DNS name.
    #[error("{0:?} is not a valid DNS name: use dot-separated labels of a-z, 0-9 and '-'")]
    InvalidDnsName(String),
    /// A zero lifetime was asked for.
    #[error("a certificate lifetime must be at least one second")]
    InvalidLifetime,
    /// Signing failed inside rcgen.
    #[error("signing the certificate: {0}")]
    Signing(#[source] rcgen::Error),
}
