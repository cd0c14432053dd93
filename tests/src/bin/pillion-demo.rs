#![forbid(unsafe_code)]
//! Placeholder; the demo comes after the harness and the tests.

fn main() {}
