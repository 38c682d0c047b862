//! The delivery transaction of a [`MysqlConn`] (order and reasons in `super::sink`): building
//! a batch's statements, running them behind the fenced cursor move, and sorting what failed.
//!
//! Invariants: everything that can be built is built before `START TRANSACTION` (so a row too
//! large for the statement limit costs no round trip and holds no lock); on a failure the
//! server still answers, the transaction is rolled back at once (releasing the cursor row)
//! before the error goes back; counters (rollup keys, duplicates, parsed User-Agents) and the
//! cache of stored User-Agents move only after `COMMIT` succeeded.

use std::sync::atomic::Ordering;

use tracing::{error, warn};

use super::config::Method;
use super::cursors::{self, Moved};
use super::db::DbError;
use super::dedup::{self, RowsError};
use super::errors::{self, Cause, Phase, ER_NET_PACKET_TOO_LARGE};
use super::load_data;
use super::rejects;
use super::rollups;
use super::sink::{MysqlConn, PACKET_MARGIN_BYTES};
use super::sql::{self, TooLarge};
use super::stats::MysqlStats;
use super::user_agents;
use crate::rollup::{aggregate, Dimension};
use crate::sink::{Batch, SinkError};
use crate::wal::identity::WalIdentity;
use crate::wal::Position;

/// Why a delivery stopped, before it is sorted into a [`SinkError`].
pub(super) enum Failure {
    Db(DbError, Phase),
    Fenced(Position),
    TooLarge(TooLarge),
    /// The server took the rows but would have changed values (or lost rows no duplicate
    /// event id explains): as an INSERT refusal.
    Refused {
        code: u32,
        message: String,
    },
}

impl From<TooLarge> for Failure {
    fn from(e: TooLarge) -> Self {
        Failure::TooLarge(e)
    }
}

impl From<RowsError> for Failure {
    fn from(e: RowsError) -> Self {
        match e {
            RowsError::Db(e) => Failure::Db(e, Phase::BeforeCommit),
            RowsError::Refused { code, message } => Failure::Refused { code, message },
        }
    }
}

impl MysqlConn {
    /// `SinkConn::deliver`.
    pub(super) async fn deliver_rows(&mut self, wal: &WalIdentity, batch: &Batch) -> Result<(), SinkError> {
        let result = match self.build_rows(batch).await {
            Ok(keys) => self.transaction(wal, batch).await.map(|duplicates| (keys, duplicates)),
            Err(f) => Err(f),
        };
        match result {
            Ok((keys, duplicates)) => {
                let stats = &self.shared.stats;
                stats.rollup_keys.fetch_add(keys, Ordering::Relaxed);
                stats.events_deduplicated.fetch_add(duplicates, Ordering::Relaxed);
                self.shared.user_agents.committed(&self.new_user_agents);
                Ok(())
            }
            Err(f) => Err(self.fail(batch, f).await),
        }
    }

    /// `SinkConn::reject`.
    pub(super) async fn dead_letter(
        &mut self,
        wal: &WalIdentity,
        batch: &Batch,
        code: u32,
        message: &str,
    ) -> Result<(), SinkError> {
        self.sql.clear();
        self.events_sql.clear();
        self.tsv.clear();
        let built = rejects::build_reject_inserts(wal, batch, (code, message), self.max_bytes, &mut self.sql);
        let result = match built {
            Ok(()) => self.transaction(wal, batch).await.map(drop),
            Err(e) => Err(Failure::TooLarge(e)),
        };
        if let Err(f) = result {
            return Err(self.fail(batch, f).await);
        }
        self.shared.stats.count_rejects(code, batch.len() as u64);
        error!(
            lane = %batch.lane(), rows = batch.len(), from = ?batch.from(), to = ?batch.to(), code, message,
            "rows refused by MySQL were written to ingest_rejects (the raw WAL lines are kept there)"
        );
        Ok(())
    }

    /// Resolves domains and builds every statement (and the LOAD DATA file) of `batch`;
    /// returns the number of rollup keys.
    async fn build_rows(&mut self, batch: &Batch) -> Result<u64, Failure> {
        self.sql.clear();
        self.events_sql.clear();
        self.tsv.clear();
        self.domain_ids.clear();
        self.new_user_agents.clear();
        if batch.is_empty() {
            return Ok(0);
        }
        let shared = self.shared.clone();
        let before = |e| Failure::Db(e, Phase::BeforeCommit);
        if shared.needs(Dimension::Domain) {
            let resolved =
                shared.domains.resolve(&mut self.db, batch, self.max_bytes, &mut self.domain_ids).await;
            resolved.map_err(before)?;
        }
        if shared.needs(Dimension::UserAgent) {
            let unknown = shared.user_agents.unknown(&mut self.db, batch, self.max_bytes).await;
            self.new_user_agents = unknown.map_err(before)?;
            user_agents::build_upserts(batch, &self.new_user_agents, self.max_bytes, &mut self.sql)?;
        }
        if shared.config.raw_events {
            let (ids, max) = (&self.domain_ids, self.max_bytes);
            match self.method {
                Method::Insert => sql::build_event_inserts(batch, ids, max, &mut self.events_sql)?,
                Method::LoadData => load_data::build_tsv(batch, ids, &mut self.tsv),
            }
        }
        let mut keys = 0;
        for r in &shared.rollups {
            let counts = aggregate(r, batch, 0..batch.len());
            keys += counts.len() as u64;
            rollups::build_upserts(r, &counts, batch, &self.domain_ids, self.max_bytes, &mut self.sql)?;
        }
        Ok(keys)
    }

    /// `START TRANSACTION`, the fenced cursor move, the built statements, the event rows,
    /// `COMMIT`. Returns the event rows skipped as duplicate client event ids.
    async fn transaction(&mut self, wal: &WalIdentity, batch: &Batch) -> Result<u64, Failure> {
        let before = |e| Failure::Db(e, Phase::BeforeCommit);
        self.db.execute("start transaction", b"START TRANSACTION").await.map_err(before)?;
        let moved = cursors::move_cursor(&mut self.db, wal, batch.lane(), batch.from(), batch.to()).await;
        if let Moved::Fenced(found) = moved.map_err(before)? {
            return Err(Failure::Fenced(found));
        }
        for statement in self.sql.statements() {
            self.db.execute("insert rows", statement).await.map_err(before)?;
        }
        let ids = batch.has_event_ids();
        let mut duplicates = 0;
        for (statement, rows) in self.events_sql.statements_with_rows() {
            let took = self.db.execute("insert events", statement).await.map_err(before)?;
            if ids {
                duplicates += dedup::check_rows(&mut self.db, rows as u64, took, ids).await?;
            }
        }
        if !self.tsv.is_empty() {
            duplicates += self.load(batch.len(), ids).await?;
        }
        let committed = self.db.execute("commit", b"COMMIT").await;
        committed.map(|_| duplicates).map_err(|e| Failure::Db(e, Phase::Commit))
    }

    async fn load(&mut self, rows: usize, ids: bool) -> Result<u64, Failure> {
        let file = self.tsv.split().freeze();
        match load_data::load_events(&mut self.db, file, self.max_bytes, rows, ids).await {
            Ok(duplicates) => Ok(duplicates),
            Err(RowsError::Refused { code, message }) => Err(Failure::Refused { code, message }),
            Err(RowsError::Db(e)) => {
                if load_data::is_load_data_refused(&e) {
                    self.shared.load_data_refused.set(true);
                    self.shared.stats.load_data_fallbacks.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, "the server refused LOAD DATA LOCAL; the next connection delivers with INSERT");
                }
                Err(Failure::Db(e, Phase::BeforeCommit))
            }
        }
    }

    /// Sorts `failure`; rolls back first where the server is still talking to us, so the
    /// cursor row's lock is released now rather than when the socket closes.
    async fn fail(&mut self, batch: &Batch, failure: Failure) -> SinkError {
        let alive = match &failure {
            Failure::Db(e, Phase::BeforeCommit) => e.server_code().is_some(),
            Failure::Fenced(_) | Failure::Refused { .. } => true,
            Failure::Db(_, Phase::Commit) | Failure::TooLarge(_) => false,
        };
        if alive {
            // Best effort: the connection is dropped by the caller anyway.
            let _ = self.db.execute("rollback", b"ROLLBACK").await;
        }
        let stats = &self.shared.stats;
        match failure {
            Failure::Db(e, phase) => sorted(stats, &e, phase),
            Failure::Fenced(found) => {
                stats.fenced.fetch_add(1, Ordering::Relaxed);
                SinkError::Fenced { lane: batch.lane(), expected: batch.from(), found }
            }
            Failure::TooLarge(e) => too_large(stats, batch, e),
            Failure::Refused { code, message } => SinkError::Refused { code, message, every_row: false },
        }
    }
}

/// [`errors::sort`], with a loud log line and a count for a schema that does not fit.
pub(super) fn sorted(stats: &MysqlStats, e: &DbError, phase: Phase) -> SinkError {
    if phase == Phase::BeforeCommit && errors::cause(e) == Cause::Schema {
        stats.schema_errors.fetch_add(1, Ordering::Relaxed);
        error!(
            error = %e,
            "the MySQL schema or grants do not fit this collector (run `player-stat-collector migrate`, \
             check mysql.url's database, the user's grants and [[rollup]]); delivery waits, events stay in the WAL"
        );
    }
    errors::sort(e, phase)
}

fn too_large(stats: &MysqlStats, batch: &Batch, e: TooLarge) -> SinkError {
    if batch.len() == 1 {
        stats.rows_too_large.fetch_add(1, Ordering::Relaxed);
    }
    let end = batch.rows().get(e.row).map(|r| r.end);
    SinkError::Refused {
        code: ER_NET_PACKET_TOO_LARGE,
        message: format!(
            "row ending at {end:?} of {}: {e} (min of mysql.max_statement_bytes and the server's \
             max_allowed_packet - {PACKET_MARGIN_BYTES})",
            batch.lane()
        ),
        every_row: false,
    }
}
