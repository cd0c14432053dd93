#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! What Pillion's tests share, written once: a test CA that hands out certificate
//! stores ([`pki`]), HTTP test applications, clients and load loops ([`http`]), raw
//! HTTP/2 frames written by hand and read back ([`h2frames`]), TCP echo and friends
//! ([`tcp`]), an OTLP collector speaking both wire formats ([`otlp`]), loopback
//! addresses ([`net`]), string maps written as literals ([`strings`]) and bounded
//! waiting ([`wait`]). It depends on nothing of the proxy or the agent, so their own
//! tests (`proxy/tests`, in-crate tests), the end-to-end tests and the benchmark can
//! all use it.
//!
//! Helpers panic on setup failures: they run only in tests, where a panic with the
//! reason is the report.

pub mod h2frames;
pub mod http;
pub mod jwt;
pub mod net;
pub mod otlp;
pub mod pki;
pub mod strings;
pub mod tcp;
pub mod wait;
