//! One core: a pinned OS thread running its own monoio runtime with its own SO_REUSEPORT
//! listener, its own WAL segment writer and its own counters. Nothing here is shared with
//! another core except through atomics that only this core writes.
//!
//! Tasks on a core:
//! - the accept loop, spawning one task per connection (`http::conn::serve`);
//! - the WAL writer: takes the open tick, writes it with one io_uring write, publishes the new
//!   end of the WAL, offers the chunk to the flusher's queue, completes the tick's ticket;
//! - housekeeping (every 100 ms): heartbeat for /healthz, and noticing the shutdown flag.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::net::TcpListener;

use crate::config::{Config, SyncPolicy};
use crate::http::conn::{self, ConnContext};
use crate::http::request;
use crate::ingest::EventAllowlist;
use crate::metrics::{bump, CoreCounters};
use crate::observe::Observer;
use crate::queue::{CoreProgress, Offer, QueueSender, WalChunk};
use crate::wal::group::{GroupCommit, TickOutcome};
use crate::wal::writer::SegmentWriter;
use crate::wal::Position;

const HOUSEKEEPING_PERIOD: Duration = Duration::from_millis(100);

/// Everything a core thread needs, built by the server before the thread starts.
pub struct CoreSetup {
    pub core: u16,
    pub cpu: Option<usize>,
    pub listener: std::net::TcpListener,
    pub core_dir: PathBuf,
    pub tail: Position,
    pub config: Config,
    pub counters: Arc<CoreCounters>,
    pub progress: Arc<CoreProgress>,
    pub queue: QueueSender,
    pub observer: Arc<Observer>,
    /// Set by the server to start the drain.
    pub shutdown: Arc<AtomicBool>,
}

/// Why a core could not start.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("core {core}: cannot build the io runtime: {source}")]
    Runtime { core: u16, source: std::io::Error },
    #[error("core {core}: listener: {source}")]
    Listener { core: u16, source: std::io::Error },
    #[error("core {core}: WAL: {source}")]
    Wal { core: u16, source: crate::wal::WalError },
}

/// Thread body: pin, build the runtime, serve until drained.
pub fn run_core(setup: CoreSetup) -> Result<(), CoreError> {
    let core = setup.core;
    if let Some(cpu) = setup.cpu {
        if let Err(err) = super::cpus::pin_current_thread(cpu) {
            tracing::warn!(core, cpu, %err, "cannot pin core thread; running unpinned");
        }
    }
    let entries = setup.config.server.uring_entries;
    let mut runtime = build_runtime(entries).map_err(|source| CoreError::Runtime { core, source })?;
    runtime.block_on(serve_core(setup))
}

type CoreRuntime = monoio::FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
>;

/// io_uring with COOP_TASKRUN | TASKRUN_FLAG where the kernel has them (measured here: a bare
/// 204 server went from ~134k to ~210k req/s), plain io_uring where it does not, and epoll
/// where io_uring is missing altogether (with a warning: file writes then block the core).
fn build_runtime(entries: u32) -> std::io::Result<CoreRuntime> {
    if !monoio::utils::detect_uring() {
        tracing::warn!("io_uring is not available: falling back to epoll; WAL writes will block the core");
    }
    let mut coop = io_uring::IoUring::builder();
    coop.setup_coop_taskrun().setup_taskrun_flag();
    let with_flags = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .with_entries(entries)
        .uring_builder(coop)
        .enable_timer()
        .build();
    match with_flags {
        Ok(rt) => Ok(rt),
        Err(err) => {
            tracing::info!(%err, "io_uring COOP_TASKRUN not supported; using default setup");
            monoio::RuntimeBuilder::<monoio::FusionDriver>::new().with_entries(entries).enable_timer().build()
        }
    }
}

/// Local wake-up for the accept loop when the drain starts.
#[derive(Default)]
struct DrainSignal {
    started: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl DrainSignal {
    fn start(&self) {
        self.started.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    async fn wait(&self) {
        poll_fn(|cx| {
            if self.started.get() {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

async fn serve_core(setup: CoreSetup) -> Result<(), CoreError> {
    let core = setup.core;
    let cfg = &setup.config;
    let listener =
        TcpListener::from_std(setup.listener).map_err(|source| CoreError::Listener { core, source })?;
    let writer = SegmentWriter::open(&setup.core_dir, setup.tail, cfg.wal.segment_bytes, cfg.wal.sync)
        .await
        .map_err(|source| CoreError::Wal { core, source })?;
    let ctx = Rc::new(ConnContext {
        limits: request::Limits::from(&cfg.http),
        idle_timeout: Duration::from_millis(cfg.http.idle_timeout_ms),
        max_pipelined: cfg.http.max_pipelined_requests,
        allow: EventAllowlist::new(&cfg.ingest.events),
        group: GroupCommit::new(cfg.wal.write_buffer_bytes),
        counters: setup.counters.clone(),
        observer: setup.observer.clone(),
        draining: Cell::new(false),
        dialects: crate::http::dialect::Dialects::from_config(cfg),
    });
    let writer_task = monoio::spawn(write_ticks(WriterTask {
        core,
        ctx: ctx.clone(),
        writer,
        progress: setup.progress.clone(),
        queue: setup.queue,
        sync: cfg.wal.sync,
        sync_interval: Duration::from_millis(cfg.wal.sync_interval_ms.max(1)),
        tick_bytes: cfg.wal.write_buffer_bytes,
    }));
    let drain = Rc::new(DrainSignal::default());
    monoio::spawn(housekeeping(ctx.clone(), drain.clone(), setup.shutdown.clone()));
    accept_until_drain(&listener, &ctx, &drain, cfg.http.max_connections_per_core).await;
    drop(listener); // stop taking connections: new ones go to the other nodes
    wait_for_connections(&ctx, Duration::from_millis(cfg.server.shutdown_timeout_ms / 2)).await;
    ctx.group.close();
    writer_task.await;
    tracing::debug!(core, "core drained");
    Ok(())
}

async fn accept_until_drain(
    listener: &TcpListener,
    ctx: &Rc<ConnContext>,
    drain: &DrainSignal,
    max_conns: usize,
) {
    loop {
        let accepted = monoio::select! {
            accepted = listener.accept() => accepted,
            _ = drain.wait() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(%err, "accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let open = &ctx.counters.connections_open;
        if open.load(Ordering::Relaxed) as usize >= max_conns {
            ctx.counters.count_limit_hit("connections");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        bump(&ctx.counters.connections_accepted, 1);
        bump(open, 1);
        let ctx = ctx.clone();
        monoio::spawn(async move {
            conn::serve(stream, peer, ctx.clone()).await;
            ctx.counters.connections_open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn wait_for_connections(ctx: &ConnContext, grace: Duration) {
    let deadline = Instant::now() + grace;
    while ctx.counters.connections_open.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn housekeeping(ctx: Rc<ConnContext>, drain: Rc<DrainSignal>, shutdown: Arc<AtomicBool>) {
    loop {
        ctx.counters.heartbeat_unix_ms.store(conn::unix_ms(), Ordering::Relaxed);
        if shutdown.load(Ordering::Acquire) && !ctx.draining.get() {
            ctx.draining.set(true);
            drain.start();
        }
        monoio::time::sleep(HOUSEKEEPING_PERIOD).await;
    }
}

struct WriterTask {
    core: u16,
    ctx: Rc<ConnContext>,
    writer: SegmentWriter,
    progress: Arc<CoreProgress>,
    queue: QueueSender,
    sync: SyncPolicy,
    sync_interval: Duration,
    tick_bytes: usize,
}

/// The core's single WAL writer: one write per tick, in tick order.
async fn write_ticks(mut w: WriterTask) {
    let mut spare = Vec::with_capacity(w.tick_bytes.min(64 * 1024));
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    let mut failing = false;
    loop {
        let next = w.ctx.group.next_tick(std::mem::take(&mut spare));
        let taken = if w.sync == SyncPolicy::Interval && unsynced {
            let due = (last_sync + w.sync_interval).saturating_duration_since(Instant::now());
            match monoio::time::timeout(due, next).await {
                Ok(taken) => taken,
                Err(_) => {
                    sync_now(&w, &mut last_sync, &mut unsynced).await;
                    continue;
                }
            }
        } else {
            next.await
        };
        let Some((bytes, tick)) = taken else { break };
        let (result, mut bytes) = w.writer.append(bytes).await;
        match result {
            Ok((start, end)) => {
                if failing {
                    tracing::info!(core = w.core, "WAL writes succeed again");
                    failing = false;
                }
                w.progress.publish_written(end);
                bump(&w.ctx.counters.wal_writes, 1);
                bump(&w.ctx.counters.wal_bytes_written, bytes.len() as u64);
                offer_chunk(&w, start, end, tick.records, &bytes);
                tick.complete(TickOutcome::Written);
                unsynced = true;
                if w.sync == SyncPolicy::Interval && last_sync.elapsed() >= w.sync_interval {
                    sync_now(&w, &mut last_sync, &mut unsynced).await;
                }
            }
            Err(err) => {
                if !failing {
                    tracing::error!(core = w.core, %err, "WAL write failed; answering 503 until writes succeed");
                    failing = true;
                }
                bump(&w.ctx.counters.wal_write_errors, 1);
                tick.complete(TickOutcome::Failed);
            }
        }
        bytes.clear();
        spare = bytes;
    }
    if let Err(err) = w.writer.sync_data().await {
        tracing::error!(core = w.core, %err, "final WAL fdatasync failed");
    }
}

async fn sync_now(w: &WriterTask, last_sync: &mut Instant, unsynced: &mut bool) {
    if let Err(err) = w.writer.sync_data().await {
        tracing::error!(core = w.core, %err, "WAL fdatasync failed");
    }
    *last_sync = Instant::now();
    *unsynced = false;
}

fn offer_chunk(w: &WriterTask, start: Position, end: Position, records: u32, bytes: &[u8]) {
    let chunk = WalChunk { core: w.core, start, end, records, bytes: bytes.to_vec() };
    if w.queue.offer(chunk) == Offer::Full {
        bump(&w.ctx.counters.queue_full_chunks, 1);
    }
}
