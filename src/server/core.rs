//! One core: a pinned OS thread running its own monoio runtime with its own SO_REUSEPORT
//! listener, its own WAL segment writer and its own counters. Nothing here is shared with
//! another core except through atomics that only this core writes.
//!
//! Tasks on a core:
//! - the accept loop, spawning one task per connection (`http::conn::serve`);
//! - the WAL writer: takes the open tick, writes it with one io_uring write, publishes the new
//!   end of the WAL, offers the chunk to the flusher's queue, completes the tick's ticket;
//! - housekeeping (every 100 ms): heartbeat for /healthz, noticing the shutdown flag, and
//!   re-checking the WAL disk budget (`crate::wal::budget`): `statvfs` of the WAL directory and
//!   the global WAL-bytes gauge set this core's `wal_full` flag, which `/log` reads.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::net::TcpListener;

use crate::config::Config;
use crate::flush::stats::FlushStats;
use crate::http::conn::{self, ConnContext};
use crate::http::request;
use crate::ingest::{EventAllowlist, Rules};
use crate::metrics::{bump, CoreCounters};
use crate::observe::Observer;
use crate::queue::{CoreProgress, Offer, QueueSender, WalChunk};
use crate::wal::budget::{fs_space, DiskBudget, Refusal};
use crate::wal::config::SyncPolicy;
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
    /// The resolved WAL disk budget, the same for every core.
    pub budget: DiskBudget,
    /// Shared with the flusher: its `wal_disk_bytes` gauge is the budget's WAL size.
    pub flush_stats: Arc<FlushStats>,
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
        rules: Rules {
            allow: EventAllowlist::new(&cfg.ingest.events),
            require_event_id: cfg.ingest.require_event_id,
        },
        group: GroupCommit::new(cfg.wal.write_buffer_bytes),
        counters: setup.counters.clone(),
        observer: setup.observer.clone(),
        draining: Cell::new(false),
        wal_full: Cell::new(false),
        dialects: crate::http::dialect::Dialects::from_config(cfg),
    });
    let watch = BudgetWatch {
        core,
        budget: setup.budget,
        dir: setup.core_dir.clone(),
        stats: setup.flush_stats.clone(),
        refusal: Cell::new(None),
    };
    let writer_task = monoio::spawn(write_ticks(WriterTask {
        core,
        ctx: ctx.clone(),
        writer,
        progress: setup.progress.clone(),
        queue: setup.queue,
        sync: cfg.wal.sync,
        sync_interval: Duration::from_millis(cfg.wal.sync_interval_ms.max(1)),
        tick_bytes: cfg.wal.write_buffer_bytes,
        budget: setup.budget,
        flush_stats: setup.flush_stats.clone(),
    }));
    let drain = Rc::new(DrainSignal::default());
    monoio::spawn(housekeeping(ctx.clone(), drain.clone(), setup.shutdown.clone(), watch));
    let open = Rc::new(OpenConnections::default());
    accept_until_drain(&listener, &ctx, &drain, &open, cfg.http.max_connections_per_core).await;
    drop(listener); // stop taking connections: new ones go to the other nodes
    drain_connections(&ctx, &open, Duration::from_millis(cfg.server.shutdown_timeout_ms / 2)).await;
    ctx.group.close();
    writer_task.await;
    tracing::debug!(core, "core drained");
    Ok(())
}

async fn accept_until_drain(
    listener: &TcpListener,
    ctx: &Rc<ConnContext>,
    drain: &DrainSignal,
    open_conns: &Rc<OpenConnections>,
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
        let id = open_conns.insert(stream.as_raw_fd());
        let open_conns = open_conns.clone();
        monoio::spawn(async move {
            conn::serve(stream, peer, ctx.clone()).await;
            // No await between the close (end of `serve`) and here: the fd cannot be reused
            // by this core before it leaves the registry.
            open_conns.remove(id);
            ctx.counters.connections_open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Sockets of the connections open on this core, so the drain can end idle ones.
#[derive(Default)]
struct OpenConnections {
    next_id: Cell<u64>,
    fds: RefCell<std::collections::HashMap<u64, RawFd>>,
}

impl OpenConnections {
    fn insert(&self, fd: RawFd) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        self.fds.borrow_mut().insert(id, fd);
        id
    }

    fn remove(&self, id: u64) {
        self.fds.borrow_mut().remove(&id);
    }

    /// Shuts the read side of every open connection: a connection waiting for its next
    /// request reads EOF and closes; answers already being written still go out.
    fn shut_reads(&self) -> usize {
        let fds = self.fds.borrow();
        for &fd in fds.values() {
            // SAFETY: every fd in the registry belongs to a live connection of this core (it
            // is removed right after the connection closes, with no await in between).
            unsafe { libc::shutdown(fd, libc::SHUT_RD) };
        }
        fds.len()
    }
}

/// The connection half of the drain, within `budget`: during its first quarter connections
/// finish what they are doing (requests that arrive get their answer with `Connection:
/// close`); then the read side of the rest (idle keep-alives, unfinished requests) is shut so
/// they close at once; what is still open when the budget ends is dropped with the runtime.
async fn drain_connections(ctx: &ConnContext, open: &OpenConnections, budget: Duration) {
    let start = Instant::now();
    wait_for_connections(ctx, start + budget / 4).await;
    let shut = open.shut_reads();
    if shut > 0 {
        tracing::debug!(connections = shut, "drain: closing idle connections");
    }
    wait_for_connections(ctx, start + budget).await;
}

async fn wait_for_connections(ctx: &ConnContext, deadline: Instant) {
    while ctx.counters.connections_open.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn housekeeping(
    ctx: Rc<ConnContext>,
    drain: Rc<DrainSignal>,
    shutdown: Arc<AtomicBool>,
    watch: BudgetWatch,
) {
    loop {
        ctx.counters.heartbeat_unix_ms.store(crate::clock::unix_ms(), Ordering::Relaxed);
        watch.evaluate(&ctx);
        if shutdown.load(Ordering::Acquire) && !ctx.draining.get() {
            ctx.draining.set(true);
            drain.start();
        }
        monoio::time::sleep(HOUSEKEEPING_PERIOD).await;
    }
}

/// The housekeeping side of the disk budget (module doc of `crate::wal::budget`).
struct BudgetWatch {
    core: u16,
    budget: DiskBudget,
    /// This core's WAL directory; `statvfs` of it gives the filesystem's free space.
    dir: PathBuf,
    stats: Arc<FlushStats>,
    /// The refusal last logged, so only changes are logged.
    refusal: Cell<Option<Refusal>>,
}

impl BudgetWatch {
    /// Sets or clears the core's `wal_full` flag from the WAL gauge and the free space now.
    fn evaluate(&self, ctx: &ConnContext) {
        let available = match fs_space(&self.dir) {
            Ok(space) => Some(space.available_bytes),
            Err(err) => {
                tracing::debug!(core = self.core, %err, "statvfs of the WAL directory failed");
                None
            }
        };
        let wal_bytes = self.stats.wal_disk_bytes.load(Ordering::Relaxed);
        let refusal = self.budget.check(wal_bytes, available);
        set_wal_full(ctx, refusal.is_some());
        if refusal != self.refusal.replace(refusal) {
            match refusal {
                Some(why) => tracing::warn!(
                    core = self.core,
                    ?why,
                    wal_bytes,
                    ?available,
                    max_bytes = self.budget.max_bytes,
                    min_free_bytes = self.budget.min_free_bytes,
                    "WAL disk budget used up; answering 503 to /log until space is freed"
                ),
                None => tracing::info!(core = self.core, wal_bytes, ?available, "WAL disk budget ok again"),
            }
        }
    }
}

/// Raises or lowers the core's refusal flag (and its readiness mirror, on change only).
fn set_wal_full(ctx: &ConnContext, full: bool) {
    if ctx.wal_full.replace(full) != full {
        ctx.counters.wal_refusing.store(full, Ordering::Relaxed);
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
    budget: DiskBudget,
    flush_stats: Arc<FlushStats>,
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
                note_wal_growth(&w, bytes.len() as u64);
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
                // Refuse at once; housekeeping lifts it within 100 ms if the budget allows.
                set_wal_full(&w.ctx, true);
            }
        }
        bytes.clear();
        spare = bytes;
    }
    if let Err(err) = w.writer.sync_data().await {
        tracing::error!(core = w.core, %err, "final WAL fdatasync failed");
    }
}

/// Adds a write to the WAL gauge; refuses further events at once if it crossed the budget.
fn note_wal_growth(w: &WriterTask, written: u64) {
    let wal_bytes = w.flush_stats.wal_disk_bytes.fetch_add(written, Ordering::Relaxed) + written;
    if w.budget.check(wal_bytes, None).is_some() {
        set_wal_full(&w.ctx, true);
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
    let chunk = || WalChunk { core: w.core, start, end, records, bytes: bytes.to_vec() };
    if w.queue.offer_with(records, chunk) == Offer::Full {
        bump(&w.ctx.counters.queue_full_chunks, 1);
    }
}
