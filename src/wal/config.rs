//! The `[wal]` keys: where the write-ahead log lives, how big its segments grow, when it is
//! fdatasynced and how much disk it may take.

use std::path::PathBuf;

use serde::Deserialize;

use crate::invalid::InvalidKey;

/// When the WAL is fdatasynced. `None` still survives `kill -9` (the page cache holds the
/// data); `Interval` and `Always` also survive a power cut, the latter before every ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    None,
    Interval,
    Always,
}

impl std::str::FromStr for SyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(SyncPolicy::None),
            "interval" => Ok(SyncPolicy::Interval),
            "always" => Ok(SyncPolicy::Always),
            other => Err(format!("`{other}` is not one of none, interval, always")),
        }
    }
}

/// How a core hands a tick's bytes to the kernel (the ack waits for the write either way).
///
/// `Inline`: a plain `pwrite` from the core thread: a copy into the page cache, microseconds
/// for a tick. `Uring`: an io_uring write; on filesystems without async buffered writes
/// (ext4 here) io_uring punts every one to an io-wq worker thread, which costs a thread hop and
/// context switches per tick (measured on this machine: io-wq CPU 3.5 µs/request and 0.12
/// context switches/request on ext4, 1.0 µs and 0.04 on XFS; inline: none and 0.017).
/// `Uring` keeps the core serving other connections while the page cache throttles writers
/// (a disk much slower than the ingest rate), at that price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    Inline,
    Uring,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    /// Root of the write-ahead log: `core-N/` directories and `commit.meta`. Default `./var/wal`.
    pub dir: PathBuf,
    /// A segment is sealed and a new one opened once it reaches this size. Default 64 MiB.
    pub segment_bytes: u64,
    /// fdatasync policy. Default `none`.
    pub sync: SyncPolicy,
    /// Period of the fdatasync with `sync = "interval"`. Default 1000 ms.
    pub sync_interval_ms: u64,
    /// Most bytes one core buffers for a single WAL write. Default 1 MiB.
    pub write_buffer_bytes: usize,
    /// `inline` (default) or `uring`: see [`WriteMode`]. fdatasyncs always go through io_uring.
    pub write_mode: WriteMode,
    /// Most bytes of WAL segments on disk (all cores); past it `/log` answers 503 +
    /// `Retry-After` (reason `wal_full`) until compaction frees space. Default 0 = 80 % of
    /// (free space of `wal.dir` + WAL already there) at start.
    pub max_bytes: u64,
    /// Free space `wal.dir`'s filesystem keeps; below it `/log` answers 503 (`wal_full`).
    /// Default 0 = the smaller of 1 GiB and 5 % of the filesystem's size.
    pub min_free_bytes: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./var/wal"),
            segment_bytes: 64 * 1024 * 1024,
            sync: SyncPolicy::None,
            sync_interval_ms: 1000,
            write_buffer_bytes: 1024 * 1024,
            write_mode: WriteMode::Inline,
            max_bytes: 0,
            min_free_bytes: 0,
        }
    }
}

impl WalConfig {
    /// Checks the `[wal]` keys and how they relate to each other.
    pub fn validate(&self) -> Result<(), InvalidKey> {
        if self.segment_bytes < 4096 {
            return InvalidKey::err("wal.segment_bytes", "must be at least 4096");
        }
        if (self.write_buffer_bytes as u64) > self.segment_bytes {
            return InvalidKey::err("wal.write_buffer_bytes", "must not exceed wal.segment_bytes");
        }
        if self.write_buffer_bytes < 4096 {
            return InvalidKey::err("wal.write_buffer_bytes", "must be at least 4096");
        }
        if self.max_bytes != 0 && self.max_bytes < 2 * self.segment_bytes {
            return InvalidKey::err("wal.max_bytes", "must be 0 (derived) or at least 2 × wal.segment_bytes");
        }
        if self.sync == SyncPolicy::Interval && self.sync_interval_ms == 0 {
            return InvalidKey::err(
                "wal.sync_interval_ms",
                "must be at least 1 with wal.sync = \"interval\"",
            );
        }
        Ok(())
    }
}
