#![no_main]
//! See `pillion_proxy::fuzzing::introspection_answer`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pillion_proxy::fuzzing::introspection_answer(data));
