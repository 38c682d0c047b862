//! Fuzz target `body`: the properties of `psc_fuzz::body` (fuzz/checks.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| psc_fuzz::body(data));
