#![no_main]
//! See `pillion_proxy::fuzzing::jwt`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pillion_proxy::fuzzing::jwt(data));
