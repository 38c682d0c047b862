//! The primitives every durable change of a WAL directory's small files is built from, each
//! with its fsync order, so the order is written once:
//!
//! - [`write_atomic`] replaces a file: write `NAME.tmp`, fsync it, rename it over `NAME`, fsync
//!   the directory. A reader sees the old file or the new one, never a mix; a crash leaves at
//!   worst a stray `NAME.tmp`, which the next write truncates.
//! - [`create_dir`] creates a directory and fsyncs its parent, so the entry survives a power cut.
//! - [`sync_dir`] makes the entries of a directory (creations, renames, unlinks) durable.
//!
//! `IDENTITY`, `core-N/LANE`, `commit.meta` and the files in `quarantine/` are written this way
//! whatever `wal.sync` says: they are rare, small and decide what is delivered. Every IO call
//! here passes a fail point first (`crate::failpoint`).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::WalError;
use crate::failpoint;

/// The fail point names of one [`write_atomic`] caller, built by [`atomic_points!`].
#[derive(Debug, Clone, Copy)]
pub struct AtomicPoints {
    pub create: &'static str,
    pub write: &'static str,
    pub fsync: &'static str,
    pub rename: &'static str,
    pub dir_fsync: &'static str,
}

/// `atomic_points!("cursor")` = the points `cursor.create`, `cursor.write`, `cursor.fsync`,
/// `cursor.rename` and `cursor.dir_fsync`.
macro_rules! atomic_points {
    ($scope:literal) => {
        $crate::wal::durable::AtomicPoints {
            create: concat!($scope, ".create"),
            write: concat!($scope, ".write"),
            fsync: concat!($scope, ".fsync"),
            rename: concat!($scope, ".rename"),
            dir_fsync: concat!($scope, ".dir_fsync"),
        }
    };
}
pub(crate) use atomic_points;

/// `NAME.tmp`: where [`write_atomic`] writes before the rename.
pub fn temp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.tmp"))
}

/// Replaces `dir/name` with `bytes` atomically and durably (order in the module doc).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8], points: AtomicPoints) -> Result<(), WalError> {
    let temp = temp_path(dir, name);
    let mut file = failpoint::io(points.create)
        .and_then(|()| OpenOptions::new().write(true).create(true).truncate(true).open(&temp))
        .map_err(WalError::io(&temp))?;
    failpoint::io(points.write).and_then(|()| file.write_all(bytes)).map_err(WalError::io(&temp))?;
    failpoint::io(points.fsync).and_then(|()| file.sync_all()).map_err(WalError::io(&temp))?;
    drop(file);
    let target = dir.join(name);
    failpoint::io(points.rename).and_then(|()| fs::rename(&temp, &target)).map_err(WalError::io(&target))?;
    sync_dir(dir, points.dir_fsync)
}

/// fsyncs directory `dir` (its entries become durable).
pub fn sync_dir(dir: &Path, point: &str) -> Result<(), WalError> {
    failpoint::io(point).and_then(|()| File::open(dir)?.sync_all()).map_err(WalError::io(dir))
}

/// Creates directory `dir` (and missing ancestors) if it is missing, then fsyncs its parent.
/// Returns whether it was created.
pub fn create_dir(dir: &Path, point: &str) -> Result<bool, WalError> {
    if dir.is_dir() {
        return Ok(false);
    }
    failpoint::io(point).and_then(|()| fs::create_dir_all(dir)).map_err(WalError::io(dir))?;
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    sync_dir(parent, point)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POINTS: AtomicPoints = atomic_points!("test");

    #[test]
    fn points_are_named_scope_dot_step() {
        assert_eq!(
            [POINTS.create, POINTS.write, POINTS.fsync, POINTS.rename, POINTS.dir_fsync],
            ["test.create", "test.write", "test.fsync", "test.rename", "test.dir_fsync"]
        );
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(dir.path(), "F", b"one", POINTS).unwrap();
        std::fs::write(temp_path(dir.path(), "F"), b"torn temp of a crashed write").unwrap();
        write_atomic(dir.path(), "F", b"two", POINTS).unwrap();
        assert_eq!(std::fs::read(dir.path().join("F")).unwrap(), b"two");
        assert!(!temp_path(dir.path(), "F").exists());
    }

    #[test]
    fn create_dir_is_idempotent_and_refuses_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub").join("deeper");
        assert!(create_dir(&sub, "test.mkdir").unwrap());
        assert!(!create_dir(&sub, "test.mkdir").unwrap());
        std::fs::write(dir.path().join("file"), b"").unwrap();
        assert!(matches!(create_dir(&dir.path().join("file"), "test.mkdir"), Err(WalError::Io { .. })));
    }

    #[cfg(feature = "failpoints")]
    #[test]
    fn a_failed_step_keeps_the_old_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(dir.path(), "F", b"old", POINTS).unwrap();
        for point in [POINTS.create, POINTS.write, POINTS.fsync, POINTS.rename] {
            let _armed = failpoint::arm(point, failpoint::Spec::errno(libc::EIO));
            assert!(write_atomic(dir.path(), "F", b"new", POINTS).is_err(), "{point}");
            assert_eq!(std::fs::read(dir.path().join("F")).unwrap(), b"old", "{point}");
        }
    }
}
