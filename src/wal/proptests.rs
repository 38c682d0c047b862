//! Property tests of the WAL as a whole: whatever happens to the bytes on disk (a crash at any
//! offset, flipped bytes, zeroed or garbage ranges), recovery never panics and leaves exactly a
//! prefix of the records that were written, as whole records; and a model with a reopen step
//! checks writer + recovery + reader together across rolls and torn tails.

use std::path::Path;

use proptest::prelude::*;

use super::config::SyncPolicy;
use super::reader::CoreWalReader;
use super::record::{encode, scan, Context, Event};
use super::recovery::recover_core;
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

fn write_newest_segment(wal: &Path, bytes: &[u8]) -> std::path::PathBuf {
    let dir = core_dir(wal, CORE);
    std::fs::create_dir_all(&dir).unwrap();
    let path = segment_path(&dir, 1);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Number of whole records in the first `len` bytes.
fn whole_records_within(ends: &[usize], len: usize) -> usize {
    ends.iter().take_while(|&&end| end <= len).count()
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

/// Writes `buf[..cut]` as the only segment, recovers, and checks that exactly the whole
/// records within the cut survive.
fn check_recovery_after_cut(wal: &Path, buf: &[u8], ends: &[usize], cut: usize) -> Result<(), TestCaseError> {
    let path = write_newest_segment(wal, &buf[..cut]);
    let rec = recover_core(wal, CORE).unwrap();
    let k = whole_records_within(ends, cut);
    let kept = if k == 0 { 0 } else { ends[k - 1] };
    prop_assert_eq!(rec.tail, Position::new(1, kept as u64));
    prop_assert_eq!(rec.tail_records, k as u64);
    prop_assert_eq!(rec.truncated_bytes, (cut - kept) as u64);
    prop_assert_eq!(std::fs::read(&path).unwrap(), &buf[..kept]);
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
        let wal = tempfile::tempdir().unwrap();
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
        let wal = tempfile::tempdir().unwrap();
        check_recovery_after_cut(wal.path(), &buf, &ends, cut.index(buf.len() + 1))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Damage anywhere: recovery keeps a prefix of what was written, never an invented record,
    /// and never loses a record that lies wholly before the first damaged byte.
    #[test]
    fn damaged_segment_recovers_to_a_prefix_of_written_records(
        events in prop::collection::vec(event_strategy(), 1..20),
        damages in prop::collection::vec(damage_strategy(), 1..4),
    ) {
        let (original, ends) = encode_all(&events);
        let mut damaged = original.clone();
        for d in &damages {
            d.apply(&mut damaged);
        }
        let first_diff = original.iter().zip(&damaged).position(|(a, b)| a != b);
        let intact = whole_records_within(&ends, first_diff.unwrap_or(original.len()));

        let wal = tempfile::tempdir().unwrap();
        let path = write_newest_segment(wal.path(), &damaged);
        let rec = recover_core(wal.path(), CORE).unwrap();
        let kept = std::fs::read(&path).unwrap();
        let k = rec.tail_records as usize;
        prop_assert!(k >= intact, "kept {} records, {} were intact", k, intact);
        prop_assert!(k <= events.len());
        let prefix_len = if k == 0 { 0 } else { ends[k - 1] };
        prop_assert_eq!(&kept[..], &original[..prefix_len]);
        prop_assert_eq!(rec.tail, Position::new(1, prefix_len as u64));
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
    ]
}

/// Everything readable from the core, from the oldest segment to `until`.
fn read_back(wal: &Path, until: Position) -> Vec<OwnedEvent> {
    let mut reader = CoreWalReader::new(&core_dir(wal, CORE));
    let mut out = Vec::new();
    let mut pos = Position::default();
    loop {
        let next = reader.read(pos, until, 7, |ev, _| out.push(OwnedEvent::from_event(ev))).unwrap();
        if next == pos {
            return out;
        }
        pos = next;
    }
}

/// Restarts the core as the server does: recovery, then a writer at the recovered tail.
async fn restart(wal: &Path, segment_bytes: u64) -> (SegmentWriter, u64) {
    let rec = recover_core(wal, CORE).unwrap();
    let writer =
        SegmentWriter::open(&core_dir(wal, CORE), rec.tail, segment_bytes, SyncPolicy::None).await.unwrap();
    (writer, rec.truncated_bytes)
}

async fn run_model(wal: &Path, segment_bytes: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut model: Vec<OwnedEvent> = Vec::new();
    let (mut writer, _) = restart(wal, segment_bytes).await;
    let mut tick = Vec::new();
    for op in ops {
        match op {
            Op::Append(events) => {
                tick.clear();
                for ev in events {
                    encode(&ev.as_event(), &Context::NONE, &mut tick);
                }
                let (res, back) = writer.append(tick).await;
                tick = back;
                let (start, end) = res.unwrap();
                prop_assert_eq!(start.segment, end.segment);
                prop_assert_eq!(end.offset - start.offset, tick.len() as u64);
                model.extend(events.iter().cloned());
            }
            Op::Crash { torn } => {
                let tail = writer.position();
                drop(writer);
                let path = segment_path(&core_dir(wal, CORE), tail.segment);
                let mut bytes = std::fs::read(&path).unwrap();
                bytes.extend_from_slice(torn);
                std::fs::write(&path, &bytes).unwrap();
                let (reopened, truncated) = restart(wal, segment_bytes).await;
                prop_assert_eq!(truncated, torn.len() as u64);
                prop_assert_eq!(reopened.position(), tail);
                writer = reopened;
            }
            Op::Reopen => {
                let tail = writer.position();
                drop(writer);
                let (reopened, truncated) = restart(wal, segment_bytes).await;
                prop_assert_eq!(truncated, 0);
                prop_assert_eq!(reopened.position(), tail);
                prop_assert_eq!(read_back(wal, tail), model.clone());
                writer = reopened;
            }
        }
    }
    let tail = writer.position();
    let segment = std::fs::read(segment_path(&core_dir(wal, CORE), tail.segment)).unwrap();
    prop_assert_eq!(scan(&segment).valid_len as u64, tail.offset);
    prop_assert_eq!(read_back(wal, tail), model);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Append, crash with a torn tail, reopen, in any order, with tiny segments so rolls are
    /// frequent: every appended record is read back exactly once, in order.
    #[test]
    fn writer_recovery_reader_agree_with_the_model(
        ops in prop::collection::vec(op_strategy(), 1..25),
        segment_bytes in 64u64..1024,
    ) {
        let wal = tempfile::tempdir().unwrap();
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().build().unwrap();
        rt.block_on(run_model(wal.path(), segment_bytes, &ops))?;
    }
}
