#![no_main]
//! See `pillion_proxy::fuzzing::detect_tls`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pillion_proxy::fuzzing::detect_tls(data));
