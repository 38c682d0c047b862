//! The per-core write-ahead log: the source of truth for every accepted event.
//!
//! ## Layout
//! ```text
//! <wal.dir>/
//!   LOCK                 flock'ed by the running instance (a second one refuses to start)
//!   IDENTITY             node id + random WAL id, written before anything else (see identity)
//!   commit.meta          committed cursor per stream = lane × shard (see crate::cursor)
//!   core-0/LANE          the lane's random incarnation, written before its first segment
//!   core-0/000001.log    segments of core 0, numbered from 1, rolled at wal.segment_bytes
//!   core-0/000002.log
//!   core-1/…
//!   quarantine/          copies of bytes that hold no valid record (see quarantine)
//! ```
//!
//! ## Record format (one line per record, so `tail -f` and `grep` work)
//! ```text
//! CCCCCCCC␠{"ts":1763923170123,"event":"play","domain":"piratka.biz","file_id":109454}\n
//! └ 8 lowercase hex digits: CRC32C of the payload (the bytes between the space and the \n)
//! ```
//! A record is valid only if: the 8 hex digits parse, byte 8 is a space, a `\n` ends the line
//! within [`record::MAX_RECORD_BYTES`], the CRC matches and the payload parses as an event
//! object. A zero-filled tail fails at its first byte (`\0` is not a hex digit); a torn
//! write fails for want of its `\n` or its CRC. Decoders ignore payload keys they do not know.
//!
//! ## Corruption costs one record
//! After a record that fails its checks, readers resync: the next offset whose 9 bytes look
//! like a header and where the record decodes ([`record::resync`], every offset checked, so a
//! flipped `\n` costs one record, not two). Recovery cuts only a damaged *tail* (nothing
//! decodes after it); the reader skips damage anywhere else and reports it, so the delivery
//! core copies the bad bytes to `quarantine/` and delivers everything else.
//!
//! ## Positions
//! A [`Position`] is (segment number, byte offset) and orders lexicographically. Positions
//! handed out by the writer always fall on record boundaries.
//!
//! ## Modules, bottom-up
//! - [`record`]: one record line, `encode` (hot path) and `decode`/`scan` (paired checks).
//! - [`segment`]: paired name/parse functions for `core-N/` and `NNNNNN.log`, directory listing.
//! - [`durable`]: atomic file replace and directory fsync, the fsync orders written once.
//! - [`identity`]: `IDENTITY` (whose WAL this is, `wal adopt`); [`lane`]: `core-N/LANE`.
//! - [`recovery`]: at startup, for every lane found: cuts the torn tail of its newest segment
//!   and opens a fresh segment; `verify_lane` for tools.
//! - [`writer`]: the per-core io_uring appender (one write per tick buffer, rolling, repair).
//! - [`group`]: the open tick of a core and the tickets its requests wait on;
//!   [`tick_writer`]: the core's writer task that writes each tick and completes its ticket.
//! - [`reader`]: the flusher's catch-up reader (mmap for sealed segments, `pread` for the open one).
//! - [`inspect`]: the read-only `wal inspect|verify` report.
//! - [`quarantine`]: copies of bad bytes; [`budget`]: the disk budget (`wal.max_bytes`,
//!   `wal.min_free_bytes`) that turns a filling disk into 503s instead of failed writes.
//!
//! ## Lifecycle of a segment
//! created empty, by recovery at every start or by the writer when it rolls (directory fsynced
//! unless `sync = none`) → appended at its end only, by one run only → sealed when the writer
//! rolls or the process stops (file fdatasynced first unless `sync = none`) → never modified
//! again, except that the next start cuts a torn tail off the newest one → deleted whole by
//! compaction once behind a durable cursor (`crate::compact`), never while it is a lane's
//! newest. Because every start writes into a segment of its own, a cursor from an earlier run
//! never points into bytes of a later one.
pub mod budget;
pub mod config;
pub mod durable;
pub mod group;
pub mod identity;
pub mod inspect;
pub mod lane;
pub mod quarantine;
pub mod reader;
pub mod record;
pub mod recovery;
pub mod segment;
pub mod tick_writer;
pub mod writer;

#[cfg(test)]
mod proptests;

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why the WAL could not be recovered, opened or appended to.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("wal io error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The writer was asked to continue at a tail that is not the end of the segment file
    /// (recovery was skipped or the file changed behind our back).
    #[error("wal segment {path} is {file_bytes} bytes, expected the tail at {tail_offset}")]
    TailMismatch { path: PathBuf, tail_offset: u64, file_bytes: u64 },
    /// Segment numbers must fit a packed [`Position`] (24 bits).
    #[error("wal directory {core_dir} has used up all segment numbers (max {MAX_SEGMENT})")]
    SegmentsExhausted { core_dir: PathBuf },
}

impl WalError {
    /// Adapter for `map_err`: attaches the path an IO call was about.
    pub(crate) fn io(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
        move |source| WalError::Io { path: path.to_owned(), source }
    }
}

/// A byte position in one core's WAL: the start of a record or the end of the last one.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    /// Segment number, from 1 (`000001.log`). 0 only in `Position::default()`, "before all".
    pub segment: u32,
    /// Byte offset inside the segment.
    pub offset: u64,
}

impl Position {
    pub const fn new(segment: u32, offset: u64) -> Self {
        Self { segment, offset }
    }

    /// Packs into one u64 (24-bit segment, 40-bit offset) so it can live in an `AtomicU64`.
    pub const fn pack(self) -> u64 {
        ((self.segment as u64) << 40) | (self.offset & ((1 << 40) - 1))
    }

    pub const fn unpack(v: u64) -> Self {
        Self { segment: (v >> 40) as u32, offset: v & ((1 << 40) - 1) }
    }
}

/// Largest segment number and offset a packed position can hold.
pub const MAX_SEGMENT: u32 = (1 << 24) - 1;
pub const MAX_SEGMENT_BYTES: u64 = 1 << 40;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips_and_keeps_order() {
        let a = Position::new(3, 17);
        let b = Position::new(4, 0);
        assert_eq!(Position::unpack(a.pack()), a);
        assert_eq!(
            Position::unpack(Position::new(MAX_SEGMENT, MAX_SEGMENT_BYTES - 1).pack()).segment,
            MAX_SEGMENT
        );
        assert!(a.pack() < b.pack());
        assert!(a < b);
    }
}
