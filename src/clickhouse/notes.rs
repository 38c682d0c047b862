//! `ingest_cursors`: the delivery steps of each lane, and how a lane's cursor is read from
//! them (the argument for why that is exact is in `super`).
//!
//! A step is written *before* the rows it describes and names its last row (the probe). It
//! moves the cursor of one *target* table (`events`, or a rollup's `rollup_<name>`), or of
//! every table of the lane (target empty: `Advance` of a batch without rows, `Rejects`,
//! `Retired`). A step *settles* to:
//! - `Advance`: nothing else to insert; the step is its own commit → `to`;
//! - `Events` / `Rejects` / `Rollup`: the step's rows went in as one block, all or nothing →
//!   `to` if its probe row is in its table (`events`, `ingest_rejects`, the rollup's marker
//!   row), else `from`; asked only once no INSERT of that step is still running on the
//!   server (`system.processes`, by query id);
//! - `Retired`: the lane is gone; no cursor.
//!
//! A table's cursor is the further of what its own highest-`seq` step and the lane's
//! highest lane-wide step settle to; the lane's cursor (what the delivery core resends from)
//! is the lowest over the configured tables. Why the further: every step starts where the
//! fence found its table (`super::deliver`), so a table's steps only move it forward, and a
//! lane-wide step that did not commit settles to its `from`, the lane's lowest, which must not
//! pull a table that is further back. A table that is not configured any more is ignored; a
//! table that has no step yet follows the lane-wide steps (a new rollup starts where the
//! lane is). Steps written before targets existed have an empty target and so count for
//! every table, which is what they were.
//!
//! Several rows with the same highest `seq` (a step written again after its first write was
//! in doubt) are each settled, and the furthest position wins.

use std::collections::BTreeMap;
use std::time::Duration;

use super::native::NativeBlock;
use super::schema::CURSORS;
use crate::wal::identity::{LaneId, WalIdentity};
use crate::wal::Position;

/// How often `cursors()` looks again for an INSERT still running.
pub const RUNNING_POLL: Duration = Duration::from_millis(50);

/// What a step's cursor depends on (`ingest_cursors.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Advance = 0,
    Events = 1,
    Rejects = 2,
    Retired = 3,
    Rollup = 4,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        [Kind::Advance, Kind::Events, Kind::Rejects, Kind::Retired, Kind::Rollup]
            .into_iter()
            .find(|k| *k as u8 == v)
    }
}

/// The last row of a step, found by the full sort key of its table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Probe {
    pub domain: Vec<u8>,
    pub at: u32,
    pub file_id: u64,
    pub end: Position,
}

/// One `ingest_cursors` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub lane: LaneId,
    pub seq: u64,
    pub kind: Kind,
    pub from: Position,
    pub to: Position,
    pub probe: Probe,
    /// The table whose cursor the step moves (`events`, `rollup_<name>`); empty: every table.
    pub target: String,
}

impl Step {
    /// A step of every table of the lane (target empty) over the whole of `batch`.
    pub fn lane_wide(batch: &crate::sink::Batch, seq: u64, kind: Kind, probe: Probe) -> Step {
        let (lane, from, to) = (batch.lane(), batch.from(), batch.to());
        Step { lane, seq, kind, from, to, probe, target: String::new() }
    }

    /// Query id of the INSERT of this step's rows. Built from the start position, not `seq`:
    /// a resend of the same rows after a settle gets the same id, and the server refuses to
    /// run two queries of one id at once (code 216).
    pub fn insert_query_id(&self, wal: &WalIdentity) -> String {
        let (l, f) = (self.lane, self.from);
        let id = format!("psc-{}-{}-{:016x}-{}-{}", wal.wal, l.core, l.incarnation, f.segment, f.offset);
        match self.kind {
            Kind::Rollup => format!("{id}-{}", self.target),
            _ => id,
        }
    }

    /// What the step settles to, given whether its probe row was found (module doc); `None`
    /// for a retired lane.
    fn settled(&self, found: bool) -> Option<Position> {
        match self.kind {
            Kind::Retired => None,
            Kind::Advance => Some(self.to),
            Kind::Events | Kind::Rejects | Kind::Rollup if found => Some(self.to),
            Kind::Events | Kind::Rejects | Kind::Rollup => Some(self.from),
        }
    }
}

/// The Native block of `steps`, written at `now_secs`.
pub fn steps_block(wal: &WalIdentity, steps: &[Step], now_secs: u32) -> Result<Vec<u8>, String> {
    let wal_id = wal.wal.to_string();
    let mut b = NativeBlock::new(CURSORS, steps.len(), Vec::new());
    b.strings(steps.iter().map(|_| wal_id.as_bytes()));
    b.strings(steps.iter().map(|_| wal.node.as_bytes()));
    b.fixed(steps.iter().map(|s| s.lane.core.to_le_bytes()));
    b.fixed(steps.iter().map(|s| s.lane.incarnation.to_le_bytes()));
    b.fixed(steps.iter().map(|s| s.seq.to_le_bytes()));
    b.fixed(steps.iter().map(|s| [s.kind as u8]));
    b.fixed(steps.iter().map(|s| s.from.segment.to_le_bytes()));
    b.fixed(steps.iter().map(|s| s.from.offset.to_le_bytes()));
    b.fixed(steps.iter().map(|s| s.to.segment.to_le_bytes()));
    b.fixed(steps.iter().map(|s| s.to.offset.to_le_bytes()));
    b.strings(steps.iter().map(|s| &s.probe.domain[..]));
    b.fixed(steps.iter().map(|s| s.probe.at.to_le_bytes()));
    b.fixed(steps.iter().map(|s| s.probe.file_id.to_le_bytes()));
    b.fixed(steps.iter().map(|s| s.probe.end.segment.to_le_bytes()));
    b.fixed(steps.iter().map(|s| s.probe.end.offset.to_le_bytes()));
    b.fixed(steps.iter().map(|_| now_secs.to_le_bytes()));
    b.strings(steps.iter().map(|s| s.target.as_bytes()));
    b.finish()
}

/// The query of the highest-`seq` steps of `wal`'s lanes (of `lane` only, if given), per
/// target.
pub fn latest_steps_query(db: &str, wal: &WalIdentity, lane: Option<LaneId>) -> String {
    let mut filter = format!("wal_id = '{}'", wal.wal);
    if let Some(l) = lane {
        filter.push_str(&format!(" AND core = {} AND incarnation = {}", l.core, l.incarnation));
    }
    format!(
        "SELECT core, incarnation, seq, kind, from_segment, from_offset, to_segment, to_offset, \
         hex(probe_domain), toUInt32(probe_at), probe_file_id, probe_segment, probe_end, target \
         FROM `{db}`.ingest_cursors WHERE {filter} AND (core, incarnation, target, seq) IN \
         (SELECT core, incarnation, target, max(seq) FROM `{db}`.ingest_cursors WHERE {filter} \
         GROUP BY core, incarnation, target) FORMAT TabSeparated"
    )
}

/// Parses the answer of [`latest_steps_query`], grouped by lane. A row that does not parse
/// is an error, never a panic.
pub fn parse_steps(answer: &[u8]) -> Result<BTreeMap<LaneId, Vec<Step>>, String> {
    let text = std::str::from_utf8(answer).map_err(|_| "steps: answer is not UTF-8".to_string())?;
    let mut lanes: BTreeMap<LaneId, Vec<Step>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let step = parse_step(line).ok_or_else(|| format!("steps: cannot read row {line:?}"))?;
        lanes.entry(step.lane).or_default().push(step);
    }
    Ok(lanes)
}

fn parse_step(line: &str) -> Option<Step> {
    let f: Vec<&str> = line.split('\t').collect();
    if f.len() != 14 || !is_target(f[13]) {
        return None;
    }
    let num = |i: usize| f[i].parse::<u64>().ok();
    let pos = |i: usize| Some(Position::new(f[i].parse().ok()?, num(i + 1)?));
    Some(Step {
        lane: LaneId { core: f[0].parse().ok()?, incarnation: num(1)? },
        seq: num(2)?,
        kind: Kind::from_u8(f[3].parse().ok()?)?,
        from: pos(4)?,
        to: pos(6)?,
        probe: Probe { domain: unhex(f[8])?, at: f[9].parse().ok()?, file_id: num(10)?, end: pos(11)? },
        target: f[13].to_owned(),
    })
}

/// A target as this sink writes it: empty, `events` or `rollup_[a-z0-9_]+`; anything else is
/// not ours, and is never put into a query.
fn is_target(t: &str) -> bool {
    t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The probe of an `Events` or `Rejects` step: a `count()` that is 1 (or more) iff the
/// step's rows are in, found through the table's whole sort key (the hour spelled out, so
/// the primary index is used without relying on monotonic-function analysis). `None` for
/// the other kinds.
pub fn probe_query(db: &str, wal: &WalIdentity, step: &Step) -> Option<String> {
    let (l, p) = (step.lane, &step.probe);
    let at = p.at;
    let lane = format!("wal_id = '{}' AND core = {} AND incarnation = {}", wal.wal, l.core, l.incarnation);
    match step.kind {
        Kind::Events => Some(format!(
            "SELECT count() FROM `{db}`.events WHERE domain = unhex('{}') \
             AND toStartOfHour(received_at) = toStartOfHour(toDateTime({at})) AND received_at = toDateTime({at}) \
             AND file_id = {} AND {lane} AND wal_segment = {} AND wal_end = {}",
            hex(&p.domain),
            p.file_id,
            p.end.segment,
            p.end.offset
        )),
        Kind::Rejects => Some(format!(
            "SELECT count() FROM `{db}`.ingest_rejects WHERE {lane} AND segment = {} AND end_offset = {}",
            p.end.segment, p.end.offset
        )),
        Kind::Rollup => Some(format!(
            "SELECT count() FROM `{db}`.`{}` WHERE step = '{}'",
            step.target,
            super::rollups::marker(wal, l, step.to)
        )),
        Kind::Advance | Kind::Retired => None,
    }
}

/// `SELECT count()` of running queries with this id.
pub fn running_query(query_id: &str) -> String {
    format!("SELECT count() FROM system.processes WHERE query_id = '{query_id}'")
}

/// The cursor of each of `targets` that one lane's highest steps decide (module doc), in
/// the same order: `None` for a table with no step yet. `None` in all: the lane is retired.
/// `present` tells, per step (same order), whether its probe row was found (ignored for
/// steps without a probe).
pub fn per_target(steps: &[Step], present: &[bool], targets: &[&str]) -> Option<Vec<Option<Position>>> {
    if steps.iter().any(|s| s.kind == Kind::Retired) {
        return None;
    }
    let highest = |target: &str| -> Option<Position> {
        let group = || steps.iter().zip(present).filter(move |(s, _)| s.target == target);
        let top = group().map(|(s, _)| s.seq).max()?;
        group().filter(|(s, _)| s.seq == top).filter_map(|(s, &found)| s.settled(found)).max()
    };
    let lane = highest("");
    Some(targets.iter().map(|t| highest(t).max(lane)).collect())
}

/// The lane's cursor (what the delivery core resends from): the lowest of the tables'
/// cursors ([`per_target`]); `None`: no table has a step.
pub fn lane_cursor(per_target: &[Option<Position>]) -> Option<Position> {
    per_target.iter().flatten().min().copied()
}

/// Parses a `count()` answer.
pub fn parse_count(answer: &[u8]) -> Result<u64, String> {
    let text = std::str::from_utf8(answer).unwrap_or("").trim();
    text.parse().map_err(|_| format!("expected a count, got {:?}", &text[..text.len().min(100)]))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::identity::WalId;

    fn decide(steps: &[Step], present: &[bool], targets: &[&str]) -> Option<Position> {
        per_target(steps, present, targets).and_then(|t| lane_cursor(&t))
    }

    fn step(seq: u64, kind: Kind, from: u64, to: u64) -> Step {
        let lane = LaneId { core: 3, incarnation: u64::MAX };
        let probe = Probe { domain: b"a'b.org".to_vec(), at: 7, file_id: 9, end: Position::new(2, to) };
        let (from, to) = (Position::new(2, from), Position::new(2, to));
        Step { lane, seq, kind, from, to, probe, target: String::new() }
    }

    fn on(target: &str, s: Step) -> Step {
        Step { target: target.into(), ..s }
    }

    #[test]
    fn steps_read_back_from_their_tsv() {
        let s = on("rollup_x", step(5, Kind::Rollup, 100, 200));
        let line =
            format!("3\t{}\t5\t4\t2\t100\t2\t200\t{}\t7\t9\t2\t200\trollup_x\n", u64::MAX, hex(b"a'b.org"));
        let lanes = parse_steps(line.as_bytes()).unwrap();
        assert_eq!(lanes[&s.lane], vec![s]);
        assert!(parse_steps(b"3\t1\t5\t9\t2\t100\t2\t200\t\t7\t9\t2\t200\t\n").is_err(), "kind 9");
        assert!(parse_steps(b"3\t1\t5\t1\t2\t100\t2\t200\t\t7\t9\t2\t200\tx'y\n").is_err(), "target");
        assert!(parse_steps(b"3\t1\t5\n").is_err());
        assert!(parse_steps(&[0xff]).is_err());
    }

    #[test]
    fn the_highest_step_decides() {
        let done = [true];
        let all = ["events"];
        assert_eq!(decide(&[step(1, Kind::Events, 100, 200)], &done, &all), Some(Position::new(2, 200)));
        assert_eq!(decide(&[step(1, Kind::Events, 100, 200)], &[false], &all), Some(Position::new(2, 100)));
        assert_eq!(decide(&[step(1, Kind::Advance, 100, 300)], &[false], &all), Some(Position::new(2, 300)));
        assert_eq!(decide(&[step(1, Kind::Retired, 100, 300)], &done, &all), None);
        let twice = [step(4, Kind::Events, 100, 200), step(4, Kind::Events, 100, 250)];
        assert_eq!(decide(&twice, &[false, true], &all), Some(Position::new(2, 250)));
        assert_eq!(decide(&[], &[], &all), None);
    }

    #[test]
    fn each_table_follows_its_own_steps_and_the_lane_the_lowest() {
        let p = |o| Some(Position::new(2, o));
        let targets = ["events", "rollup_a", "rollup_b"];
        // events went in up to 200; rollup_a's step was written but its block was not.
        let steps = [
            step(6, Kind::Advance, 50, 100),
            on("events", step(7, Kind::Events, 100, 200)),
            on("rollup_a", step(8, Kind::Rollup, 100, 200)),
        ];
        let got = per_target(&steps, &[false, true, false], &targets).unwrap();
        assert_eq!(got, vec![p(200), p(100), p(100)], "rollup_b follows the lane-wide step");
        assert_eq!(decide(&steps, &[false, true, false], &targets), p(100));
        // A lane-wide step that did not commit never pulls a table back.
        let rejects = [on("events", step(7, Kind::Events, 100, 200)), step(9, Kind::Rejects, 100, 150)];
        assert_eq!(per_target(&rejects, &[true, false], &targets).unwrap(), vec![p(200), p(100), p(100)]);
        assert_eq!(per_target(&rejects, &[true, true], &targets).unwrap(), vec![p(200), p(150), p(150)]);
        // A table no longer configured is ignored; one with no step has no cursor.
        assert_eq!(decide(&steps, &[false, true, false], &["events"]), p(200));
        assert_eq!(per_target(&steps[1..2], &[true], &["events", "rollup_b"]).unwrap(), vec![p(200), None]);
        let retired = [steps[1].clone(), step(10, Kind::Retired, 0, 0)];
        assert_eq!(per_target(&retired, &[true, false], &targets), None);
    }

    #[test]
    fn probes_and_ids_name_the_step() {
        let wal = WalIdentity { node: "n".into(), wal: WalId(1) };
        let s = step(1, Kind::Events, 100, 200);
        let q = probe_query("psc", &wal, &s).unwrap();
        assert!(q.contains("domain = unhex('6127622E6F7267')"), "{q}");
        assert!(q.contains("wal_end = 200") && q.contains("received_at = toDateTime(7)"), "{q}");
        assert!(probe_query("psc", &wal, &step(1, Kind::Advance, 1, 2)).is_none());
        assert_eq!(s.insert_query_id(&wal), format!("psc-{}-3-ffffffffffffffff-2-100", wal.wal));
        let r = on("rollup_x", step(1, Kind::Rollup, 100, 200));
        assert_eq!(r.insert_query_id(&wal), format!("psc-{}-3-ffffffffffffffff-2-100-rollup_x", wal.wal));
        let q = probe_query("psc", &wal, &r).unwrap();
        assert_eq!(
            q,
            format!("SELECT count() FROM `psc`.`rollup_x` WHERE step = '{}/3/{}/2/200'", wal.wal, u64::MAX)
        );
        assert_eq!(parse_count(b"12\n"), Ok(12));
        assert!(parse_count(b"Code: 60").is_err());
    }
}
