//! The driver's IO steps, each a task that reports back with one [`Msg`]: sink calls run as
//! local tasks on the flusher's runtime, WAL reads on its blocking pool (they mmap, pread and
//! decode, and must not stall the sink calls in flight).
//!
//! Every task hands back what it was given (the connection, the batch, the reader), so the
//! driver owns all state between steps and nothing is lost when a step fails.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::stream::{Pending, Route};
use crate::sink::{Batch, LeaseState, Sink, SinkConn, SinkCursor, SinkError};
use crate::wal::identity::{LaneId, WalIdentity};
use crate::wal::quarantine::save_bad_bytes;
use crate::wal::reader::{CoreWalReader, ReadOutcome, ReadStop};
use crate::wal::Position;

/// A finished step.
pub enum Msg<C> {
    Connected { shard: u16, control: bool, result: Result<C, SinkError> },
    Lease { shard: u16, conn: C, result: Result<LeaseState, SinkError> },
    Cursors { shard: u16, conn: C, result: Result<Vec<SinkCursor>, SinkError> },
    Retired { shard: u16, conn: C, lanes: Vec<LaneId>, result: Result<(), SinkError> },
    Delivered { shard: u16, stream: usize, conn: C, pending: Pending, result: Result<(), SinkError> },
    Read(Box<ReadDone>),
}

/// A WAL read, back from the blocking pool.
pub struct ReadDone {
    pub stream: usize,
    pub reader: CoreWalReader,
    pub batch: Batch,
    pub outcome: ReadOutcome,
    /// Records taken, and the time reading and decoding took.
    pub events: u64,
    pub took: Duration,
    /// After a corrupt record: where reading goes on, if its bytes were saved to quarantine.
    pub resume: Option<Result<Position, crate::wal::WalError>>,
}

pub fn connect<S: Sink + 'static>(
    tx: &UnboundedSender<Msg<S::Conn>>,
    sink: &Rc<S>,
    shard: u16,
    control: bool,
) {
    let (tx, sink) = (tx.clone(), sink.clone());
    tokio::task::spawn_local(async move {
        let result = sink.connect().await;
        let _ = tx.send(Msg::Connected { shard, control, result });
    });
}

pub fn lease<C: SinkConn + 'static>(tx: &UnboundedSender<Msg<C>>, mut conn: C, shard: u16, node: String) {
    let tx = tx.clone();
    tokio::task::spawn_local(async move {
        let result = conn.lease(&node).await;
        let _ = tx.send(Msg::Lease { shard, conn, result });
    });
}

pub fn cursors<C: SinkConn + 'static>(
    tx: &UnboundedSender<Msg<C>>,
    mut conn: C,
    shard: u16,
    wal: Rc<WalIdentity>,
) {
    let tx = tx.clone();
    tokio::task::spawn_local(async move {
        let result = conn.cursors(&wal).await;
        let _ = tx.send(Msg::Cursors { shard, conn, result });
    });
}

pub fn retire<C: SinkConn + 'static>(
    tx: &UnboundedSender<Msg<C>>,
    mut conn: C,
    shard: u16,
    wal: Rc<WalIdentity>,
    lanes: Vec<LaneId>,
) {
    let tx = tx.clone();
    tokio::task::spawn_local(async move {
        let result = conn.retire(&wal, &lanes).await;
        let _ = tx.send(Msg::Retired { shard, conn, lanes, result });
    });
}

/// Delivers the batch, or its dead letters when it carries a refusal.
pub fn deliver<C: SinkConn + 'static>(
    tx: &UnboundedSender<Msg<C>>,
    mut conn: C,
    shard: u16,
    stream: usize,
    pending: Pending,
    wal: Rc<WalIdentity>,
) {
    let tx = tx.clone();
    tokio::task::spawn_local(async move {
        let result = match &pending.reject {
            None => conn.deliver(&wal, &pending.batch).await,
            Some((code, message)) => conn.reject(&wal, &pending.batch, *code, message).await,
        };
        if result.is_ok() {
            // `PSC_FAILPOINT=crash_after_commit[:after=N]`: abort between a commit and its
            // acknowledgement reaching the core (and so before commit.meta).
            crate::failpoint::crash("crash_after_commit");
        }
        let _ = tx.send(Msg::Delivered { shard, stream, conn, pending, result });
    });
}

/// What a WAL read needs besides the reader and the batch.
pub struct ReadJob {
    pub stream: usize,
    pub until: Position,
    pub max: usize,
    pub route: Route,
    pub wal_dir: PathBuf,
}

/// Reads the stream's lane from the batch's end into the batch, on the blocking pool; a
/// corrupt record's bytes are saved to quarantine there too.
pub fn read<C: 'static>(tx: &UnboundedSender<Msg<C>>, reader: CoreWalReader, batch: Batch, job: ReadJob) {
    let tx = tx.clone();
    tokio::task::spawn_local(async move {
        let stream = job.stream;
        match tokio::task::spawn_blocking(move || read_blocking(reader, batch, job)).await {
            Ok(done) => {
                let _ = tx.send(Msg::Read(Box::new(done)));
            }
            // Only a panic in the reader gets here; the stream cannot go on without its batch.
            Err(e) => tracing::error!(stream, error = %e, "WAL read task failed"),
        }
    });
}

fn read_blocking(mut reader: CoreWalReader, mut batch: Batch, job: ReadJob) -> ReadDone {
    let started = Instant::now();
    let (shard, mut events) = (batch.shard(), 0u64);
    let outcome = reader.read(batch.to(), job.until, job.max, |ev, ctx, raw, end| {
        job.route.push(&mut batch, shard, ev, ctx, raw, end);
        events += 1;
    });
    if outcome.reached > batch.to() {
        batch.advance_to(outcome.reached);
    }
    let resume = match &outcome.stop {
        Some(ReadStop::Corrupt { at, resume, .. }) => {
            let core = batch.lane().core;
            Some(save_bad_bytes(&job.wal_dir, core, at.segment, at.offset..resume.offset).map(|_| *resume))
        }
        _ => None,
    };
    ReadDone { stream: job.stream, reader, batch, outcome, events, took: started.elapsed(), resume }
}
