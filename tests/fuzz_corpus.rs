//! The fuzz corpus as a regression suite: every input `make fuzz` kept (fuzz/corpus/TARGET/*,
//! committed; crashes found and fixed are added there too) is run through the same property
//! checks the fuzz targets run (fuzz/checks.rs). No fuzzer, no nightly flags: plain inputs.
#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{target}: {} breaks a property", path.display());
        inputs += 1;
    }
    assert!(inputs > 0, "{target}: the corpus in {} is empty", dir.display());
}

#[test]
fn request_head_corpus() {
    replay("request_head", checks::request_head);
}

#[test]
fn query_corpus() {
    replay("query", checks::query);
}

#[test]
fn chunked_corpus() {
    replay("chunked", checks::chunked);
}

#[test]
fn body_corpus() {
    replay("body", checks::body);
}

#[test]
fn wal_record_corpus() {
    replay("wal_record", checks::wal_record);
}
