#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(unreachable_pub)]
//! Pillion's per-pod sidecar data plane.
//!
//! The folders are the layers; a connection's path reads top-down in one folder per
//! direction:
//!
//! - `transport`: listeners, the accept loop (a span per connection), original
//!   destination, loop guard, TCP connect and byte copying, mesh TLS handshakes;
//! - `detect`: one buffer of first bytes, mesh TLS ClientHello and HTTP sniffing;
//! - `outbound`: lookup → detect → HTTP (`outbound::http`, `outbound::retry`)
//!   or bytes (`outbound::tcp`);
//! - `inbound`: loop guard → mesh TLS → admit → detect → HTTP
//!   (`inbound::http`) or bytes to the application;
//! - `upstream`: endpoints, backends, connection pools, the one connect path;
//! - `http`: what both directions' HTTP shares (server, bodies, hop headers,
//!   errors, upgrades);
//! - `state`: the one compiled state, swapped whole per view, compiled off the
//!   data path;
//! - `policy`: pure per-request decisions (routes, splits, retries, limits,
//!   authorization, balancing, outliers, backoff);
//! - [`control`]: certificates and views from the agent;
//! - [`telemetry`]: metrics, spans, access log; `admin`: probes, metrics, config;
//! - `app`: flags, configuration and [`Proxy`] (`builder() → bind() →
//!   run(shutdown) → DrainReport`); the binary is [`main_with_args`].

mod admin;
mod app;
pub mod control;
mod detect;
#[doc(hidden)]
pub mod fuzzing;
mod gateway;
mod http;
mod inbound;
#[doc(hidden)]
pub mod measure;
mod outbound;
mod policy;
mod state;
pub mod telemetry;
mod transport;
mod upstream;

pub use admin::readiness::{Condition, Readiness};
pub use app::cli::main_with_args;
pub use app::config::{ConfigError, ProxyConfig};
pub use app::proxy::{
    Mesh, Proxy, ProxyBuilder, ProxyError, READY_LISTENERS, READY_NOT_DRAINING, READY_STATE,
};
pub use app::settings::{MeshProtocol, Settings};
pub use policy::balance::p2c::Strategy;
pub use policy::cache::store::Store as ResponseStore;
pub use policy::outlier::OutlierConfig;
pub use state::Views;
pub use telemetry::metrics::mesh::{Denied, HandshakeFailure, MeshMetrics};
pub use telemetry::metrics::tcp::DirectionMetrics;
pub use telemetry::metrics::{encode, Direction};
pub use transport::drain::{Drain, DrainReport};
pub use transport::orig_dst::{KernelOrigDst, OrigDstLookup, StaticOrigDst};
pub use transport::tls::{MeshClient, MeshTls};
