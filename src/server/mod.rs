//! Wiring of a running collector, in start order:
//! lock the WAL dir → open its identity (`crate::cursor::open_wal_identity`) → raise the
//! descriptor limit and fit the connection cap to it (`fd_limit`) → recover each core's WAL →
//! bind one SO_REUSEPORT listener per core → start the flusher → start the pinned core
//! threads. [`Running::shutdown`] reverses it: cores drain (stop accepting, answer in-flight
//! requests, write and sync the WAL), then the flusher makes its last delivery and writes
//! commit.meta.
//!
//! Invariant: listeners are bound before any core thread runs, so a client can connect as soon
//! as [`start`] returns (the kernel queues connections until the core accepts them).

mod accept;
pub mod config;
pub mod core;
pub mod cpus;
pub mod fd_limit;
pub mod lock;
pub mod sd_notify;
pub mod signals;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};

use crate::clickhouse::ClickhouseStats;
use crate::config::Config;
use crate::flush::core::LaneInit;
use crate::flush::stats::FlushStats;
use crate::flush::{self, FlusherHandle, FlusherInputs};
use crate::metrics::{bump, CoreCounters};
use crate::mysql::MysqlStats;
use crate::observe::{Observer, ObserverInputs};
use crate::queue::{self, CoreProgress};
use crate::wal::budget::{fs_space, DiskBudget};
use crate::wal::{recovery, segment};

/// Listen backlog of each core's socket.
const LISTEN_BACKLOG: i32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create WAL directory {path}: {source}")]
    WalDir { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error(transparent)]
    Identity(#[from] crate::cursor::CursorError),
    #[error("WAL recovery: {0}")]
    Recovery(#[from] recovery::RecoveryError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start thread {name}: {source}")]
    Thread { name: String, source: std::io::Error },
    #[error("WAL disk budget: {0}")]
    Budget(String),
    #[error(transparent)]
    Reroute(#[from] flush::reroute::RerouteError),
}

/// How a collector stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every acknowledged event is in the sink.
    Drained,
    /// The sink could not take everything in time; the WAL keeps the rest for the next start.
    EventsLeft,
    /// A thread failed.
    Failed,
}

/// A started collector.
pub struct Running {
    local_addr: SocketAddr,
    shutdown: Arc<AtomicBool>,
    cores: Vec<JoinHandle<Result<(), core::CoreError>>>,
    flusher: FlusherHandle,
    flusher_shutdown: Arc<AtomicBool>,
    pub observer: Arc<Observer>,
    _lock: lock::DirLock,
}

/// Starts everything; returns once every listener is bound.
pub fn start(mut config: Config) -> Result<Running, ServerError> {
    let wal_dir = config.wal.dir.clone();
    std::fs::create_dir_all(&wal_dir)
        .map_err(|source| ServerError::WalDir { path: wal_dir.clone(), source })?;
    let dir_lock = lock::lock_wal_dir(&wal_dir)?;
    // Before any core directory is touched: whose WAL this is (refused if another node's).
    let identity =
        crate::cursor::open_wal_identity(&wal_dir, &config.ingest.node_id, &crate::config::hostname())?;
    config.ingest.node_id = identity.node.clone();
    tracing::info!(node = %identity.node, wal = %identity.wal, "WAL identity");

    let core_count = core_count(&config);
    let counters: Vec<Arc<CoreCounters>> = (0..core_count).map(|_| Arc::default()).collect();
    config.http.max_connections_per_core = fd_limit::apply(core_count, config.http.max_connections_per_core);

    let Recovered { tails, wal_bytes, lanes: lane_inits } = recover_lanes(&wal_dir, &config, &counters)?;
    let meta = crate::cursor::read_commit_meta(&wal_dir, &identity)?;
    let meta = start_route(&wal_dir, meta, &config, &lane_inits)?;
    let budget = resolve_budget(&config, &wal_dir, wal_bytes, core_count)?;
    let listeners = bind_listeners(config.server.listen, core_count)?;
    let local_addr = listeners[0]
        .local_addr()
        .map_err(|source| ServerError::Listen { addr: config.server.listen, source })?;

    let (queue_tx, queue_rx) = queue::bounded(config.queue.capacity);
    let progress: Vec<Arc<CoreProgress>> = tails.iter().map(|&t| Arc::new(CoreProgress::new(t))).collect();
    let flush_stats = Arc::new(FlushStats::new(core_count, flush::shard_urls(&config).len()));
    flush_stats.wal_disk_bytes.store(wal_bytes, Ordering::Relaxed);
    let mysql_stats = Arc::new(MysqlStats::default());
    let clickhouse_stats = Arc::new(ClickhouseStats::default());
    let on_clickhouse = config.sink.kind == crate::config::SinkKind::Clickhouse;
    let observer = Arc::new(Observer::new(ObserverInputs {
        cores: counters.clone(),
        progress: progress.clone(),
        flush: flush_stats.clone(),
        mysql: mysql_stats.clone(),
        clickhouse: on_clickhouse.then(|| clickhouse_stats.clone()),
        queue_depth: queue_rx.depth_handle(),
        queue_capacity: queue_rx.capacity(),
        wal_dir: wal_dir.clone(),
        node_id: config.ingest.node_id.clone(),
    }));
    let flusher_shutdown = Arc::new(AtomicBool::new(false));
    let flusher = flush::spawn(FlusherInputs {
        config: config.clone(),
        identity,
        lanes: lane_inits,
        meta,
        queue: queue_rx,
        progress: progress.clone(),
        stats: flush_stats.clone(),
        mysql_stats,
        clickhouse_stats,
        shutdown: flusher_shutdown.clone(),
    })
    .map_err(|source| ServerError::Thread { name: "flusher".into(), source })?;

    let shutdown = Arc::new(AtomicBool::new(false));
    let shared = CoreShared {
        queue: queue_tx,
        observer: observer.clone(),
        shutdown: shutdown.clone(),
        budget,
        flush_stats,
    };
    let cores = spawn_cores(&config, listeners, &tails, &counters, &progress, &shared)?;
    tracing::info!(%local_addr, cores = core_count, wal = %wal_dir.display(), "listening on {local_addr}");
    Ok(Running { local_addr, shutdown, cores, flusher, flusher_shutdown, observer, _lock: dir_lock })
}

impl Running {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Drains the cores, then lets the flusher deliver what it can and exit.
    pub fn shutdown(self) -> Stopped {
        self.observer.draining.store(true, Ordering::Release);
        self.shutdown.store(true, Ordering::Release);
        let mut clean = true;
        for (i, handle) in self.cores.into_iter().enumerate() {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::error!(core = i, %err, "core failed");
                    clean = false;
                }
                Err(_) => clean = false,
            }
        }
        self.flusher_shutdown.store(true, Ordering::Release);
        let drained = self.flusher.join();
        match (clean, drained) {
            (false, _) => Stopped::Failed,
            (true, true) => Stopped::Drained,
            (true, false) => Stopped::EventsLeft,
        }
    }

    /// True if a core thread ended on its own (a failure: cores only end on shutdown).
    pub fn any_core_finished(&self) -> bool {
        self.cores.iter().any(|h| h.is_finished())
    }
}

/// `server.cores`, or (0) one per CPU this process may run on (affinity, cgroup cpusets).
fn core_count(config: &Config) -> usize {
    let cores = if config.server.cores == 0 { cpus::allowed_cpus().len() } else { config.server.cores };
    cores.clamp(1, u16::MAX as usize)
}

/// What recovery found: the running cores' tails, the WAL's bytes, every lane.
struct Recovered {
    tails: Vec<crate::wal::Position>,
    wal_bytes: u64,
    lanes: Vec<LaneInit>,
}

/// `commit.meta` under the configured routing (`flush::reroute`), written back before anything
/// is served when its `route` line changes.
fn start_route(
    wal_dir: &std::path::Path,
    meta: Option<crate::cursor::CommitMeta>,
    config: &Config,
    lanes: &[LaneInit],
) -> Result<Option<crate::cursor::CommitMeta>, ServerError> {
    let route = flush::reroute::route_of(config);
    let written = meta.as_ref().and_then(|m| m.route.clone());
    let at_end = |lane: &LaneInit, from: crate::wal::Position| {
        let dir = crate::wal::segment::core_dir(wal_dir, lane.id.core);
        crate::wal::segment::bytes_from(&dir, from).is_ok_and(|bytes| bytes == 0)
    };
    let meta = flush::reroute::under(meta, &route, lanes, at_end)?;
    if let Some(m) = meta.as_ref().filter(|_| written.as_deref() != Some(route.as_str())) {
        crate::cursor::write_commit_meta(wal_dir, m)?;
    }
    Ok(meta)
}

/// Recovers every `core-N` directory found, whatever `server.cores` says now (issue 10 item
/// 2); the cores that run write the lanes `0..counters.len()`, the flusher delivers all.
fn recover_lanes(
    wal_dir: &std::path::Path,
    config: &Config,
    counters: &[Arc<CoreCounters>],
) -> Result<Recovered, ServerError> {
    let core_count = counters.len();
    let lanes = recovery::recover_all(wal_dir, core_count as u16, config.wal.sync)?;
    let mut found = Recovered { tails: Vec::with_capacity(core_count), wal_bytes: 0, lanes: Vec::new() };
    for recovered in &lanes {
        let core = usize::from(recovered.lane.core);
        found.wal_bytes += recovered.segments.iter().map(|s| s.bytes).sum::<u64>();
        let live = core < core_count;
        if live {
            bump(&counters[core].wal_truncated_bytes, recovered.truncated_bytes);
            found.tails.push(recovered.tail);
        } else {
            tracing::info!(lane = %recovered.lane, "a lane no core writes any more: delivering it to its end, then removing it");
        }
        found.lanes.push(LaneInit { id: recovered.lane, live, end: recovered.tail });
    }
    Ok(found)
}

/// What every core thread shares.
struct CoreShared {
    queue: queue::QueueSender,
    observer: Arc<Observer>,
    shutdown: Arc<AtomicBool>,
    budget: DiskBudget,
    flush_stats: Arc<FlushStats>,
}

/// Starts one pinned thread per listener.
fn spawn_cores(
    config: &Config,
    listeners: Vec<std::net::TcpListener>,
    tails: &[crate::wal::Position],
    counters: &[Arc<CoreCounters>],
    progress: &[Arc<CoreProgress>],
    shared: &CoreShared,
) -> Result<Vec<JoinHandle<Result<(), core::CoreError>>>, ServerError> {
    let cpus = cpus::allowed_cpus();
    let mut cores = Vec::with_capacity(listeners.len());
    for (i, listener) in listeners.into_iter().enumerate() {
        let setup = core::CoreSetup {
            core: i as u16,
            cpu: config.server.pin_cores.then(|| cpus.get(i % cpus.len().max(1)).copied()).flatten(),
            listener,
            core_dir: segment::core_dir(&config.wal.dir, i as u16),
            tail: tails[i],
            config: config.clone(),
            counters: counters[i].clone(),
            progress: progress[i].clone(),
            queue: shared.queue.clone(),
            observer: shared.observer.clone(),
            shutdown: shared.shutdown.clone(),
            budget: shared.budget,
            flush_stats: shared.flush_stats.clone(),
        };
        let name = format!("core-{i}");
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || core::run_core(setup))
            .map_err(|source| ServerError::Thread { name, source })?;
        cores.push(handle);
    }
    Ok(cores)
}

/// The disk budget with its derived defaults filled in. The open segment of every core is
/// never compacted, so the budget must hold one per core plus one sealed segment, or the
/// 503s could never stop once MySQL caught up.
fn resolve_budget(
    config: &Config,
    wal_dir: &std::path::Path,
    wal_bytes: u64,
    cores: usize,
) -> Result<DiskBudget, ServerError> {
    let space =
        fs_space(wal_dir).map_err(|source| ServerError::WalDir { path: wal_dir.to_owned(), source })?;
    let budget = DiskBudget::resolve(&config.wal, space, wal_bytes, cores);
    let floor = (cores as u64 + 1) * config.wal.segment_bytes + budget.margin_bytes;
    if budget.max_bytes < floor {
        return Err(ServerError::Budget(format!(
            "wal.max_bytes resolves to {} bytes, below (cores + 1) × wal.segment_bytes + cores × \
             wal.write_buffer_bytes = {floor}; raise it (or free disk space) or lower wal.segment_bytes",
            budget.max_bytes
        )));
    }
    tracing::info!(
        max_bytes = budget.max_bytes,
        min_free_bytes = budget.min_free_bytes,
        wal_bytes,
        available_bytes = space.available_bytes,
        "WAL disk budget"
    );
    Ok(budget)
}

/// One SO_REUSEPORT listener per core. With port 0 the first socket picks the port and the
/// others bind to the same one.
fn bind_listeners(addr: SocketAddr, count: usize) -> Result<Vec<std::net::TcpListener>, ServerError> {
    let first = bind_reuseport(addr)?;
    let chosen = first.local_addr().map_err(|source| ServerError::Listen { addr, source })?;
    let mut all = vec![first];
    for _ in 1..count {
        all.push(bind_reuseport(chosen)?);
    }
    Ok(all)
}

fn bind_reuseport(addr: SocketAddr) -> Result<std::net::TcpListener, ServerError> {
    let err = |source| ServerError::Listen { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_reuse_port(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)?;
    Ok(socket.into())
}
