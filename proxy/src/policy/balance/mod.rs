//! Endpoint choice within a backend: a latency estimate per endpoint
//! ([`peak_ewma`]) and the power-of-two-choices picker that compares them ([`p2c`]).

pub mod p2c;
pub mod peak_ewma;
