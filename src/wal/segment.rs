//! Names of WAL files and directories, as paired build/parse functions, and directory listing.
//!
//! Invariants: `parse_*(build(x)) == Some(x)` for every `x`, and `parse_*` accepts only what
//! `build` produces (no leading zeros beyond the padding, no other spellings), so a stray file
//! such as `000001.log.bak` or `core-01` is never mistaken for WAL data.

use std::io;
use std::path::{Path, PathBuf};

const SEGMENT_SUFFIX: &str = ".log";
const SEGMENT_DIGITS_MIN: usize = 6;
const CORE_PREFIX: &str = "core-";

/// `000001.log`: at least 6 digits, more once past 999999.
pub fn segment_file_name(n: u32) -> String {
    format!("{n:0width$}{SEGMENT_SUFFIX}", width = SEGMENT_DIGITS_MIN)
}

/// Inverse of [`segment_file_name`].
pub fn parse_segment_file_name(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() < SEGMENT_DIGITS_MIN || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = digits.parse().ok()?;
    (segment_file_name(n) == name).then_some(n)
}

/// `<wal_dir>/core-N`.
pub fn core_dir(wal_dir: &Path, core: u16) -> PathBuf {
    wal_dir.join(core_dir_name(core))
}

/// `core-N`, no leading zeros.
pub fn core_dir_name(core: u16) -> String {
    format!("{CORE_PREFIX}{core}")
}

/// Inverse of [`core_dir_name`].
pub fn parse_core_dir_name(name: &str) -> Option<u16> {
    let digits = name.strip_prefix(CORE_PREFIX)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let core: u16 = digits.parse().ok()?;
    (core_dir_name(core) == name).then_some(core)
}

/// `<core_dir>/NNNNNN.log`.
pub fn segment_path(core_dir: &Path, n: u32) -> PathBuf {
    core_dir.join(segment_file_name(n))
}

/// Segment numbers present in `core_dir`, ascending. Other files are ignored.
pub fn list_segments(core_dir: &Path) -> io::Result<Vec<u32>> {
    list_parsed(core_dir, parse_segment_file_name)
}

/// Bytes of the lane in `core_dir` from `from` on (every segment from `from`'s, the first
/// `from.offset` bytes of that one left out). After recovery a segment holds only whole
/// records, so 0 means no record lies past `from`.
pub fn bytes_from(core_dir: &Path, from: crate::wal::Position) -> io::Result<u64> {
    let mut total = 0;
    for n in list_segments(core_dir)?.into_iter().filter(|&n| n >= from.segment) {
        let len = std::fs::metadata(segment_path(core_dir, n))?.len();
        total += if n == from.segment { len.saturating_sub(from.offset) } else { len };
    }
    Ok(total)
}

/// Core numbers with a `core-N` entry in `wal_dir`, ascending. Other entries are ignored.
pub fn list_cores(wal_dir: &Path) -> io::Result<Vec<u16>> {
    list_parsed(wal_dir, parse_core_dir_name)
}

fn list_parsed<T: Ord>(dir: &Path, parse: impl Fn(&str) -> Option<T>) -> io::Result<Vec<T>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(x) = entry.file_name().to_str().and_then(&parse) {
            found.push(x);
        }
    }
    found.sort_unstable();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_pair_up() {
        for n in [0, 1, 42, 999_999, 1_000_000, u32::MAX] {
            assert_eq!(parse_segment_file_name(&segment_file_name(n)), Some(n), "{n}");
        }
        assert_eq!(segment_file_name(1), "000001.log");
        assert_eq!(segment_file_name(1_234_567), "1234567.log");
    }

    #[test]
    fn foreign_segment_names_are_rejected() {
        for name in [
            "1.log",
            "00001.log",
            "0000001.log",
            "000001.log.bak",
            "000001.LOG",
            "+00001.log",
            "00000a.log",
            "99999999999.log",
            "",
        ] {
            assert_eq!(parse_segment_file_name(name), None, "{name}");
        }
    }

    #[test]
    fn core_names_pair_up() {
        for core in [0, 7, u16::MAX] {
            assert_eq!(parse_core_dir_name(&core_dir_name(core)), Some(core));
        }
        assert_eq!(core_dir(Path::new("/w"), 3), PathBuf::from("/w/core-3"));
        for name in ["core-", "core-01", "core-x", "core-65536", "Core-1", "core--1"] {
            assert_eq!(parse_core_dir_name(name), None, "{name}");
        }
    }

    #[test]
    fn listings_are_sorted_numerically_and_skip_strangers() {
        let dir = tempfile::tempdir().unwrap();
        for n in [10, 2, 1_000_000, 999_999] {
            std::fs::write(segment_path(dir.path(), n), b"").unwrap();
        }
        std::fs::write(dir.path().join("000003.log.tmp"), b"").unwrap();
        std::fs::write(dir.path().join("commit.meta"), b"").unwrap();
        assert_eq!(list_segments(dir.path()).unwrap(), vec![2, 10, 999_999, 1_000_000]);

        for core in [11, 2, 0] {
            std::fs::create_dir(core_dir(dir.path(), core)).unwrap();
        }
        std::fs::create_dir(dir.path().join("quarantine")).unwrap();
        assert_eq!(list_cores(dir.path()).unwrap(), vec![0, 2, 11]);
    }
}
