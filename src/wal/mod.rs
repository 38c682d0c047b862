//! The per-core write-ahead log: the source of truth for every accepted event.
//!
//! ## Layout
//! ```text
//! <wal.dir>/
//!   LOCK                 flock'ed by the running instance (a second one refuses to start)
//!   commit.meta          per-core committed cursors (see crate::cursor)
//!   core-0/000001.log    segments of core 0, numbered from 1, rolled at wal.segment_bytes
//!   core-0/000002.log
//!   core-1/…
//!   quarantine/          sealed segments found corrupt, moved aside
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
//! ## Positions
//! A [`Position`] is (segment number, byte offset) and orders lexicographically. Positions
//! handed out by the writer always fall on record boundaries.
pub mod reader;
pub mod record;

use serde::{Deserialize, Serialize};

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
        assert_eq!(Position::unpack(Position::new(MAX_SEGMENT, MAX_SEGMENT_BYTES - 1).pack()).segment, MAX_SEGMENT);
        assert!(a.pack() < b.pack());
        assert!(a < b);
    }
}
