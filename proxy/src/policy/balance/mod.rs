//! Endpoint choice within a backend: a latency estimate per endpoint
//! ([`peak_ewma`]) and the power-of-two-choices picker that compares them ([`p2c`]).

pub(crate) mod p2c;
pub(crate) mod peak_ewma;
