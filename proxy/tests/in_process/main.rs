//! Whole proxies run in this process on loopback, one test binary: plain TCP
//! forwarding, metrics, loops and drain ([`tcp`]); mesh TLS between two proxies and
//! inbound policy ([`mesh`]); the wiring of HTTP and opaque services to VIPs
//! ([`wiring`]); the HTTP data path with its policy, streams and tracing ([`http`]);
//! the control plane against a fake agent ([`control`]). [`support`] starts proxies.
#![allow(clippy::unwrap_used)] // A test: a panic with its reason is the report.

mod control;
mod http;
mod mesh;
mod support;
mod tcp;
mod wiring;
