//! `<wal.dir>/quarantine/`: copies of WAL bytes that hold no valid record, kept for people.
//!
//! When the reader skips a damaged range (a record that fails its checks, up to the next one
//! that decodes), the delivery core has it copied here with [`save_bad_bytes`] before its
//! cursor moves past it, so the bytes survive compaction of their segment:
//! `core-N.NNNNNN.log.at-OFFSET` ([`bad_bytes_file_name`]) holds the bytes of segment
//! `NNNNNN` of core `N` from `OFFSET` on.
//!
//! Invariants: segments are never moved or changed here (the reader, recovery and compaction
//! keep seeing every segment); a copy is complete or absent (`super::durable::write_atomic`,
//! and the directory's own entry is fsynced when it is created); saving the same range again
//! (after a restart re-read it) rewrites the same file with the same bytes.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::durable::{atomic_points, create_dir, write_atomic};
use super::segment::{core_dir, core_dir_name, parse_core_dir_name, parse_segment_file_name};
use super::segment::{segment_file_name, segment_path};
use super::WalError;
use crate::failpoint;

/// Name of the quarantine directory inside `wal.dir`.
pub const QUARANTINE_DIR: &str = "quarantine";
const AT: &str = ".at-";

/// `<wal_dir>/quarantine`.
pub fn quarantine_dir(wal_dir: &Path) -> PathBuf {
    wal_dir.join(QUARANTINE_DIR)
}

/// `core-N.NNNNNN.log.at-OFFSET`: the copy of segment `segment`'s bad bytes from `offset`.
pub fn bad_bytes_file_name(core: u16, segment: u32, offset: u64) -> String {
    format!("{}.{}{AT}{offset}", core_dir_name(core), segment_file_name(segment))
}

/// Inverse of [`bad_bytes_file_name`]: `(core, segment, offset)`.
pub fn parse_bad_bytes_file_name(name: &str) -> Option<(u16, u32, u64)> {
    let (core, rest) = name.split_once('.')?;
    let (segment, offset) = rest.split_once(AT)?;
    let parsed = (parse_core_dir_name(core)?, parse_segment_file_name(segment)?, offset.parse().ok()?);
    (bad_bytes_file_name(parsed.0, parsed.1, parsed.2) == name).then_some(parsed)
}

/// What [`save_bad_bytes`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedBadBytes {
    pub path: PathBuf,
    pub bytes: u64,
}

/// Copies bytes `offsets` of segment `segment` of core `core` (a damaged range the reader
/// reported: `at.offset..resume.offset`) to the quarantine directory, durably. Reads the
/// segment itself, so the caller needs no copy of the bytes.
pub fn save_bad_bytes(
    wal_dir: &Path,
    core: u16,
    segment: u32,
    offsets: Range<u64>,
) -> Result<SavedBadBytes, WalError> {
    debug_assert!(offsets.start < offsets.end, "an empty range is no damage");
    let from = segment_path(&core_dir(wal_dir, core), segment);
    let file =
        failpoint::io("quarantine.open").and_then(|()| File::open(&from)).map_err(WalError::io(&from))?;
    let mut bytes = vec![0; (offsets.end - offsets.start) as usize];
    failpoint::io("quarantine.read")
        .and_then(|()| file.read_exact_at(&mut bytes, offsets.start))
        .map_err(WalError::io(&from))?;
    let dir = quarantine_dir(wal_dir);
    create_dir(&dir, "quarantine.mkdir")?;
    let name = bad_bytes_file_name(core, segment, offsets.start);
    write_atomic(&dir, &name, &bytes, atomic_points!("quarantine"))?;
    Ok(SavedBadBytes { path: dir.join(name), bytes: bytes.len() as u64 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::segment::list_segments;

    #[test]
    fn names_pair_up() {
        for (core, segment, offset) in [(0, 1, 0), (7, 1_234_567, 99), (u16::MAX, 2, u64::MAX)] {
            let name = bad_bytes_file_name(core, segment, offset);
            assert_eq!(parse_bad_bytes_file_name(&name), Some((core, segment, offset)), "{name}");
        }
        assert_eq!(bad_bytes_file_name(1, 2, 30), "core-1.000002.log.at-30");
        for bad in ["core-1.000002.log", "core-01.000002.log.at-3", "core-1.000002.log.at-03", "x.at-1"] {
            assert_eq!(parse_bad_bytes_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_bytes_are_copied_and_the_segment_stays() {
        let wal = tempfile::tempdir().unwrap();
        let dir = core_dir(wal.path(), 1);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(segment_path(&dir, 2), b"good|BAD|good").unwrap();
        let saved = save_bad_bytes(wal.path(), 1, 2, 5..8).unwrap();
        assert_eq!(
            saved,
            SavedBadBytes { path: quarantine_dir(wal.path()).join("core-1.000002.log.at-5"), bytes: 3 }
        );
        assert_eq!(std::fs::read(&saved.path).unwrap(), b"BAD");
        assert_eq!(list_segments(&dir).unwrap(), vec![2], "never moved");
        assert_eq!(save_bad_bytes(wal.path(), 1, 2, 5..8).unwrap(), saved, "saving again is harmless");
        assert!(save_bad_bytes(wal.path(), 1, 2, 10..99).is_err(), "past the end of the segment");
    }
}
