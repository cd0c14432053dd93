//! Why a SPIFFE id or pattern was refused.

use thiserror::Error;

/// A SPIFFE id that is not well formed, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdError {
    /// The string does not start with `spiffe://` (lowercase).
    #[error("a SPIFFE id must start with \"spiffe://\"")]
    WrongScheme,
    /// Nothing between `spiffe://` and the path.
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    /// The trust domain has a character or shape SPIFFE does not allow.
    #[error("invalid trust domain {trust_domain:?}: {reason}")]
    InvalidTrustDomain {
        /// The refused trust domain.
        trust_domain: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `host:port` in the authority.
    #[error("a SPIFFE id must not carry a port")]
    PortNotAllowed,
    /// `user@host` in the authority.
    #[error("a SPIFFE id must not carry user info")]
    UserInfoNotAllowed,
    /// A `?query` part.
    #[error("a SPIFFE id must not carry a query")]
    QueryNotAllowed,
    /// A `#fragment` part.
    #[error("a SPIFFE id must not carry a fragment")]
    FragmentNotAllowed,
    /// The path is not `/ns/<namespace>/sa/<service-account>`.
    #[error("path {path:?} is not of the shape /ns/<namespace>/sa/<service-account>")]
    WrongPathShape {
        /// The refused path.
        path: String,
    },
    /// The namespace is not a DNS-1123 label.
    #[error("invalid namespace {namespace:?}: {reason}")]
    InvalidNamespace {
        /// The refused namespace.
        namespace: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The service account is not a DNS-1123 subdomain.
    #[error("invalid service account {service_account:?}: {reason}")]
    InvalidServiceAccount {
        /// The refused service account.
        service_account: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Longer than the SPIFFE limit.
    #[error("a SPIFFE id is {len} bytes long, the limit is {max}")]
    TooLong {
        /// Length of the refused id.
        len: usize,
        /// The limit.
        max: usize,
    },
}
