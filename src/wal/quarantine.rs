//! `<wal.dir>/quarantine/`: where damaged WAL data is moved aside instead of destroyed.
//!
//! Two things land here:
//! - a whole sealed segment in which the flusher found a corrupt record
//!   (`core-N.NNNNNN.log`, moved with [`quarantine_segment`]); delivery goes on from the
//!   next segment, so one bad sector never stalls a core or causes a crash loop;
//! - the cut-off end of the newest segment when recovery finds valid records after a bad one
//!   (`core-N.NNNNNN.log.at-OFFSET`, see `recovery`).
//!
//! Invariant: a quarantined segment is moved, never copied, so it is no longer a segment of
//! its core: the reader, recovery and compaction simply do not see it. The move is made
//! durable (rename, then fsync of both directories) before it is reported.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::segment::{core_dir, segment_file_name, segment_path};
use super::WalError;

/// Name of the quarantine directory inside `wal.dir`.
pub const QUARANTINE_DIR: &str = "quarantine";

/// `<wal_dir>/quarantine`.
pub fn quarantine_dir(wal_dir: &Path) -> PathBuf {
    wal_dir.join(QUARANTINE_DIR)
}

/// `core-N.NNNNNN.log`: the name a quarantined segment gets.
pub fn quarantined_segment_name(core: u16, segment: u32) -> String {
    format!("core-{core}.{}", segment_file_name(segment))
}

/// Moves segment `segment` of core `core` into the quarantine directory; returns its new
/// path and its size in bytes.
pub fn quarantine_segment(wal_dir: &Path, core: u16, segment: u32) -> Result<(PathBuf, u64), WalError> {
    let qdir = quarantine_dir(wal_dir);
    fs::create_dir_all(&qdir).map_err(WalError::io(&qdir))?;
    let cdir = core_dir(wal_dir, core);
    let from = segment_path(&cdir, segment);
    let bytes = fs::metadata(&from).map_err(WalError::io(&from))?.len();
    let to = qdir.join(quarantined_segment_name(core, segment));
    fs::rename(&from, &to).map_err(WalError::io(&from))?;
    sync_dir(&qdir)?;
    sync_dir(&cdir)?;
    Ok((to, bytes))
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(WalError::io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::segment::list_segments;

    #[test]
    fn a_quarantined_segment_leaves_its_core() {
        let wal = tempfile::tempdir().unwrap();
        let dir = core_dir(wal.path(), 1);
        fs::create_dir_all(&dir).unwrap();
        for n in 1..=3 {
            fs::write(segment_path(&dir, n), vec![b'x'; n as usize * 10]).unwrap();
        }
        let (path, bytes) = quarantine_segment(wal.path(), 1, 2).unwrap();
        assert_eq!(bytes, 20);
        assert_eq!(path, wal.path().join("quarantine").join("core-1.000002.log"));
        assert_eq!(fs::read(&path).unwrap(), vec![b'x'; 20]);
        assert_eq!(list_segments(&dir).unwrap(), vec![1, 3]);
        assert!(quarantine_segment(wal.path(), 1, 2).is_err(), "already moved");
    }
}
