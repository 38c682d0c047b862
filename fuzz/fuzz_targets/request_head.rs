//! Fuzz target `request_head`: the properties of `psc_fuzz::request_head` (fuzz/checks.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| psc_fuzz::request_head(data));
