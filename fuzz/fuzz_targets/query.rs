//! Fuzz target `query`: the properties of `psc_fuzz::query` (fuzz/checks.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| psc_fuzz::query(data));
