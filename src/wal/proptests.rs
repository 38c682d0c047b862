//! Property tests of the WAL as a whole: whatever happens to the bytes on disk (a crash at any
//! offset, flipped bytes, zeroed or garbage ranges), recovery never panics, cuts only a tail
//! in which nothing decodes, and the reader (resyncing after damage) hands back exactly the
//! written records whose bytes are intact, never an invented one; and a model with reopen and
//! corruption steps checks writer + recovery + reader together across rolls, torn tails,
//! flipped bytes and a fresh segment per start.
#![cfg(test)]

use std::path::Path;

use proptest::prelude::*;

use super::config::SyncPolicy;
use super::reader::{CoreWalReader, ReadStop};
use super::record::{encode, scan, Context, Event};
use super::recovery::recover_lane;
use super::segment::{core_dir, segment_path};
use super::writer::SegmentWriter;
use super::Position;

const CORE: u16 = 0;

#[derive(Debug, Clone, PartialEq, Eq)]
struct OwnedEvent {
    ts_ms: u64,
    event: String,
    domain: String,
    file_id: u64,
}

impl OwnedEvent {
    fn as_event(&self) -> Event<'_> {
        Event { ts_ms: self.ts_ms, event: &self.event, domain: &self.domain, file_id: self.file_id }
    }

    fn from_event(ev: &Event<'_>) -> Self {
        Self {
            ts_ms: ev.ts_ms,
            event: ev.event.to_owned(),
            domain: ev.domain.to_owned(),
            file_id: ev.file_id,
        }
    }
}

fn event_strategy() -> impl Strategy<Value = OwnedEvent> {
    (any::<u64>(), "[a-z0-9_]{1,32}", "[a-z0-9][a-z0-9.-]{0,40}", 1..=u64::MAX)
        .prop_map(|(ts_ms, event, domain, file_id)| OwnedEvent { ts_ms, event, domain, file_id })
}

/// Encodes `events`; returns the bytes and the end offset of every record.
fn encode_all(events: &[OwnedEvent]) -> (Vec<u8>, Vec<usize>) {
    let mut buf = Vec::new();
    let mut ends = Vec::with_capacity(events.len());
    for ev in events {
        encode(&ev.as_event(), &Context::NONE, &mut buf);
        ends.push(buf.len());
    }
    (buf, ends)
}

/// An error of any call a case makes (its own file IO, or the code under test) as the case's
/// failure, with the error's text.
fn or_fail<T, E: std::fmt::Display>(result: Result<T, E>) -> Result<T, TestCaseError> {
    result.map_err(|e| TestCaseError::fail(e.to_string()))
}

/// Makes `bytes` the only segment (number 1) of the lane, removing whatever was there.
fn write_only_segment(wal: &Path, bytes: &[u8]) -> Result<std::path::PathBuf, TestCaseError> {
    let dir = core_dir(wal, CORE);
    let _ = std::fs::remove_dir_all(&dir);
    or_fail(std::fs::create_dir_all(&dir))?;
    let path = segment_path(&dir, 1);
    or_fail(std::fs::write(&path, bytes))?;
    Ok(path)
}

/// Number of whole records in the first `len` bytes.
fn whole_records_within(ends: &[usize], len: usize) -> usize {
    ends.iter().take_while(|&&end| end <= len).count()
}

/// Every record the reader hands back from the oldest segment to `until`, resuming after
/// damage as the delivery core does, with each record's raw line and end.
fn read_back(wal: &Path, until: Position) -> Result<Vec<(OwnedEvent, Vec<u8>, Position)>, TestCaseError> {
    let mut reader = CoreWalReader::new(&core_dir(wal, CORE));
    let mut out = Vec::new();
    let mut pos = Position::default();
    loop {
        let read = reader
            .read(pos, until, 7, |ev, _, raw, end| out.push((OwnedEvent::from_event(ev), raw.to_vec(), end)));
        let next = match read.stop {
            None => read.reached,
            Some(ReadStop::Corrupt { resume, .. }) => resume,
            Some(ReadStop::Io(e)) => return Err(TestCaseError::fail(e.to_string())),
        };
        if next == pos {
            return Ok(out);
        }
        pos = next;
    }
}

/// Writes `buf[..cut]` as the only segment, recovers, and checks that exactly the whole
/// records within the cut survive and a fresh segment follows.
fn check_recovery_after_cut(wal: &Path, buf: &[u8], ends: &[usize], cut: usize) -> Result<(), TestCaseError> {
    let path = write_only_segment(wal, &buf[..cut])?;
    let rec = or_fail(recover_lane(wal, CORE, SyncPolicy::None))?;
    let k = whole_records_within(ends, cut);
    let kept = if k == 0 { 0 } else { ends[k - 1] };
    prop_assert_eq!(rec.tail, Position::new(2, 0));
    prop_assert_eq!(rec.newest_records, k as u64);
    prop_assert_eq!(rec.truncated_bytes, (cut - kept) as u64);
    prop_assert_eq!(or_fail(std::fs::read(&path))?, &buf[..kept]);
    Ok(())
}

proptest! {
    // Every cut costs a truncate + fdatasync, so few cases of few records.
    #![proptest_config(ProptestConfig::with_cases(4))]

    /// A crash can cut the newest segment anywhere: recovery keeps exactly the whole records.
    #[test]
    fn truncation_at_every_offset_recovers_the_longest_whole_prefix(
        events in prop::collection::vec(event_strategy(), 1..5),
    ) {
        let (buf, ends) = encode_all(&events);
        let wal = or_fail(tempfile::tempdir())?;
        for cut in 0..=buf.len() {
            check_recovery_after_cut(wal.path(), &buf, &ends, cut)?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The same with more records and one random cut each.
    #[test]
    fn truncation_at_a_random_offset_recovers_the_longest_whole_prefix(
        events in prop::collection::vec(event_strategy(), 1..40),
        cut in any::<prop::sample::Index>(),
    ) {
        let (buf, ends) = encode_all(&events);
        let wal = or_fail(tempfile::tempdir())?;
        check_recovery_after_cut(wal.path(), &buf, &ends, cut.index(buf.len() + 1))?;
    }
}

#[derive(Debug, Clone)]
enum Damage {
    Flip { at: usize, xor: u8 },
    Zeros { at: usize, len: usize },
    Garbage { at: usize, bytes: Vec<u8> },
}

fn damage_strategy() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, xor)| Damage::Flip { at, xor }),
        (any::<usize>(), 1..200usize).prop_map(|(at, len)| Damage::Zeros { at, len }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..200))
            .prop_map(|(at, bytes)| Damage::Garbage { at, bytes }),
    ]
}

impl Damage {
    /// Applies the damage inside `buf` (positions wrap around its length).
    fn apply(&self, buf: &mut [u8]) {
        let n = buf.len();
        match self {
            Damage::Flip { at, xor } => buf[at % n] ^= xor,
            Damage::Zeros { at, len } => {
                let start = at % n;
                buf[start..(start + len).min(n)].fill(0);
            }
            Damage::Garbage { at, bytes } => {
                let start = at % n;
                let end = (start + bytes.len()).min(n);
                buf[start..end].copy_from_slice(&bytes[..end - start]);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Damage anywhere: recovery cuts only bytes after the last record that decodes, the
    /// reader hands back every record whose bytes are intact, and everything it hands back is
    /// a written record at its own offset: damage costs the damaged records only.
    #[test]
    fn damage_costs_the_damaged_records_only(
        events in prop::collection::vec(event_strategy(), 1..20),
        damages in prop::collection::vec(damage_strategy(), 1..4),
    ) {
        let (original, ends) = encode_all(&events);
        let mut damaged = original.clone();
        for d in &damages {
            d.apply(&mut damaged);
        }
        let wal = or_fail(tempfile::tempdir())?;
        let path = write_only_segment(wal.path(), &damaged)?;
        let rec = or_fail(recover_lane(wal.path(), CORE, SyncPolicy::None))?;
        let kept = or_fail(std::fs::read(&path))?;
        prop_assert_eq!(&kept[..], &damaged[..kept.len()], "only a tail is cut");
        prop_assert_eq!(rec.truncated_bytes as usize, damaged.len() - kept.len());

        let starts = std::iter::once(0).chain(ends.iter().copied());
        let intact: Vec<usize> = starts.zip(&ends)
            .filter(|&(s, &e)| original[s..e] == damaged[s..e])
            .map(|(_, &e)| e)
            .collect();
        prop_assert!(intact.last().is_none_or(|&e| e <= kept.len()), "no intact record is cut");
        let back = read_back(wal.path(), rec.tail)?;
        for (ev, raw, end) in &back {
            let end = end.offset as usize;
            let Some(i) = ends.iter().position(|&e| e == end) else {
                return Err(TestCaseError::fail(format!("no written record ends at {end}")));
            };
            prop_assert_eq!(&raw[..], &original[end - raw.len()..end]);
            prop_assert_eq!(ev, &events[i]);
        }
        let back_ends: Vec<usize> = back.iter().map(|(_, _, end)| end.offset as usize).collect();
        for e in intact {
            prop_assert!(back_ends.contains(&e), "intact record ending at {} is handed back", e);
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// One tick: the records go to the writer in one append.
    Append(Vec<OwnedEvent>),
    /// A crash in the middle of a write: part of a record (or zeros) lands after the tail.
    Crash { torn: Vec<u8> },
    /// A clean restart.
    Reopen,
    /// One byte of an appended record changes (a bad sector, a stray write).
    Corrupt { record: prop::sample::Index, byte: prop::sample::Index, xor: u8 },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(event_strategy(), 1..5).prop_map(Op::Append),
        1 => (event_strategy(), any::<prop::sample::Index>(), any::<bool>()).prop_map(
            |(ev, cut, zeros)| {
                let (bytes, _) = encode_all(&[ev]);
                let len = 1 + cut.index(bytes.len() - 1);
                Op::Crash { torn: if zeros { vec![0; len] } else { bytes[..len].to_vec() } }
            }
        ),
        1 => Just(Op::Reopen),
        1 => (any::<prop::sample::Index>(), any::<prop::sample::Index>(), 1..=255u8)
            .prop_map(|(record, byte, xor)| Op::Corrupt { record, byte, xor }),
    ]
}

/// One record as the model knows it.
#[derive(Debug, Clone)]
struct Written {
    event: OwnedEvent,
    segment: u32,
    offset: u64,
    len: u64,
    corrupt: bool,
}

/// The model: every record written, in order.
#[derive(Default)]
struct Model {
    records: Vec<Written>,
}

impl Model {
    fn append(&mut self, events: &[OwnedEvent], start: Position, lens: &[usize]) {
        let mut offset = start.offset;
        for (ev, &len) in events.iter().zip(lens) {
            let len = len as u64;
            self.records.push(Written {
                event: ev.clone(),
                segment: start.segment,
                offset,
                len,
                corrupt: false,
            });
            offset += len;
        }
    }

    /// Bytes recovery must cut from segment `segment` that is `file_len` long: everything
    /// after its last record that is not corrupt.
    fn expected_cut(&self, segment: u32, file_len: u64) -> u64 {
        let keep = self
            .records
            .iter()
            .filter(|r| r.segment == segment && !r.corrupt)
            .map(|r| r.offset + r.len)
            .max();
        file_len - keep.unwrap_or(0)
    }

    /// The records the reader must hand back: every one that is not corrupt, in order.
    fn delivered(&self) -> Vec<OwnedEvent> {
        self.records.iter().filter(|r| !r.corrupt).map(|r| r.event.clone()).collect()
    }
}

/// Restarts the lane as the server does: recovery, then a writer at the recovered tail.
async fn restart(wal: &Path, segment_bytes: u64) -> Result<(SegmentWriter, u64), TestCaseError> {
    let rec = or_fail(recover_lane(wal, CORE, SyncPolicy::None))?;
    let writer =
        or_fail(SegmentWriter::open(&core_dir(wal, CORE), rec.tail, segment_bytes, SyncPolicy::None).await)?;
    Ok((writer, rec.truncated_bytes))
}

/// Crashes (or stops) the writer, then restarts: checks the cut and the fresh segment.
async fn crash_and_restart(
    wal: &Path,
    segment_bytes: u64,
    writer: SegmentWriter,
    torn: &[u8],
    model: &Model,
) -> Result<SegmentWriter, TestCaseError> {
    let tail = writer.position();
    drop(writer);
    let path = segment_path(&core_dir(wal, CORE), tail.segment);
    let mut bytes = or_fail(std::fs::read(&path))?;
    bytes.extend_from_slice(torn);
    or_fail(std::fs::write(&path, &bytes))?;
    let (reopened, truncated) = restart(wal, segment_bytes).await?;
    prop_assert_eq!(truncated, model.expected_cut(tail.segment, bytes.len() as u64));
    prop_assert_eq!(reopened.position(), Position::new(tail.segment + 1, 0), "a fresh segment per start");
    Ok(reopened)
}

/// Flips one byte of a record that is still intact, in its segment file (flipping one twice
/// could restore it).
fn corrupt(
    wal: &Path,
    model: &mut Model,
    record: prop::sample::Index,
    byte: prop::sample::Index,
    xor: u8,
) -> Result<(), TestCaseError> {
    let intact: Vec<usize> = (0..model.records.len()).filter(|&i| !model.records[i].corrupt).collect();
    if intact.is_empty() {
        return Ok(());
    }
    let r = &mut model.records[intact[record.index(intact.len())]];
    let path = segment_path(&core_dir(wal, CORE), r.segment);
    let mut bytes = or_fail(std::fs::read(&path))?;
    bytes[(r.offset + byte.index(r.len as usize) as u64) as usize] ^= xor;
    or_fail(std::fs::write(&path, &bytes))?;
    r.corrupt = true;
    Ok(())
}

async fn run_model(wal: &Path, segment_bytes: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    let (mut writer, _) = restart(wal, segment_bytes).await?;
    let mut tick = Vec::new();
    for op in ops {
        match op {
            Op::Append(events) => {
                tick.clear();
                let (bytes, ends) = encode_all(events);
                tick.extend_from_slice(&bytes);
                let lens: Vec<usize> =
                    std::iter::once(0).chain(ends.iter().copied()).zip(&ends).map(|(s, &e)| e - s).collect();
                let (res, back) = writer.append(tick).await;
                tick = back;
                let (start, end) = or_fail(res)?;
                prop_assert_eq!(start.segment, end.segment);
                prop_assert_eq!(end.offset - start.offset, tick.len() as u64);
                model.append(events, start, &lens);
            }
            Op::Crash { torn } => {
                writer = crash_and_restart(wal, segment_bytes, writer, torn, &model).await?
            }
            Op::Reopen => {
                writer = crash_and_restart(wal, segment_bytes, writer, &[], &model).await?;
                let back: Vec<OwnedEvent> =
                    read_back(wal, writer.position())?.into_iter().map(|r| r.0).collect();
                prop_assert_eq!(back, model.delivered());
            }
            Op::Corrupt { record, byte, xor } => corrupt(wal, &mut model, *record, *byte, *xor)?,
        }
    }
    let tail = writer.position();
    let segment = or_fail(std::fs::read(segment_path(&core_dir(wal, CORE), tail.segment)))?;
    prop_assert_eq!(segment.len() as u64, tail.offset);
    prop_assert!(scan(&segment).tail.is_none_or(|_| model.records.iter().any(|r| r.corrupt)));
    let back: Vec<OwnedEvent> = read_back(wal, tail)?.into_iter().map(|r| r.0).collect();
    prop_assert_eq!(back, model.delivered());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Append, crash with a torn tail, reopen, flip bytes, in any order, with tiny segments so
    /// rolls are frequent: every record whose bytes were not flipped is read back exactly
    /// once, in order, and every start writes into a segment of its own.
    #[test]
    fn writer_recovery_reader_agree_with_the_model(
        ops in prop::collection::vec(op_strategy(), 1..25),
        segment_bytes in 64u64..1024,
    ) {
        let wal = or_fail(tempfile::tempdir())?;
        let mut rt = or_fail(monoio::RuntimeBuilder::<monoio::FusionDriver>::new().build())?;
        rt.block_on(run_model(wal.path(), segment_bytes, &ops))?;
    }
}
