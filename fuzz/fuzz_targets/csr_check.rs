#![no_main]
//! See `pillion_identity::fuzzing::csr_check`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pillion_identity::fuzzing::csr_check(data));
