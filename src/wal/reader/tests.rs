//! Unit tests of `wal::reader` (a file of their own: the reader is long enough already).
#![cfg(test)]

use super::open::OPEN_READ_BYTES_MAX;
use super::*;
use crate::wal::record::{encode, Context};
use std::io;

/// Record `i` of a test WAL; lengths vary with `i`.
fn event(i: u64) -> Event<'static> {
    Event { ts_ms: 1_700_000_000_000 + i, event: "play", domain: "reader.test", file_id: i }
}

fn encoded(ids: std::ops::RangeInclusive<u64>) -> Vec<u8> {
    let mut buf = Vec::new();
    for id in ids {
        encode(&event(id), &Context::NONE, &mut buf);
    }
    buf
}

/// Writes segments with the given record counts (ids from 1 on); returns each one's length.
fn write_segments(dir: &Path, first: u32, counts: &[u64]) -> io::Result<Vec<u64>> {
    let mut next_id = 1;
    let mut ends = Vec::new();
    for (i, &count) in counts.iter().enumerate() {
        let buf = encoded(next_id..=next_id + count - 1);
        next_id += count;
        std::fs::write(segment_path(dir, first + i as u32), &buf)?;
        ends.push(buf.len() as u64);
    }
    Ok(ends)
}

/// What a caller saw of one or more reads.
#[derive(Default)]
struct Seen {
    ids: Vec<u64>,
    /// Every outcome's `end`.
    stops: Vec<Position>,
    corrupt: Vec<(Position, Position, RecordError)>,
    cuts: Vec<CutBelowCursor>,
}

/// Reads everything in calls of `max_records`, resuming after corrupt records as the delivery
/// core does; panics on an IO stop.
fn read_all(reader: &mut CoreWalReader, from: Position, until: Position, max_records: usize) -> Seen {
    let mut seen = Seen::default();
    let mut pos = from;
    loop {
        let mut last = None;
        let out = reader.read(pos, until, max_records, |ev, _, raw, end| {
            assert!(
                matches!(record::decode(raw), Ok((decoded, _, _)) if decoded == *ev),
                "raw line is the record"
            );
            seen.ids.push(ev.file_id);
            last = Some(end);
        });
        assert_eq!(out.end, last.unwrap_or(pos), "end is the end of the last record handed over");
        seen.cuts.extend(out.cut_below_cursor);
        let next = match out.stop {
            None => out.end,
            Some(ReadStop::Corrupt { at, resume, reason }) => {
                assert!(at < resume && out.end <= at);
                seen.corrupt.push((at, resume, reason));
                resume
            }
            Some(ReadStop::Io(e)) => panic!("io stop: {e}"),
        };
        if next == pos {
            return seen;
        }
        seen.stops.push(out.end);
        pos = next;
    }
}

#[test]
fn reads_across_segments_in_small_steps() -> io::Result<()> {
    let dir = tempfile::tempdir()?;
    let ends = write_segments(dir.path(), 1, &[4, 3, 4])?;
    let until = Position::new(3, ends[2]);
    let mut reader = CoreWalReader::new(dir.path());
    let seen = read_all(&mut reader, Position::default(), until, 2);
    assert_eq!(seen.ids, (1..=11).collect::<Vec<_>>());
    assert_eq!(seen.stops.last(), Some(&until));
    assert!(seen.stops.contains(&Position::new(1, ends[0])), "stops at the end of a segment");
    assert!(seen.stops.windows(2).all(|w| w[0] < w[1]));
    // One call with room for more crosses the boundary by itself.
    let mut ids = Vec::new();
    let out = reader.read(Position::new(1, 0), until, 6, |ev, _, _, _| ids.push(ev.file_id));
    assert_eq!(ids, (1..=6).collect::<Vec<_>>());
    assert_eq!((out.end.segment, out.stop.is_none()), (2, true));
    Ok(())
}

#[test]
fn never_reads_past_until_in_the_open_segment() -> io::Result<()> {
    let dir = tempfile::tempdir()?;
    let ends = write_segments(dir.path(), 1, &[2, 6])?;
    let until = Position::new(2, encoded(3..=5).len() as u64);
    let mut reader = CoreWalReader::new(dir.path());
    let seen = read_all(&mut reader, Position::new(1, 0), until, 100);
    assert_eq!(seen.ids, vec![1, 2, 3, 4, 5]);
    assert_eq!(seen.stops.last(), Some(&until));
    // The writer publishes more: the same reader continues where it stopped.
    let more = read_all(&mut reader, until, Position::new(2, ends[1]), 1);
    assert_eq!(more.ids, vec![6, 7, 8]);
    Ok(())
}

#[test]
fn end_of_sealed_segment_continues_in_the_next_existing_one() -> io::Result<()> {
    let dir = tempfile::tempdir()?;
    let ends = write_segments(dir.path(), 4, &[2, 3, 1])?;
    std::fs::remove_file(segment_path(dir.path(), 5))?;
    let mut reader = CoreWalReader::new(dir.path());
    let mut ids = Vec::new();
    let until = Position::new(6, ends[2]);
    let out = reader.read(Position::new(4, ends[0]), until, 10, |ev, _, _, _| ids.push(ev.file_id));
    assert_eq!(ids, vec![6]);
    assert_eq!(out.end, until);
    let same = reader.read(until, until, 10, |_, _, _, _| panic!("no record expected"));
    assert_eq!((same.end, same.stop.is_none()), (until, true), "nothing to read: end is from");
    Ok(())
}

#[test]
fn records_longer_than_one_buffer_fill_are_read_whole() -> io::Result<()> {
    let dir = tempfile::tempdir()?;
    let count = (3 * OPEN_READ_BYTES_MAX / 80) as u64;
    let ends = write_segments(dir.path(), 1, &[count])?;
    let mut reader = CoreWalReader::new(dir.path());
    let seen = read_all(&mut reader, Position::new(1, 0), Position::new(1, ends[0]), 1000);
    assert_eq!(seen.ids, (1..=count).collect::<Vec<_>>());
    Ok(())
}

/// Segments 1 (sealed) and 2 (open) of 4 records each, with `damage` applied to record 2 of
/// both; returns `until` and the start of record 2.
fn wal_with_damaged_second_record(
    dir: &Path,
    damage: impl Fn(&mut Vec<u8>, usize),
) -> io::Result<(Position, u64)> {
    let one = encoded(1..=1).len();
    let mut ends = Vec::new();
    for (segment, first) in [(1, 1), (2, 5)] {
        let mut bytes = encoded(first..=first + 3);
        damage(&mut bytes, one);
        std::fs::write(segment_path(dir, segment), &bytes)?;
        ends.push(bytes.len() as u64);
    }
    Ok((Position::new(2, ends[1]), one as u64))
}

#[test]
fn a_corrupt_record_costs_that_record_only_sealed_or_open() -> io::Result<()> {
    let dir = tempfile::tempdir()?;
    let (until, second) = wal_with_damaged_second_record(dir.path(), |b, at| b[at + 20] ^= 0x04)?;
    let seen = read_all(&mut CoreWalReader::new(dir.path()), Position::default(), until, 100);
    assert_eq!(seen.ids, vec![1, 3, 4, 5, 7, 8]);
    let bad = |segment| {
        (Position::new(segment, second), Position::new(segment, 2 * second), RecordError::BadChecksum)
    };
    assert_eq!(seen.corrupt, vec![bad(1), bad(2)]);
    Ok(())
}

#[test]
fn a_flipped_newline_costs_one_record() -> io::Result<()> {
    let dir = tempfile::tempdir()?;
    let (until, second) = wal_with_damaged_second_record(dir.path(), |b, at| b[at - 1] = b'x')?;
    let seen = read_all(&mut CoreWalReader::new(dir.path()), Position::default(), until, 100);
    assert_eq!(seen.ids, vec![2, 3, 4, 6, 7, 8], "record 1 of each segment lost its newline");
    assert_eq!(seen.corrupt[0].0, Position::new(1, 0));
    assert_eq!(seen.corrupt[0].1, Position::new(1, second));
    Ok(())
}

#[test]
fn damage_up_to_the_readable_end_resumes_there() -> io::Result<()> {
    let dir = tempfile::tempdir()?;
    let (until, second) = wal_with_damaged_second_record(dir.path(), |b, at| b[at..].fill(0))?;
    let seen = read_all(&mut CoreWalReader::new(dir.path()), Position::default(), until, 100);
    assert_eq!(seen.ids, vec![1, 5]);
    let sealed_end = std::fs::metadata(segment_path(dir.path(), 1))?.len();
    assert_eq!(seen.corrupt[0].1, Position::new(1, sealed_end));
    assert_eq!(seen.corrupt[1], (Position::new(2, second), until, RecordError::BadHeader));
    Ok(())
}

#[test]
fn resync_in_the_open_segment_reads_on_past_one_buffer() -> io::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut bytes = encoded(1..=1);
    bytes.extend(std::iter::repeat_n(b'0', 2 * OPEN_READ_BYTES_MAX + 5));
    let garbage_end = bytes.len() as u64;
    bytes.extend_from_slice(&encoded(2..=3));
    std::fs::write(segment_path(dir.path(), 1), &bytes)?;
    let until = Position::new(1, bytes.len() as u64);
    let seen = read_all(&mut CoreWalReader::new(dir.path()), Position::new(1, 0), until, 100);
    assert_eq!(seen.ids, vec![1, 2, 3]);
    assert_eq!(seen.corrupt.len(), 1);
    assert_eq!(seen.corrupt[0].1, Position::new(1, garbage_end));
    Ok(())
}

#[test]
fn a_cursor_past_a_cut_segment_goes_on_with_the_next_and_says_so_once() -> io::Result<()> {
    let dir = tempfile::tempdir()?;
    let ends = write_segments(dir.path(), 1, &[2, 2])?;
    let until = Position::new(2, ends[1]);
    let mut reader = CoreWalReader::new(dir.path());
    let cursor = Position::new(1, ends[0] + 500);
    let seen = read_all(&mut reader, cursor, until, 1);
    assert_eq!(seen.ids, vec![3, 4], "the new records after the cut are delivered");
    assert_eq!(
        seen.cuts,
        vec![CutBelowCursor { segment: 1, cursor_offset: ends[0] + 500, file_bytes: ends[0] }]
    );
    let again = reader.read(cursor, until, 1, |_, _, _, _| {});
    assert_eq!(again.cut_below_cursor, None, "reported once");
    Ok(())
}

#[test]
fn positions_past_the_wal_are_errors() -> io::Result<()> {
    let dir = tempfile::tempdir()?;
    let ends = write_segments(dir.path(), 1, &[2, 2])?;
    let mut reader = CoreWalReader::new(dir.path());
    let stop = |out: ReadOutcome| match out.stop {
        Some(ReadStop::Io(e)) => e,
        other => panic!("expected an io stop, got {other:?}"),
    };
    let beyond_open = reader.read(Position::new(2, 0), Position::new(2, ends[1] + 50), 5, |_, _, _, _| {});
    assert!(matches!(stop(beyond_open), WalReadError::OutOfRange { segment: 2, .. }));
    let missing = reader.read(Position::new(2, 0), Position::new(3, 10), 5, |_, _, _, _| {});
    assert!(matches!(stop(missing), WalReadError::Io { .. }));
    let ahead = reader.read(Position::new(4, 0), Position::new(2, ends[1]), 5, |_, _, _, _| {});
    assert!(matches!(stop(ahead), WalReadError::AheadOfWriter { .. }));
    Ok(())
}

#[cfg(feature = "failpoints")]
#[test]
fn an_io_error_leaves_end_at_the_last_record_handed_over() -> io::Result<()> {
    use crate::failpoint::{arm, Spec};
    let dir = tempfile::tempdir()?;
    let ends = write_segments(dir.path(), 1, &[3, 3, 3])?;
    let until = Position::new(3, ends[2]);
    for (point, after) in [("reader.mmap", 1), ("reader.open", 1), ("reader.pread", 0), ("reader.list", 0)] {
        let mut reader = CoreWalReader::new(dir.path());
        let mut ids = Vec::new();
        let armed = arm(point, Spec::errno(libc::EMFILE).after(after).times(1));
        let out = reader.read(Position::default(), until, 100, |ev, _, _, _| ids.push(ev.file_id));
        assert!(matches!(out.stop, Some(ReadStop::Io(_))), "{point}");
        drop(armed);
        let taken = ids.len();
        let rest = read_all(&mut reader, if taken == 0 { Position::default() } else { out.end }, until, 100);
        ids.extend(rest.ids);
        assert_eq!(ids, (1..=9).collect::<Vec<_>>(), "{point}: each record once, after {taken}");
    }
    Ok(())
}
