//! [`MysqlSink`]: the `crate::sink` contract on MySQL / MariaDB.
//!
//! One delivery is one transaction, in this order (`super::deliver`):
//! 1. (before it, autocommit) the batch's unknown domain names are inserted and read back
//!    ([`DomainResolver`], shared by all connections of the sink);
//! 2. `START TRANSACTION`, then the fenced cursor move ([`super::cursors::move_cursor`]):
//!    FIRST, so that a fenced batch writes nothing and two connections delivering the same
//!    lane serialise on the cursor row before either writes a row;
//! 3. the user agents not known to be stored (upserted with their class: `super::user_agents`,
//!    after a lookup outside the transaction), the rollup upserts (`super::rollups`), then the
//!    event rows (multi-row INSERT, or LOAD DATA LOCAL streamed from memory:
//!    `super::load_data`; with IGNORE semantics when the batch carries client event ids, each
//!    statement checked by `super::dedup`), in statements of at most the statement limit;
//! 4. `COMMIT`. Anything that goes wrong from here on is `InDoubt`.
//!
//! A dead-letter delivery ([`SinkConn::reject`]) is the same transaction with the
//! `ingest_rejects` rows in place of 3.
//!
//! The statement limit is min(`mysql.max_statement_bytes`, the server's `@@max_allowed_packet`
//! read at connect − [`PACKET_MARGIN_BYTES`]). Statements are built before the transaction
//! starts, so a row too large for the limit on its own is refused (code 1153) without
//! anything sent; the core then bisects down to it and dead-letters it, cut to fit.
//!
//! The method (`mysql.method`) is chosen at each connect: LOAD DATA where it is configured,
//! the server has `local_infile` on and has not refused it since; INSERT otherwise. Each
//! change of method is logged once.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use tracing::{info, warn};

use super::config::{DomainsConfig, Method, MysqlConfig};
use super::db::{Db, DbError};
use super::deliver::sorted;
use super::domains::DomainResolver;
use super::errors::Phase;
use super::sql::SqlBuffer;
use super::stats::MysqlStats;
use super::user_agents::{BatchUa, UserAgents};
use super::{cursors, lease, migrate, rollups};
use crate::rollup::{Dimension, RollupConfig};
use crate::sink::{Batch, LeaseState, Sink, SinkConn, SinkCursor, SinkError};
use crate::wal::identity::{LaneId, WalIdentity};

/// Taken off the server's `max_allowed_packet`: the command byte of a query packet plus slack
/// for how a server counts its buffers.
pub const PACKET_MARGIN_BYTES: usize = 256;

/// The statement limit for a server that takes packets of `max_allowed_packet` bytes.
pub fn statement_limit(max_statement_bytes: usize, max_allowed_packet: usize) -> usize {
    max_statement_bytes.min(max_allowed_packet.saturating_sub(PACKET_MARGIN_BYTES))
}

/// What a sink's connections share (all on the flusher thread).
pub(super) struct Shared {
    pub(super) config: MysqlConfig,
    pub(super) rollups: Vec<RollupConfig>,
    pub(super) domains: DomainResolver,
    /// User-Agent hashes known to be stored with their class.
    pub(super) user_agents: UserAgents,
    pub(super) stats: Arc<MysqlStats>,
    /// Set once migrations, rollup tables and the domain preload ran on some connection.
    schema_ready: tokio::sync::Mutex<bool>,
    /// The server's limit was found below `mysql.max_statement_bytes` and said so.
    limit_logged: Cell<bool>,
    /// A LOAD DATA was refused by the server: INSERT from the next connection on.
    pub(super) load_data_refused: Cell<bool>,
    /// The method last logged.
    method_logged: Cell<Option<Method>>,
}

impl Shared {
    /// Whether some row data is needed beyond the rollups' own keys.
    pub(super) fn needs(&self, d: Dimension) -> bool {
        self.config.raw_events || self.rollups.iter().any(|r| r.has(d))
    }
}

/// A MySQL database as a sink: a factory of [`MysqlConn`]s sharing one domain cache.
pub struct MysqlSink {
    shared: Rc<Shared>,
}

impl MysqlSink {
    pub fn new(
        config: &MysqlConfig,
        domains: &DomainsConfig,
        rollups: &[RollupConfig],
        stats: Arc<MysqlStats>,
    ) -> MysqlSink {
        let resolver = DomainResolver::new(domains.cache_entries, stats.clone(), config.flush_interval_ms);
        let user_agents = UserAgents::new(config.user_agent_cache_entries, stats.clone());
        let shared = Shared {
            config: config.clone(),
            rollups: rollups.to_vec(),
            domains: resolver,
            user_agents,
            stats,
            schema_ready: tokio::sync::Mutex::new(false),
            limit_logged: Cell::new(false),
            load_data_refused: Cell::new(false),
            method_logged: Cell::new(None),
        };
        MysqlSink { shared: Rc::new(shared) }
    }

    /// Migrations, rollup tables and the domain preload, once per process, one connection
    /// at a time.
    async fn ensure_schema(&self, db: &mut Db) -> Result<(), DbError> {
        let mut ready = self.shared.schema_ready.lock().await;
        if *ready {
            return Ok(());
        }
        let applied = migrate::migrate(db).await?;
        if !applied.is_empty() {
            info!(?applied, "migrations applied");
        }
        rollups::ensure_tables(db, &self.shared.rollups).await?;
        self.shared.domains.preload(db).await?;
        *ready = true;
        Ok(())
    }

    fn limit_for(&self, db: &Db) -> usize {
        let s = &self.shared;
        let server = db.facts().max_allowed_packet;
        let limit = statement_limit(s.config.max_statement_bytes, server);
        s.stats.statement_bytes_max.store(limit as u64, Ordering::Relaxed);
        if limit < s.config.max_statement_bytes && !s.limit_logged.replace(true) {
            warn!(
                max_allowed_packet = server,
                max_statement_bytes = s.config.max_statement_bytes,
                limit,
                "the server's max_allowed_packet is below mysql.max_statement_bytes; statements are cut to it"
            );
        }
        limit
    }

    /// The method for a connection to this server (module doc), logged when it changes.
    fn method_for(&self, db: &Db) -> Method {
        let s = &self.shared;
        let local_infile = db.facts().local_infile;
        let method = match s.config.method {
            Method::LoadData if local_infile && !s.load_data_refused.get() => Method::LoadData,
            _ => Method::Insert,
        };
        s.stats.load_data.store(method == Method::LoadData, Ordering::Relaxed);
        if s.method_logged.replace(Some(method)) != Some(method) {
            match (s.config.method, method) {
                (Method::LoadData, Method::LoadData) => {
                    info!("MySQL delivery method: LOAD DATA LOCAL streamed from memory (mysql.method = load_data)")
                }
                (Method::LoadData, Method::Insert) => warn!(
                    local_infile,
                    refused_before = s.load_data_refused.get(),
                    "MySQL delivery method: multi-row INSERT, falling back from mysql.method = load_data \
                     because the server does not allow LOAD DATA LOCAL (local_infile)"
                ),
                (Method::Insert, _) => {
                    info!("MySQL delivery method: multi-row INSERT (mysql.method = insert)")
                }
            }
        }
        method
    }
}

impl Sink for MysqlSink {
    type Conn = MysqlConn;

    fn describe(&self) -> String {
        match mysql_async::Opts::from_url(&self.shared.config.url) {
            Ok(o) => format!("mysql://{}:{}/{}", o.ip_or_hostname(), o.tcp_port(), o.db_name().unwrap_or("")),
            Err(_) => "mysql (no valid mysql.url)".into(),
        }
    }

    async fn connect(&self) -> Result<MysqlConn, SinkError> {
        let stats = &self.shared.stats;
        let before = Phase::BeforeCommit;
        let mut db = Db::connect(&self.shared.config).await.map_err(|e| sorted(stats, &e, before))?;
        self.ensure_schema(&mut db).await.map_err(|e| sorted(stats, &e, before))?;
        Ok(MysqlConn {
            max_bytes: self.limit_for(&db),
            method: self.method_for(&db),
            db,
            shared: self.shared.clone(),
            sql: SqlBuffer::default(),
            events_sql: SqlBuffer::default(),
            tsv: BytesMut::new(),
            domain_ids: Vec::new(),
            new_user_agents: Vec::new(),
        })
    }
}

/// One connection of a [`MysqlSink`].
pub struct MysqlConn {
    pub(super) db: Db,
    pub(super) shared: Rc<Shared>,
    /// The statement limit of this connection's server (module doc).
    pub(super) max_bytes: usize,
    /// How this connection sends event rows.
    pub(super) method: Method,
    /// The statements of the delivery in progress but its event rows (reused).
    pub(super) sql: SqlBuffer,
    /// The event-row INSERTs of the delivery in progress (reused), run last and checked one
    /// by one for duplicate event ids (`super::dedup`).
    pub(super) events_sql: SqlBuffer,
    /// The LOAD DATA file of the delivery in progress (reused once the server read it).
    pub(super) tsv: BytesMut,
    /// Domain id of each row of the delivery in progress (reused).
    pub(super) domain_ids: Vec<u32>,
    /// The User-Agents the delivery in progress upserts: known to be stored once it commits.
    pub(super) new_user_agents: Vec<BatchUa>,
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

    /// How this connection sends event rows.
    pub fn method(&self) -> Method {
        self.method
    }
}

impl SinkConn for MysqlConn {
    async fn cursors(&mut self, wal: &WalIdentity) -> Result<Vec<SinkCursor>, SinkError> {
        let read = cursors::read_cursors(&mut self.db, wal).await;
        read.map_err(|e| sorted(&self.shared.stats, &e, Phase::BeforeCommit))
    }

    async fn deliver(&mut self, wal: &WalIdentity, batch: &Batch) -> Result<(), SinkError> {
        self.deliver_rows(wal, batch).await
    }

    async fn reject(
        &mut self,
        wal: &WalIdentity,
        batch: &Batch,
        code: u32,
        message: &str,
    ) -> Result<(), SinkError> {
        self.dead_letter(wal, batch, code, message).await
    }

    async fn retire(&mut self, wal: &WalIdentity, lanes: &[LaneId]) -> Result<(), SinkError> {
        let retired = cursors::retire(&mut self.db, wal, lanes).await;
        retired.map_err(|e| sorted(&self.shared.stats, &e, Phase::BeforeCommit))
    }

    async fn lease(&mut self, node: &str) -> Result<LeaseState, SinkError> {
        let state = lease::lease(&mut self.db, node).await;
        state.map_err(|e| sorted(&self.shared.stats, &e, Phase::BeforeCommit))
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
        let sink = MysqlSink::new(&config, &DomainsConfig::default(), &[], Arc::default());
        assert_eq!(sink.describe(), "mysql://db.example:3307/psc");
    }
}
