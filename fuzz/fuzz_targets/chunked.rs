//! Fuzz target `chunked`: the properties of `psc_fuzz::chunked` (fuzz/checks.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| psc_fuzz::chunked(data));
