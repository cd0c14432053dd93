//! Identity for the Pillion mesh: SPIFFE ids, the certificate authority, CSRs,
//! a swappable certificate store and the rustls configurations for mutual TLS.
#![forbid(unsafe_code)]

pub mod spiffe;

pub use spiffe::{IdError, SpiffeId, SpiffeIdPattern};
