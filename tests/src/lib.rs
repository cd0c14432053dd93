#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! `pillion-tests`: the end-to-end tests' own worlds, built on the local mesh of the
//! `pillion` crate (pods as real Linux network namespaces, see [`pillion::local`]),
//! whose pieces it re-exports so tests read `pillion_tests::{World, Pod, …}`.
//!
//! # Pieces
//!
//! - [`apps`]: the test kit's echo and reply-after-EOF servers in a pod, and clients;
//! - [`rules`]: normalised `iptables-save` output;
//! - [`otlp`]: the test kit's OTLP collector started in a pod;
//! - [`mesh`]: the real agent in a pod, mesh sidecar options, a capture on the bridge;
//! - [`probe`]: a one-shot TCP client process (e.g. to run as the proxy's uid);
//! - [`http_mesh`]: HTTP applications and a four-pod world with routes in the agent's
//!   source, for the HTTP layer's end-to-end tests.

pub mod apps;
pub mod curl;
pub mod http_mesh;
pub mod mesh;
pub mod otlp;
pub mod probe;
pub mod rules;

pub use pillion::local::{
    addr, http, marker, metrics, process, sidecar, Cmd, Logs, Pod, Process, Sidecar, SidecarOpts,
    Signal, Task, World,
};
pub use pillion::programs as multicall;
