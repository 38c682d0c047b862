//! Fuzz target `wal_record`: the properties of `psc_fuzz::wal_record` (fuzz/checks.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| psc_fuzz::wal_record(data));
