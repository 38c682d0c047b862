//! Model-based property test of the delivery core (`psc::flush::core`), against an in-memory
//! sink and a real WAL in a temp dir (written by the record encoder, recovered and read by the
//! real code). Random steps: appends on each core with their queue chunks offered or lost (a
//! full queue), core steps whose deliveries succeed, fail before the commit, or commit and
//! lose the answer (in doubt), rows the sink refuses, corrupt records, and crashes with a
//! reopen at any step (as the same WAL, a wiped WAL, or with another core count). Limits are
//! small (batches of a few rows, tiny segments) so every path is taken.
//!
//! The invariant, checked after every step and at the end: the sink holds every acknowledged
//! event at most once, and after a final drain exactly once (dead letters for the refused
//! ones; a corrupted record may be missing, never doubled); no cursor in the sink passes a
//! record that the sink does not hold.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use psc::cursor::{open_wal_identity, read_commit_meta, write_commit_meta};
use psc::flush::core::{Action, Core, CoreConfig, Delivered, LaneInit};
use psc::flush::stream::Route;
use psc::queue::WalChunk;
use psc::sink::shard::ShardBy;
use psc::sink::SinkCursor;
use psc::wal::config::SyncPolicy;
use psc::wal::identity::{LaneId, WalId, WalIdentity};
use psc::wal::reader::CoreWalReader;
use psc::wal::record::{encode, Context, Event};
use psc::wal::recovery::recover_all;
use psc::wal::segment::{core_dir, segment_path};
use psc::wal::Position;

const SEGMENT_RECORDS: u64 = 7;
/// A row the sink refuses (MySQL would say 1264).
fn refused(file_id: u64) -> bool {
    file_id.is_multiple_of(23)
}

#[derive(Debug, Clone)]
enum Op {
    /// Append `n` records on core `core % cores`; `offer`: their chunk reaches the core.
    Append { core: u16, n: u8, offer: bool },
    /// One core step; deliveries end as `outcome` says (0 ok, 1 fail before, 2 in doubt).
    Step { outcome: u8, advance_ms: u16 },
    /// Flip a byte of the record appended `back` records ago.
    Corrupt { back: u8 },
    /// kill -9 and reopen: 0 same WAL, 1 wiped WAL, 2 other core count.
    Crash { how: u8, cores: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u16..3, 1u8..12, proptest::bool::weighted(0.7)).prop_map(|(core, n, offer)| Op::Append { core, n, offer }),
        6 => (prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)], 0u16..400)
            .prop_map(|(outcome, advance_ms)| Op::Step { outcome, advance_ms }),
        1 => (0u8..20).prop_map(|back| Op::Corrupt { back }),
        1 => (0u8..3, 1u8..4).prop_map(|(how, cores)| Op::Crash { how, cores }),
    ]
}

/// The sink: cursors per (WAL id, lane), rows, dead letters. Atomic and fenced.
#[derive(Default)]
struct Sink {
    cursors: HashMap<(WalId, LaneId), Position>,
    rows: Vec<u64>,
    rejects: Vec<u64>,
}

struct Record {
    core: u16,
    segment: u32,
    offset: u64,
    len: usize,
    file_id: u64,
}

struct World {
    dir: tempfile::TempDir,
    node: String,
    identity: WalIdentity,
    cores: u16,
    tails: Vec<Position>,
    records: Vec<Record>,
    corrupted: Vec<u64>,
    next_id: u64,
    sink: Sink,
    core: Core,
    readers: Vec<CoreWalReader>,
    clock: Instant,
}

fn wal(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("wal")
}

fn open(
    dir: &tempfile::TempDir,
    node: &str,
    cores: u16,
    clock: Instant,
) -> (WalIdentity, Vec<Position>, Core, Vec<CoreWalReader>) {
    let wal = wal(dir);
    fs::create_dir_all(&wal).unwrap();
    let identity = open_wal_identity(&wal, node, "model-host").unwrap();
    let lanes = recover_all(&wal, cores, SyncPolicy::Always).unwrap();
    let meta = read_commit_meta(&wal, &identity).unwrap();
    let tails = lanes.iter().filter(|l| l.lane.core < cores).map(|l| l.tail).collect();
    let inits: Vec<LaneInit> =
        lanes.iter().map(|l| LaneInit { id: l.lane, live: l.lane.core < cores, end: l.tail }).collect();
    let config = CoreConfig {
        batch_rows: 5,
        interval: Duration::from_millis(100),
        route: Route { by: ShardBy::Domain, shards: 1 },
    };
    let core =
        Core::new(config, identity.clone(), inits, |l, s| meta.as_ref().and_then(|m| m.get(l, s)), clock);
    let readers = core.streams().iter().map(|s| CoreWalReader::new(&core_dir(&wal, s.lane.core))).collect();
    (identity, tails, core, readers)
}

impl World {
    fn new(cores: u16) -> World {
        let dir = tempfile::tempdir().unwrap();
        let clock = Instant::now();
        let node = "model".to_owned();
        let (identity, tails, core, readers) = open(&dir, &node, cores, clock);
        World {
            dir,
            node,
            identity,
            cores,
            tails,
            records: Vec::new(),
            corrupted: Vec::new(),
            next_id: 1,
            sink: Sink::default(),
            core,
            readers,
            clock,
        }
    }

    fn append(&mut self, core: u16, n: u8, offer: bool) {
        let core = core % self.cores;
        let mut tail = self.tails[usize::from(core)];
        if tail.offset >= SEGMENT_RECORDS * 60 {
            tail = Position::new(tail.segment + 1, 0); // roll to a new segment
        }
        let mut bytes = Vec::new();
        for _ in 0..n {
            let file_id = self.next_id;
            self.next_id += 1;
            let domain = format!("d{}.org", file_id % 5);
            let start = bytes.len();
            encode(&Event { ts_ms: 1, event: "play", domain: &domain, file_id }, &Context::NONE, &mut bytes);
            let len = bytes.len() - start;
            self.records.push(Record {
                core,
                segment: tail.segment,
                offset: tail.offset + start as u64,
                len,
                file_id,
            });
        }
        let path = segment_path(&core_dir(&wal(&self.dir), core), tail.segment);
        OpenOptions::new().create(true).append(true).open(path).unwrap().write_all(&bytes).unwrap();
        let end = Position::new(tail.segment, tail.offset + bytes.len() as u64);
        self.tails[usize::from(core)] = end;
        if offer {
            let chunk = WalChunk { core, start: tail, end, records: u32::from(n), bytes };
            self.core.on_chunk(&chunk, self.clock);
        }
        self.core.on_written(core, end);
    }

    fn corrupt(&mut self, back: u8) {
        let Some(r) = self.records.iter().rev().nth(usize::from(back)) else { return };
        let path = segment_path(&core_dir(&wal(&self.dir), r.core), r.segment);
        let Ok(mut bytes) = fs::read(&path) else { return }; // compacted already
        let at = r.offset as usize + r.len / 2;
        if at >= bytes.len() {
            return;
        }
        bytes[at] ^= 0x5a;
        fs::write(&path, bytes).unwrap();
        self.corrupted.push(r.file_id);
    }

    fn crash(&mut self, how: u8, cores: u8) {
        if how == 1 {
            fs::remove_dir_all(wal(&self.dir)).unwrap();
            self.records.clear(); // their rows are in the sink or accounted as lost below
        }
        if how == 2 {
            self.cores = u16::from(cores);
        }
        self.clock += Duration::from_millis(10);
        let (identity, tails, core, readers) = open(&self.dir, &self.node, self.cores, self.clock);
        (self.identity, self.tails, self.core, self.readers) = (identity, tails, core, readers);
    }

    /// One core step: poll, carry out every action (deliveries end as `outcome` says).
    fn step(&mut self, outcome: u8, advance: Duration) {
        self.clock += advance;
        let actions = self.core.poll(self.clock, |_| true);
        for action in actions {
            self.act(action, outcome);
        }
    }

    fn act(&mut self, action: Action, outcome: u8) {
        let wal = wal(&self.dir);
        match action {
            Action::Read { stream, mut batch, until, max } => {
                let route = self.core.route();
                let out = self.readers[stream].read(batch.to(), until, max, |ev, ctx, raw, end| {
                    route.push(&mut batch, 0, ev, ctx, raw, end)
                });
                if out.reached > batch.to() {
                    batch.advance_to(out.reached);
                }
                let skip = match out.stop {
                    Some(psc::wal::reader::ReadStop::Corrupt { resume, .. }) => Some(resume),
                    _ => None,
                };
                self.core.on_read(stream, batch, out.reached, skip, None, self.clock);
            }
            Action::Deliver { stream, pending } => {
                let result = self.deliver(&pending.batch, pending.reject.is_some(), outcome);
                self.core.on_delivered(stream, pending, result);
            }
            Action::ReadCursors { shard } => {
                let wal_id = self.identity.wal;
                let cursors = (self.sink.cursors.iter())
                    .filter(|((w, _), _)| *w == wal_id)
                    .map(|((_, lane), &position)| SinkCursor { lane: *lane, position })
                    .collect();
                self.core.on_cursors(shard, Some(cursors), self.clock);
            }
            Action::WriteMeta(meta) => write_commit_meta(&wal, &meta).unwrap(),
            Action::Compact { lane, below } => {
                psc::compact::compact_lane(&core_dir(&wal, lane.core), below).unwrap();
            }
            Action::RemoveLane { lane } => {
                psc::compact::remove_lane(&wal, lane.core).unwrap();
                self.core.on_lane_removed(lane);
            }
            Action::Retire { shard, lanes } => {
                let wal_id = self.identity.wal;
                self.sink.cursors.retain(|(w, l), _| *w != wal_id || !lanes.contains(l));
                self.core.on_retired(shard, &lanes, true);
            }
        }
    }

    fn deliver(&mut self, batch: &psc::sink::Batch, reject: bool, outcome: u8) -> Delivered {
        let key = (self.identity.wal, batch.lane());
        if self.sink.cursors.get(&key).is_some_and(|&c| c != batch.from()) || outcome == 1 {
            return Delivered::Failed;
        }
        let ids: Vec<u64> = batch.rows().iter().map(|r| r.file_id).collect();
        if !reject && ids.iter().any(|&id| refused(id)) {
            return Delivered::Refused { code: 1264, message: "out of range".into(), every_row: false };
        }
        if reject {
            self.sink.rejects.extend(&ids)
        } else {
            self.sink.rows.extend(&ids)
        }
        self.sink.cursors.insert(key, batch.to());
        if outcome == 2 {
            Delivered::Failed
        } else {
            Delivered::Committed
        }
    }

    fn check_no_duplicates(&self) -> Result<(), TestCaseError> {
        let mut seen = std::collections::HashSet::new();
        for id in self.sink.rows.iter().chain(&self.sink.rejects) {
            prop_assert!(seen.insert(*id), "file_id {} delivered twice", id);
        }
        Ok(())
    }

    /// Every acked record still in the WAL is delivered (bounded number of steps).
    fn drain(&mut self) -> Result<(), TestCaseError> {
        self.core.begin_shutdown();
        for _ in 0..5000 {
            if self.core.is_drained() {
                break;
            }
            self.step(0, Duration::from_millis(50));
        }
        prop_assert!(self.core.is_drained(), "not drained after 5000 steps");
        let delivered: std::collections::HashSet<u64> =
            self.sink.rows.iter().chain(&self.sink.rejects).copied().collect();
        for r in &self.records {
            if !self.corrupted.contains(&r.file_id) {
                prop_assert!(delivered.contains(&r.file_id), "acked file_id {} never delivered", r.file_id);
            }
        }
        for id in &self.sink.rejects {
            prop_assert!(refused(*id), "file_id {} dead-lettered but not refused", id);
        }
        Ok(())
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut w = World::new(2);
    for op in ops {
        match op {
            Op::Append { core, n, offer } => w.append(core, n, offer),
            Op::Step { outcome, advance_ms } => w.step(outcome, Duration::from_millis(u64::from(advance_ms))),
            Op::Corrupt { back } => w.corrupt(back),
            Op::Crash { how, cores } => w.crash(how, cores),
        }
        w.check_no_duplicates()?;
    }
    w.drain()?;
    w.check_no_duplicates()
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]
    #[test]
    fn the_sink_holds_every_acknowledged_event_exactly_once(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops)?;
    }
}

#[test]
fn a_record_that_does_not_decode_is_skipped_not_doubled() {
    let ops = vec![
        Op::Append { core: 0, n: 6, offer: false },
        Op::Corrupt { back: 2 },
        Op::Step { outcome: 0, advance_ms: 200 },
        Op::Crash { how: 0, cores: 2 },
        Op::Append { core: 0, n: 3, offer: true },
    ];
    run(ops).unwrap();
}
