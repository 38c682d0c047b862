//! Reading one core's WAL from a position, for the flusher's catch-up and replay.
//!
//! Sealed segments (number < `until.segment`) are immutable, so they are memory-mapped once
//! and the mapping is kept until the reader moves past them. The open segment is still being
//! appended to, so it is read with `pread` into a reused buffer, never at or past
//! `until.offset`: only bytes the writer has published as written are ever looked at, and
//! those never change again.
//!
//! Invariants: records are delivered in WAL order, each exactly once per call, and a record
//! that fails to decode inside the readable range is an error, never skipped. A sealed
//! segment that is missing (compacted or quarantined) counts as read to its end.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::record::{self, DecodedContext, Event, RecordError, MAX_RECORD_BYTES};
use super::segment::{list_segments, segment_path};
use super::Position;

/// Most bytes of the open segment read with one `pread`.
const OPEN_READ_BYTES_MAX: usize = 256 * 1024;
// A refill at a record's start must always hold the whole record (or prove it too long).
const _: () = assert!(OPEN_READ_BYTES_MAX >= MAX_RECORD_BYTES);

/// Why the WAL could not be read further.
#[derive(Debug, thiserror::Error)]
pub enum WalReadError {
    #[error("io error reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A record that is not the torn tail of the newest segment failed to decode.
    #[error("corrupt record in {path} at offset {offset}: {reason}")]
    Corrupt { path: PathBuf, segment: u32, offset: u64, reason: super::record::RecordError },
    /// A position past the end of a segment file (the caller's position or `until` is wrong,
    /// or the file was cut behind our back).
    #[error("position {offset} is past the end of {path} ({file_bytes} bytes)")]
    OutOfRange { path: PathBuf, segment: u32, offset: u64, file_bytes: u64 },
}

/// Reads records of one core (`<wal.dir>/core-N`). Keeps the current segment open (mmap for
/// sealed segments, buffered reads for the open one) between calls.
pub struct CoreWalReader {
    core_dir: PathBuf,
    /// The sealed segment being read; kept mapped so successive calls cost no syscalls.
    sealed: Option<SealedSegment>,
    /// The open segment's file and read buffer, reused across calls.
    open: OpenSegment,
}

struct SealedSegment {
    number: u32,
    map: Mmap,
    /// Bytes below this were handed back to the kernel ([`MAPPED_BYTES_MAX`]).
    released: u64,
}

/// Mapped pages of a sealed segment count towards the process's RSS once touched. Pages more
/// than this far behind the read position are released (`MADV_DONTNEED`; the page cache
/// keeps them), so a catch-up over a 64 MiB segment costs at most this much RSS.
const MAPPED_BYTES_MAX: u64 = 4 * 1024 * 1024;

#[derive(Default)]
struct OpenSegment {
    /// Segment number and file handle, reopened when the open segment changes.
    file: Option<(u32, File)>,
    /// Bytes of the open segment starting at `buf_offset`, all below a published `until`.
    buf: Vec<u8>,
    buf_offset: u64,
}

impl CoreWalReader {
    pub fn new(core_dir: &Path) -> Self {
        Self { core_dir: core_dir.to_owned(), sealed: None, open: OpenSegment::default() }
    }

    /// Calls `on_record(&event, end_of_record)` for whole records from `from` onwards, never
    /// reading at or past `until` (a position the writer published as written), at most
    /// `max_records` of them. When `from` is at the end of a segment older than
    /// `until.segment`, continues at the start of the next segment. Returns the position after
    /// the last record delivered (== `from` if none).
    ///
    /// `from == Position::default()` means the start of the oldest segment.
    pub fn read(
        &mut self,
        from: Position,
        until: Position,
        max_records: usize,
        mut on_record: impl FnMut(&Event<'_>, Position),
    ) -> Result<Position, WalReadError> {
        self.read_with_context(from, until, max_records, |ev, _, end| on_record(ev, end))
    }

    /// [`Self::read`] that also hands over each record's client context.
    pub fn read_with_context(
        &mut self,
        from: Position,
        until: Position,
        max_records: usize,
        mut on_record: impl FnMut(&Event<'_>, &DecodedContext<'_>, Position),
    ) -> Result<Position, WalReadError> {
        let Some(mut pos) = self.resolve_start(from)? else {
            return Ok(from);
        };
        let mut last_end = from;
        let mut left = max_records;
        while left > 0 && pos < until {
            let next = if pos.segment < until.segment {
                match self.read_sealed(pos, &mut left, &mut on_record)? {
                    SealedStep::Read(end) => end,
                    SealedStep::AtEnd => {
                        pos = Position::new(self.next_segment(pos.segment, until.segment)?, 0);
                        continue;
                    }
                }
            } else {
                self.read_open(pos, until.offset, &mut left, &mut on_record)?
            };
            if next != pos {
                last_end = next;
            }
            pos = next;
        }
        Ok(last_end)
    }

    /// Segment 0 stands for "the oldest segment"; `None` if the core has no segment yet.
    fn resolve_start(&self, from: Position) -> Result<Option<Position>, WalReadError> {
        if from.segment != 0 {
            return Ok(Some(from));
        }
        let numbers = list_segments(&self.core_dir).map_err(self.io_error(&self.core_dir))?;
        Ok(numbers.first().map(|&oldest| Position::new(oldest, 0)))
    }

    /// The first segment after `after`; segments may be missing (compacted, quarantined), but
    /// `until_segment` itself must exist.
    fn next_segment(&self, after: u32, until_segment: u32) -> Result<u32, WalReadError> {
        let numbers = list_segments(&self.core_dir).map_err(self.io_error(&self.core_dir))?;
        match numbers.into_iter().find(|&n| n > after) {
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
        on_record: &mut impl FnMut(&Event<'_>, &DecodedContext<'_>, Position),
    ) -> Result<SealedStep, WalReadError> {
        let core_dir = &self.core_dir;
        let sealed = match map_sealed(&mut self.sealed, core_dir, pos.segment) {
            Ok(seg) => seg,
            // Quarantined (moved aside as corrupt) after a cursor was taken inside it: what
            // was readable in it is delivered; go on with the next segment.
            Err(WalReadError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(SealedStep::AtEnd)
            }
            Err(e) => return Err(e),
        };
        sealed.release_behind(pos.offset);
        let map = &sealed.map;
        let file_bytes = map.len() as u64;
        if pos.offset > file_bytes {
            let path = segment_path(core_dir, pos.segment);
            return Err(WalReadError::OutOfRange {
                path,
                segment: pos.segment,
                offset: pos.offset,
                file_bytes,
            });
        }
        if pos.offset == file_bytes {
            return Ok(SealedStep::AtEnd);
        }
        let bytes = &map[pos.offset as usize..];
        match deliver_records(bytes, pos, left, on_record) {
            (end, None) => Ok(SealedStep::Read(end)),
            (end, Some(reason)) => Err(corrupt(core_dir, end, reason)),
        }
    }

    /// Delivers at least one record of the open segment (below `limit`), or fails.
    fn read_open(
        &mut self,
        mut pos: Position,
        limit: u64,
        left: &mut usize,
        on_record: &mut impl FnMut(&Event<'_>, &DecodedContext<'_>, Position),
    ) -> Result<Position, WalReadError> {
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
                (end, Some(reason)) => return Err(corrupt(&self.core_dir, end, reason)),
            }
        }
        Ok(pos)
    }

    fn io_error<'a>(&self, path: &'a Path) -> impl FnOnce(io::Error) -> WalReadError + 'a {
        move |source| WalReadError::Io { path: path.to_owned(), source }
    }
}

enum SealedStep {
    /// Records were delivered up to here.
    Read(Position),
    /// The position is the end of the segment file.
    AtEnd,
}

impl SealedSegment {
    /// Releases whole pages more than [`MAPPED_BYTES_MAX`] behind `offset`.
    fn release_behind(&mut self, offset: u64) {
        const PAGE: u64 = 4096;
        let upto = offset.saturating_sub(MAPPED_BYTES_MAX) / PAGE * PAGE;
        if upto <= self.released {
            return;
        }
        // SAFETY: the mapping is shared and read-only; MADV_DONTNEED only drops this process's
        // page-table entries, and a later access re-reads the pages from the page cache.
        let dropped = unsafe {
            self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                self.released as usize,
                (upto - self.released) as usize,
            )
        };
        if dropped.is_ok() {
            self.released = upto;
        }
    }
}

/// The mapping of sealed segment `number`, mapping it (and dropping the previous one) if needed.
fn map_sealed<'s>(
    slot: &'s mut Option<SealedSegment>,
    core_dir: &Path,
    number: u32,
) -> Result<&'s mut SealedSegment, WalReadError> {
    let seg = match slot.take() {
        Some(seg) if seg.number == number => seg,
        _ => {
            let path = segment_path(core_dir, number);
            let io_err = |source| WalReadError::Io { path: path.clone(), source };
            let file = File::open(&path).map_err(io_err)?;
            // SAFETY: a sealed segment is never written or truncated again; compaction only
            // unlinks whole files, which leaves an existing mapping valid.
            let map = unsafe { Mmap::map(&file) }.map_err(io_err)?;
            // Catch-up reads a segment front to back: ask for aggressive read-ahead.
            let _ = map.advise(memmap2::Advice::Sequential);
            SealedSegment { number, map, released: 0 }
        }
    };
    Ok(slot.insert(seg))
}

impl OpenSegment {
    /// Buffered bytes from `pos` up to at most `limit` (never empty when `pos < limit`),
    /// reading from the file when `pos` is not buffered.
    fn window(&mut self, core_dir: &Path, pos: Position, limit: u64) -> Result<&[u8], WalReadError> {
        let buf_end = self.buf_offset + self.buf.len() as u64;
        let same_file = matches!(&self.file, Some((n, _)) if *n == pos.segment);
        if !(same_file && self.buf_offset <= pos.offset && pos.offset < buf_end) {
            self.fill(core_dir, pos, limit)?;
        }
        let from = (pos.offset - self.buf_offset) as usize;
        let to = (limit.min(self.buf_offset + self.buf.len() as u64) - self.buf_offset) as usize;
        Ok(&self.buf[from..to])
    }

    fn fill(&mut self, core_dir: &Path, pos: Position, limit: u64) -> Result<(), WalReadError> {
        let path = || segment_path(core_dir, pos.segment);
        let file = match &self.file {
            Some((n, file)) if *n == pos.segment => file,
            _ => {
                let opened =
                    File::open(path()).map_err(|source| WalReadError::Io { path: path(), source })?;
                &self.file.insert((pos.segment, opened)).1
            }
        };
        let len = (limit - pos.offset).min(OPEN_READ_BYTES_MAX as u64) as usize;
        self.buf.clear();
        self.buf.resize(len, 0);
        self.buf_offset = pos.offset;
        if let Err(source) = file.read_exact_at(&mut self.buf, pos.offset) {
            self.buf.clear();
            return Err(match source.kind() {
                io::ErrorKind::UnexpectedEof => WalReadError::OutOfRange {
                    path: path(),
                    segment: pos.segment,
                    offset: limit,
                    file_bytes: file.metadata().map(|m| m.len()).unwrap_or(0),
                },
                _ => WalReadError::Io { path: path(), source },
            });
        }
        Ok(())
    }

    /// Forgets the buffered bytes (keeps the allocation).
    fn discard(&mut self) {
        self.buf.clear();
    }
}

/// Decodes records from `bytes` (which start at `base`) until the end, `left` runs out or one
/// fails. Returns the position reached and why it stopped early, if it did.
fn deliver_records(
    bytes: &[u8],
    base: Position,
    left: &mut usize,
    on_record: &mut impl FnMut(&Event<'_>, &DecodedContext<'_>, Position),
) -> (Position, Option<RecordError>) {
    let mut used = 0;
    while *left > 0 && used < bytes.len() {
        match record::decode_with_context(&bytes[used..]) {
            Ok((event, context, len)) => {
                used += len;
                *left -= 1;
                on_record(&event, &context, Position::new(base.segment, base.offset + used as u64));
            }
            Err(reason) => return (Position::new(base.segment, base.offset + used as u64), Some(reason)),
        }
    }
    (Position::new(base.segment, base.offset + used as u64), None)
}

fn corrupt(core_dir: &Path, at: Position, reason: RecordError) -> WalReadError {
    WalReadError::Corrupt {
        path: segment_path(core_dir, at.segment),
        segment: at.segment,
        offset: at.offset,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::{encode, Context};

    /// Record `i` of a test WAL; lengths vary with `i`.
    fn event(i: u64) -> Event<'static> {
        Event { ts_ms: 1_700_000_000_000 + i, event: "play", domain: "reader.test", file_id: i }
    }

    /// Writes segments with the given record counts; returns the end offset of each.
    fn write_segments(dir: &Path, first: u32, counts: &[u64]) -> Vec<u64> {
        let mut next_id = 1;
        let mut ends = Vec::new();
        for (i, &count) in counts.iter().enumerate() {
            let mut buf = Vec::new();
            for _ in 0..count {
                encode(&event(next_id), &Context::NONE, &mut buf);
                next_id += 1;
            }
            std::fs::write(segment_path(dir, first + i as u32), &buf).unwrap();
            ends.push(buf.len() as u64);
        }
        ends
    }

    /// Reads everything in calls of `max_records`; returns file ids and every returned position.
    fn read_all(
        reader: &mut CoreWalReader,
        from: Position,
        until: Position,
        max_records: usize,
    ) -> (Vec<u64>, Vec<Position>) {
        let mut ids = Vec::new();
        let mut stops = Vec::new();
        let mut pos = from;
        loop {
            let mut last = None;
            let next = reader
                .read(pos, until, max_records, |ev, end| {
                    ids.push(ev.file_id);
                    last = Some(end);
                })
                .unwrap();
            if next == pos {
                return (ids, stops);
            }
            assert_eq!(Some(next), last, "returned position is the end of the last record");
            stops.push(next);
            pos = next;
        }
    }

    #[test]
    fn reads_across_segments_in_small_steps() {
        let dir = tempfile::tempdir().unwrap();
        let ends = write_segments(dir.path(), 1, &[4, 3, 4]);
        let until = Position::new(3, ends[2]);
        let mut reader = CoreWalReader::new(dir.path());
        let (ids, stops) = read_all(&mut reader, Position::default(), until, 2);
        assert_eq!(ids, (1..=11).collect::<Vec<_>>());
        assert_eq!(stops.last(), Some(&until));
        assert!(stops.contains(&Position::new(1, ends[0])), "stops at the end of a segment");
        assert!(stops.windows(2).all(|w| w[0] < w[1]));
        // One call with room for more crosses the boundary by itself.
        let mut ids = Vec::new();
        let end = reader.read(Position::new(1, 0), until, 6, |ev, _| ids.push(ev.file_id)).unwrap();
        assert_eq!(ids, (1..=6).collect::<Vec<_>>());
        assert_eq!(end.segment, 2);
    }

    #[test]
    fn never_reads_past_until_in_the_open_segment() {
        let dir = tempfile::tempdir().unwrap();
        let ends = write_segments(dir.path(), 1, &[2, 6]);
        let mut prefix = Vec::new();
        for id in 3..=5 {
            encode(&event(id), &Context::NONE, &mut prefix);
        }
        let until = Position::new(2, prefix.len() as u64);
        let mut reader = CoreWalReader::new(dir.path());
        let (ids, stops) = read_all(&mut reader, Position::new(1, 0), until, 100);
        assert_eq!(ids, vec![1, 2, 3, 4, 5]);
        assert_eq!(stops.last(), Some(&until));
        // The writer publishes more: the same reader continues where it stopped.
        let until = Position::new(2, ends[1]);
        let (more, _) = read_all(&mut reader, stops[stops.len() - 1], until, 1);
        assert_eq!(more, vec![6, 7, 8]);
    }

    #[test]
    fn end_of_sealed_segment_continues_in_the_next_existing_one() {
        let dir = tempfile::tempdir().unwrap();
        let ends = write_segments(dir.path(), 4, &[2, 3, 1]);
        std::fs::remove_file(segment_path(dir.path(), 5)).unwrap();
        let mut reader = CoreWalReader::new(dir.path());
        let mut ids = Vec::new();
        let end = reader
            .read(Position::new(4, ends[0]), Position::new(6, ends[2]), 10, |ev, _| ids.push(ev.file_id))
            .unwrap();
        assert_eq!(ids, vec![6]);
        assert_eq!(end, Position::new(6, ends[2]));
        // Nothing to read: the returned position is `from`.
        let same = reader.read(end, end, 10, |_, _| panic!("no record expected")).unwrap();
        assert_eq!(same, end);
    }

    #[test]
    fn records_longer_than_one_buffer_fill_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let count = (3 * OPEN_READ_BYTES_MAX / 80) as u64;
        let ends = write_segments(dir.path(), 1, &[count]);
        let mut reader = CoreWalReader::new(dir.path());
        let (ids, _) = read_all(&mut reader, Position::new(1, 0), Position::new(1, ends[0]), 1000);
        assert_eq!(ids, (1..=count).collect::<Vec<_>>());
    }

    #[test]
    fn corrupt_record_is_reported_with_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let ends = write_segments(dir.path(), 1, &[3, 3]);
        let mut first_two = Vec::new();
        encode(&event(1), &Context::NONE, &mut first_two);
        encode(&event(2), &Context::NONE, &mut first_two);
        for segment in [1, 2] {
            let path = segment_path(dir.path(), segment);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[first_two.len() + 20] ^= 0x04;
            std::fs::write(&path, &bytes).unwrap();
        }
        let mut reader = CoreWalReader::new(dir.path());
        let mut ids = Vec::new();
        let err = reader
            .read(Position::new(1, 0), Position::new(2, ends[1]), 10, |ev, _| ids.push(ev.file_id))
            .unwrap_err();
        assert_eq!(ids, vec![1, 2], "records before the damage are delivered");
        match err {
            WalReadError::Corrupt { segment, offset, reason, .. } => {
                assert_eq!((segment, offset), (1, first_two.len() as u64));
                assert_eq!(reason, RecordError::BadChecksum);
            }
            other => panic!("expected Corrupt, got {other}"),
        }
        // The open segment is checked the same way.
        let err = reader.read(Position::new(2, 0), Position::new(2, ends[1]), 10, |_, _| {}).unwrap_err();
        assert!(
            matches!(err, WalReadError::Corrupt { segment: 2, offset, .. } if offset == first_two.len() as u64)
        );
    }

    #[test]
    fn positions_past_the_file_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let ends = write_segments(dir.path(), 1, &[2, 2]);
        let mut reader = CoreWalReader::new(dir.path());
        let beyond_sealed = reader.read(Position::new(1, ends[0] + 1), Position::new(2, 0), 5, |_, _| {});
        assert!(matches!(beyond_sealed, Err(WalReadError::OutOfRange { segment: 1, .. })));
        let beyond_open = reader.read(Position::new(2, 0), Position::new(2, ends[1] + 50), 5, |_, _| {});
        assert!(matches!(beyond_open, Err(WalReadError::OutOfRange { segment: 2, .. })));
        let missing = reader.read(Position::new(2, 0), Position::new(3, 10), 5, |_, _| {});
        assert!(matches!(missing, Err(WalReadError::Io { .. })));
    }

    #[test]
    fn a_missing_sealed_segment_at_the_start_continues_with_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let ends = write_segments(dir.path(), 1, &[3, 2, 2]);
        std::fs::remove_file(segment_path(dir.path(), 2)).unwrap(); // quarantined
        let mut reader = CoreWalReader::new(dir.path());
        let mut ids = Vec::new();
        let until = Position::new(3, ends[2]);
        let end = reader.read(Position::new(2, 7), until, 10, |ev, _| ids.push(ev.file_id)).unwrap();
        assert_eq!(ids, vec![6, 7], "segment 3's records, nothing of the missing one");
        assert_eq!(end, until);
    }
}
