//! The admin server: probes, metrics and shutdown over plain HTTP/1.
//!
//! `routes` decides answers (pure, easy to test); `server` speaks HTTP.

pub mod routes;
pub mod server;

pub use routes::{AdminState, ConfigDump};
pub use server::{AdminError, AdminServer};
