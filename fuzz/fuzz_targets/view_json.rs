#![no_main]
//! See `pillion_proxy::fuzzing::view_json`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pillion_proxy::fuzzing::view_json(data));
