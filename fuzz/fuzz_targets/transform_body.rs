#![no_main]
//! See `pillion_proxy::fuzzing::transform_body`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pillion_proxy::fuzzing::transform_body(data));
