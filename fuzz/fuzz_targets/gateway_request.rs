#![no_main]
//! See `pillion_proxy::fuzzing::gateway_request`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pillion_proxy::fuzzing::gateway_request(data));
