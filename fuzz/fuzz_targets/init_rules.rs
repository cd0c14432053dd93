#![no_main]
//! See `pillion_init::fuzzing::init_rules`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pillion_init::fuzzing::init_rules(data));
