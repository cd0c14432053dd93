#![no_main]
//! See `pillion_inject::fuzzing::admission_review`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pillion_inject::fuzzing::admission_review(data));
