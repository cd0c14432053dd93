//! The sidecar injector: the admission webhook, offline injection, and the shipped deploy/ manifests; one test binary.
#![allow(clippy::unwrap_used)] // Tests: a panic with its reason is the report.

mod admission;
mod common;
mod deploy;
mod offline;
