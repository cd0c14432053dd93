#![no_main]
//! See `pillion_agent::fuzzing::agent_source_parts`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pillion_agent::fuzzing::agent_source_parts(data));
