#![no_main]
//! See `pillion_api::fuzzing::duration`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pillion_api::fuzzing::duration(data));
