//! The identity crate through its public API: the CA on disk and in memory, and the certificate store, one test binary.
#![allow(clippy::unwrap_used)] // Tests: a panic with its reason is the report.

mod ca;
mod common;
mod issuer;
mod store;
