//! What a delivery writes, in order (why this is exactly once: `super`):
//! 1. the fence: the lane's highest steps are read and settled; if the cursor they decide is
//!    not `batch.from()`, nothing is written (`Fenced`);
//! 2. per run of rows in one partition (`super::rows::runs`, one run nearly always): the step
//!    row (`ingest_cursors`: `seq` + 1, from, to, the run's last row as probe), then the run
//!    as one Native block into `events`, under the step's query id;
//! 3. a batch without rows writes only an `Advance` step, which is its own commit.
//!
//! A dead-letter delivery is the same with one `Rejects` step and one block into
//! `ingest_rejects`. Retiring lanes writes a `Retired` step per lane, then asks the server
//! to delete the retired lanes' other steps (a mutation; only tidying, the step already
//! counts, and stays: one row per retired lane).
//! Fail points (tests): `clickhouse.before_events` and `clickhouse.after_events`, see
//! `fail_point` below.
//!
//! Every [`PRUNE_EVERY_SEQ`] steps of a lane, its steps older than the last
//! [`PRUNE_KEEP_SEQ`] are deleted the same way, so `ingest_cursors` stays small.

use std::time::{SystemTime, UNIX_EPOCH};

use tracing::warn;

use super::errors::Step as Phase;
use super::notes::{self, Kind, Probe, Step};
use super::rows;
use super::schema::{self, CURSORS, EVENTS, REJECTS};
use super::sink::ClickHouseConn;
use crate::sink::{Batch, Row, SinkError};
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

fn probe_of(batch: &Batch, row: &Row) -> Probe {
    let (at, _) = rows::split_ts(row.ts_ms);
    Probe { domain: batch.domain(row).as_bytes().to_vec(), at, file_id: row.file_id, end: row.end }
}

/// A test's fail point (`crate::failpoint`) at a place where the outcome of a write is
/// unknown to the caller: armed, the delivery ends `InDoubt` there (with `abort`, the
/// process dies there). `clickhouse.before_events`: the step row is in, its rows are not
/// sent. `clickhouse.after_events`: the rows are in, the answer "is lost".
fn fail_point(name: &str) -> Result<(), SinkError> {
    crate::failpoint::io(name).map_err(|e| SinkError::InDoubt(format!("fail point {name}: {e}")))
}

fn encoding_failed(what: &str, why: String) -> SinkError {
    // Our own encoder disagreeing with our own spec: a bug, but never a panic.
    SinkError::Unavailable(format!("{what}: block does not fit its spec: {why}"))
}

impl ClickHouseConn {
    /// Contract 2: the `seq` of the lane's highest step (0: none), if the sink's cursor for
    /// the lane is `batch.from()` or there is none.
    async fn fence(&mut self, wal: &WalIdentity, batch: &Batch) -> Result<u64, SinkError> {
        let lane = batch.lane();
        let mut lanes = self.latest_steps(wal, Some(lane)).await?;
        let steps = lanes.remove(&lane).unwrap_or_default();
        let seq = steps.first().map_or(0, |s| s.seq);
        match self.settle(wal, &steps).await? {
            Some(found) if found != batch.from() => {
                self.shared.stats.fenced();
                Err(SinkError::Fenced { lane, expected: batch.from(), found })
            }
            _ => Ok(seq),
        }
    }

    pub(super) async fn deliver_rows(&mut self, wal: &WalIdentity, batch: &Batch) -> Result<(), SinkError> {
        let seq = self.fence(wal, batch).await?;
        let runs = rows::runs(batch);
        if runs.is_empty() {
            return self.advance(wal, batch, seq + 1).await;
        }
        let insert = schema::insert_statement(self.db(), "events", EVENTS);
        let (mut from, mut committed) = (batch.from(), false);
        for (k, range) in runs.into_iter().enumerate() {
            let last = &batch.rows()[range.end - 1];
            let to = if range.end == batch.len() { batch.to() } else { last.end };
            let lane = batch.lane();
            let probe = probe_of(batch, last);
            let step = Step { lane, seq: seq + 1 + k as u64, kind: Kind::Events, from, to, probe };
            self.write_steps(wal, std::slice::from_ref(&step), committed).await?;
            fail_point("clickhouse.before_events")?;
            let n = range.len();
            let block = rows::events_block(wal, batch, range, Vec::new())
                .map_err(|e| encoding_failed("events", e))?;
            let bytes = block.len();
            let id = step.insert_query_id(wal);
            self.write(&insert, Some(&id), block, Phase::WriteEvents, committed, "insert events").await?;
            fail_point("clickhouse.after_events")?;
            self.shared.stats.block_committed(n, bytes);
            self.committed(wal, &step).await;
            (from, committed) = (to, true);
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
        let seq = self.fence(wal, batch).await?;
        let Some(last) = batch.rows().last() else {
            return self.advance(wal, batch, seq + 1).await;
        };
        let probe = Probe { end: last.end, ..Probe::default() };
        let (lane, from, to) = (batch.lane(), batch.from(), batch.to());
        let step = Step { lane, seq: seq + 1, kind: Kind::Rejects, from, to, probe };
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

    /// A batch without rows: the `Advance` step is the commit.
    async fn advance(&mut self, wal: &WalIdentity, batch: &Batch, seq: u64) -> Result<(), SinkError> {
        let (lane, from, to) = (batch.lane(), batch.from(), batch.to());
        let step = Step { lane, seq, kind: Kind::Advance, from, to, probe: Probe::default() };
        self.write_steps(wal, std::slice::from_ref(&step), false).await?;
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
                let seq = latest.get(&lane).and_then(|s| s.first()).map_or(0, |s| s.seq) + 1;
                let none = Position::default();
                Step { lane, seq, kind: Kind::Retired, from: none, to: none, probe: Probe::default() }
            })
            .collect();
        self.write_steps(wal, &steps, false).await?;
        for step in &steps {
            self.known.insert(step.lane, (step.seq, None));
        }
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
        self.known.insert(step.lane, (step.seq, Some(step.to)));
        if step.seq.is_multiple_of(PRUNE_EVERY_SEQ) {
            let l = step.lane;
            let filter = format!(
                "wal_id = '{}' AND core = {} AND incarnation = {} AND seq < {}",
                wal.wal,
                l.core,
                l.incarnation,
                step.seq - PRUNE_KEEP_SEQ
            );
            self.tidy(&filter).await;
        }
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
