//! Identity for the Pillion mesh: SPIFFE ids, the certificate authority, CSRs,
//! a swappable certificate store and the rustls configurations for mutual TLS.
//!
//! The agent owns a [`Ca`] and signs proxies' CSRs; a proxy makes its key and CSR
//! with [`csr::generate`], installs the answer in a [`store::CertStore`] and builds
//! its TLS once with [`tls::server_config`] / [`tls::client_config`], which follow
//! the store as certificates and bundles rotate.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bundle;
pub mod ca;
mod cert_info;
pub mod csr;
#[doc(hidden)]
pub mod fuzzing;
mod pem_blocks;
pub mod server_cert;
pub mod spiffe;
pub mod store;
pub mod tls;

pub use bundle::{BundleError, TrustBundle};
pub use ca::{Ca, CaError, IssueError, Issued};
pub use cert_info::CertInfoError;
pub use csr::CsrError;
pub use pem_blocks::PemError;
pub use spiffe::{IdError, SpiffeId};
pub use store::{BundleOutcome, BundleSource, CertStore, HeldBecause, StoreError};
pub use tls::{PeerRejected, TlsError};
pub use zeroize::Zeroizing;
