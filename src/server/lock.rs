//! An exclusive `flock` on `<wal.dir>/LOCK`: one instance per WAL directory.
//!
//! monoio binds with SO_REUSEPORT, so a second instance on the same port would not fail to
//! bind: it would silently share the traffic and write a WAL of its own. The lock makes the
//! second instance refuse to start instead. The kernel drops the lock when the process dies,
//! even by `kill -9`, so there is no stale lock to clean up.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{path} is locked by another running instance (pid {holder}); refusing to start")]
    Held { path: PathBuf, holder: String },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: std::io::Error },
}

/// Holds the lock until dropped (or the process exits).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Takes the lock without waiting; fails if another process holds it.
pub fn lock_wal_dir(wal_dir: &Path) -> Result<DirLock, LockError> {
    let path = wal_dir.join("LOCK");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| LockError::Open { path: path.clone(), source })?;
    // SAFETY: the fd is valid for the life of `file`.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::WouldBlock {
            let holder = std::fs::read_to_string(&path).unwrap_or_default().trim().to_owned();
            return Err(LockError::Held { path, holder });
        }
        return Err(LockError::Lock { path, source: err });
    }
    // Best effort: record our pid for the error message of a second instance.
    let _ = file.set_len(0);
    let _ = std::io::Write::write_all(&mut &file, format!("{}\n", std::process::id()).as_bytes());
    Ok(DirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_same_dir_fails_until_first_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = lock_wal_dir(dir.path()).expect("first lock");
        let err = lock_wal_dir(dir.path()).expect_err("second lock must fail");
        assert!(matches!(err, LockError::Held { .. }), "{err}");
        assert!(err.to_string().contains("another running instance"));
        drop(first);
        lock_wal_dir(dir.path()).expect("lock is free again");
    }
}
