//! A delivery, in order (why this is exactly once: `super`):
//! 1. the fence: the lane's highest steps are read and settled into a cursor per target
//!    table (`super::notes`); if the lowest is not `batch.from()`, nothing is written
//!    (`Fenced`);
//! 2. the requests of `super::plan`, sent one by one: the first step of every target in one
//!    INSERT, then per target (`events`, then each rollup) and per run of its rows in one
//!    partition its block (events rows, or the run's rollup counts and the step's marker
//!    row) under the step's query id, a later run's step right before its block. A batch
//!    without rows is one lane-wide `Advance` step, its own commit.
//!
//! A dead-letter delivery is the same with one `Rejects` step and one block into
//! `ingest_rejects`. Retiring lanes writes a `Retired` step per lane, then asks the server
//! to delete the retired lanes' other steps (a mutation; only tidying, the step already
//! counts, and stays: one row per retired lane).
//! Fail points (tests): `clickhouse.before_events`, `clickhouse.after_events`,
//! `clickhouse.before_rollup` and `clickhouse.after_rollup`, see `fail_point` below.
//!
//! Every [`PRUNE_EVERY_SEQ`] steps of a lane, its steps older than the last
//! [`PRUNE_KEEP_SEQ`] are deleted the same way, so `ingest_cursors` stays small.

use std::collections::HashMap;
use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::warn;

use super::errors::Step as Phase;
use super::notes::{self, Kind, Probe, Step};
use super::plan::{self, Request};
use super::schema::{self, CURSORS, EVENTS, REJECTS};
use super::sink::ClickHouseConn;
use super::{rollups, rows};
use crate::rollup::aggregate;
use crate::sink::{Batch, SinkError};
use crate::wal::identity::{LaneId, WalIdentity};
use crate::wal::Position;

/// A lane's old steps are pruned whenever its `seq` reaches a multiple of this.
pub const PRUNE_EVERY_SEQ: u64 = 4096;
/// Steps of a lane kept by a prune, below its latest.
pub const PRUNE_KEEP_SEQ: u64 = 64;

fn now_secs() -> u32 {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// A test's fail point (`crate::failpoint`) at a place where the outcome of a write is
/// unknown to the caller: armed, the delivery ends `InDoubt` there (with `abort`, the
/// process dies there). `clickhouse.before_events` / `before_rollup`: the step row is in,
/// its rows are not sent. `clickhouse.after_events` / `after_rollup`: the rows are in, the
/// answer "is lost".
fn fail_point(name: &str) -> Result<(), SinkError> {
    crate::failpoint::io(name).map_err(|e| SinkError::InDoubt(format!("fail point {name}: {e}")))
}

/// Steps of `step`'s lane below this `seq` decide nothing any more: it is at most
/// [`PRUNE_KEEP_SEQ`] below `step`, and below the latest step committed (`known`) for every
/// target and for the lane as a whole, so each table keeps the step its cursor rests on
/// however many tables a batch writes. `None` while a target's latest step is not known.
fn prune_bound(
    known: &HashMap<(LaneId, String), (u64, Position)>,
    targets: &[String],
    step: &Step,
) -> Option<u64> {
    let latest = |target: &str| known.get(&(step.lane, target.to_owned())).map(|&(seq, _)| seq);
    let mut bound = step.seq.saturating_sub(PRUNE_KEEP_SEQ);
    for target in targets {
        bound = bound.min(latest(target)?);
    }
    Some(latest("").map_or(bound, |seq| bound.min(seq)))
}

fn encoding_failed(what: &str, why: String) -> SinkError {
    // Our own encoder disagreeing with our own spec: a bug, but never a panic.
    SinkError::Unavailable(format!("{what}: block does not fit its spec: {why}"))
}

impl ClickHouseConn {
    /// Contract 2: the `seq` of the lane's highest step (0: none) and each target's cursor
    /// (`Shared::targets` order), if the lowest is `batch.from()` or there is none.
    async fn fence(
        &mut self,
        wal: &WalIdentity,
        batch: &Batch,
    ) -> Result<(u64, Vec<Option<Position>>), SinkError> {
        let lane = batch.lane();
        let mut lanes = self.latest_steps(wal, Some(lane)).await?;
        let steps = lanes.remove(&lane).unwrap_or_default();
        let seq = steps.iter().map(|s| s.seq).max().unwrap_or(0);
        let Some(cursors) = self.settle(wal, &steps).await? else {
            // Retired: the core never delivers a retired lane again; say where it stands.
            return Err(SinkError::Fenced { lane, expected: batch.from(), found: Position::default() });
        };
        match notes::lane_cursor(&cursors) {
            Some(found) if found != batch.from() => {
                self.shared.stats.fenced();
                Err(SinkError::Fenced { lane, expected: batch.from(), found })
            }
            _ => Ok((seq, cursors)),
        }
    }

    pub(super) async fn deliver_rows(&mut self, wal: &WalIdentity, batch: &Batch) -> Result<(), SinkError> {
        let (seq, cursors) = self.fence(wal, batch).await?;
        let shared = self.shared.clone();
        let mut committed = false;
        for request in plan::requests(batch, seq, &cursors, &shared.targets, shared.config.raw_events) {
            match request {
                Request::Steps(steps) => {
                    self.write_steps(wal, &steps, committed).await?;
                    for step in steps.iter().filter(|s| s.kind == Kind::Advance) {
                        self.committed(wal, step).await;
                        committed = true;
                    }
                }
                Request::Block { t, step, rows } => {
                    self.write_block(wal, batch, t, &step, rows, committed).await?;
                    self.committed(wal, &step).await;
                    committed = true;
                }
            }
        }
        Ok(())
    }

    /// One run of rows into target `t`, whose step row is in: events rows, or the rollup's
    /// counts with the step's marker row, under the step's query id.
    async fn write_block(
        &mut self,
        wal: &WalIdentity,
        batch: &Batch,
        t: usize,
        step: &Step,
        range: Range<usize>,
        committed: bool,
    ) -> Result<(), SinkError> {
        let shared = self.shared.clone();
        let id = step.insert_query_id(wal);
        match shared.rollup_of(t) {
            None => {
                fail_point("clickhouse.before_events")?;
                let n = range.len();
                let block = rows::events_block(wal, batch, range, Vec::new())
                    .map_err(|e| encoding_failed("events", e))?;
                let bytes = block.len();
                let insert = schema::insert_statement(self.db(), "events", EVENTS);
                self.write(&insert, Some(&id), block, Phase::WriteEvents, committed, "insert events").await?;
                fail_point("clickhouse.after_events")?;
                self.shared.stats.block_committed(n, bytes);
            }
            Some((r, spec)) => {
                fail_point("clickhouse.before_rollup")?;
                let counts = aggregate(r, batch, range);
                let marker = rollups::marker(wal, step.lane, step.to);
                let block = rollups::block(r, spec, &counts, &marker)
                    .map_err(|e| encoding_failed(&step.target, e))?;
                let insert = schema::insert_statement(self.db(), &step.target, spec);
                self.write(&insert, Some(&id), block, Phase::WriteOwn, committed, "insert rollup counts")
                    .await?;
                fail_point("clickhouse.after_rollup")?;
                self.shared.stats.rollup_committed(counts.len());
            }
        }
        Ok(())
    }

    pub(super) async fn dead_letter(
        &mut self,
        wal: &WalIdentity,
        batch: &Batch,
        code: u32,
        message: &str,
    ) -> Result<(), SinkError> {
        let Some(last) = batch.rows().last() else {
            // Nothing to dead-letter: the lane-wide `Advance` of any batch without rows.
            return self.deliver_rows(wal, batch).await;
        };
        let (seq, _) = self.fence(wal, batch).await?;
        let probe = Probe { end: last.end, ..Probe::default() };
        let step = Step::lane_wide(batch, seq + 1, Kind::Rejects, probe);
        self.write_steps(wal, std::slice::from_ref(&step), false).await?;
        let block = rows::rejects_block(wal, batch, code, message, now_secs())
            .map_err(|e| encoding_failed("ingest_rejects", e))?;
        let insert = schema::insert_statement(self.db(), "ingest_rejects", REJECTS);
        let id = step.insert_query_id(wal);
        self.write(&insert, Some(&id), block, Phase::WriteOwn, false, "insert dead letters").await?;
        self.shared.stats.rejected(batch.len());
        self.committed(wal, &step).await;
        Ok(())
    }

    pub(super) async fn retire_lanes(
        &mut self,
        wal: &WalIdentity,
        lanes: &[LaneId],
    ) -> Result<(), SinkError> {
        if lanes.is_empty() {
            return Ok(());
        }
        let latest = self.latest_steps(wal, None).await?;
        let steps: Vec<Step> = lanes
            .iter()
            .map(|&lane| {
                let seq = latest.get(&lane).and_then(|s| s.iter().map(|s| s.seq).max()).unwrap_or(0) + 1;
                let none = Position::default();
                let probe = Probe::default();
                Step { lane, seq, kind: Kind::Retired, from: none, to: none, probe, target: String::new() }
            })
            .collect();
        self.write_steps(wal, &steps, false).await?;
        let keys: Vec<String> = lanes.iter().map(|l| format!("({}, {})", l.core, l.incarnation)).collect();
        // The `Retired` steps stay: a mutation applies part by part, and until the last part
        // is done, a lane whose tombstone went first would show an old step as its latest.
        let filter = format!(
            "wal_id = '{}' AND (core, incarnation) IN ({}) AND kind != {}",
            wal.wal,
            keys.join(", "),
            Kind::Retired as u8
        );
        self.tidy(&filter).await;
        Ok(())
    }

    /// Writes step rows; a lost answer is `InDoubt` (an `Advance` or `Retired` step is a
    /// commit by itself).
    async fn write_steps(
        &mut self,
        wal: &WalIdentity,
        steps: &[Step],
        committed: bool,
    ) -> Result<(), SinkError> {
        let block =
            notes::steps_block(wal, steps, now_secs()).map_err(|e| encoding_failed("ingest_cursors", e))?;
        let insert = schema::insert_statement(self.db(), "ingest_cursors", CURSORS);
        self.write(&insert, None, block, Phase::WriteOwn, committed, "write a cursor step").await?;
        self.shared.stats.steps_written(steps.len());
        Ok(())
    }

    /// Remembers what this connection committed; prunes the lane's old steps now and then.
    async fn committed(&mut self, wal: &WalIdentity, step: &Step) {
        self.known.insert((step.lane, step.target.clone()), (step.seq, step.to));
        if !step.seq.is_multiple_of(PRUNE_EVERY_SEQ) {
            return;
        }
        let Some(below) = prune_bound(&self.known, &self.shared.targets, step) else { return };
        let l = step.lane;
        let filter = format!(
            "wal_id = '{}' AND core = {} AND incarnation = {} AND seq < {below}",
            wal.wal, l.core, l.incarnation
        );
        self.tidy(&filter).await;
    }

    /// Deletes `ingest_cursors` rows matching `filter` (a mutation the server runs later).
    /// Failing is logged only: no cursor depends on it.
    async fn tidy(&mut self, filter: &str) {
        let sql = format!("ALTER TABLE `{}`.ingest_cursors DELETE WHERE {filter}", self.db());
        if let Err(err) = self.query(&sql, "delete old cursor steps").await {
            warn!(%err, "could not delete old ingest_cursors rows; they only take space");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_the_latest_step_of_every_table() {
        let lane = LaneId { core: 1, incarnation: 2 };
        let targets: Vec<String> =
            std::iter::once("events".to_owned()).chain((0..100).map(|i| format!("rollup_{i}"))).collect();
        // One batch wrote 101 steps, 3996..=4096: more than PRUNE_KEEP_SEQ.
        let mut known = HashMap::new();
        for (i, t) in targets.iter().enumerate() {
            known.insert((lane, t.clone()), (3996 + i as u64, Position::new(1, 9)));
        }
        let step = |seq| Step {
            lane,
            seq,
            kind: Kind::Rollup,
            from: Position::default(),
            to: Position::default(),
            probe: Probe::default(),
            target: String::new(),
        };
        assert_eq!(prune_bound(&known, &targets, &step(4096)), Some(3996), "not 4032");
        known.insert((lane, String::new()), (3900, Position::new(1, 1)));
        assert_eq!(prune_bound(&known, &targets, &step(4096)), Some(3900), "the lane-wide step stays too");
        known.remove(&(lane, "rollup_7".to_owned()));
        assert_eq!(prune_bound(&known, &targets, &step(4096)), None, "a table not known here: no prune");
        let few = HashMap::from([((lane, "events".to_owned()), (8192, Position::new(1, 9)))]);
        assert_eq!(prune_bound(&few, &targets[..1], &step(8192)), Some(8192 - PRUNE_KEEP_SEQ));
    }
}
