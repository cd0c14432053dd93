//! SPIFFE workload identities and the patterns that authorize them.

mod error;
mod id;
mod pattern;
mod rules;

pub use error::IdError;
pub use id::{SpiffeId, MAX_ID_LEN};
pub use pattern::SpiffeIdPattern;
pub use rules::validate_trust_domain;
