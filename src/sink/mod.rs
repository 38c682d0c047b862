//! The seam between the delivery core and a database: what a sink must do so that every
//! acknowledged event lands exactly once.
//!
//! ## Streams
//! The flusher delivers *streams*: one lane (a core directory of this WAL, see
//! `crate::wal::identity`) × one shard. Each stream has its own cursor in its shard, its own
//! batch and its own transaction; several streams' batches may be in flight at once, on
//! different connections. With one shard, a stream is a lane.
//!
//! ## What a sink promises (the contract the delivery core relies on)
//! 1. **Atomic delivery.** [`SinkConn::deliver`] makes the batch's rows and the move of the
//!    lane's cursor from [`Batch::from`] to [`Batch::to`] durable together, or neither. A sink
//!    without transactions meets this by carrying the position in every row and inserting a
//!    batch as one atomic block (see `crate::clickhouse`).
//! 2. **Fenced cursors.** If the sink holds a cursor for the lane and it is not `batch.from`,
//!    nothing is written and the answer is [`SinkError::Fenced`]: another process delivered
//!    this lane, or the core's view is stale. No cursor for the lane matches any `from`.
//! 3. **Truthful cursors.** [`SinkConn::cursors`] returns, per lane of the given WAL, the
//!    cursor of everything committed, read so that a transaction still finishing on the server
//!    is waited for (a locking read), never a snapshot from before it. Cursors of other WAL ids
//!    are never returned.
//! 4. **Prefixes only.** A sink without transactions may commit a batch in several atomic
//!    blocks (a batch spanning two partitions); then a failure may leave a prefix of the rows
//!    committed, and `cursors` must report exactly the end of that prefix. The core drops the
//!    committed prefix and resends the rest.
//! 5. **Honest errors.** Every failure is sorted into one [`SinkError`] kind; the core's
//!    policy depends on it: `Unavailable` is retried with back-off, `InDoubt` is settled by
//!    reading the cursors before anything is resent, `Refused` is split until the offending
//!    rows are found and handed to [`SinkConn::reject`], `Fenced` re-reads the cursors.
//! 6. **No panics on surprises.** A row of an unexpected type, a closed socket or a server
//!    error is an error value, never a panic.
//!
//! Nothing here retries, sleeps or keeps state about batches: that is the core's job.

pub mod batch;
pub mod config;
pub mod shard;

use std::future::Future;

pub use batch::{Batch, Row};

use crate::wal::identity::{LaneId, WalIdentity};
use crate::wal::Position;

/// Why a sink step failed, sorted by what the delivery core must do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Nothing was committed: connect failed, the connection was lost before the commit was
    /// sent, a timeout, a deadlock or lock wait. Retry the same batch after back-off.
    #[error("sink unavailable: {0}")]
    Unavailable(String),
    /// The commit was sent and its outcome is unknown. Read the cursors before resending.
    #[error("commit outcome unknown: {0}")]
    InDoubt(String),
    /// The sink will never take this batch as it is (a statement over the server's packet
    /// limit, a row the schema refuses). Nothing was committed. `code` is the server's error
    /// number (0 if it has none). `every_row`: no part of it would be taken either (the
    /// table's schema does not fit our rows), so the core rejects the whole batch at once
    /// instead of bisecting it down to single rows.
    #[error("refused by the sink (code {code}): {message}")]
    Refused { code: u32, message: String, every_row: bool },
    /// The lane's cursor in the sink is `found`, not the batch's `expected` start. Nothing
    /// was committed.
    #[error("cursor of {lane} is at {found:?} in the sink, the batch starts at {expected:?}")]
    Fenced { lane: LaneId, expected: Position, found: Position },
}

/// A lane's committed cursor as the sink holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkCursor {
    pub lane: LaneId,
    pub position: Position,
}

/// Who may deliver for a node id (`SinkConn::lease`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// This connection holds the node's lease.
    Held,
    /// Another live process holds it; `holder` says who, for the log and `/readyz`.
    HeldElsewhere { holder: String },
    /// The sink has no lease (ClickHouse); fencing by positions is all there is.
    Unsupported,
}

/// One database (one shard): a factory of connections.
///
/// The flusher runs on one current-thread runtime, so no future here needs to be `Send`.
pub trait Sink {
    type Conn: SinkConn;

    /// For logs and `/stats`: kind and address, never a password.
    fn describe(&self) -> String;

    /// Opens a connection. The first successful one of a process also brings the schema up to
    /// date (migrations, tables of configured rollups).
    fn connect(&self) -> impl Future<Output = Result<Self::Conn, SinkError>>;
}

/// One open connection. After any error its state is unknown: the caller drops it.
pub trait SinkConn {
    /// The committed cursors of `wal`'s lanes (contract 3).
    fn cursors(&mut self, wal: &WalIdentity) -> impl Future<Output = Result<Vec<SinkCursor>, SinkError>>;

    /// Commits the batch's rows and its cursor move atomically (contracts 1 and 2).
    fn deliver(&mut self, wal: &WalIdentity, batch: &Batch) -> impl Future<Output = Result<(), SinkError>>;

    /// Commits the batch's rows as dead letters (raw WAL line, `code`, `message`) and its
    /// cursor move, atomically: the refused rows cost their lane nothing more.
    fn reject(
        &mut self,
        wal: &WalIdentity,
        batch: &Batch,
        code: u32,
        message: &str,
    ) -> impl Future<Output = Result<(), SinkError>>;

    /// Deletes the cursors of lanes that no longer exist (drained and compacted away).
    fn retire(&mut self, wal: &WalIdentity, lanes: &[LaneId]) -> impl Future<Output = Result<(), SinkError>>;

    /// Takes the delivery lease of `node` on this connection, or confirms it still holds it.
    /// A lease lives as long as the connection.
    fn lease(&mut self, node: &str) -> impl Future<Output = Result<LeaseState, SinkError>>;
}
