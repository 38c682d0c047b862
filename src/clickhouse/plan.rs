//! What one delivery writes, as a list of requests in the order they must go (why this order
//! is exactly once: `super`, `super::notes`). Pure: `super::deliver` sends the requests, the
//! model test (`model`) runs them against an in-memory server that can stop after any one.
//!
//! Invariants of [`requests`]:
//! - the first request writes the first step of every table still behind `batch.to()`, before
//!   any block: a table without a step is then one no delivery has written yet, never one left
//!   behind by a crash;
//! - each further run of a table (a batch across a month) has its step written right before
//!   its block, after the table's previous block: a table's steps only move it forward;
//! - every table starts from its own cursor (the fence found none below `batch.from()`), so
//!   rows a table already holds are never in its blocks;
//! - a batch without rows is one lane-wide `Advance` step.

use std::ops::Range;

use super::notes::{Kind, Probe, Step};
use super::rows;
use crate::sink::{Batch, Row};
use crate::wal::Position;

/// One request of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Step rows into `ingest_cursors` (an `Advance` step is its own commit).
    Steps(Vec<Step>),
    /// The rows `rows` of the batch into target `t` (index into the sink's targets), as one
    /// block, under `step` (already written).
    Block { t: usize, step: Step, rows: Range<usize> },
}

/// The requests of delivering `batch` after a fence that found the lane's highest step at
/// `seq` and each target's cursor `cursors` (same order as `targets`; target 0 is `events`
/// if `raw_events`, every other one a rollup).
pub fn requests(
    batch: &Batch,
    mut seq: u64,
    cursors: &[Option<Position>],
    targets: &[String],
    raw_events: bool,
) -> Vec<Request> {
    if batch.is_empty() {
        return vec![Request::Steps(vec![Step::lane_wide(batch, seq + 1, Kind::Advance, Probe::default())])];
    }
    let (lane, from, to) = (batch.lane(), batch.from(), batch.to());
    let (mut firsts, mut rest) = (Vec::new(), Vec::new());
    for (t, cursor) in cursors.iter().enumerate() {
        let start = cursor.unwrap_or(from);
        debug_assert!(start >= from, "the fence found every target at or past the batch's start");
        if start >= to {
            continue;
        }
        let target = &targets[t];
        let first = batch.rows().partition_point(|r| r.end <= start);
        let mut run_from = start;
        let runs = rows::runs(batch, first..batch.len());
        if runs.is_empty() {
            seq += 1;
            let probe = Probe::default();
            firsts.push(Step {
                lane,
                seq,
                kind: Kind::Advance,
                from: start,
                to,
                probe,
                target: target.clone(),
            });
        }
        for (k, range) in runs.into_iter().enumerate() {
            let last = &batch.rows()[range.end - 1];
            let run_to = if range.end == batch.len() { to } else { last.end };
            let (kind, probe) = if raw_events && t == 0 {
                (Kind::Events, probe_of(batch, last))
            } else {
                (Kind::Rollup, Probe::default())
            };
            seq += 1;
            let step = Step { lane, seq, kind, from: run_from, to: run_to, probe, target: target.clone() };
            if k == 0 {
                firsts.push(step.clone());
            } else {
                rest.push(Request::Steps(vec![step.clone()]));
            }
            rest.push(Request::Block { t, step, rows: range });
            run_from = run_to;
        }
    }
    let mut out = vec![Request::Steps(firsts)];
    out.extend(rest);
    out
}

/// Whether target `t` is `events`: the first target, when raw events are stored; every other
/// target is a rollup, in the configured order.
pub fn is_events(t: usize, raw_events: bool) -> bool {
    raw_events && t == 0
}

/// The probe of an `events` step: its last row, found by the table's full sort key.
pub fn probe_of(batch: &Batch, row: &Row) -> Probe {
    let (at, _) = rows::split_ts(row.ts_ms);
    Probe { domain: batch.domain(row).as_bytes().to_vec(), at, file_id: row.file_id, end: row.end }
}

#[cfg(test)]
mod model;
