//! SPIFFE workload identities (their patterns are `pillion_api::identity`).

mod error;
mod id;
mod rules;

pub use error::IdError;
pub use id::{SpiffeId, MAX_ID_LEN};
pub use rules::validate_trust_domain;
