//! The WAL's disk budget: accept an event only while writing it keeps the WAL under
//! `wal.max_bytes` and the filesystem above `wal.min_free_bytes`. Past either, `/log` answers
//! `503` + `Retry-After` (counted as `wal_full`) instead of letting writes fail with ENOSPC.
//!
//! How it stays off the hot path (no lock, no syscall, no shared atomic per request):
//! - one global gauge of WAL bytes on disk ([`crate::flush::stats::FlushStats::wal_disk_bytes`]):
//!   each core's writer adds what it wrote (once per tick), compaction and quarantine subtract
//!   what they removed;
//! - each core keeps a local "refusing" flag. Its writer sets it when the gauge it just moved
//!   crosses the budget; its housekeeping task re-evaluates it every 100 ms from the gauge and
//!   a `statvfs` of `wal.dir`, so the flag clears by itself once compaction has freed space;
//! - a request only reads its core's flag.
//!
//! The check keeps a margin of one tick buffer (`wal.write_buffer_bytes`) per core, so the
//! writes already accepted when the flag goes up still fit. The budget is a soft limit by at
//! most one housekeeping period of traffic; the hard one is the disk, where a failed write is
//! answered `503` too (the event was not written) and the segment is truncated back.

use std::ffi::CString;
use std::io;
use std::path::Path;

use super::config::WalConfig;

/// Share of the free space (plus the WAL already on disk) that a derived `wal.max_bytes` takes.
pub const DERIVED_MAX_PERCENT: u64 = 80;
/// A derived `wal.min_free_bytes` is the smaller of this and [`DERIVED_MIN_FREE_PERCENT`].
pub const DERIVED_MIN_FREE_BYTES: u64 = 1 << 30;
/// ...and this share of the filesystem's size.
pub const DERIVED_MIN_FREE_PERCENT: u64 = 5;

/// Space on the filesystem holding a path, from `statvfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    /// Bytes an unprivileged writer can still use.
    pub available_bytes: u64,
    /// Size of the filesystem.
    pub total_bytes: u64,
}

/// `statvfs(path)`.
pub fn fs_space(path: &Path) -> io::Result<FsSpace> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: statvfs is plain data; all-zero is a valid value for it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and st is a valid, writable statvfs.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    Ok(FsSpace { available_bytes: st.f_bavail as u64 * frsize, total_bytes: st.f_blocks as u64 * frsize })
}

/// Why an event is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The WAL would pass `wal.max_bytes`.
    MaxBytes,
    /// The filesystem would drop below `wal.min_free_bytes`.
    MinFree,
}

/// The resolved limits (derived defaults filled in at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskBudget {
    pub max_bytes: u64,
    pub min_free_bytes: u64,
    /// Bytes kept in reserve for writes already accepted: one tick buffer per core.
    pub margin_bytes: u64,
}

impl DiskBudget {
    /// Fills the derived defaults from the space of `wal.dir` now: `max_bytes = 0` becomes
    /// 80 % of (available space + `wal_bytes_now`), `min_free_bytes = 0` the smaller of 1 GiB
    /// and 5 % of the filesystem.
    pub fn resolve(cfg: &WalConfig, space: FsSpace, wal_bytes_now: u64, cores: usize) -> DiskBudget {
        let max_bytes = match cfg.max_bytes {
            0 => (space.available_bytes + wal_bytes_now) / 100 * DERIVED_MAX_PERCENT,
            n => n,
        };
        let min_free_bytes = match cfg.min_free_bytes {
            0 => DERIVED_MIN_FREE_BYTES.min(space.total_bytes / 100 * DERIVED_MIN_FREE_PERCENT),
            n => n,
        };
        let margin_bytes = cfg.write_buffer_bytes as u64 * cores.max(1) as u64;
        DiskBudget { max_bytes, min_free_bytes, margin_bytes }
    }

    /// Whether to refuse events with `wal_bytes` of WAL on disk and `available` bytes free
    /// (`None` if unknown: only the WAL size is checked).
    pub fn check(&self, wal_bytes: u64, available: Option<u64>) -> Option<Refusal> {
        if wal_bytes.saturating_add(self.margin_bytes) > self.max_bytes {
            return Some(Refusal::MaxBytes);
        }
        match available {
            Some(free) if free < self.min_free_bytes.saturating_add(self.margin_bytes) => {
                Some(Refusal::MinFree)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn derived_limits_follow_the_filesystem() {
        let cfg = WalConfig::default();
        let space = FsSpace { available_bytes: 100 * GIB, total_bytes: 200 * GIB };
        let b = DiskBudget::resolve(&cfg, space, 10 * GIB, 4);
        assert_eq!(b.max_bytes, 110 * GIB / 100 * 80);
        assert_eq!(b.min_free_bytes, GIB, "1 GiB on a large disk");
        assert_eq!(b.margin_bytes, 4 * cfg.write_buffer_bytes as u64);
        let small = FsSpace { available_bytes: GIB, total_bytes: 4 * GIB };
        assert_eq!(DiskBudget::resolve(&cfg, small, 0, 1).min_free_bytes, 4 * GIB / 100 * 5);
    }

    #[test]
    fn configured_limits_win() {
        let cfg = WalConfig { max_bytes: 5000, min_free_bytes: 7000, ..WalConfig::default() };
        let space = FsSpace { available_bytes: 100 * GIB, total_bytes: 200 * GIB };
        let b = DiskBudget::resolve(&cfg, space, 0, 1);
        assert_eq!((b.max_bytes, b.min_free_bytes), (5000, 7000));
    }

    #[test]
    fn refuses_past_either_limit_with_the_margin() {
        let b = DiskBudget { max_bytes: 10_000, min_free_bytes: 5_000, margin_bytes: 1_000 };
        assert_eq!(b.check(9_000, Some(6_000)), None);
        assert_eq!(b.check(9_001, Some(1 << 40)), Some(Refusal::MaxBytes));
        assert_eq!(b.check(0, Some(5_999)), Some(Refusal::MinFree));
        assert_eq!(b.check(0, None), None, "unknown free space checks the WAL size only");
    }

    #[test]
    fn statvfs_of_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        let space = fs_space(dir.path()).unwrap();
        assert!(space.total_bytes > 0 && space.available_bytes <= space.total_bytes);
        assert!(fs_space(&dir.path().join("missing")).is_err());
    }
}
