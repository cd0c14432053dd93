#![no_main]
//! See `pillion_api::fuzzing::identity_pattern`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pillion_api::fuzzing::identity_pattern(data));
