//! [`ClickHouseSink`]: the `crate::sink` contract on one ClickHouse server (one shard), and
//! the requests its connections are made of. What a delivery writes, in which order, is in
//! `super::deliver`; why that is exactly once, in `super`.
//!
//! A connect reads `version()` (logged when it changes) and runs the schema's
//! `CREATE … IF NOT EXISTS` statements, adds missing columns (`super::schema`) and checks the
//! rollup tables' definitions (`super::rollups`), every time: cheap, and a dropped table
//! comes back.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tracing::{info, warn};

use super::config::{ClickhouseConfig, Compression};
use super::errors::{is_schema_misfit, sorted, Step as Phase};
use super::http::{Endpoint, Http, HttpError};
use super::notes::{self, Step};
use super::rollups;
use super::schema::{self, Column};
use super::stats::ClickhouseStats;
use crate::invalid::InvalidKey;
use crate::rollup::RollupConfig;
use crate::sink::{Batch, LeaseState, Sink, SinkConn, SinkCursor, SinkError};
use crate::wal::identity::{LaneId, WalIdentity};
use crate::wal::Position;

/// Oldest server whose features the sink relies on (Native blocks, column comments,
/// `ALTER … DELETE`): Debian's package.
const OLDEST_TESTED: (u32, u32) = (18, 16);

/// What a sink's connections share (all on the flusher thread).
pub(super) struct Shared {
    pub(super) config: ClickhouseConfig,
    pub(super) endpoint: Endpoint,
    pub(super) stats: Arc<ClickhouseStats>,
    /// The `[[rollup]]` tables written beside (or instead of) `events`, with their columns.
    pub(super) rollups: Vec<(RollupConfig, Vec<Column>)>,
    /// The tables a lane's cursor is kept for (`super::notes`): `events` if raw events are
    /// stored, then `rollup_<name>` of each rollup, in the order of `rollups`.
    pub(super) targets: Vec<String>,
    /// The server version last logged.
    version_logged: RefCell<String>,
}

/// One ClickHouse server as a sink: a factory of [`ClickHouseConn`]s.
pub struct ClickHouseSink {
    shared: Rc<Shared>,
}

impl Shared {
    /// The rollup (and its columns) whose table is target `t`; `None`: `events`.
    pub(super) fn rollup_of(&self, t: usize) -> Option<(&RollupConfig, &[Column])> {
        let raw = self.config.raw_events;
        if super::plan::is_events(t, raw) {
            return None;
        }
        let (r, spec) = self.rollups.get(t - usize::from(raw))?;
        Some((r, spec.as_slice()))
    }
}

impl ClickHouseSink {
    /// A sink for the server at `url` (one of `config.shard_urls()`), with `config`'s
    /// database, login and timeouts, writing `rollups` too. Connects to nothing yet.
    pub fn new(
        config: &ClickhouseConfig,
        url: &str,
        rollups: &[RollupConfig],
        stats: Arc<ClickhouseStats>,
    ) -> Result<ClickHouseSink, InvalidKey> {
        config.validate()?;
        crate::rollup::validate(rollups)?;
        if !config.raw_events && rollups.is_empty() {
            return InvalidKey::err("clickhouse.raw_events", "false needs at least one [[rollup]]");
        }
        let endpoint =
            Endpoint::parse(url).map_err(|why| InvalidKey { key: "clickhouse.shards", message: why })?;
        let rollups: Vec<_> = rollups.iter().map(|r| (r.clone(), rollups::columns(r))).collect();
        let events = config.raw_events.then(|| "events".to_owned());
        let targets = events.into_iter().chain(rollups.iter().map(|(r, _)| rollups::table_name(r))).collect();
        let shared = Shared {
            config: config.clone(),
            endpoint,
            stats,
            rollups,
            targets,
            version_logged: RefCell::default(),
        };
        Ok(ClickHouseSink { shared: Rc::new(shared) })
    }

    fn log_version(&self, version: &str) {
        if *self.shared.version_logged.borrow() == version {
            return;
        }
        let url = self.shared.endpoint.url();
        match parse_version(version) {
            Some(v) if v >= OLDEST_TESTED => info!(%url, version, "ClickHouse server version"),
            Some(_) => {
                warn!(%url, version, "ClickHouse server older than 18.16, which the sink is tested on")
            }
            None => warn!(%url, version, "ClickHouse server version not understood"),
        }
        version.clone_into(&mut self.shared.version_logged.borrow_mut());
    }
}

/// `block` as gzip at the fastest level (a Native block of repeated names and context
/// compresses several times even so). A truncated gzip body is refused by the server, like a
/// truncated Native one.
fn gzip(block: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::with_capacity(block.len() / 4), flate2::Compression::fast());
    encoder.write_all(block)?;
    encoder.finish()
}

/// (major, minor) of `18.16.1` or `23.8.2.7`.
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.trim().split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

impl Sink for ClickHouseSink {
    type Conn = ClickHouseConn;

    fn describe(&self) -> String {
        format!("clickhouse {}/{}", self.shared.endpoint.url(), self.shared.config.database)
    }

    async fn connect(&self) -> Result<ClickHouseConn, SinkError> {
        let c = &self.shared.config;
        let http = Http::new(
            self.shared.endpoint.clone(),
            &c.user,
            &c.password,
            c.connect_timeout_ms,
            c.query_timeout_ms,
        );
        let mut conn = ClickHouseConn { http, shared: self.shared.clone(), known: HashMap::new() };
        let version = conn.query("SELECT version()", "server version").await?;
        let version = String::from_utf8_lossy(&version).trim().to_owned();
        self.log_version(&version);
        conn.ensure_schema().await?;
        self.shared.stats.connected(&version);
        Ok(conn)
    }
}

/// One connection of a [`ClickHouseSink`]: one HTTP link (a TCP connection, replaced when
/// idle) and what this connection itself committed.
pub struct ClickHouseConn {
    pub(super) http: Http,
    pub(super) shared: Rc<Shared>,
    /// Per lane and target: the `seq` and `to` of the last step this connection committed.
    /// While that is still the target's highest step, it needs no probe.
    pub(super) known: HashMap<(LaneId, String), (u64, Position)>,
}

impl ClickHouseConn {
    pub(super) fn db(&self) -> &str {
        &self.shared.config.database
    }

    /// Runs a statement that commits nothing and returns its answer.
    pub(super) async fn query(&mut self, sql: &str, what: &str) -> Result<Bytes, SinkError> {
        let params = [("wait_end_of_query", "1")];
        let answer = self.http.post(&params, Bytes::copy_from_slice(sql.as_bytes()), false).await;
        answer.map_err(|e| self.sorted(e, Phase::Read, false, what))
    }

    /// The database and tables, and the columns a table created by an older version lacks.
    async fn ensure_schema(&mut self) -> Result<(), SinkError> {
        let db = self.db().to_owned();
        for statement in schema::create_statements(&db) {
            self.query(&statement, "create the schema").await?;
        }
        for (table, spec) in schema::tables() {
            let answer = self.query(&schema::columns_query(&db, table), "read the columns").await?;
            let text = String::from_utf8_lossy(&answer);
            let present: Vec<&str> = text.lines().collect();
            for statement in schema::add_missing_columns(&db, table, spec, &present) {
                info!(%statement, "adding a column a table created by an older version lacks");
                self.query(&statement, "add a column").await?;
            }
        }
        let shared = self.shared.clone();
        for (r, _) in &shared.rollups {
            self.ensure_rollup(&db, r).await?;
        }
        Ok(())
    }

    /// Creates `r`'s table, or checks that an existing one holds `r`'s definition: one of
    /// another shape is created again if empty, and refused (Unavailable, logged at every
    /// connect) while it holds rows.
    async fn ensure_rollup(&mut self, db: &str, r: &RollupConfig) -> Result<(), SinkError> {
        let create = rollups::create_statement(db, r);
        self.query(&create, "create a rollup table").await?;
        if rollups::has_shape(r, &self.query(&rollups::shape_query(db, r), "read a rollup table").await?) {
            return Ok(());
        }
        let table = format!("`{db}`.`{}`", rollups::table_name(r));
        if self.count(&format!("SELECT count() FROM {table}"), "count a rollup table").await? > 0 {
            self.shared.stats.schema_error();
            return Err(SinkError::Unavailable(format!(
                "{table} holds counts of another definition than `{}`; rename or drop it, or restore \
                 the [[rollup]] it was made for",
                r.definition()
            )));
        }
        warn!(%table, definition = %r.definition(), "an empty rollup table of another definition is created again");
        self.query(&format!("DROP TABLE {table}"), "drop an empty rollup table").await?;
        self.query(&create, "create a rollup table").await?;
        Ok(())
    }

    pub(super) async fn count(&mut self, sql: &str, what: &str) -> Result<u64, SinkError> {
        let answer = self.query(sql, what).await?;
        notes::parse_count(&answer).map_err(|e| SinkError::Unavailable(format!("{what}: {e}")))
    }

    /// INSERTs one Native `block` with `insert_sql`.
    pub(super) async fn write(
        &mut self,
        insert_sql: &str,
        query_id: Option<&str>,
        block: Vec<u8>,
        phase: Phase,
        committed_before: bool,
        what: &str,
    ) -> Result<(), SinkError> {
        let mut params = vec![("query", insert_sql)];
        if let Some(id) = query_id {
            params.push(("query_id", id));
        }
        let (body, gzipped) = match self.shared.config.compression {
            Compression::None => (block, false),
            Compression::Gzip => {
                (gzip(&block).map_err(|e| SinkError::Unavailable(format!("{what}: gzip: {e}")))?, true)
            }
        };
        let result = self.http.post(&params, Bytes::from(body), gzipped).await;
        result.map(drop).map_err(|e| self.sorted(e, phase, committed_before, what))
    }

    fn sorted(&self, e: HttpError, phase: Phase, committed_before: bool, what: &str) -> SinkError {
        if let HttpError::Server { code, .. } = &e {
            if is_schema_misfit(*code) {
                self.shared.stats.schema_error();
            }
        }
        let error = sorted(e, phase, committed_before, what);
        match &error {
            SinkError::InDoubt(_) => self.shared.stats.in_doubt(),
            SinkError::Refused { .. } => self.shared.stats.refused(),
            _ => {}
        }
        error
    }

    /// The highest-`seq` steps of `wal`'s lanes (of `lane` only, if given).
    pub(super) async fn latest_steps(
        &mut self,
        wal: &WalIdentity,
        lane: Option<LaneId>,
    ) -> Result<std::collections::BTreeMap<LaneId, Vec<Step>>, SinkError> {
        let sql = notes::latest_steps_query(self.db(), wal, lane);
        let answer = self.query(&sql, "read cursors").await?;
        notes::parse_steps(&answer).map_err(|e| {
            self.shared.stats.schema_error();
            SinkError::Unavailable(format!("read cursors: {e}"))
        })
    }

    /// The cursor of each target that `steps` (one lane's highest per target) decide, in the
    /// order of `Shared::targets` (`None` in all: retired), probing each step unless this
    /// connection committed it itself.
    pub(super) async fn settle(
        &mut self,
        wal: &WalIdentity,
        steps: &[Step],
    ) -> Result<Option<Vec<Option<Position>>>, SinkError> {
        let mut present = Vec::with_capacity(steps.len());
        for step in steps {
            let mine = self.known.get(&(step.lane, step.target.clone())) == Some(&(step.seq, step.to));
            let probe = notes::probe_query(self.db(), wal, step);
            let Some(probe) = probe.filter(|_| !mine) else {
                present.push(mine);
                continue;
            };
            self.wait_not_running(&step.insert_query_id(wal)).await?;
            self.shared.stats.probed();
            present.push(self.count(&probe, "probe a step's last row").await? > 0);
        }
        let targets: Vec<&str> = self.shared.targets.iter().map(String::as_str).collect();
        Ok(notes::per_target(steps, &present, &targets))
    }

    /// Waits until no INSERT with this query id runs on the server (contract 3: a write
    /// still finishing is waited for), at most the query timeout.
    async fn wait_not_running(&mut self, query_id: &str) -> Result<(), SinkError> {
        let deadline = Instant::now() + self.http.query_timeout();
        let sql = notes::running_query(query_id);
        while self.count(&sql, "look for a running insert").await? > 0 {
            if Instant::now() >= deadline {
                let limit = self.http.query_timeout();
                return Err(SinkError::Unavailable(format!("INSERT {query_id} still runs after {limit:?}")));
            }
            tokio::time::sleep(notes::RUNNING_POLL).await;
        }
        Ok(())
    }
}

impl SinkConn for ClickHouseConn {
    async fn cursors(&mut self, wal: &WalIdentity) -> Result<Vec<SinkCursor>, SinkError> {
        let lanes = self.latest_steps(wal, None).await?;
        let mut out = Vec::with_capacity(lanes.len());
        for (lane, steps) in lanes {
            if let Some(position) = self.settle(wal, &steps).await?.and_then(|t| notes::lane_cursor(&t)) {
                out.push(SinkCursor { lane, position });
            }
        }
        Ok(out)
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
        self.retire_lanes(wal, lanes).await
    }

    async fn lease(&mut self, _node: &str) -> Result<LeaseState, SinkError> {
        Ok(LeaseState::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("18.16.1\n"), Some((18, 16)));
        assert_eq!(parse_version("23.8.2.7"), Some((23, 8)));
        assert!(parse_version("18.16.1") >= Some(OLDEST_TESTED));
        assert_eq!(parse_version("dev"), None);
    }

    #[test]
    fn describe_never_shows_the_password() {
        let config = ClickhouseConfig { user: "u".into(), password: "secret".into(), ..Default::default() };
        let sink = ClickHouseSink::new(&config, "http://10.0.0.9:8123", &[], Arc::default()).unwrap();
        assert_eq!(sink.describe(), "clickhouse http://10.0.0.9:8123/psc");
        assert!(ClickHouseSink::new(&config, "10.0.0.9:8123", &[], Arc::default()).is_err());
        let no_rows = ClickhouseConfig { raw_events: false, ..config };
        let refused = ClickHouseSink::new(&no_rows, "http://10.0.0.9:8123", &[], Arc::default());
        assert_eq!(refused.err().map(|e| e.key), Some("clickhouse.raw_events"));
    }
}
