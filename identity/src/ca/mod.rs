//! The mesh certificate authority: generation, loading, CSR checks and issuance.

mod authority;
mod chain;
mod csr_check;
mod error;
mod files;
mod issuer;
mod leaf;

pub(crate) use authority::ca_trust_domain;
pub use authority::{Ca, ROOT_LIFETIME};
pub use error::{CaError, IssueError};
pub use files::{CA_CERT_FILE, CA_KEY_FILE};
pub use issuer::{
    init_issuer_dir, load_root_dir, next_issuer_dir, ISSUER_CERT_FILE, ISSUER_EXPIRY_WARNING,
    ISSUER_KEY_FILE, ISSUER_LIFETIME, ROOT_KEY_FILE, TRUST_BUNDLE_FILE,
};
pub use leaf::{Issued, BACKDATE};

#[cfg(test)]
pub(crate) use leaf::Validity;
