//! Reading a collector's WAL from a test: which events does it hold?

use std::path::Path;

use psc::wal::record;
use psc::wal::segment;

/// `file_id` of every valid record in every segment of every core, in WAL order per core.
/// Panics if a record in the middle of a segment is corrupt (a torn tail is allowed).
pub fn wal_file_ids(wal_dir: &Path) -> Vec<u64> {
    let mut ids = Vec::new();
    for core in segment::list_cores(wal_dir).expect("list cores") {
        let dir = segment::core_dir(wal_dir, core);
        for n in segment::list_segments(&dir).expect("list segments") {
            let bytes = std::fs::read(segment::segment_path(&dir, n)).expect("read segment");
            let mut at = 0;
            while at < bytes.len() {
                match record::decode(&bytes[at..]) {
                    Ok((event, _, used)) => {
                        ids.push(event.file_id);
                        at += used;
                    }
                    Err(err) => panic!("core {core} segment {n} offset {at}: {err}"),
                }
            }
        }
    }
    ids
}
