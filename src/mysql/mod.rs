//! The MySQL sink: everything this collector says to MySQL / MariaDB. It owns all SQL text,
//! the schema (migrations), domain resolution and the dead-letter table.
//!
//! ```text
//! sink.rs      MysqlSink / MysqlConn: the crate::sink contract, the method chosen per connect
//! deliver.rs   one transaction per delivery: build, fenced cursor move, rows, commit; errors
//! load_data.rs LOAD DATA LOCAL: the batch as TSV from memory, exact escaping, warnings
//! rollups.rs   rollup_<name> tables (definition in the comment) and their upserts
//! cursors.rs   ingest_cursors: the fenced move, the locking read, retirement
//! rejects.rs   ingest_rejects: dead-letter rows, cut to fit the statement limit
//! sql.rs       event and domain statements built from a sink::Batch
//! literal.rs   SQL literals: quoted strings, X'…' bytes, UTC datetimes
//! dedup.rs     client event ids: IGNORE semantics checked statement by statement, duplicates counted
//! user_agents.rs user_agents rows, classified once per distinct UA, and the cache of stored ones
//! domains.rs   name -> id: a bounded cache shared by the sink's connections
//! lease.rs     the node's delivery lease (GET_LOCK)
//! errors.rs    which failure is Unavailable, InDoubt or Refused
//! db.rs        one connection: timeouts, server facts, rows decoded without panics
//! migrate.rs   the embedded migrations (migrations/*.sql)
//! stats.rs     what /metrics, /stats and /debug/domain-cache show
//! ```
//!
//! Invariants: every network step has a timeout (mysql_async has none); no row read back
//! can panic, whatever its types; the rows of a batch and the move of its lane's cursor
//! commit in one transaction, the cursor move first and fenced; nothing here retries or
//! sleeps (the delivery core does). Assumption, checked at each connect: the server takes
//! statements up to its `@@max_allowed_packet`; statements are cut to it.
pub mod config;
pub mod cursors;
pub mod db;
pub mod dedup;
mod deliver;
pub mod domains;
pub mod errors;
pub mod lease;
pub mod literal;
pub mod load_data;
pub mod migrate;
pub mod rejects;
pub mod rollups;
pub mod sink;
pub mod sql;
pub mod stats;
pub mod user_agents;

pub use db::{Db, DbError};
pub use migrate::{split_statements, MIGRATIONS};
pub use sink::{MysqlConn, MysqlSink};
pub use stats::MysqlStats;

use crate::config::Config;

/// Connects, applies pending migrations and creates (or checks) the tables of the configured
/// rollups; for `player-stat-collector migrate`, and for a start that wants to refuse a
/// changed rollup definition before it serves ([`DbError::RollupChanged`]).
pub fn migrate_blocking(config: &Config) -> Result<Vec<String>, DbError> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(DbError::Runtime)?;
    runtime.block_on(async {
        let mut db = Db::connect(&config.mysql).await?;
        let applied = migrate::migrate(&mut db).await?;
        rollups::ensure_tables(&mut db, &config.rollup).await?;
        Ok(applied)
        // Dropping `db` closes the session in a task bounded by the connect timeout.
    })
}
