//! The thin async driver around the delivery core (`super::core`): it feeds the core queue
//! chunks and written ends, carries out the core's actions on the shards' sinks (through
//! `super::tasks`) and on the WAL directory, and hands the answers back. It keeps no delivery
//! state of its own beyond connections and readers.
//!
//! One loop turn: take what the queue holds, ask the core for actions, start them, hand out
//! waiting work to free connections, then sleep until a step reports or [`TICK`] passes.

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tracing::{debug, error, info, warn};

use super::core::{Action, Core};
use super::links::{Control, Job, Link};
use super::stats::FlushStats;
use super::tasks::{self, Msg, ReadJob};
use crate::compact::{compact_lane, remove_lane};
use crate::cursor::write_commit_meta;
use crate::queue::{CoreProgress, QueueReceiver};
use crate::sink::Sink;
use crate::wal::identity::WalIdentity;
use crate::wal::reader::CoreWalReader;
use crate::wal::segment::core_dir;

/// Longest the loop sleeps when no step reports.
const TICK: Duration = Duration::from_millis(5);
/// Most queue chunks taken in one loop turn, so answers are not starved under load.
const CHUNKS_PER_TURN: usize = 4096;

/// Everything the driver runs with.
pub struct Setup<S: Sink> {
    pub core: Core,
    /// One sink per shard.
    pub sinks: Vec<Rc<S>>,
    pub links: Vec<Link<S::Conn>>,
    pub identity: WalIdentity,
    pub wal_dir: PathBuf,
    pub queue: QueueReceiver,
    /// Written ends of the running cores, by core number.
    pub progress: Vec<Arc<CoreProgress>>,
    pub stats: Arc<FlushStats>,
    pub shutdown: Arc<AtomicBool>,
    /// How long the last deliveries may take once `shutdown` is set.
    pub drain_timeout: Duration,
}

/// How the flusher ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// Every acknowledged event is committed.
    Drained,
    /// Rows were left for the next start (the sink was down or slow).
    RowsLeft,
}

pub struct Driver<S: Sink> {
    pub(super) core: Core,
    pub(super) sinks: Vec<Rc<S>>,
    pub(super) links: Vec<Link<S::Conn>>,
    pub(super) identity: Rc<WalIdentity>,
    pub(super) wal_dir: PathBuf,
    queue: QueueReceiver,
    progress: Vec<Arc<CoreProgress>>,
    pub(super) stats: Arc<FlushStats>,
    shutdown: Arc<AtomicBool>,
    drain_timeout: Duration,
    pub(super) readers: Vec<Option<CoreWalReader>>,
    pub(super) tx: UnboundedSender<Msg<S::Conn>>,
    rx: UnboundedReceiver<Msg<S::Conn>>,
    pub(super) replay: Option<super::results::Replay>,
}

impl<S: Sink + 'static> Driver<S> {
    pub fn new(setup: Setup<S>) -> Driver<S> {
        let (tx, rx) = unbounded_channel();
        let readers = setup
            .core
            .streams()
            .iter()
            .map(|s| Some(CoreWalReader::new(&core_dir(&setup.wal_dir, s.lane.core))))
            .collect();
        Driver {
            core: setup.core,
            sinks: setup.sinks,
            links: setup.links,
            identity: Rc::new(setup.identity),
            wal_dir: setup.wal_dir,
            queue: setup.queue,
            progress: setup.progress,
            stats: setup.stats,
            shutdown: setup.shutdown,
            drain_timeout: setup.drain_timeout,
            readers,
            tx,
            rx,
            replay: Some(super::results::Replay::new()),
        }
    }

    /// Delivers until shutdown, then as long as the drain timeout allows.
    pub async fn run(mut self) -> Done {
        info!(streams = self.core.streams().len(), node = %self.identity.node, "flusher started");
        let mut deadline = None;
        loop {
            let now = Instant::now();
            if deadline.is_none() && self.shutdown.load(Ordering::Acquire) {
                self.core.begin_shutdown();
                deadline = Some(now + self.drain_timeout);
            }
            self.turn(now);
            if deadline.is_some() && self.core.is_drained() {
                break;
            }
            if deadline.is_some_and(|d| now >= d) {
                break;
            }
            // The driver holds a sender itself, so the channel never closes: `Err` is the tick.
            if let Ok(Some(msg)) = tokio::time::timeout(TICK, self.rx.recv()).await {
                self.on_msg(msg);
            }
            while let Ok(msg) = self.rx.try_recv() {
                self.on_msg(msg);
            }
        }
        self.finish().await
    }

    /// One loop turn (module doc).
    fn turn(&mut self, now: Instant) {
        for (core, p) in self.progress.iter().enumerate() {
            self.core.on_written(core as u16, p.written_end());
        }
        for _ in 0..CHUNKS_PER_TURN {
            let Some(chunk) = self.queue.try_recv() else { break };
            self.core.on_chunk(&chunk, now);
            self.queue.recycle(chunk);
        }
        let links = &self.links;
        let actions = self.core.poll(now, |shard| links[usize::from(shard)].ready(now));
        for action in actions {
            self.start(action);
        }
        for shard in 0..self.links.len() {
            self.dispatch(shard, now);
        }
        self.publish(now);
    }

    fn start(&mut self, action: Action) {
        match action {
            Action::Read { stream, batch, until, max } => {
                let Some(reader) = self.readers[stream].take() else {
                    debug_assert!(false, "a second read of one stream");
                    return;
                };
                let route = self.core.route();
                let job = ReadJob { stream, until, max, route, wal_dir: self.wal_dir.clone() };
                tasks::read(&self.tx, reader, batch, job);
            }
            Action::Deliver { stream, pending } => {
                let shard = usize::from(pending.batch.shard());
                self.links[shard].jobs.push_back(Job::Deliver { stream, pending });
            }
            Action::ReadCursors { shard } => {
                self.links[usize::from(shard)].control_jobs.push_back(Control::Cursors)
            }
            Action::Retire { shard, lanes } => {
                self.links[usize::from(shard)].control_jobs.push_back(Control::Retire(lanes))
            }
            Action::WriteMeta(meta) => {
                if let Err(e) = write_commit_meta(&self.wal_dir, &meta) {
                    // Compaction still goes on below the sink's committed cursors (durable).
                    error!(error = %e, "cannot write commit.meta; compacting behind the sink's cursors anyway");
                    self.core.on_meta_failed();
                }
            }
            Action::Compact { lane, below } => match compact_lane(&core_dir(&self.wal_dir, lane.core), below)
            {
                Ok(done) if done.segments == 0 => {}
                Ok(done) => {
                    self.stats.wal_disk_bytes.fetch_sub(done.bytes, Ordering::Relaxed);
                    debug!(%lane, deleted = done.segments, bytes = done.bytes, "compacted WAL segments");
                }
                Err(e) => warn!(%lane, error = %e, "WAL compaction failed"),
            },
            Action::RemoveLane { lane } => match remove_lane(&self.wal_dir, lane.core) {
                Ok(done) => {
                    self.stats.wal_disk_bytes.fetch_sub(done.bytes, Ordering::Relaxed);
                    info!(%lane, "lane no core writes any more is delivered; removed");
                    let first = self.core.streams().iter().position(|s| s.lane == lane);
                    if let Some(first) = first {
                        self.readers.drain(first..first + usize::from(self.core.shards()));
                    }
                    self.core.on_lane_removed(lane);
                }
                Err(e) => {
                    warn!(%lane, error = %e, "cannot remove a delivered lane; retrying later");
                    self.core.on_remove_failed(lane);
                }
            },
        }
    }

    /// Hands waiting work to free connections, and opens connections where work waits.
    fn dispatch(&mut self, shard: usize, now: Instant) {
        let link = &mut self.links[shard];
        let shard16 = shard as u16;
        if link.control.is_none() && !link.control_busy && link.may_connect(now) {
            link.control_busy = true;
            tasks::connect(&self.tx, &self.sinks[shard], shard16, true);
        }
        if !link.control_busy && link.control.is_some() {
            if link.lease_due(now) {
                if let Some(conn) = link.control.take() {
                    link.control_busy = true;
                    tasks::lease(&self.tx, conn, shard16, self.identity.node.clone());
                }
            } else if link.ready(now) {
                if let Some(job) = link.control_jobs.pop_front() {
                    if let Some(conn) = link.control.take() {
                        link.control_busy = true;
                        match job {
                            Control::Cursors => {
                                tasks::cursors(&self.tx, conn, shard16, self.identity.clone())
                            }
                            Control::Retire(lanes) => {
                                tasks::retire(&self.tx, conn, shard16, self.identity.clone(), lanes)
                            }
                        }
                    }
                }
            }
        }
        while !link.jobs.is_empty() {
            if let Some(conn) = link.idle.pop() {
                if let Some(Job::Deliver { stream, pending }) = link.jobs.pop_front() {
                    tasks::deliver(&self.tx, conn, shard16, stream, pending, self.identity.clone());
                }
                continue;
            }
            if link.open < link.max && link.may_connect(now) {
                link.open += 1;
                tasks::connect(&self.tx, &self.sinks[shard], shard16, false);
            }
            break;
        }
    }
}
