//! Reading one lane's WAL from a position, for the delivery core's catch-up and replay.
//!
//! Sealed segments (number < `until.segment`) are immutable, so they are memory-mapped once
//! and the mapping is kept until the reader moves past them (pages far behind the read
//! position are handed back with `MADV_DONTNEED`). The open segment is still being appended
//! to, so it is read with `pread` into a reused buffer, never at or past `until.offset`: only
//! bytes the writer has published as written are ever looked at, and those never change again.
//! (`sealed` and `open` hold the two; this file walks positions and applies the resync.)
//!
//! Invariants:
//! - records are handed over in WAL order, each at most once per call, and
//!   [`ReadOutcome::end`] is always the position after the last record handed over (`from` if
//!   none), whatever stopped the read: an IO error (`EMFILE`, `EIO`) never leaves the caller's
//!   read position disagreeing with what it already took;
//! - a record that fails its checks is never handed over and never skipped silently: the read
//!   stops with [`ReadStop::Corrupt`], whose `resume` is where the next record that decodes
//!   starts (`record::resync`, every offset checked), or the readable end of the segment;
//! - a sealed segment that is missing (compacted) counts as read to its end; a position past
//!   the end of a sealed segment means the WAL was cut below a durable cursor: that segment
//!   counts as delivered, the read goes on with the next one, and it is reported once
//!   ([`ReadOutcome::cut_below_cursor`]).

use std::io;
use std::path::{Path, PathBuf};

use open::OpenSegment;
use sealed::{map_sealed, SealedSegment};

use super::record::{self, DecodedContext, Event, RecordError, Resync};
use super::segment::{list_segments, segment_path};
use super::Position;
use crate::failpoint;

/// Why the WAL could not be read further (the same call may be retried later).
#[derive(Debug, thiserror::Error)]
pub enum WalReadError {
    #[error("io error reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A position past the end of the open segment's file (`until` is wrong, or the file was
    /// cut behind our back).
    #[error("position {offset} is past the end of {path} ({file_bytes} bytes)")]
    OutOfRange { path: PathBuf, segment: u32, offset: u64, file_bytes: u64 },
    /// `from` lies in a segment after the one being written: the caller's cursor is ahead of
    /// the writer (segments were lost below a durable cursor).
    #[error("read position {from:?} is past the end of the WAL ({until:?})")]
    AheadOfWriter { from: Position, until: Position },
}

/// Why a read stopped before `until` and `max_records`.
#[derive(Debug)]
pub enum ReadStop {
    /// The record at `at` fails its checks; the next record that decodes starts at `resume`
    /// (same segment; its readable end if none does). `at..resume` holds no record.
    Corrupt {
        at: Position,
        resume: Position,
        reason: RecordError,
    },
    Io(WalReadError),
}

/// A sealed segment that ends before the position the read started from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutBelowCursor {
    pub segment: u32,
    pub cursor_offset: u64,
    pub file_bytes: u64,
}

/// What one [`CoreWalReader::read`] did.
#[derive(Debug)]
pub struct ReadOutcome {
    /// The position after the last record handed to the callback; `from` if none was.
    pub end: Position,
    /// Where the read stopped, `>= end`: `end..reached` holds no record (segment ends, empty
    /// segments, a segment cut below the cursor), so a caller may move its read position
    /// there, and a cursor there means what a cursor at `end` means.
    pub reached: Position,
    /// Why the read stopped early; `None` if it reached `until` or `max_records`.
    pub stop: Option<ReadStop>,
    /// Set once per segment and reader when the start position lay past the end of a sealed
    /// segment; that segment was counted as delivered.
    pub cut_below_cursor: Option<CutBelowCursor>,
}

/// Reads records of one lane (`<wal.dir>/core-N`). Keeps the current segment open (mmap for
/// sealed segments, buffered reads for the open one) between calls.
pub struct CoreWalReader {
    core_dir: PathBuf,
    /// The sealed segment being read; kept mapped so successive calls cost no syscalls.
    sealed: Option<SealedSegment>,
    /// The open segment's file and read buffer, reused across calls.
    open: OpenSegment,
    /// The last segment reported in [`ReadOutcome::cut_below_cursor`].
    reported_cut: Option<u32>,
}

/// Where a read is, kept outside its loop so that an early stop still reports it.
struct Progress {
    pos: Position,
    cut: Option<CutBelowCursor>,
}

/// What one step of a read did.
enum Step {
    /// Records were handed over up to here (or `left` ran out).
    Read(Position),
    /// The position is the end of its segment (or the segment is gone): go on with the next.
    SegmentDone,
    Corrupt {
        at: Position,
        resume: Position,
        reason: RecordError,
    },
}

/// The callback of [`CoreWalReader::read`] inside this module: event, client context, raw
/// line (newline included), end of the record.
trait OnRecord: FnMut(&Event<'_>, &DecodedContext<'_>, &[u8], Position) {}
impl<F: FnMut(&Event<'_>, &DecodedContext<'_>, &[u8], Position)> OnRecord for F {}

impl CoreWalReader {
    pub fn new(core_dir: &Path) -> Self {
        Self { core_dir: core_dir.to_owned(), sealed: None, open: OpenSegment::default(), reported_cut: None }
    }

    /// Hands whole records from `from` onwards to `on_record(event, context, raw_line, end)`,
    /// at most `max_records`, never reading at or past `until` (a position the writer
    /// published as written). Crosses into the next segment at the end of a sealed one.
    /// `from == Position::default()` means the start of the oldest segment.
    pub fn read(
        &mut self,
        from: Position,
        until: Position,
        max_records: usize,
        mut on_record: impl FnMut(&Event<'_>, &DecodedContext<'_>, &[u8], Position),
    ) -> ReadOutcome {
        let mut end = from;
        let mut handed = |ev: &Event<'_>, ctx: &DecodedContext<'_>, raw: &[u8], at: Position| {
            end = at;
            on_record(ev, ctx, raw, at);
        };
        let mut progress = Progress { pos: from, cut: None };
        let stop = self.read_steps(from, until, max_records, &mut handed, &mut progress).err();
        ReadOutcome { end, reached: progress.pos.max(end), stop, cut_below_cursor: progress.cut }
    }

    /// The loop of [`Self::read`]; `Err` is why it stopped early.
    fn read_steps(
        &mut self,
        from: Position,
        until: Position,
        max_records: usize,
        on_record: &mut impl OnRecord,
        progress: &mut Progress,
    ) -> Result<(), ReadStop> {
        let Progress { pos, cut } = progress;
        match self.resolve_start(from).map_err(ReadStop::Io)? {
            Some(start) => *pos = start,
            None => return Ok(()),
        }
        if pos.segment > until.segment {
            return Err(ReadStop::Io(WalReadError::AheadOfWriter { from, until }));
        }
        let mut left = max_records;
        while left > 0 && *pos < until {
            let step = if pos.segment < until.segment {
                self.read_sealed(*pos, &mut left, on_record, cut)
            } else {
                self.read_open(*pos, until.offset, &mut left, on_record)
            };
            *pos = match step.map_err(ReadStop::Io)? {
                Step::Read(next) => next,
                Step::SegmentDone => {
                    Position::new(self.next_segment(pos.segment, until.segment).map_err(ReadStop::Io)?, 0)
                }
                Step::Corrupt { at, resume, reason } => return Err(ReadStop::Corrupt { at, resume, reason }),
            };
        }
        Ok(())
    }

    /// Segment 0 stands for "the oldest segment"; `None` if the lane has no segment yet.
    fn resolve_start(&self, from: Position) -> Result<Option<Position>, WalReadError> {
        if from.segment != 0 {
            return Ok(Some(from));
        }
        let numbers = self.list()?;
        Ok(numbers.first().map(|&oldest| Position::new(oldest, 0)))
    }

    fn list(&self) -> Result<Vec<u32>, WalReadError> {
        let dir = &self.core_dir;
        failpoint::io("reader.list")
            .and_then(|()| list_segments(dir))
            .map_err(|source| WalReadError::Io { path: dir.clone(), source })
    }

    /// The first segment after `after`; segments may be missing (compacted), but
    /// `until_segment` itself must exist.
    fn next_segment(&self, after: u32, until_segment: u32) -> Result<u32, WalReadError> {
        match self.list()?.into_iter().find(|&n| n > after) {
            Some(n) if n <= until_segment => Ok(n),
            _ => Err(WalReadError::Io {
                path: segment_path(&self.core_dir, until_segment),
                source: io::Error::new(io::ErrorKind::NotFound, "segment to read up to is missing"),
            }),
        }
    }

    fn read_sealed(
        &mut self,
        pos: Position,
        left: &mut usize,
        on_record: &mut impl OnRecord,
        cut: &mut Option<CutBelowCursor>,
    ) -> Result<Step, WalReadError> {
        let sealed = match map_sealed(&mut self.sealed, &self.core_dir, pos.segment) {
            Ok(seg) => seg,
            // Compacted after a cursor was taken inside it: it was delivered.
            Err(WalReadError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(Step::SegmentDone)
            }
            Err(e) => return Err(e),
        };
        sealed.release_behind(pos.offset);
        let file_bytes = sealed.map.len() as u64;
        if pos.offset >= file_bytes {
            if pos.offset > file_bytes && self.reported_cut != Some(pos.segment) {
                self.reported_cut = Some(pos.segment);
                *cut = Some(CutBelowCursor { segment: pos.segment, cursor_offset: pos.offset, file_bytes });
            }
            return Ok(Step::SegmentDone);
        }
        let bytes = &sealed.map[pos.offset as usize..];
        Ok(match deliver_records(bytes, pos, left, on_record) {
            (reached, None) => Step::Read(reached),
            (at, Some(reason)) => {
                let skip = match record::resync(&bytes[(at.offset - pos.offset) as usize..], 1, true) {
                    Resync::At(n) => n as u64,
                    Resync::None | Resync::NeedMore(_) => file_bytes - at.offset,
                };
                Step::Corrupt { at, resume: Position::new(at.segment, at.offset + skip), reason }
            }
        })
    }

    /// Hands over records of the open segment below `limit` until `left` runs out.
    fn read_open(
        &mut self,
        mut pos: Position,
        limit: u64,
        left: &mut usize,
        on_record: &mut impl OnRecord,
    ) -> Result<Step, WalReadError> {
        let mut refilled_at = None;
        while *left > 0 && pos.offset < limit {
            let window = self.open.window(&self.core_dir, pos, limit)?;
            let reaches_limit = pos.offset + window.len() as u64 == limit;
            match deliver_records(window, pos, left, on_record) {
                (end, None) => pos = end,
                // The record runs past the buffered bytes: read again from its start, once.
                (end, Some(RecordError::Incomplete)) if !reaches_limit && refilled_at != Some(end.offset) => {
                    pos = end;
                    refilled_at = Some(end.offset);
                    self.open.discard();
                }
                (at, Some(reason)) => {
                    let resume = self.resync_open(at, limit)?;
                    return Ok(Step::Corrupt { at, resume, reason });
                }
            }
        }
        Ok(Step::Read(pos))
    }

    /// Where the next record that decodes starts after the bad one at `at` in the open
    /// segment, reading on in windows; `limit` if none does.
    fn resync_open(&mut self, at: Position, limit: u64) -> Result<Position, WalReadError> {
        let (mut base, mut first) = (at.offset, 1);
        while base < limit {
            self.open.discard();
            let window = self.open.window(&self.core_dir, Position::new(at.segment, base), limit)?;
            let complete = base + window.len() as u64 == limit;
            match record::resync(window, first, complete) {
                Resync::At(n) => return Ok(Position::new(at.segment, base + n as u64)),
                Resync::NeedMore(n) => (base, first) = (base + n as u64, 0),
                Resync::None => (base, first) = (base + window.len() as u64, 0),
            }
        }
        Ok(Position::new(at.segment, limit))
    }
}

/// Decodes records from `bytes` (which start at `base`) until the end, `left` runs out or one
/// fails. Returns the position reached and why it stopped early, if it did.
fn deliver_records(
    bytes: &[u8],
    base: Position,
    left: &mut usize,
    on_record: &mut impl OnRecord,
) -> (Position, Option<RecordError>) {
    let mut used = 0;
    while *left > 0 && used < bytes.len() {
        match record::decode(&bytes[used..]) {
            Ok((event, context, len)) => {
                let raw = &bytes[used..used + len];
                used += len;
                *left -= 1;
                on_record(&event, &context, raw, Position::new(base.segment, base.offset + used as u64));
            }
            Err(reason) => return (Position::new(base.segment, base.offset + used as u64), Some(reason)),
        }
    }
    (Position::new(base.segment, base.offset + used as u64), None)
}

mod open;
mod sealed;
#[cfg(test)]
mod tests;
