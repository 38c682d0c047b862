//! Model test of the exactly-once protocol over several tables: deliveries planned by
//! `super::requests` run against an in-memory server that stops after any request (a crash of
//! either side, or an answer lost: the server's state is the same), then a reopen that reads
//! the lane's cursors as `ClickHouseConn::cursors` does (`notes::per_target` over the highest
//! step of each target) and resends from the lane's cursor in batches cut anywhere, some
//! holding only other shards' records. After the last delivery every table holds each of the
//! lane's rows exactly once.
#![cfg(test)]

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::{requests, Request};
use crate::clickhouse::notes::{lane_cursor, per_target, Kind, Step};
use crate::sink::Batch;
use crate::wal::identity::LaneId;
use crate::wal::record::{DecodedContext, Event};
use crate::wal::Position;

const LANE: LaneId = LaneId { core: 0, incarnation: 7 };
/// 2025-11-30 23:59:00 UTC: records after the month cut are a month on.
const NOV_MS: u64 = 1_764_547_140_000;
const DEC_MS: u64 = 1_764_547_200_000 + 5_000;

/// One WAL record: where it ends, whether it is this shard's, and its month.
#[derive(Debug, Clone, Copy)]
struct Record {
    end: Position,
    ours: bool,
    ts_ms: u64,
}

#[derive(Default)]
struct Server {
    steps: Vec<Step>,
    /// Per table: the ends of the rows its committed blocks held (a rollup counts them).
    rows: HashMap<String, Vec<Position>>,
    /// Per rollup table: the `to` of each committed block's marker row.
    markers: HashMap<String, HashSet<Position>>,
}

impl Server {
    /// The highest-`seq` steps per target, as `notes::latest_steps_query` answers.
    fn latest(&self) -> Vec<Step> {
        let mut top: HashMap<&str, u64> = HashMap::new();
        for s in &self.steps {
            let seq = top.entry(&s.target).or_insert(0);
            *seq = (*seq).max(s.seq);
        }
        self.steps.iter().filter(|s| top[s.target.as_str()] == s.seq).cloned().collect()
    }

    fn present(&self, step: &Step) -> bool {
        match step.kind {
            Kind::Events => self.rows.get(&step.target).is_some_and(|r| r.contains(&step.probe.end)),
            Kind::Rollup => self.markers.get(&step.target).is_some_and(|m| m.contains(&step.to)),
            _ => false,
        }
    }

    fn cursors(&self, targets: &[String]) -> Vec<Option<Position>> {
        let steps = self.latest();
        let present: Vec<bool> = steps.iter().map(|s| self.present(s)).collect();
        let names: Vec<&str> = targets.iter().map(String::as_str).collect();
        // `None` means a `Retired` step, and this model never writes one: reaching it is a bug
        // of the model, which fails the case like its other assertions.
        match per_target(&steps, &present, &names) {
            Some(cursors) => cursors,
            None => panic!("the model retired a lane: {steps:?}"),
        }
    }

    /// One delivery, stopping before request number `stop` (none: all of them).
    fn deliver(&mut self, batch: &Batch, targets: &[String], raw_events: bool, stop: Option<usize>) {
        let cursors = self.cursors(targets);
        let lane = lane_cursor(&cursors);
        assert!(lane.is_none() || lane == Some(batch.from()), "fenced: {lane:?} vs {:?}", batch.from());
        let seq = self.steps.iter().map(|s| s.seq).max().unwrap_or(0);
        for (i, request) in requests(batch, seq, &cursors, targets, raw_events).into_iter().enumerate() {
            if stop == Some(i) {
                return;
            }
            match request {
                Request::Steps(steps) => self.steps.extend(steps),
                Request::Block { t, step, rows } => {
                    let ends = batch.rows()[rows].iter().map(|r| r.end);
                    self.rows.entry(targets[t].clone()).or_default().extend(ends);
                    if step.kind == Kind::Rollup {
                        self.markers.entry(step.target.clone()).or_default().insert(step.to);
                    }
                }
            }
        }
    }
}

/// The batch of the `take` records after `from` (this shard's as rows, the others only
/// moving the cursor), or `None` past the end.
fn batch(wal: &[Record], from: Position, take: usize) -> Option<Batch> {
    let first = wal.partition_point(|r| r.end <= from);
    let records = &wal[first..(first + take).min(wal.len())];
    let last = records.last()?;
    let mut b = Batch::new(LANE, 0, from);
    for r in records.iter().filter(|r| r.ours) {
        let ev = Event { ts_ms: r.ts_ms, event: "play", domain: "a.org", file_id: r.end.offset };
        b.push(&ev, &DecodedContext::default(), b"raw\n", r.end);
    }
    b.advance_to(last.end);
    Some(b)
}

fn wal(ours: &[bool], month_cut: usize) -> Vec<Record> {
    let record = |(i, &ours): (usize, &bool)| Record {
        end: Position::new(1, 100 * (i as u64 + 1)),
        ours,
        ts_ms: if i < month_cut { NOV_MS + i as u64 } else { DEC_MS + i as u64 },
    };
    ours.iter().enumerate().map(record).collect()
}

proptest! {
    // Shrunk failures are kept beside this file (model.regressions), not in a new top-level
    // directory.
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]
    #[test]
    fn every_table_holds_every_row_once_whatever_stops_when(
        raw_events in any::<bool>(),
        rollups in 0usize..4,
        ours in proptest::collection::vec(proptest::bool::weighted(0.85), 1..80),
        month_cut in 0usize..80,
        ops in proptest::collection::vec((1usize..30, proptest::option::weighted(0.6, 0usize..7)), 0..25),
    ) {
        let rollups = if raw_events { rollups } else { rollups.max(1) };
        let targets: Vec<String> = raw_events.then(|| "events".to_owned()).into_iter()
            .chain((0..rollups).map(|i| format!("rollup_r{i}")))
            .collect();
        let wal = wal(&ours, month_cut);
        let mut server = Server::default();
        let start = Position::new(1, 0);
        // Each op: reopen (read the cursors), one delivery cut at `take` records, which may
        // stop early; then everything left, with nothing stopping.
        let resume = |s: &Server| lane_cursor(&s.cursors(&targets)).unwrap_or(start);
        for (take, stop) in ops {
            if let Some(b) = batch(&wal, resume(&server), take) {
                server.deliver(&b, &targets, raw_events, stop);
            }
        }
        while let Some(b) = batch(&wal, resume(&server), 25) {
            server.deliver(&b, &targets, raw_events, None);
        }
        let want: Vec<Position> = wal.iter().filter(|r| r.ours).map(|r| r.end).collect();
        for t in &targets {
            let mut got = server.rows.get(t).cloned().unwrap_or_default();
            got.sort();
            prop_assert_eq!(&got, &want, "table {}", t);
        }
        prop_assert_eq!(resume(&server), wal.last().map_or(start, |r| r.end));
    }
}
