//! One MySQL connection with a timeout on every step, the server facts read at connect, and
//! rows decoded by hand.
//!
//! - mysql_async has no timeouts of its own: every network step goes through [`bounded`].
//! - mysql_async's typed `query::<T>()` panics when a value does not convert; here rows come
//!   back as `mysql_async::Row` (which never fails to build) and each cell is decoded with
//!   [`cell`], so a column of a surprising type or a NULL is a [`DbError::Decode`], not a panic.
//! - The session runs in UTC with a fixed `sql_mode`: strict (a value that does not fit is an
//!   error, never silently cut) and with backslash escapes on, which the literal quoting in
//!   [`super::sql`] relies on; its transactions are READ COMMITTED (see `ISOLATION`).
//! - Dropping a [`Db`] closes its socket in a spawned task bounded by the connect timeout, so
//!   the server rolls back whatever transaction it had open at once; mysql_async's own drop
//!   would clean up for a pool without any timeout.
//!
//! After any error the connection's state is unknown: callers drop the `Db`; nothing here
//! retries.

use std::future::Future;
use std::time::Duration;

use mysql_async::prelude::{FromValue, Queryable};
use mysql_async::{from_value_opt, Conn, Opts, OptsBuilder, Row, Value};

use super::config::MysqlConfig;

/// UTC, strict, backslash escapes on.
const SESSION_SETUP: &str = "SET time_zone = '+00:00', sql_mode = \
    'STRICT_TRANS_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'";
/// READ COMMITTED so that the only locks a delivery takes
/// are on the rows it touches: no gap locks, so two connections creating the same lane's
/// first cursor row queue on its key (the second gets a duplicate key: a fence) instead of
/// deadlocking on a gap, and parallel lanes' inserts never wait on each other's gaps.
const ISOLATION: &str = "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED";

/// Why a MySQL step failed. `what` names the step, for logs.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("mysql.url is empty")]
    NoUrl,
    #[error("bad mysql.url: {0}")]
    Url(#[from] mysql_async::UrlError),
    #[error("{what} timed out after {ms} ms")]
    Timeout { what: &'static str, ms: u64 },
    #[error("{what}: {source}")]
    Driver { what: &'static str, source: mysql_async::Error },
    #[error("{what}: column {column} holds {value:?}, not the {expected} expected")]
    Decode { what: &'static str, column: usize, value: String, expected: &'static str },
    #[error("migration {name}: {source}")]
    Migration { name: &'static str, source: Box<DbError> },
    #[error("cannot start a runtime: {0}")]
    Runtime(std::io::Error),
    #[error("domain `{0}` not found after inserting it")]
    DomainMissing(String),
    #[error(transparent)]
    TooLarge(#[from] super::sql::TooLarge),
    #[error(
        "table {table} holds counts of another rollup definition (stored `{stored}`, configured \
         `{configured}`); give the changed rollup a new name, or rename or drop the table"
    )]
    RollupChanged { table: String, stored: String, configured: String },
}

impl DbError {
    /// The server's error number, if the server answered with an error.
    pub fn server_code(&self) -> Option<u16> {
        match self {
            DbError::Driver { source: mysql_async::Error::Server(e), .. } => Some(e.code),
            DbError::Migration { source, .. } => source.server_code(),
            _ => None,
        }
    }
}

/// What the server said about itself at connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerFacts {
    /// `@@max_allowed_packet`: the largest packet (statement) the server takes, bytes.
    pub max_allowed_packet: usize,
    /// `@@local_infile`: whether `LOAD DATA LOCAL` is allowed.
    pub local_infile: bool,
    /// `CONNECTION_ID()`, as `KILL` and `information_schema.processlist` name it.
    pub connection_id: u64,
}

/// One open connection with the configured timeouts.
pub struct Db {
    /// `None` only after [`Drop`] took it.
    conn: Option<Conn>,
    query_timeout_ms: u64,
    close_timeout_ms: u64,
    facts: ServerFacts,
}

impl Db {
    /// Connects within `connect_timeout_ms`, sets up the session and reads [`ServerFacts`].
    pub async fn connect(config: &MysqlConfig) -> Result<Db, DbError> {
        if config.url.is_empty() {
            return Err(DbError::NoUrl);
        }
        // Found rows, not changed rows: a fenced cursor UPDATE that moves nothing (an empty
        // batch) still reports its one matched row.
        let opts = Opts::from(OptsBuilder::from_opts(Opts::from_url(&config.url)?).client_found_rows(true));
        let conn = bounded("connect", config.connect_timeout_ms, Conn::new(opts)).await?;
        let facts = ServerFacts { max_allowed_packet: 0, local_infile: false, connection_id: 0 };
        let mut db = Db {
            conn: Some(conn),
            query_timeout_ms: config.query_timeout_ms,
            close_timeout_ms: config.connect_timeout_ms,
            facts,
        };
        db.execute("session setup", SESSION_SETUP.as_bytes()).await?;
        db.execute("session isolation", ISOLATION.as_bytes()).await?;
        db.facts = db.read_facts().await?;
        Ok(db)
    }

    async fn read_facts(&mut self) -> Result<ServerFacts, DbError> {
        const WHAT: &str = "read server settings";
        let sql = b"SELECT @@max_allowed_packet, @@local_infile, CONNECTION_ID()";
        let row = self.query_one(WHAT, sql).await?;
        Ok(ServerFacts {
            max_allowed_packet: cell::<u64>(WHAT, &row, 0)? as usize,
            local_infile: cell::<u64>(WHAT, &row, 1)? != 0,
            connection_id: cell(WHAT, &row, 2)?,
        })
    }

    pub fn facts(&self) -> ServerFacts {
        self.facts
    }

    fn conn(&mut self) -> &mut Conn {
        // Only `Drop` takes the connection out.
        self.conn.as_mut().unwrap_or_else(|| unreachable!("Db used after drop"))
    }

    /// Runs one statement, discarding any result; returns the rows it matched.
    pub async fn execute(&mut self, what: &'static str, sql: &[u8]) -> Result<u64, DbError> {
        let ms = self.query_timeout_ms;
        let conn = self.conn();
        bounded(what, ms, conn.query_drop(sql)).await?;
        Ok(conn.affected_rows())
    }

    /// Warnings of the last statement (the server's OK packet).
    pub fn warnings(&mut self) -> u16 {
        self.conn().get_warnings()
    }

    /// Runs one query and returns its rows undecoded (see [`cell`]).
    pub async fn query(&mut self, what: &'static str, sql: &[u8]) -> Result<Vec<Row>, DbError> {
        let ms = self.query_timeout_ms;
        bounded(what, ms, self.conn().query::<Row, _>(sql)).await
    }

    /// Runs a query that returns exactly one row.
    pub async fn query_one(&mut self, what: &'static str, sql: &[u8]) -> Result<Row, DbError> {
        let mut rows = self.query(what, sql).await?;
        match (rows.pop(), rows.is_empty()) {
            (Some(row), true) => Ok(row),
            (row, _) => Err(DbError::Decode {
                what,
                column: 0,
                value: format!("{} rows", rows.len() + usize::from(row.is_some())),
                expected: "exactly one row",
            }),
        }
    }

    /// The connection, for steps this module does not wrap (LOAD DATA's infile handler).
    pub fn raw(&mut self) -> &mut Conn {
        self.conn()
    }

    pub fn query_timeout_ms(&self) -> u64 {
        self.query_timeout_ms
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let ms = self.close_timeout_ms;
        // COM_QUIT, then the socket closes: the server rolls back an open transaction. If
        // the server does not answer in time the task ends and the socket is closed anyway.
        runtime.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_millis(ms), conn.disconnect()).await;
        });
    }
}

/// Decodes cell `column` of `row` as `T`; NULL, a missing column or a value of another type
/// is a [`DbError::Decode`] naming the step.
pub fn cell<T: FromValue>(what: &'static str, row: &Row, column: usize) -> Result<T, DbError> {
    match row.as_ref(column) {
        Some(v) => decode(what, column, v),
        None => Err(DbError::Decode {
            what,
            column,
            value: format!("a row of {} columns", row.len()),
            expected: std::any::type_name::<T>(),
        }),
    }
}

fn decode<T: FromValue>(what: &'static str, column: usize, v: &Value) -> Result<T, DbError> {
    from_value_opt::<T>(v.clone()).map_err(|e| DbError::Decode {
        what,
        column,
        value: format!("{:?}", e.0),
        expected: std::any::type_name::<T>(),
    })
}

/// Runs `fut` with a timeout of `ms`, naming the step in errors.
pub async fn bounded<T>(
    what: &'static str,
    ms: u64,
    fut: impl Future<Output = mysql_async::Result<T>>,
) -> Result<T, DbError> {
    match tokio::time::timeout(Duration::from_millis(ms), fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(DbError::Driver { what, source }),
        Err(_) => Err(DbError::Timeout { what, ms }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_decode_or_say_why_not() {
        assert_eq!(decode::<u64>("t", 0, &Value::UInt(7)).unwrap(), 7);
        assert_eq!(decode::<u64>("t", 0, &Value::Bytes(b"7".to_vec())).unwrap(), 7, "text protocol");
        assert_eq!(decode::<Option<u64>>("t", 1, &Value::NULL).unwrap(), None);
        let null = decode::<u64>("t", 1, &Value::NULL).unwrap_err().to_string();
        assert!(null.contains("column 1") && null.contains("Null"), "{null}");
        assert!(decode::<u64>("t", 2, &Value::Bytes(b"x".to_vec())).is_err(), "text is not a number");
        assert!(decode::<u32>("t", 2, &Value::Int(-1)).is_err(), "negative is not unsigned");
        assert!(decode::<String>("t", 2, &Value::Bytes(vec![0xff])).is_err(), "not UTF-8");
    }
}
