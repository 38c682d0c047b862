//! One core: a pinned OS thread running its own monoio runtime with its own SO_REUSEPORT
//! listener, its own WAL segment writer and its own counters. Nothing here is shared with
//! another core except through atomics that only this core writes.
//!
//! Tasks on a core:
//! - the accept loop (`super::accept`), spawning one task per connection (`http::conn::serve`);
//! - the WAL tick writer (`crate::wal::tick_writer`): writes the open tick with one io_uring
//!   write; its hook here publishes the new end of the WAL, counts the bytes against the disk
//!   budget and offers the chunk to the flusher's queue, before the tick's ticket completes;
//! - housekeeping (every 100 ms): heartbeat for /healthz, the idle sweep of the connection
//!   registry (`http::idle`: no timer per read), noticing the shutdown flag, and
//!   re-checking the WAL disk budget (`crate::wal::budget`): `statvfs` of the WAL directory and
//!   the global WAL-bytes gauge raise or lower this core's WAL refusal, which `/log` reads.

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpListener;

use super::accept::{accept_until_drain, drain_connections, DrainSignal};

use crate::config::Config;
use crate::flush::stats::FlushStats;
use crate::http::context::ConnContext;
use crate::ingest::intake::{Intake, Policy};
use crate::metrics::{bump, CoreCounters};
use crate::observe::Observer;
use crate::queue::{CoreProgress, Offer, QueueSender, WalChunk};
use crate::wal::budget::{fs_space, DiskBudget, Refusal};
use crate::wal::group::GroupCommit;
use crate::wal::tick_writer::{set_refusing, TickPolicy, TickWriter, Written};
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

async fn serve_core(setup: CoreSetup) -> Result<(), CoreError> {
    let core = setup.core;
    let cfg = &setup.config;
    let listener =
        TcpListener::from_std(setup.listener).map_err(|source| CoreError::Listener { core, source })?;
    let segments = SegmentWriter::open(&setup.core_dir, setup.tail, cfg.wal.segment_bytes, cfg.wal.sync)
        .await
        .map_err(|source| CoreError::Wal { core, source })?
        .with_mode(cfg.wal.write_mode);
    let group = Rc::new(GroupCommit::new(cfg.wal.write_buffer_bytes));
    let intake = Intake::new(Policy::from_config(cfg), group.clone(), setup.counters.clone());
    let ctx = Rc::new(ConnContext::new(cfg, intake, setup.counters.clone(), setup.observer.clone()));
    let watch = BudgetWatch {
        core,
        budget: setup.budget,
        dir: setup.core_dir.clone(),
        stats: setup.flush_stats.clone(),
        refusal: Cell::new(None),
    };
    let policy = TickPolicy {
        core,
        sync: cfg.wal.sync,
        sync_interval: Duration::from_millis(cfg.wal.sync_interval_ms.max(1)),
        tick_bytes: cfg.wal.write_buffer_bytes,
    };
    let hand_off = HandOff {
        core,
        group: group.clone(),
        counters: setup.counters.clone(),
        progress: setup.progress.clone(),
        queue: setup.queue,
        budget: setup.budget,
        flush_stats: setup.flush_stats.clone(),
    };
    let writer = TickWriter::new(
        policy,
        group.clone(),
        segments,
        setup.counters.clone(),
        move |w: &mut Written<'_>| hand_off.written(w),
    );
    let writer_task = monoio::spawn(writer.run());
    let drain = Rc::new(DrainSignal::default());
    monoio::spawn(housekeeping(ctx.clone(), group.clone(), drain.clone(), setup.shutdown.clone(), watch));
    accept_until_drain(&listener, &ctx, &drain, cfg.http.max_connections_per_core).await;
    drop(listener); // stop taking connections: new ones go to the other nodes
    drain_connections(&ctx, Duration::from_millis(cfg.server.shutdown_timeout_ms / 2)).await;
    group.close();
    writer_task.await;
    tracing::debug!(core, "core drained");
    Ok(())
}

async fn housekeeping(
    ctx: Rc<ConnContext>,
    group: Rc<GroupCommit>,
    drain: Rc<DrainSignal>,
    shutdown: Arc<AtomicBool>,
    watch: BudgetWatch,
) {
    loop {
        ctx.counters().heartbeat_unix_ms.store(crate::clock::unix_ms(), Ordering::Relaxed);
        ctx.registry().tick(); // idle deadlines: shuts overdue reads (`http::idle`)
        watch.evaluate(&group, ctx.counters());
        if shutdown.load(Ordering::Acquire) && !ctx.is_draining() {
            ctx.start_draining();
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
    /// Raises or lowers the core's WAL refusal from the WAL gauge and the free space now.
    fn evaluate(&self, group: &GroupCommit, counters: &CoreCounters) {
        let available = match fs_space(&self.dir) {
            Ok(space) => Some(space.available_bytes),
            Err(err) => {
                tracing::debug!(core = self.core, %err, "statvfs of the WAL directory failed");
                None
            }
        };
        let wal_bytes = self.stats.wal_disk_bytes.load(Ordering::Relaxed);
        let refusal = self.budget.check(wal_bytes, available);
        set_refusing(group, counters, refusal.is_some());
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

/// The core's side of a written tick (the tick writer's hook), run before its ticket completes.
struct HandOff {
    core: u16,
    group: Rc<GroupCommit>,
    counters: Arc<CoreCounters>,
    progress: Arc<CoreProgress>,
    queue: QueueSender,
    budget: DiskBudget,
    /// Its `wal_disk_bytes` gauge is the disk budget's WAL size.
    flush_stats: Arc<FlushStats>,
}

impl HandOff {
    fn written(&self, w: &mut Written<'_>) {
        self.progress.publish_written(w.end);
        self.note_wal_growth(w.bytes.len() as u64);
        self.offer_chunk(w.start, w.end, w.records, w.bytes);
    }

    /// Adds a write to the WAL gauge; refuses further events at once if it crossed the budget.
    fn note_wal_growth(&self, written: u64) {
        let wal_bytes = self.flush_stats.wal_disk_bytes.fetch_add(written, Ordering::Relaxed) + written;
        if self.budget.check(wal_bytes, None).is_some() {
            set_refusing(&self.group, &self.counters, true);
        }
    }

    /// Queues the tick: its own buffer when the bytes fill at least half of it (a busy core's
    /// tick: no copy, and a spare takes its place), else an exact copy. So a queued chunk
    /// never holds more than twice its bytes, and the queue's memory stays bounded by its
    /// event count (`queue.capacity`) as before: a one-beacon tick does not pin a 64 KiB buffer.
    fn offer_chunk(&self, start: Position, end: Position, records: u32, bytes: &mut Vec<u8>) {
        let chunk = || {
            let taken = if bytes.len() * 2 >= bytes.capacity() {
                let spare = self.queue.spare(bytes.capacity());
                std::mem::replace(bytes, spare)
            } else {
                bytes.to_vec()
            };
            debug_assert!(taken.capacity() <= 2 * taken.len().max(1), "a queued chunk pins memory");
            WalChunk { core: self.core, start, end, records, bytes: taken }
        };
        if self.queue.offer_with(records, chunk) == Offer::Full {
            bump(&self.counters.queue_full_chunks, 1);
        }
    }
}
