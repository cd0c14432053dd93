//! Start-up: the binary's flags and environment ([`cli`], [`flags`]), the typed
//! configuration ([`config`], [`settings`]), logging and limits, and the library
//! entry point [`proxy::Proxy`] (`builder() → bind() → run(shutdown) →
//! DrainReport`), which builds the [`inputs::Inputs`] both stacks share.

pub(crate) mod cli;
pub(crate) mod config;
pub(crate) mod flags;
pub(crate) mod inputs;
pub(crate) mod logging;
pub(crate) mod proxy;
pub(crate) mod rlimit;
pub(crate) mod settings;
