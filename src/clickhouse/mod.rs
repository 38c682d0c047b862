//! The ClickHouse sink: the `crate::sink` contract on ClickHouse's HTTP interface, exactly
//! once without transactions, one [`ClickHouseSink`] per shard.
//!
//! ```text
//! sink.rs     ClickHouseSink / ClickHouseConn: connect (version, schema), the requests, settle
//! deliver.rs  a delivery: the fence, then plan's requests sent; rejects; retire; pruning
//! plan.rs     what a delivery writes, in order (pure; with its model test)
//! notes.rs    ingest_cursors: step rows, the latest-step query, probes, how a cursor is decided
//! rows.rs     a batch as Native blocks (events, ingest_rejects); runs of one partition each
//! rollups.rs  the rollup tables (SummingMergeTree), their definition check, their blocks
//! native.rs   the Native format encoder, checked against the column specs
//! schema.rs   the tables: columns, engines, sort keys and why
//! errors.rs   which failure is Unavailable, InDoubt or Refused
//! http.rs     one HTTP/1.1 link (hyper), timeouts, whether a request can have been sent
//! config.rs   the [clickhouse] keys
//! stats.rs    counters for /metrics and /stats
//! ```
//!
//! ## Why every acknowledged event lands exactly once
//! Every `events` row carries its WAL position: the WAL id, the lane (core, incarnation) and
//! the position just past its record. A delivery of a lane is a sequence of *steps*, each
//! written to `ingest_cursors` before its rows, with a `seq` one above the lane's previous
//! step, its cursor move `from → to`, and its last row (the *probe*). Then:
//!
//! 1. **A step's rows commit all or nothing.** They are one INSERT of one Native block whose
//!    rows all fall into one partition (one month; a batch that straddles a month boundary
//!    is cut into runs, each its own step). MergeTree writes such a block as one part, made
//!    visible by one rename: all rows or none. The block is Native, not TSV or RowBinary,
//!    because the server refuses a Native body that ends early, while a row format cut at a
//!    row boundary (a connection closed mid-request) is inserted as the prefix it is
//!    (`native`; both tried on 18.16). `max_insert_block_size` does not cut Native blocks.
//! 2. **So the probe tells whether a step committed.** The step is written before its rows,
//!    so if the rows are in, the step is there too; the probe row is in iff the block is.
//! 3. **A lane's cursor is decided by its highest step** (`notes::per_target`, `notes::lane_cursor`): `to` if its rows
//!    are in (or it had none: `Advance`), else `from`. By induction, `from` is right: a step
//!    is only written after the fence (4) found the lane's cursor at `from`.
//! 4. **The fence** (contract 2): every delivery first settles the lane's cursor this way and
//!    writes nothing unless it is `batch.from()`. The delivery core resends from the cursor
//!    it reads, so rows already in are never sent again.
//! 5. **In doubt** (a lost answer, a timeout, a crash of either side): the next cursor read
//!    settles the highest step. Before probing, it waits until no INSERT with the step's
//!    query id runs (`system.processes`; contract 3), so a block still being written is
//!    counted once it is done, not missed and resent.
//!
//! 6. **Rollups** (`rollups`) are further targets of the same steps: each step names its
//!    table, a rollup block is one part carrying a marker row that is its probe, and each
//!    table's cursor is settled on its own (`notes`). A delivery writes every table's first
//!    step before any block, so after a crash each table resumes from its own cursor, and the
//!    lane from the lowest: rows a table already has are filtered out of the resend.
//!
//! No row is ever inserted twice, so `SELECT count() FROM events` is exact without `FINAL`
//! and without waiting for merges: the table is a plain MergeTree, nothing deduplicates. The
//! same holds for `sum(events)` of a rollup's SummingMergeTree.
//!
//! **Assumptions**, each stated where it is relied on:
//! - One process delivers a WAL's lanes at a time (the WAL directory's lock) and one batch
//!   of a lane is in flight at a time (the delivery core). The fence and the step write are
//!   two requests, not one atomic check, so two writers of one lane could both pass it.
//! - A request the server had fully read, but not yet started, when the client gave up, is
//!   the one gap the process list cannot see. It is made as small as the server allows:
//!   sockets close with a reset (`SO_LINGER` 0: unread bytes are discarded, the request
//!   never runs); the server reads a body (up to its first 1 MiB) before it registers the
//!   query, so a request it has read is registered microseconds later; and a resend of the
//!   same rows carries the same query id, which the server refuses to run twice at once
//!   (code 216). What remains is a server thread stalled between reading a request and
//!   registering it for longer than a reconnect, a settle and a resend take.
//! - Nothing but this sink writes `events` rows with this WAL id, and nobody deletes them
//!   while the WAL still holds them.
//!
//! Retiring a lane writes a `Retired` step; no cursor is returned for it afterwards.
//! There is no delivery lease (`LeaseState::Unsupported`): fencing by positions is all
//! there is, as the `crate::sink` contract allows.

pub mod config;
mod deliver;
pub mod errors;
pub mod http;
pub mod native;
pub mod notes;
mod plan;
pub mod rollups;
pub mod rows;
pub mod schema;
pub mod sink;
pub mod stats;

pub use config::ClickhouseConfig;
pub use sink::{ClickHouseConn, ClickHouseSink};
pub use stats::{ClickhouseSnapshot, ClickhouseStats};

use crate::config::Config;
use crate::sink::{Sink, SinkError};

/// Creates the database and tables on every shard; for `player-stat-collector migrate`.
/// Returns what it did, one line per shard.
pub fn migrate_blocking(config: &Config) -> Result<Vec<String>, SinkError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SinkError::Unavailable(format!("cannot start a runtime: {e}")))?;
    runtime.block_on(async {
        let mut done = Vec::new();
        for url in config.clickhouse.shard_urls() {
            let sink = ClickHouseSink::new(&config.clickhouse, &url, &config.rollup, Default::default())
                .map_err(|e| SinkError::Unavailable(format!("{}: {}", e.key, e.message)))?;
            drop(sink.connect().await?);
            done.push(format!("{}: schema is up to date", sink.describe()));
        }
        Ok(done)
    })
}
