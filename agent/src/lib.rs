//! Pillion's central agent: the front-end of the mesh certificate authority and the
//! source of discovery and policy that every proxy watches.
//!
//! The binary is a thin shell over [`cli::main_with_args`]; tests start an agent in
//! process with [`Agent::start`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod ca;
pub mod cli;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod jwks;
pub mod kubernetes;
pub mod logging;
pub mod metrics;
pub mod server;
pub mod source;
pub mod token;
pub mod trust_anchor;
pub mod view;

pub use agent::{Agent, RunningAgent, StartError};
pub use config::{AgentArgs, AgentConfig};
pub use source::SourceSpec;
