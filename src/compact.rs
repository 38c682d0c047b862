//! Deleting WAL segments that MySQL has fully committed.
//!
//! A cursor `(s, off)` means every record before it is committed, so segments `< s` are
//! done; segment `s` itself (and the open one, always `>= s`) is kept.
//!
//! Invariant (the order that keeps a crash safe): a segment is deleted only behind a cursor
//! that is already durable in `commit.meta`. To make that hold by construction, compaction
//! does not take a cursor from its caller: it reads `commit.meta` back from disk, which the
//! flusher replaced (and fsynced, file then directory) before calling it. Deleting first and
//! persisting the cursor second would let a crash in between restart from an older cursor
//! whose segments are gone. Whole files only; the directory is fsynced after deleting.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::cursor::{read_commit_meta, CursorError};
use crate::wal::segment::{core_dir, list_segments, segment_path};
use crate::wal::Position;

/// Why compaction stopped.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error(transparent)]
    Cursor(#[from] CursorError),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: io::Error },
}

/// Segment numbers of `segments` that lie wholly behind `cursor`.
pub fn segments_behind(segments: &[u32], cursor: Position) -> Vec<u32> {
    segments.iter().copied().filter(|&s| s < cursor.segment).collect()
}

/// What one compaction removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compacted {
    pub segments: usize,
    /// Their size, for the WAL disk-usage gauge (`crate::wal::budget`).
    pub bytes: u64,
}

/// Deletes, for every core in the durable `commit.meta` of `wal_dir`, the segments behind
/// its cursor. Returns how many files were deleted.
pub fn compact(wal_dir: &Path) -> Result<usize, CompactError> {
    compact_measured(wal_dir).map(|c| c.segments)
}

/// [`compact`], also telling how many bytes were freed.
pub fn compact_measured(wal_dir: &Path) -> Result<Compacted, CompactError> {
    let Some(meta) = read_commit_meta(wal_dir)? else {
        return Ok(Compacted::default());
    };
    let mut done = Compacted::default();
    for (core, &cursor) in meta.cores.iter().enumerate() {
        let Ok(core) = u16::try_from(core) else { break };
        let one = compact_core(&core_dir(wal_dir, core), cursor)?;
        done.segments += one.segments;
        done.bytes += one.bytes;
    }
    Ok(done)
}

/// Deletes the segments of one core directory behind `durable_cursor`, then fsyncs it.
fn compact_core(dir: &Path, durable_cursor: Position) -> Result<Compacted, CompactError> {
    let segments = match list_segments(dir) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Compacted::default()),
        Err(source) => return Err(io_error("listing", dir, source)),
    };
    let doomed = segments_behind(&segments, durable_cursor);
    let mut bytes = 0;
    for &segment in &doomed {
        let path = segment_path(dir, segment);
        bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        fs::remove_file(&path).map_err(|e| io_error("deleting", &path, e))?;
    }
    if !doomed.is_empty() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error("fsyncing", dir, e))?;
    }
    Ok(Compacted { segments: doomed.len(), bytes })
}

fn io_error(what: &'static str, path: &Path, source: io::Error) -> CompactError {
    CompactError::Io { what, path: path.to_owned(), source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::{write_commit_meta, CommitMeta};

    fn wal_with_segments(cores: u16, segments: u32) -> tempfile::TempDir {
        let wal = tempfile::tempdir().unwrap();
        for core in 0..cores {
            let dir = core_dir(wal.path(), core);
            fs::create_dir_all(&dir).unwrap();
            for s in 1..=segments {
                fs::write(segment_path(&dir, s), b"x").unwrap();
            }
        }
        wal
    }

    fn remaining(wal: &Path, core: u16) -> Vec<u32> {
        list_segments(&core_dir(wal, core)).unwrap()
    }

    #[test]
    fn behind_means_strictly_before_the_cursor_segment() {
        assert_eq!(segments_behind(&[1, 2, 3, 4], Position::new(3, 0)), vec![1, 2]);
        assert_eq!(segments_behind(&[1, 2], Position::new(2, 999)), vec![1]);
        assert!(segments_behind(&[1, 2], Position::default()).is_empty());
    }

    #[test]
    fn deletes_only_behind_the_durable_cursor() {
        let wal = wal_with_segments(2, 4);
        let meta = CommitMeta { node: "n".into(), cores: vec![Position::new(3, 10), Position::new(1, 5)] };
        write_commit_meta(wal.path(), &meta).unwrap();
        assert_eq!(compact_measured(wal.path()).unwrap(), Compacted { segments: 2, bytes: 2 });
        assert_eq!(remaining(wal.path(), 0), vec![3, 4]);
        assert_eq!(remaining(wal.path(), 1), vec![1, 2, 3, 4]);
        assert_eq!(compact(wal.path()).unwrap(), 0, "idempotent");
    }

    #[test]
    fn nothing_is_deleted_without_a_durable_cursor() {
        let wal = wal_with_segments(1, 3);
        assert_eq!(compact(wal.path()).unwrap(), 0);
        assert_eq!(remaining(wal.path(), 0), vec![1, 2, 3]);
        // A cursor that only reached the temp file (crash before rename) does not count.
        fs::write(wal.path().join("commit.meta.tmp"), b"psc-commit-meta 1\nnode n\ncore 0 3 0\nend\n")
            .unwrap();
        assert_eq!(compact(wal.path()).unwrap(), 0);
        assert_eq!(remaining(wal.path(), 0), vec![1, 2, 3]);
    }

    #[test]
    fn corrupt_meta_stops_compaction() {
        let wal = wal_with_segments(1, 3);
        fs::write(wal.path().join("commit.meta"), b"garbage").unwrap();
        assert!(matches!(compact(wal.path()), Err(CompactError::Cursor(_))));
        assert_eq!(remaining(wal.path(), 0), vec![1, 2, 3]);
    }
}
