//! The flusher: one OS thread ("flusher") that delivers every acknowledged WAL record exactly
//! once into the sink, in large batches, and keeps the per-stream cursors in the sink (in the
//! same transaction or atomic block as the rows) and in `commit.meta`.
//!
//! ```text
//! core.rs     the synchronous delivery core: streams, cutting, cursors, compaction; no IO
//! stream.rs   one lane × shard: read position, batches, committed cursor, bisection
//! driver.rs   the async loop that feeds the core and carries out its actions
//! links.rs    per shard: connections, back-off, the delivery lease
//! tasks.rs    the IO steps (sink calls, WAL reads on the blocking pool)
//! results.rs  what each finished step does; stats; the shutdown report
//! ```
//!
//! ## The guarantee, and why it holds
//! - Every record before a stream's `read` is committed or held in one of its batches, once
//!   (`stream` invariants). Records come from queue chunks that continue exactly at `read`,
//!   or from the WAL (the truth) when a chunk is missing, late, or cannot be taken.
//! - A batch moves its stream's cursor from `from` to `to` atomically with its rows, and the
//!   sink refuses the move unless its cursor is at `from` (the fence, `crate::sink` contract
//!   2). So a batch is never committed twice, whoever sends it.
//! - After any failure the stream reads the sink's cursor before it sends again, and drops
//!   what the sink already holds (a commit whose answer was lost).
//! - Compaction deletes only segments below every stream's committed cursor of the lane.
//!
//! ## Failures
//! Unavailable and in-doubt steps back off per shard (`retry_min_ms` doubling to
//! `retry_max_ms`), logged once per up/down change; a refused batch is bisected down to the
//! rows the sink refuses, which go to its dead letters with the cursor move; a shard that is
//! down holds up only its own streams. A second live process with the same node id finds the
//! lease taken and delivers nothing until it is released.

pub mod core;
pub mod driver;
pub mod links;
pub mod reroute;
mod results;
pub mod stats;
pub mod stream;
mod tasks;

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use self::core::{Core, CoreConfig, LaneInit};
use crate::clickhouse::{ClickHouseSink, ClickhouseStats};
use crate::config::Config;
use crate::cursor::CommitMeta;
use crate::mysql::{MysqlSink, MysqlStats};
use crate::queue::{CoreProgress, QueueReceiver};
use crate::sink::config::SinkKind;
use crate::sink::Sink;
use crate::wal::identity::WalIdentity;
use driver::{Done, Driver, Setup};
use links::Link;
use stats::FlushStats;
use stream::Route;

pub use driver::Done as FlusherDone;

/// What the flusher starts from.
pub struct FlusherInputs {
    pub config: Config,
    pub identity: WalIdentity,
    /// Every lane found in the WAL dir; `live` for the cores that run now.
    pub lanes: Vec<LaneInit>,
    pub meta: Option<CommitMeta>,
    pub queue: QueueReceiver,
    /// Written ends of the running cores, by core number.
    pub progress: Vec<Arc<CoreProgress>>,
    pub stats: Arc<FlushStats>,
    pub mysql_stats: Arc<MysqlStats>,
    /// Counters of the ClickHouse sink (all shards), also read by `/metrics`.
    pub clickhouse_stats: Arc<ClickhouseStats>,
    pub shutdown: Arc<AtomicBool>,
}

/// The running flusher thread.
pub struct FlusherHandle {
    thread: JoinHandle<Done>,
}

impl FlusherHandle {
    /// Waits for the thread; true if every acknowledged event was delivered.
    pub fn join(self) -> bool {
        matches!(self.thread.join(), Ok(Done::Drained))
    }
}

/// The shard addresses of the configured sink (at least one).
pub fn shard_urls(config: &Config) -> Vec<String> {
    match config.sink.kind {
        SinkKind::Mysql if !config.mysql.shards.is_empty() => config.mysql.shards.clone(),
        SinkKind::Mysql => vec![config.mysql.url.clone()],
        SinkKind::Clickhouse => config.clickhouse.shard_urls(),
    }
}

/// Starts the flusher thread on its own current-thread runtime, at `server.flusher_nice`.
pub fn spawn(inputs: FlusherInputs) -> std::io::Result<FlusherHandle> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let thread = std::thread::Builder::new().name("flusher".into()).spawn(move || {
        set_own_nice(inputs.config.server.flusher_nice);
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, run(inputs))
    })?;
    Ok(FlusherHandle { thread })
}

/// The calling thread's nice value (Linux: `setpriority` on a thread id sets that thread's
/// alone). A refusal (a negative value without CAP_SYS_NICE) is logged; the flusher then runs
/// at the nice it inherited.
fn set_own_nice(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: gettid and setpriority take and return plain integers.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if rc == 0 {
        tracing::info!(nice, "flusher thread reniced (server.flusher_nice)");
    } else {
        let err = std::io::Error::last_os_error();
        tracing::warn!(nice, %err, "cannot set server.flusher_nice; the flusher keeps its nice");
    }
}

async fn run(inputs: FlusherInputs) -> Done {
    match inputs.config.sink.kind {
        SinkKind::Mysql => {
            let c = &inputs.config;
            let sinks = shard_urls(c)
                .into_iter()
                .map(|url| {
                    let mysql = crate::mysql::config::MysqlConfig { url, ..c.mysql.clone() };
                    Rc::new(MysqlSink::new(&mysql, &c.domains, &c.rollup, inputs.mysql_stats.clone()))
                })
                .collect();
            drive(inputs, sinks, "MySQL").await
        }
        SinkKind::Clickhouse => {
            let c = &inputs.config.clickhouse;
            let stats = inputs.clickhouse_stats.clone();
            let sinks: Result<Vec<_>, _> = shard_urls(&inputs.config)
                .iter()
                .map(|url| ClickHouseSink::new(c, url, &inputs.config.rollup, stats.clone()).map(Rc::new))
                .collect();
            match sinks {
                Ok(sinks) => drive(inputs, sinks, "ClickHouse").await,
                Err(e) => {
                    tracing::error!(key = e.key, error = %e.message, "no ClickHouse sink; nothing is delivered");
                    Done::RowsLeft
                }
            }
        }
    }
}

async fn drive<S: Sink + 'static>(inputs: FlusherInputs, sinks: Vec<Rc<S>>, kind: &str) -> Done {
    let FlusherInputs { config, identity, lanes, meta, queue, progress, stats, shutdown, .. } = inputs;
    let now = Instant::now();
    let (m, ch) = (&config.mysql, &config.clickhouse);
    // (batch rows, flush interval, retry min and max, connections per shard; 0 = one per lane)
    let (rows, interval_ms, retry_min, retry_max, connections) = match config.sink.kind {
        SinkKind::Mysql => (m.batch_rows, m.flush_interval_ms, m.retry_min_ms, m.retry_max_ms, m.connections),
        SinkKind::Clickhouse => (ch.batch_rows, ch.flush_interval_ms, ch.retry_min_ms, ch.retry_max_ms, 0),
    };
    let route = Route { by: config.sink.shard_by, shards: sinks.len() as u16 };
    let core_config = CoreConfig { batch_rows: rows, interval: Duration::from_millis(interval_ms), route };
    let per_shard = if connections == 0 { lanes.len().max(1) } else { connections };
    let links = (0..sinks.len())
        .map(|shard| {
            let name = if sinks.len() > 1 { format!("{kind} shard {shard}") } else { kind.to_owned() };
            let (min, max) = (Duration::from_millis(retry_min), Duration::from_millis(retry_max));
            Link::new(shard as u16, name, per_shard, min, max, now)
        })
        .collect();
    let committed = |lane, shard| meta.as_ref().and_then(|m: &CommitMeta| m.get(lane, shard));
    let core = Core::new(core_config, identity.clone(), lanes, committed, now);
    let wal_dir: PathBuf = config.wal.dir.clone();
    let drain_timeout = Duration::from_millis(config.server.shutdown_timeout_ms / 2);
    let setup =
        Setup { core, sinks, links, identity, wal_dir, queue, progress, stats, shutdown, drain_timeout };
    Driver::new(setup).run().await
}
