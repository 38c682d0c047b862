//! Deleting WAL segments that every shard has committed, and removing drained lanes.
//!
//! A cursor `(s, off)` means every record of the lane before it is committed, so segments
//! `< s` are done; segment `s` itself is kept.
//!
//! Invariants:
//! - **Only behind a durable cursor.** The caller passes a cursor that is already durable:
//!   reported by the sink after its commit, or read back from `commit.meta`. For a lane with
//!   several shards it is the least over them (`CommitMeta::lane_floor`). Compaction does not
//!   read `commit.meta` itself, so it keeps working when that file cannot be written (a disk
//!   filled by another file): the sink's cursor suffices, and the disk clears once the sink
//!   has caught up. Deleting behind a cursor held only in memory is what this rules out: a
//!   crash would restart from an older cursor whose segments are gone.
//! - **Never the newest segment.** [`compact_lane`] keeps a lane's newest segment whatever the
//!   cursor says: it may be the one the writer appends to, and a cursor past every segment
//!   (the WAL was cut below it) must not empty a live lane. A drained lane that no core writes
//!   any more is removed whole by [`remove_lane`].
//! - **Whole files, fixed fsync order.** `compact_lane`: unlink the segments in ascending order,
//!   then fsync the lane directory. `remove_lane`: unlink every segment (ascending), fsync the
//!   lane directory, unlink `LANE`, remove the directory, fsync `wal.dir`. A crash in between
//!   leaves a lane whose oldest segments are gone (still consistent), or a `LANE` file without
//!   segments, which `crate::wal::lane::open_lane` gives a new incarnation.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::failpoint;
use crate::wal::durable::{sync_dir, temp_path};
use crate::wal::lane::{lane_path, LANE_FILE};
use crate::wal::segment::{core_dir, list_segments, segment_path};
use crate::wal::{Position, WalError};

/// Why compaction stopped. What was deleted before the error stays deleted.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error(transparent)]
    Wal(#[from] WalError),
}

/// What one compaction removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compacted {
    pub segments: usize,
    /// Their size, for the WAL disk-usage gauge (`crate::wal::budget`).
    pub bytes: u64,
}

/// Segment numbers of `segments` (ascending) that [`compact_lane`] deletes for `cursor`: those
/// wholly behind it, never the newest.
pub fn segments_behind(segments: &[u32], cursor: Position) -> &[u32] {
    let keep_newest = segments.len().saturating_sub(1);
    let behind = segments.partition_point(|&s| s < cursor.segment);
    &segments[..behind.min(keep_newest)]
}

/// Deletes the segments of lane directory `core_dir` behind the durable cursor `below`, then
/// fsyncs the directory. A missing directory has nothing to delete.
pub fn compact_lane(core_dir: &Path, below: Position) -> Result<Compacted, CompactError> {
    let segments = match failpoint::io("compact.list").and_then(|()| list_segments(core_dir)) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Compacted::default()),
        Err(source) => return Err(io_error("listing", core_dir, source)),
    };
    let doomed = segments_behind(&segments, below);
    let done = delete_segments(core_dir, doomed)?;
    if done.segments > 0 {
        sync_dir(core_dir, "compact.dir_fsync")?;
    }
    Ok(done)
}

/// Deletes a drained lane whole: its segments, its `LANE` file and its directory (order in
/// the module doc). The caller has delivered every record of it and no core writes to it.
/// Returns what the segments took.
pub fn remove_lane(wal_dir: &Path, core: u16) -> Result<Compacted, CompactError> {
    let dir = core_dir(wal_dir, core);
    let segments = match failpoint::io("remove_lane.list").and_then(|()| list_segments(&dir)) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Compacted::default()),
        Err(source) => return Err(io_error("listing", &dir, source)),
    };
    let done = delete_segments(&dir, &segments)?;
    sync_dir(&dir, "remove_lane.dir_fsync")?;
    for path in [temp_path(&dir, LANE_FILE), lane_path(&dir)] {
        match failpoint::io("remove_lane.unlink").and_then(|()| fs::remove_file(&path)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(io_error("deleting", &path, source)),
        }
    }
    failpoint::io("remove_lane.rmdir")
        .and_then(|()| fs::remove_dir(&dir))
        .map_err(|e| io_error("removing directory", &dir, e))?;
    sync_dir(wal_dir, "remove_lane.wal_dir_fsync")?;
    Ok(done)
}

/// Unlinks `numbers` (ascending) of `dir`, adding up their sizes.
fn delete_segments(dir: &Path, numbers: &[u32]) -> Result<Compacted, CompactError> {
    debug_assert!(numbers.windows(2).all(|w| w[0] < w[1]), "oldest first");
    let mut done = Compacted::default();
    for &segment in numbers {
        let path = segment_path(dir, segment);
        let bytes = failpoint::io("compact.stat")
            .and_then(|()| fs::metadata(&path))
            .map_err(|e| io_error("sizing", &path, e))?
            .len();
        failpoint::io("compact.remove")
            .and_then(|()| fs::remove_file(&path))
            .map_err(|e| io_error("deleting", &path, e))?;
        done.segments += 1;
        done.bytes += bytes;
    }
    Ok(done)
}

fn io_error(what: &'static str, path: &Path, source: io::Error) -> CompactError {
    CompactError::Io { what, path: path.to_owned(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane_with_segments(wal: &Path, core: u16, numbers: &[u32]) -> PathBuf {
        let dir = core_dir(wal, core);
        fs::create_dir_all(&dir).unwrap();
        for &s in numbers {
            fs::write(segment_path(&dir, s), vec![b'x'; s as usize]).unwrap();
        }
        dir
    }

    #[test]
    fn behind_means_strictly_before_the_cursor_segment_and_never_the_newest() {
        assert_eq!(segments_behind(&[1, 2, 3, 4], Position::new(3, 0)), &[1, 2]);
        assert_eq!(segments_behind(&[1, 2], Position::new(2, 999)), &[1]);
        assert!(segments_behind(&[1, 2], Position::default()).is_empty());
        assert_eq!(segments_behind(&[4, 6, 9], Position::new(50, 0)), &[4, 6], "newest kept");
        assert!(segments_behind(&[], Position::new(5, 0)).is_empty());
    }

    #[test]
    fn deletes_only_behind_the_cursor_it_is_given() {
        let wal = tempfile::tempdir().unwrap();
        let dir = lane_with_segments(wal.path(), 0, &[1, 2, 3, 4]);
        assert_eq!(compact_lane(&dir, Position::new(3, 10)).unwrap(), Compacted { segments: 2, bytes: 3 });
        assert_eq!(list_segments(&dir).unwrap(), vec![3, 4]);
        assert_eq!(compact_lane(&dir, Position::new(3, 10)).unwrap(), Compacted::default(), "idempotent");
        assert_eq!(compact_lane(&dir, Position::new(99, 0)).unwrap().segments, 1);
        assert_eq!(list_segments(&dir).unwrap(), vec![4], "the newest stays");
        let missing = core_dir(wal.path(), 7);
        assert_eq!(compact_lane(&missing, Position::new(9, 0)).unwrap(), Compacted::default());
    }

    #[test]
    fn a_drained_lane_is_removed_whole() {
        let wal = tempfile::tempdir().unwrap();
        let lane = crate::wal::lane::open_lane(wal.path(), 3).unwrap();
        let dir = lane_with_segments(wal.path(), 3, &[5, 6]);
        assert_eq!(crate::wal::lane::read_lane(&dir).unwrap(), Some(lane));
        fs::write(temp_path(&dir, LANE_FILE), b"torn").unwrap();
        assert_eq!(remove_lane(wal.path(), 3).unwrap(), Compacted { segments: 2, bytes: 11 });
        assert!(!dir.exists());
        assert_eq!(remove_lane(wal.path(), 3).unwrap(), Compacted::default(), "idempotent");
    }

    #[test]
    fn a_stranger_in_a_lane_directory_stops_its_removal() {
        let wal = tempfile::tempdir().unwrap();
        let dir = lane_with_segments(wal.path(), 1, &[1]);
        fs::write(dir.join("notes.txt"), b"operator's").unwrap();
        let err = remove_lane(wal.path(), 1).unwrap_err();
        assert!(err.to_string().contains("removing directory"), "{err}");
        assert!(dir.join("notes.txt").is_file());
    }
}
