//! The real `pillion-init` binary against real iptables (nft and legacy), each test in a fresh network namespace of its own (see `support`); one test binary.
#![allow(clippy::unwrap_used)] // Tests: a panic with its reason is the report.

#[macro_use]
mod support;
mod redirect_in_netns;
mod rules_in_netns;
