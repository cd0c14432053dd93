//! The admin server: probes, metrics and shutdown over plain HTTP/1.
//!
//! `routes` decides answers (pure, easy to test); `server` speaks HTTP; `readiness`
//! is the set of conditions `/ready` reports.

pub(crate) mod readiness;
pub(crate) mod routes;
pub(crate) mod server;

pub(crate) use routes::{AdminState, ConfigDump};
pub(crate) use server::{AdminError, AdminServer};
