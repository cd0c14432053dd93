#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! Pillion's per-pod sidecar data plane.
//!
//! Each connection climbs a stack of small layers:
//! [`accept`] (listener, original destination) → [`outbound`] / [`inbound`]
//! (where it should go) → [`relay`] (loop guard, connect, forward) built on
//! [`transport`]. With a control plane ([`control`]: certificates and views
//! from the agent), [`view`] says which destinations are meshed and what each
//! inbound port allows, and [`tls`] detects, terminates and originates mutual
//! TLS between proxies ([`mesh`], [`mesh_metrics`]). Around the stacks:
//! [`admin`], [`metrics`], [`readiness`], [`drain`].
//!
//! In-process use: [`Proxy::bind`] (or [`Proxy::builder`]) binds every
//! listener from a [`ProxyConfig`], then [`Proxy::run`] serves until the given
//! shutdown future resolves (or `POST /shutdown` / [`drain::Drain::trigger`]),
//! drains and returns a [`drain::DrainReport`]. The binary is
//! [`cli::main_with_args`].

pub mod accept;
pub mod admin;
pub mod cli;
pub mod config;
pub mod control;
pub mod detect;
pub mod drain;
pub mod http;
pub mod inbound;
pub mod logging;
pub mod loop_guard;
pub mod mesh;
pub mod mesh_metrics;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod proxy;
pub mod readiness;
pub mod relay;
pub mod rlimit;
pub mod telemetry;
pub mod tls;
pub mod transport;
pub mod view;

pub use config::ProxyConfig;
pub use proxy::{Proxy, ProxyBuilder, ProxyError};
