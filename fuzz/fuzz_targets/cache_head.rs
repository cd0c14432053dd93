#![no_main]
//! See `pillion_proxy::fuzzing::cache_head`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pillion_proxy::fuzzing::cache_head(data));
