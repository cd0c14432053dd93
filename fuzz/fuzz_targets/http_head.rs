#![no_main]
//! See `pillion_proxy::fuzzing::http_head`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pillion_proxy::fuzzing::http_head(data));
