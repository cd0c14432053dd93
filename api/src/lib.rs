//! Types and defaults that Pillion's agent, proxy and init share.
//!
//! The proxy and the agent never depend on each other; they meet here.
#![forbid(unsafe_code)]

pub mod aggregate;
pub mod api_keys;
pub mod breaker;
pub mod cache;
pub mod certs;
pub mod defaults;
pub mod duration;
pub mod error;
pub mod fault;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod identity;
pub mod jwt;
pub mod lists;
pub mod policy;
pub mod resolve;
pub mod transform;
pub mod view;
