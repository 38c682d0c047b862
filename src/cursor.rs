//! `commit.meta`: the per-core cursors durable in MySQL, mirrored on local disk.
//!
//! ```text
//! psc-commit-meta 1
//! node web-1
//! core 0 3 1048576
//! core 1 2 4096
//! end
//! ```
//! One `core <n> <segment> <offset>` line per core, in core order. The closing `end` line
//! proves the file is whole (a short file is reported as corrupt, never half-read).
//!
//! Invariants:
//! - the file is replaced atomically: temp file in the same directory, write, fsync, rename
//!   over, fsync the directory — in this order. A reader sees the old or the new file, never a
//!   mix; a torn temp file left by a crash is ignored (and overwritten next time);
//! - segments are deleted only behind a cursor this module has made durable
//!   (see `crate::compact`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::wal::Position;

/// File name inside `wal.dir`.
pub const COMMIT_META_FILE: &str = "commit.meta";
const TEMP_FILE: &str = "commit.meta.tmp";
const MAGIC: &str = "psc-commit-meta";
const VERSION: u32 = 1;

/// The committed cursor of every core of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitMeta {
    pub node: String,
    /// Index = core number.
    pub cores: Vec<Position>,
}

/// Why `commit.meta` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is corrupt at line {line}: {reason}")]
    Corrupt { path: PathBuf, line: usize, reason: &'static str },
}

impl CommitMeta {
    /// Takes, per core, the later of the two cursors (cores missing on one side count as
    /// "nothing committed").
    pub fn merge(&mut self, other: &[Position]) {
        if self.cores.len() < other.len() {
            self.cores.resize(other.len(), Position::default());
        }
        for (mine, theirs) in self.cores.iter_mut().zip(other) {
            *mine = (*mine).max(*theirs);
        }
    }

    fn render(&self) -> String {
        let mut text = format!("{MAGIC} {VERSION}\nnode {}\n", self.node);
        for (core, pos) in self.cores.iter().enumerate() {
            text.push_str(&format!("core {core} {} {}\n", pos.segment, pos.offset));
        }
        text.push_str("end\n");
        text
    }

    fn parse(text: &str, path: &Path) -> Result<CommitMeta, CursorError> {
        let corrupt = |line: usize, reason| CursorError::Corrupt { path: path.to_owned(), line, reason };
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
        match lines.next() {
            Some((_, l)) if l == format!("{MAGIC} {VERSION}") => {}
            _ => return Err(corrupt(1, "missing or unknown header")),
        }
        let node = match lines.next() {
            Some((_, l)) if l.starts_with("node ") => l["node ".len()..].to_owned(),
            _ => return Err(corrupt(2, "missing node line")),
        };
        let mut cores = Vec::new();
        for (n, line) in lines {
            if line == "end" {
                return Ok(CommitMeta { node, cores });
            }
            cores.push(parse_core_line(line, cores.len()).ok_or_else(|| corrupt(n, "bad core line"))?);
        }
        Err(corrupt(text.lines().count(), "truncated (no end line)"))
    }
}

/// Parses `core <expected> <segment> <offset>`.
fn parse_core_line(line: &str, expected: usize) -> Option<Position> {
    let mut parts = line.split(' ');
    if parts.next()? != "core" || parts.next()?.parse::<usize>().ok()? != expected {
        return None;
    }
    let segment = parts.next()?.parse().ok()?;
    let offset = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some(Position::new(segment, offset))
}

/// Atomically replaces `<wal_dir>/commit.meta`: temp file, write, fsync, rename, fsync dir.
pub fn write_commit_meta(wal_dir: &Path, meta: &CommitMeta) -> io::Result<()> {
    let temp = wal_dir.join(TEMP_FILE);
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&temp)?;
    file.write_all(meta.render().as_bytes())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp, wal_dir.join(COMMIT_META_FILE))?;
    File::open(wal_dir)?.sync_all()
}

/// Reads `<wal_dir>/commit.meta`; `Ok(None)` if there is none (nothing committed yet).
pub fn read_commit_meta(wal_dir: &Path) -> Result<Option<CommitMeta>, CursorError> {
    let path = wal_dir.join(COMMIT_META_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return Err(CursorError::Corrupt { path, line: 0, reason: "not UTF-8" })
        }
        Err(source) => return Err(CursorError::Io { path, source }),
    };
    CommitMeta::parse(&text, &path).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> CommitMeta {
        CommitMeta { node: "web-1".into(), cores: vec![Position::new(3, 1_048_576), Position::new(1, 0)] }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_commit_meta(dir.path()).unwrap(), None);
        write_commit_meta(dir.path(), &meta()).unwrap();
        assert_eq!(read_commit_meta(dir.path()).unwrap(), Some(meta()));
        let mut next = meta();
        next.cores[1] = Position::new(2, 7);
        write_commit_meta(dir.path(), &next).unwrap();
        assert_eq!(read_commit_meta(dir.path()).unwrap(), Some(next));
        assert!(!dir.path().join(TEMP_FILE).exists(), "temp file renamed away");
    }

    #[test]
    fn torn_temp_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        write_commit_meta(dir.path(), &meta()).unwrap();
        fs::write(dir.path().join(TEMP_FILE), b"psc-commit-meta 1\nnode web-1\ncore 0 9").unwrap();
        assert_eq!(read_commit_meta(dir.path()).unwrap(), Some(meta()));
        write_commit_meta(dir.path(), &meta()).unwrap();
        assert_eq!(read_commit_meta(dir.path()).unwrap(), Some(meta()));
    }

    #[test]
    fn truncated_or_garbage_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let full = meta().render();
        for cut in [0, 10, full.len() - 4] {
            fs::write(dir.path().join(COMMIT_META_FILE), &full.as_bytes()[..cut]).unwrap();
            let err = read_commit_meta(dir.path()).unwrap_err();
            assert!(matches!(err, CursorError::Corrupt { .. }), "cut {cut}: {err}");
        }
        fs::write(dir.path().join(COMMIT_META_FILE), b"psc-commit-meta 1\nnode x\ncore 1 1 1\nend\n")
            .unwrap();
        assert!(read_commit_meta(dir.path()).unwrap_err().to_string().contains("line 3"));
        fs::write(dir.path().join(COMMIT_META_FILE), [0xff, 0xfe]).unwrap();
        assert!(read_commit_meta(dir.path()).is_err());
    }

    #[test]
    fn merge_takes_the_later_cursor_per_core() {
        let mut m = meta();
        m.merge(&[Position::new(2, 99), Position::new(1, 5), Position::new(4, 1)]);
        assert_eq!(m.cores, vec![Position::new(3, 1_048_576), Position::new(1, 5), Position::new(4, 1)]);
    }
}
