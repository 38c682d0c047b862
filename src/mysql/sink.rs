//! [`MysqlSink`]: the `crate::sink` contract on MySQL / MariaDB.
//!
//! One delivery is one transaction, in this order:
//! 1. (before it, autocommit) the batch's unknown domain names are inserted and read back
//!    ([`DomainResolver`], shared by all connections of the sink);
//! 2. `START TRANSACTION`, then the fenced cursor move ([`cursors::move_cursor`]): FIRST, so
//!    that a fenced batch writes nothing and two connections delivering the same lane
//!    serialise on the cursor row before either inserts a row;
//! 3. the user agents (`INSERT IGNORE`), then the event rows, in statements of at most the
//!    statement limit;
//! 4. `COMMIT`. Anything that goes wrong from here on is `InDoubt`.
//!
//! A dead-letter delivery ([`SinkConn::reject`]) is the same transaction with the
//! `ingest_rejects` rows in place of 3.
//!
//! The statement limit is min(`mysql.max_statement_bytes`, the server's `@@max_allowed_packet`
//! read at connect − [`PACKET_MARGIN_BYTES`]). Statements are built before the transaction
//! starts, so a row too large for the limit on its own is refused (code 1153) without
//! anything sent; the core then bisects down to it and dead-letters it, cut to fit.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{error, info, warn};

use super::config::{DomainsConfig, MysqlConfig};
use super::cursors::{self, Moved};
use super::db::{Db, DbError};
use super::domains::DomainResolver;
use super::errors::{self, Cause, Phase, ER_NET_PACKET_TOO_LARGE};
use super::sql::{self, SqlBuffer, TooLarge};
use super::stats::MysqlStats;
use super::{lease, migrate, rejects};
use crate::sink::{Batch, LeaseState, Sink, SinkConn, SinkCursor, SinkError};
use crate::wal::identity::{LaneId, WalIdentity};
use crate::wal::Position;

/// Taken off the server's `max_allowed_packet`: the command byte of a query packet plus slack
/// for how a server counts its buffers.
pub const PACKET_MARGIN_BYTES: usize = 256;

/// The statement limit for a server that takes packets of `max_allowed_packet` bytes.
pub fn statement_limit(max_statement_bytes: usize, max_allowed_packet: usize) -> usize {
    max_statement_bytes.min(max_allowed_packet.saturating_sub(PACKET_MARGIN_BYTES))
}

/// A MySQL database as a sink: a factory of [`MysqlConn`]s sharing one domain cache.
pub struct MysqlSink {
    config: MysqlConfig,
    domains: Rc<DomainResolver>,
    stats: Arc<MysqlStats>,
    /// Set once migrations and the domain preload ran on some connection of this process.
    schema_ready: tokio::sync::Mutex<bool>,
    /// The server's limit was found below `mysql.max_statement_bytes` and said so.
    limit_logged: Cell<bool>,
}

impl MysqlSink {
    pub fn new(config: &MysqlConfig, domains: &DomainsConfig, stats: Arc<MysqlStats>) -> MysqlSink {
        let resolver = DomainResolver::new(domains.cache_entries, stats.clone(), config.flush_interval_ms);
        MysqlSink {
            config: config.clone(),
            domains: Rc::new(resolver),
            stats,
            schema_ready: tokio::sync::Mutex::new(false),
            limit_logged: Cell::new(false),
        }
    }

    /// Migrations and the domain preload, once per process, one connection at a time.
    async fn ensure_schema(&self, db: &mut Db) -> Result<(), DbError> {
        let mut ready = self.schema_ready.lock().await;
        if *ready {
            return Ok(());
        }
        let applied = migrate::migrate(db).await?;
        if !applied.is_empty() {
            info!(?applied, "migrations applied");
        }
        self.domains.preload(db).await?;
        *ready = true;
        Ok(())
    }

    fn limit_for(&self, db: &Db) -> usize {
        let server = db.facts().max_allowed_packet;
        let limit = statement_limit(self.config.max_statement_bytes, server);
        self.stats.statement_bytes_max.store(limit as u64, Ordering::Relaxed);
        if limit < self.config.max_statement_bytes && !self.limit_logged.replace(true) {
            warn!(
                max_allowed_packet = server,
                max_statement_bytes = self.config.max_statement_bytes,
                limit,
                "the server's max_allowed_packet is below mysql.max_statement_bytes; statements are cut to it"
            );
        }
        limit
    }
}

impl Sink for MysqlSink {
    type Conn = MysqlConn;

    fn describe(&self) -> String {
        match mysql_async::Opts::from_url(&self.config.url) {
            Ok(o) => format!("mysql://{}:{}/{}", o.ip_or_hostname(), o.tcp_port(), o.db_name().unwrap_or("")),
            Err(_) => "mysql (no valid mysql.url)".into(),
        }
    }

    async fn connect(&self) -> Result<MysqlConn, SinkError> {
        let stats = &self.stats;
        let mut db = Db::connect(&self.config).await.map_err(|e| sorted(stats, &e, Phase::BeforeCommit))?;
        self.ensure_schema(&mut db).await.map_err(|e| sorted(stats, &e, Phase::BeforeCommit))?;
        let max_bytes = self.limit_for(&db);
        Ok(MysqlConn {
            db,
            domains: self.domains.clone(),
            stats: self.stats.clone(),
            max_bytes,
            sql: SqlBuffer::default(),
            domain_ids: Vec::new(),
        })
    }
}

/// One connection of a [`MysqlSink`].
pub struct MysqlConn {
    db: Db,
    domains: Rc<DomainResolver>,
    stats: Arc<MysqlStats>,
    /// The statement limit of this connection's server (module doc).
    max_bytes: usize,
    /// The row statements of the delivery in progress (reused).
    sql: SqlBuffer,
    /// Domain id of each row of the delivery in progress (reused).
    domain_ids: Vec<u32>,
}

/// Why a delivery stopped, before it is sorted into a [`SinkError`].
enum Failure {
    Db(DbError, Phase),
    Fenced(Position),
    TooLarge(TooLarge),
}

impl From<TooLarge> for Failure {
    fn from(e: TooLarge) -> Self {
        Failure::TooLarge(e)
    }
}

impl MysqlConn {
    /// The connection id the server gives this connection (`KILL <id>` ends it).
    pub fn connection_id(&self) -> u64 {
        self.db.facts().connection_id
    }

    /// The statement limit in force on this connection.
    pub fn statement_bytes_max(&self) -> usize {
        self.max_bytes
    }

    async fn build_rows(&mut self, batch: &Batch) -> Result<(), Failure> {
        self.sql.clear();
        if batch.is_empty() {
            return Ok(());
        }
        let resolved = self.domains.resolve(&mut self.db, batch, self.max_bytes, &mut self.domain_ids).await;
        resolved.map_err(|e| Failure::Db(e, Phase::BeforeCommit))?;
        sql::build_user_agent_inserts(batch, self.max_bytes, &mut self.sql)?;
        sql::build_event_inserts(batch, &self.domain_ids, self.max_bytes, &mut self.sql)?;
        Ok(())
    }

    /// The transaction of the module doc, steps 2–4, with `self.sql` as its rows.
    async fn transaction(&mut self, wal: &WalIdentity, batch: &Batch) -> Result<(), Failure> {
        let before = |e| Failure::Db(e, Phase::BeforeCommit);
        self.db.execute("start transaction", b"START TRANSACTION").await.map_err(before)?;
        let moved = cursors::move_cursor(&mut self.db, wal, batch.lane(), batch.from(), batch.to()).await;
        if let Moved::Fenced(found) = moved.map_err(before)? {
            return Err(Failure::Fenced(found));
        }
        for statement in self.sql.statements() {
            self.db.execute("insert rows", statement).await.map_err(before)?;
        }
        let committed = self.db.execute("commit", b"COMMIT").await;
        committed.map(drop).map_err(|e| Failure::Db(e, Phase::Commit))
    }

    /// Sorts `failure`; rolls back first where the server is still talking to us, so the
    /// cursor row's lock is released now rather than when the socket closes.
    async fn fail(&mut self, batch: &Batch, failure: Failure) -> SinkError {
        let alive = match &failure {
            Failure::Db(e, Phase::BeforeCommit) => e.server_code().is_some(),
            Failure::Fenced(_) => true,
            Failure::Db(_, Phase::Commit) | Failure::TooLarge(_) => false,
        };
        if alive {
            // Best effort: the connection is dropped by the caller anyway.
            let _ = self.db.execute("rollback", b"ROLLBACK").await;
        }
        match failure {
            Failure::Db(e, phase) => sorted(&self.stats, &e, phase),
            Failure::Fenced(found) => {
                self.stats.fenced.fetch_add(1, Ordering::Relaxed);
                SinkError::Fenced { lane: batch.lane(), expected: batch.from(), found }
            }
            Failure::TooLarge(e) => too_large(&self.stats, batch, e),
        }
    }
}

impl SinkConn for MysqlConn {
    async fn cursors(&mut self, wal: &WalIdentity) -> Result<Vec<SinkCursor>, SinkError> {
        let read = cursors::read_cursors(&mut self.db, wal).await;
        read.map_err(|e| sorted(&self.stats, &e, Phase::BeforeCommit))
    }

    async fn deliver(&mut self, wal: &WalIdentity, batch: &Batch) -> Result<(), SinkError> {
        let result = match self.build_rows(batch).await {
            Ok(()) => self.transaction(wal, batch).await,
            Err(f) => Err(f),
        };
        match result {
            Ok(()) => Ok(()),
            Err(f) => Err(self.fail(batch, f).await),
        }
    }

    async fn reject(
        &mut self,
        wal: &WalIdentity,
        batch: &Batch,
        code: u32,
        message: &str,
    ) -> Result<(), SinkError> {
        self.sql.clear();
        let built = rejects::build_reject_inserts(wal, batch, (code, message), self.max_bytes, &mut self.sql);
        let result = match built {
            Ok(()) => self.transaction(wal, batch).await,
            Err(e) => Err(Failure::TooLarge(e)),
        };
        if let Err(f) = result {
            return Err(self.fail(batch, f).await);
        }
        self.stats.count_rejects(code, batch.len() as u64);
        error!(
            lane = %batch.lane(), rows = batch.len(), from = ?batch.from(), to = ?batch.to(), code, message,
            "rows refused by MySQL were written to ingest_rejects (the raw WAL lines are kept there)"
        );
        Ok(())
    }

    async fn retire(&mut self, wal: &WalIdentity, lanes: &[LaneId]) -> Result<(), SinkError> {
        let retired = cursors::retire(&mut self.db, wal, lanes).await;
        retired.map_err(|e| sorted(&self.stats, &e, Phase::BeforeCommit))
    }

    async fn lease(&mut self, node: &str) -> Result<LeaseState, SinkError> {
        let state = lease::lease(&mut self.db, node).await;
        state.map_err(|e| sorted(&self.stats, &e, Phase::BeforeCommit))
    }
}

/// [`errors::sort`], with a loud log line and a count for a schema that does not fit.
fn sorted(stats: &MysqlStats, e: &DbError, phase: Phase) -> SinkError {
    if phase == Phase::BeforeCommit && errors::cause(e) == Cause::Schema {
        stats.schema_errors.fetch_add(1, Ordering::Relaxed);
        error!(
            error = %e,
            "the MySQL schema or grants do not fit this collector (run `player-stat-collector migrate`, \
             check mysql.url's database and the user's grants); delivery waits, events stay in the WAL"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statement_limit_follows_the_smaller_of_config_and_server() {
        assert_eq!(statement_limit(8 << 20, 16 << 20), 8 << 20);
        assert_eq!(statement_limit(8 << 20, 4096), 4096 - PACKET_MARGIN_BYTES);
        assert_eq!(statement_limit(8 << 20, 0), 0);
    }

    #[test]
    fn describe_never_shows_the_password() {
        let config =
            MysqlConfig { url: "mysql://u:secret@db.example:3307/psc".into(), ..MysqlConfig::default() };
        let sink = MysqlSink::new(&config, &DomainsConfig::default(), Arc::default());
        assert_eq!(sink.describe(), "mysql://db.example:3307/psc");
    }
}
