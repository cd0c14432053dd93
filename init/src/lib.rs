#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! `pillion-init`: installs (and removes) the nat redirect rules in a pod's network
//! namespace so that the pod's Pillion proxy transparently intercepts its TCP.
//!
//! The crate is a pipeline of small, mostly pure steps:
//!
//! 1. [`config`] parses flags and `PILLION_*` variables and validates them into a
//!    [`plan::Settings`] before anything is touched;
//! 2. [`rules`] turns the plan into the nat rules Pillion owns, per address family;
//! 3. [`state`] reads Pillion's slice back out of `iptables-save` output;
//! 4. [`transaction`] renders the one `iptables-restore --noflush` transaction that moves
//!    the table from what it holds to what the plan wants;
//! 5. [`backend`] finds the iptables binaries and decides between nft and legacy;
//! 6. [`apply`] runs it all per family, with a dry run first and a rollback on failure;
//! 7. [`cli`] is the whole binary.

pub mod apply;
pub mod backend;
pub mod caps;
pub mod cli;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod logging;
pub mod plan;
pub mod rules;
pub mod runner;
pub mod state;
pub mod transaction;

pub use error::InitError;
pub use plan::{Family, Mode, Plan, Settings};
