//! The flusher's MySQL connection: connect and run statements under timeouts, read cursors,
//! apply the embedded migrations.
//!
//! mysql_async has no timeouts of its own, so every network step is wrapped in
//! `tokio::time::timeout`. After any error the connection's state is unknown: callers drop
//! the [`Db`] and reconnect; nothing here retries.
//!
//! Sessions run in UTC with a fixed `sql_mode` that keeps backslash escapes on, which the
//! literal quoting in `crate::flush::batch` relies on.
pub mod config;
pub mod domains;

use std::future::Future;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};

use self::config::MysqlConfig;
use crate::config::Config;
use crate::wal::Position;

/// The embedded migrations, applied in order; the name is recorded in `schema_migrations`.
pub const MIGRATIONS: &[(&str, &str)] = &[
    ("001_init", include_str!("../../migrations/001_init.sql")),
    ("002_client_context", include_str!("../../migrations/002_client_context.sql")),
];

const SESSION_SETUP: &str = "SET time_zone = '+00:00', sql_mode = \
    'STRICT_TRANS_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'";

/// Why a MySQL step failed.
#[derive(Debug, thiserror::Error)]
pub enum MysqlError {
    #[error("mysql.url is empty")]
    NoUrl,
    #[error("bad mysql.url: {0}")]
    Url(#[from] mysql_async::UrlError),
    #[error("{what} timed out after {ms} ms")]
    Timeout { what: &'static str, ms: u64 },
    #[error("{what}: {source}")]
    Driver { what: &'static str, source: mysql_async::Error },
    #[error("migration {name}: {source}")]
    Migration { name: &'static str, source: Box<MysqlError> },
    #[error("cannot start a runtime for the migration: {0}")]
    Runtime(std::io::Error),
    #[error("domain `{0}` not found after inserting it")]
    DomainMissing(String),
}

/// One open connection with the configured timeouts.
pub struct Db {
    conn: Conn,
    query_timeout_ms: u64,
}

impl Db {
    /// Connects within `connect_timeout_ms` and sets up the session.
    pub async fn connect(config: &MysqlConfig) -> Result<Db, MysqlError> {
        if config.url.is_empty() {
            return Err(MysqlError::NoUrl);
        }
        let opts = Opts::from_url(&config.url)?;
        let conn = bounded("connect", config.connect_timeout_ms, Conn::new(opts)).await?;
        let mut db = Db { conn, query_timeout_ms: config.query_timeout_ms };
        db.execute("session setup", SESSION_SETUP.as_bytes()).await?;
        Ok(db)
    }

    /// Runs one statement, discarding any result.
    pub async fn execute(&mut self, what: &'static str, sql: &[u8]) -> Result<(), MysqlError> {
        bounded(what, self.query_timeout_ms, self.conn.query_drop(sql)).await
    }

    /// Runs one query and collects its rows.
    pub async fn query<T>(&mut self, what: &'static str, sql: &[u8]) -> Result<Vec<T>, MysqlError>
    where
        T: mysql_async::prelude::FromRow + Send + 'static,
    {
        bounded(what, self.query_timeout_ms, self.conn.query(sql)).await
    }

    /// This node's cursors as (core, position).
    ///
    /// A locking read: it waits for any transaction still holding these rows (a COMMIT of a
    /// connection we gave up on may still be running on the server), so what it returns is
    /// the final outcome of that transaction, never a snapshot from before it.
    pub async fn read_cursors(&mut self, node: &str) -> Result<Vec<(usize, Position)>, MysqlError> {
        let mut sql = b"SELECT core, segment, `offset` FROM ingest_cursors WHERE node = ".to_vec();
        crate::flush::batch::push_quoted(node, &mut sql);
        sql.extend_from_slice(b" FOR UPDATE");
        // Inside a transaction: a locking read under autocommit is not guaranteed to lock.
        self.execute("start transaction", b"START TRANSACTION").await?;
        let rows: Vec<(u16, u32, u64)> = self.query("read ingest_cursors", &sql).await?;
        self.execute("commit", b"COMMIT").await?;
        Ok(rows.into_iter().map(|(core, seg, off)| (usize::from(core), Position::new(seg, off))).collect())
    }

    /// Applies the migrations not yet recorded in `schema_migrations`; returns their names.
    pub async fn migrate(&mut self) -> Result<Vec<String>, MysqlError> {
        let mut applied = Vec::new();
        for &(name, text) in MIGRATIONS {
            self.apply_migration(name, text)
                .await
                .map_err(|e| MysqlError::Migration { name, source: Box::new(e) })?
                .then(|| applied.push(name.to_owned()));
        }
        Ok(applied)
    }

    /// Returns whether the migration was applied now (false: it already was).
    async fn apply_migration(&mut self, name: &str, text: &str) -> Result<bool, MysqlError> {
        // The table may not exist before 001 ran; creating it first is idempotent.
        let first = split_statements(text).next().unwrap_or_default();
        if first.contains("schema_migrations") {
            self.execute("create schema_migrations", first.as_bytes()).await?;
        }
        let mut check = b"SELECT COUNT(*) FROM schema_migrations WHERE version = ".to_vec();
        crate::flush::batch::push_quoted(name, &mut check);
        let done: Vec<u64> = self.query("read schema_migrations", &check).await?;
        if done.first().copied().unwrap_or(0) > 0 {
            return Ok(false);
        }
        for statement in split_statements(text) {
            self.execute("migration statement", statement.as_bytes()).await?;
        }
        let mut record = b"INSERT IGNORE INTO schema_migrations (version) VALUES (".to_vec();
        crate::flush::batch::push_quoted(name, &mut record);
        record.push(b')');
        self.execute("record migration", &record).await?;
        Ok(true)
    }
}

/// Runs `fut` with a timeout of `ms`, naming the step in errors.
async fn bounded<T>(
    what: &'static str,
    ms: u64,
    fut: impl Future<Output = mysql_async::Result<T>>,
) -> Result<T, MysqlError> {
    match tokio::time::timeout(Duration::from_millis(ms), fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(MysqlError::Driver { what, source }),
        Err(_) => Err(MysqlError::Timeout { what, ms }),
    }
}

/// Splits a migration file into statements: whole-line `--` comments are dropped and a
/// statement ends at a line ending in `;` (the `;` is removed).
pub fn split_statements(text: &str) -> impl Iterator<Item = String> + '_ {
    let mut lines = text.lines().filter(|l| !l.trim_start().starts_with("--")).peekable();
    std::iter::from_fn(move || {
        let mut statement = String::new();
        for line in lines.by_ref() {
            let trimmed = line.trim_end();
            if let Some(last) = trimmed.strip_suffix(';') {
                statement.push_str(last);
                return Some(statement);
            }
            statement.push_str(trimmed);
            statement.push('\n');
        }
        (!statement.trim().is_empty()).then_some(statement)
    })
}

/// Connects and applies pending migrations; for `player-stat-collector migrate`.
pub fn migrate_blocking(config: &Config) -> Result<Vec<String>, MysqlError> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(MysqlError::Runtime)?;
    runtime.block_on(async {
        let mut db = Db::connect(&config.mysql).await?;
        let applied = db.migrate().await?;
        // Best effort: the server closes the session anyway when the socket goes.
        let _ = db.conn.disconnect().await;
        Ok(applied)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_migration_splits_into_its_tables() {
        let statements: Vec<String> = split_statements(MIGRATIONS[0].1).collect();
        assert_eq!(statements.len(), 4, "{statements:#?}");
        for (s, table) in statements.iter().zip(["schema_migrations", "domains", "events", "ingest_cursors"])
        {
            assert!(s.trim_start().starts_with(&format!("CREATE TABLE IF NOT EXISTS {table} ")), "{s}");
            assert!(!s.contains("--") && !s.contains(';'), "{s}");
            assert!(s.contains("ENGINE=InnoDB"));
        }
    }

    #[test]
    fn splitter_handles_trailing_statement_without_semicolon() {
        let v: Vec<String> = split_statements("-- c;\nSELECT 1;\nSELECT\n 2").collect();
        assert_eq!(v, vec!["SELECT 1".to_owned(), "SELECT\n 2\n".to_owned()]);
    }
}
