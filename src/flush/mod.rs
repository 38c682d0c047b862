//! The flusher: one OS thread ("flusher") running a tokio current-thread runtime that moves
//! written WAL records into MySQL, exactly once, in large batches.
//!
//! ## Per-core state ([`Lane`])
//! - `committed`: everything before it is durable in MySQL (`ingest_cursors`).
//! - `read`: everything before it is in the current batch or committed.
//! - `mode`: taking chunks from the queue, catching up from the WAL, or waiting on a corrupt
//!   record in the open segment.
//!
//! ## Flow
//! 1. Start: `committed = read = max(commit.meta, MySQL)` per core (MySQL if reachable now;
//!    otherwise on every (re)connect, before the first INSERT — see [`Flusher::reconcile`]).
//!    Every core whose WAL extends past `read` starts catching up: that is the replay.
//! 2. Fill a batch: a queue chunk starting at `read` is taken; one ending at or before `read`
//!    was already read from the WAL and is dropped; one starting after `read` reveals a gap
//!    (the queue was full) and switches the core to catch-up, which reads the WAL from `read`
//!    to the core's published `written_end`, at most what fits in the batch. A queue idle for
//!    a flush interval while `written_end > read` also triggers catch-up (a chunk that was
//!    never sent leaves no later chunk to reveal the gap).
//! 3. Cut the batch at `mysql.batch_rows` rows or `mysql.flush_interval_ms` after its first
//!    row. Deliver it in ONE transaction: event rows, then this node's cursors, then COMMIT.
//! 4. After COMMIT: `committed = batch ends`, then `commit.meta` (atomic replace), then
//!    compaction (which only trusts the cursor it reads back from `commit.meta`).
//!
//! ## Corruption policy
//! A record that fails its CRC (or does not decode) costs that record only, and is never
//! skipped silently:
//! - in the WAL (sealed or open segment): the reader stops at it and says where the next
//!   record that decodes starts (`wal::reader::ReadStop::Corrupt`); the bad bytes are copied
//!   to `<wal.dir>/quarantine/` (`wal::quarantine::save_bad_bytes`), `corrupt_records` is
//!   counted, and the core goes on after them. No segment is moved. If the copy fails, the
//!   core retries it on its next catch-up before going on;
//! - in a queue chunk: the chunk is ignored and the core catches up from the WAL, the truth.
//!
//! ## Failure handling
//! Any MySQL error drops the connection; the flusher backs off (`retry_min_ms` doubling to
//! `retry_max_ms`), logging once per up/down change, and retries the whole transaction. On
//! reconnect it re-reads `ingest_cursors`: a batch whose COMMIT outcome was unknown is found
//! committed (cursors at its ends) or not (cursors unchanged), so no row is sent twice.
//!
//! Invariants (debug-asserted): a committed cursor never moves backwards and never passes
//! `read`; rows of one core enter a batch in WAL order. While a transaction is in flight the
//! flusher decodes what is already available into a second batch (`next`), so memory stays
//! bounded by 2 × `mysql.batch_rows` + `queue.capacity` events.
pub mod batch;
pub mod stats;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use crate::clock::unix_ms;
use crate::config::Config;
use crate::cursor::{open_wal_identity, read_commit_meta, write_commit_meta, CommitMeta};
use crate::mysql::domains::DomainResolver;
use crate::mysql::sink::statement_limit;
use crate::mysql::sql::{self, SqlBuffer};
use crate::mysql::{legacy, migrate, Db, DbError, MysqlStats};
use crate::queue::{CoreProgress, QueueReceiver, WalChunk};
use crate::wal::identity::{LaneId, WalIdentity};
use crate::wal::lane::open_lane;
use crate::wal::quarantine::save_bad_bytes;
use crate::wal::reader::{CoreWalReader, ReadStop};
use crate::wal::record::{decode, RecordError};
use crate::wal::segment::core_dir;
use crate::wal::Position;
use batch::Batch;
use stats::FlushStats;

/// Longest the flusher blocks on the queue before looking at shutdown and idle cores again.
const POLL_MS: u64 = 100;

/// The running flusher thread.
pub struct FlusherHandle {
    thread: JoinHandle<()>,
}

impl FlusherHandle {
    /// Waits for the thread; it returns after `shutdown` was set and its last delivery ended.
    pub fn join(self) -> std::thread::Result<()> {
        self.thread.join()
    }
}

/// Starts the flusher thread. Fails if `commit.meta` is unreadable or corrupt (refusing to
/// guess a cursor, which could duplicate or lose rows) or the thread cannot be started.
pub fn spawn(
    config: &Config,
    queue: QueueReceiver,
    cores: Vec<Arc<CoreProgress>>,
    stats: Arc<FlushStats>,
    mysql_stats: Arc<MysqlStats>,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<FlusherHandle> {
    let invalid = |e: crate::cursor::CursorError| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let dir = &config.wal.dir;
    let identity =
        open_wal_identity(dir, &config.ingest.node_id, &crate::config::hostname()).map_err(invalid)?;
    let lanes = (0..cores.len() as u16)
        .map(|core| open_lane(dir, core).map_err(|e| invalid(e.into())))
        .collect::<Result<Vec<_>, _>>()?;
    let meta = read_commit_meta(dir, &identity).map_err(invalid)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let flusher =
        Flusher::new(config.clone(), queue, cores, stats, mysql_stats, shutdown, (identity, lanes, meta));
    let thread =
        std::thread::Builder::new().name("flusher".into()).spawn(move || runtime.block_on(flusher.run()))?;
    Ok(FlusherHandle { thread })
}

/// Where a core's records currently come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Chunks from the queue continue exactly at `read`.
    Queue,
    /// Reading the WAL from `read` up to the core's `written_end`.
    CatchingUp,
}

/// The flusher's state for one core.
struct Lane {
    /// The lane's id in `commit.meta` (this flusher writes shard 0 only).
    id: LaneId,
    committed: Position,
    read: Position,
    mode: Mode,
    reader: CoreWalReader,
    /// Set while the last WAL read failed with an IO error, so it is logged once.
    io_error_logged: bool,
}

/// Up/down state of the MySQL link, for logging state changes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Unknown,
    Up,
    Down { since: Instant },
}

/// Progress of the startup replay.
struct Replay {
    started: Instant,
    events: u64,
    /// Time spent reading and decoding the WAL (not waiting for MySQL): `events / reading` is
    /// how fast the WAL itself replays, `events / started.elapsed()` how fast it is delivered.
    reading: Duration,
}

struct Flusher {
    config: Config,
    identity: WalIdentity,
    queue: QueueReceiver,
    cores: Vec<Arc<CoreProgress>>,
    stats: Arc<FlushStats>,
    shutdown: Arc<AtomicBool>,
    lanes: Vec<Lane>,
    batch: Batch,
    /// When the first row of the current batch arrived.
    batch_started: Option<Instant>,
    /// Rows taken while `batch` is in flight (see [`Flusher::prefetch`]); its rows follow
    /// `batch`'s in WAL order. It becomes `batch` once `batch` is committed.
    next: Batch,
    next_started: Option<Instant>,
    /// Domain id of each batch row, rebuilt per delivery.
    domain_ids: Vec<u32>,
    sql: SqlBuffer,
    domains: DomainResolver,
    /// Statement limit of the current connection (see `crate::mysql::sink`).
    max_statement_bytes: usize,
    db: Option<Db>,
    /// Migrations and the domain cache preload ran on some connection already.
    initialised: bool,
    link: Link,
    replay: Option<Replay>,
    last_chunk_at: Instant,
    /// A COMMIT was sent and its outcome is not known yet (the connection failed around it).
    commit_in_doubt: bool,
    /// Committed cursors not yet written to `commit.meta`.
    meta_dirty: bool,
    meta_written_at: Instant,
}

impl Flusher {
    fn new(
        config: Config,
        queue: QueueReceiver,
        cores: Vec<Arc<CoreProgress>>,
        stats: Arc<FlushStats>,
        mysql_stats: Arc<MysqlStats>,
        shutdown: Arc<AtomicBool>,
        (identity, lane_ids, meta): (WalIdentity, Vec<LaneId>, Option<CommitMeta>),
    ) -> Flusher {
        debug_assert_eq!(lane_ids.len(), cores.len());
        let lanes = lane_ids
            .into_iter()
            .map(|id| {
                let committed = meta.as_ref().and_then(|m| m.get(id, 0)).unwrap_or_default();
                let dir = core_dir(&config.wal.dir, id.core);
                Lane {
                    id,
                    committed,
                    read: committed,
                    mode: Mode::CatchingUp,
                    reader: CoreWalReader::new(&dir),
                    io_error_logged: false,
                }
            })
            .collect();
        let now = Instant::now();
        Flusher {
            batch: Batch::new(cores.len()),
            next: Batch::new(cores.len()),
            domains: DomainResolver::new(
                config.domains.cache_entries,
                mysql_stats,
                config.mysql.flush_interval_ms,
            ),
            max_statement_bytes: config.mysql.max_statement_bytes,
            config,
            identity,
            queue,
            cores,
            stats,
            shutdown,
            lanes,
            batch_started: None,
            next_started: None,
            domain_ids: Vec::new(),
            sql: SqlBuffer::default(),
            db: None,
            initialised: false,
            link: Link::Unknown,
            replay: Some(Replay { started: now, events: 0, reading: Duration::ZERO }),
            last_chunk_at: now,
            commit_in_doubt: false,
            meta_dirty: false,
            meta_written_at: now,
        }
    }

    async fn run(mut self) {
        info!(cores = self.lanes.len(), node = %self.config.ingest.node_id, "flusher started");
        match self.connect().await {
            Ok(db) => self.db = Some(db),
            Err(e) => self.link_down(&e),
        }
        self.publish_positions();
        while !self.stopping() {
            self.fill_batch();
            if self.batch_due() {
                self.deliver(None).await;
            }
        }
        self.finish().await;
    }

    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// The last bounded delivery attempt on shutdown, then `commit.meta`.
    async fn finish(&mut self) {
        // The cores used up to the first half of the drain budget (see server::core).
        let deadline = Instant::now() + Duration::from_millis(self.config.server.shutdown_timeout_ms / 2);
        while !self.batch.is_empty() && Instant::now() < deadline {
            if !self.deliver(Some(deadline)).await {
                break;
            }
        }
        if !self.batch.is_empty() {
            warn!(
                rows = self.batch.len() + self.next.len(),
                "shutdown: rows not delivered; the WAL replays them at next start"
            );
        }
        self.write_meta();
        info!(flushed = self.stats.events_flushed.load(Ordering::Relaxed), "flusher stopped");
    }

    // ---- filling the batch -------------------------------------------------------------

    /// Takes records (WAL catch-up, then queue) until the batch is due or shutdown begins.
    fn fill_batch(&mut self) {
        loop {
            self.catch_up();
            self.note_batch_start();
            if self.batch_due() || self.stopping() {
                break;
            }
            let wait = self.poll_wait();
            let waited_from = Instant::now();
            match self.queue.recv_timeout(wait) {
                Some(chunk) => {
                    self.last_chunk_at = Instant::now();
                    self.take_chunk(chunk);
                }
                None => {
                    // `None` also comes at once when every sender is gone (cores stopped):
                    // wait out the poll period anyway instead of spinning.
                    std::thread::sleep(wait.saturating_sub(waited_from.elapsed()));
                    self.on_queue_idle();
                }
            }
            self.note_batch_start();
            if self.batch_due() {
                break;
            }
        }
        self.publish_positions();
    }

    /// While a transaction is in flight: takes what is available right now (WAL catch-up,
    /// chunks already queued; never waits) into `next`, so decoding overlaps MySQL's work.
    fn prefetch(&mut self) {
        self.swap_batches();
        loop {
            let before = self.batch.len();
            self.catch_up();
            let chunk = if self.batch_full() { None } else { self.queue.try_recv() };
            let got_chunk = chunk.is_some();
            if let Some(chunk) = chunk {
                self.last_chunk_at = Instant::now();
                self.take_chunk(chunk);
            }
            self.note_batch_start();
            if self.batch_full() || (!got_chunk && self.batch.len() == before) {
                break;
            }
        }
        self.swap_batches();
    }

    fn swap_batches(&mut self) {
        std::mem::swap(&mut self.batch, &mut self.next);
        std::mem::swap(&mut self.batch_started, &mut self.next_started);
    }

    fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.config.mysql.flush_interval_ms)
    }

    fn batch_full(&self) -> bool {
        self.batch.len() >= self.config.mysql.batch_rows
    }

    fn batch_due(&self) -> bool {
        self.batch_full() || self.batch_started.is_some_and(|t| t.elapsed() >= self.flush_interval())
    }

    fn note_batch_start(&mut self) {
        if self.batch_started.is_none() && !self.batch.is_empty() {
            self.batch_started = Some(Instant::now());
        }
    }

    /// How long to block on the queue: until the batch deadline, at most `POLL_MS`.
    fn poll_wait(&self) -> Duration {
        let poll = Duration::from_millis(POLL_MS).min(self.flush_interval());
        match self.batch_started {
            Some(t) => self.flush_interval().saturating_sub(t.elapsed()).min(poll),
            None => poll,
        }
    }

    /// The queue had nothing: catch up cores whose WAL is ahead after a flush interval of
    /// silence, and bring `commit.meta` up to date.
    fn on_queue_idle(&mut self) {
        if self.last_chunk_at.elapsed() >= self.flush_interval() {
            for (lane, core) in self.lanes.iter_mut().zip(&self.cores) {
                if lane.mode == Mode::Queue && core.written_end() > lane.read {
                    lane.mode = Mode::CatchingUp;
                }
            }
        }
        if self.meta_dirty {
            self.write_meta();
        }
    }

    /// Applies the delivery rule to one queue chunk (see the module doc).
    fn take_chunk(&mut self, chunk: WalChunk) {
        let c = usize::from(chunk.core);
        let Some(lane) = self.lanes.get_mut(c) else {
            warn!(core = c, "chunk from an unknown core dropped");
            return;
        };
        if lane.mode != Mode::Queue || chunk.end <= lane.read {
            return;
        }
        if chunk.start > lane.read {
            debug!(core = c, read = ?lane.read, chunk_start = ?chunk.start, "gap in the queue; catching up from the WAL");
            lane.mode = Mode::CatchingUp;
            return;
        }
        self.take_chunk_records(c, &chunk);
    }

    /// Decodes the chunk's records after `read` into the batch. If the batch fills up, the
    /// rest is left to catch-up; so is everything from a bad record on (the WAL decides).
    fn take_chunk_records(&mut self, c: usize, chunk: &WalChunk) {
        let mut offset = 0usize;
        while offset < chunk.bytes.len() {
            let (ev, context, len) = match decode(&chunk.bytes[offset..]) {
                Ok(decoded) => decoded,
                Err(reason) => {
                    let at = Position::new(chunk.start.segment, chunk.start.offset + offset as u64);
                    warn!(core = c, ?at, %reason, "corrupt record in a queue chunk; reading the WAL instead");
                    self.lanes[c].mode = Mode::CatchingUp;
                    return;
                }
            };
            offset += len;
            let end = Position::new(chunk.start.segment, chunk.start.offset + offset as u64);
            let lane = &mut self.lanes[c];
            if end <= lane.read {
                continue;
            }
            if self.batch.len() >= self.config.mysql.batch_rows {
                lane.mode = Mode::CatchingUp;
                return;
            }
            self.batch.push_with_context(c, &ev, &context, end);
            lane.read = end;
        }
        debug_assert_eq!(self.lanes[c].read, chunk.end, "chunk bytes and positions disagree");
    }

    /// Reads the WAL of every catching-up core into the batch, as far as it has room.
    fn catch_up(&mut self) {
        for c in 0..self.lanes.len() {
            let room = self.config.mysql.batch_rows.saturating_sub(self.batch.len());
            if room == 0 {
                break;
            }
            if self.lanes[c].mode == Mode::CatchingUp {
                self.catch_up_core(c, room);
            }
        }
        self.check_replay_done();
    }

    fn catch_up_core(&mut self, c: usize, room: usize) {
        let until = self.cores[c].written_end();
        let Flusher { lanes, batch, .. } = self;
        let lane = &mut lanes[c];
        if lane.read >= until {
            lane.mode = Mode::Queue;
            return;
        }
        let mut events = 0u64;
        let reading = Instant::now();
        let out = lane.reader.read(lane.read, until, room, |ev, context, _raw, end| {
            batch.push_with_context(c, ev, context, end);
            events += 1;
        });
        let reading = reading.elapsed();
        // Whatever stopped the read, the batch holds exactly the records before `end`, and
        // `end..reached` holds none.
        lane.read = out.reached;
        if let Some(cut) = out.cut_below_cursor {
            warn!(
                core = c,
                ?cut,
                "the WAL was cut below the committed cursor; going on with the next segment"
            );
        }
        match out.stop {
            None => {
                lane.io_error_logged = false;
                if lane.read >= until {
                    lane.mode = Mode::Queue;
                }
            }
            Some(ReadStop::Corrupt { at, resume, reason }) => self.on_corrupt(c, at, resume, reason),
            Some(ReadStop::Io(e)) => {
                if !lane.io_error_logged {
                    error!(core = c, error = %e, "cannot read the WAL; retrying");
                    lane.io_error_logged = true;
                }
            }
        }
        self.count_wal_events(events, reading);
    }

    fn count_wal_events(&mut self, events: u64, reading: Duration) {
        match &mut self.replay {
            Some(replay) => {
                replay.events += events;
                replay.reading += reading;
                self.stats.wal_replay_total.fetch_add(events, Ordering::Relaxed);
            }
            None => {
                self.stats.wal_catchup_total.fetch_add(events, Ordering::Relaxed);
            }
        }
    }

    fn check_replay_done(&mut self) {
        if self.replay.is_none() || self.lanes.iter().any(|l| l.mode == Mode::CatchingUp) {
            return;
        }
        if let Some(replay) = self.replay.take() {
            let secs = replay.started.elapsed().as_secs_f64();
            let rate = if secs > 0.0 { replay.events as f64 / secs } else { 0.0 };
            // events_per_sec: delivered into MySQL (bounded by MySQL);
            // read_events_per_sec: read and decoded from the WAL (bounded by this process).
            let reading = replay.reading.as_secs_f64();
            let read_rate = if reading > 0.0 { replay.events as f64 / reading } else { 0.0 };
            info!(
                events = replay.events,
                seconds = secs,
                events_per_sec = rate as u64,
                read_events_per_sec = read_rate as u64,
                "WAL replay done"
            );
            self.stats.replay_done.store(true, Ordering::Relaxed);
        }
    }

    /// Applies the corruption policy (module doc) to the bad bytes `at..resume` of core `c`.
    fn on_corrupt(&mut self, c: usize, at: Position, resume: Position, reason: RecordError) {
        debug_assert_eq!(at.segment, resume.segment);
        let lane = &mut self.lanes[c];
        match save_bad_bytes(&self.config.wal.dir, c as u16, at.segment, at.offset..resume.offset) {
            Ok(saved) => {
                self.stats.corrupt_records.fetch_add(1, Ordering::Relaxed);
                error!(core = c, ?at, ?resume, %reason, bad_bytes = saved.bytes, saved = %saved.path.display(),
                       "corrupt WAL record skipped; its bytes are kept in quarantine");
                lane.read = resume;
                lane.io_error_logged = false;
            }
            Err(e) => {
                if !lane.io_error_logged {
                    error!(core = c, ?at, %reason, error = %e,
                           "corrupt WAL record whose bytes cannot be saved; retrying before going on");
                    lane.io_error_logged = true;
                }
                lane.read = at;
            }
        }
    }

    fn publish_positions(&self) {
        for (c, lane) in self.lanes.iter().enumerate() {
            self.stats.committed[c].store(lane.committed.pack(), Ordering::Relaxed);
            self.stats.read[c].store(lane.read.pack(), Ordering::Relaxed);
        }
    }

    // ---- delivering --------------------------------------------------------------------

    /// Delivers the batch, retrying with back-off until it succeeds, shutdown begins
    /// (`deadline == None`) or `deadline` passes. Returns whether it was delivered.
    async fn deliver(&mut self, deadline: Option<Instant>) -> bool {
        let mut backoff = Duration::from_millis(self.config.mysql.retry_min_ms);
        let backoff_max = Duration::from_millis(self.config.mysql.retry_max_ms);
        loop {
            match self.try_deliver().await {
                Ok(()) => {
                    self.link_up();
                    return true;
                }
                Err(e) => self.link_down(&e),
            }
            let wake = Instant::now() + backoff;
            if deadline.is_some_and(|d| wake >= d) || (deadline.is_none() && self.stopping()) {
                return false;
            }
            while Instant::now() < wake && (deadline.is_some() || !self.stopping()) {
                tokio::time::sleep(Duration::from_millis(POLL_MS).min(backoff)).await;
            }
            backoff = (backoff * 2).min(backoff_max);
        }
    }

    /// One attempt: (re)connect, resolve domains, one transaction. On error the connection
    /// is dropped (it is not put back).
    async fn try_deliver(&mut self) -> Result<(), DbError> {
        let mut db = match self.db.take() {
            Some(db) => db,
            None => self.connect().await?,
        };
        if self.batch.is_empty() {
            // Reconnecting found the batch already committed.
            self.db = Some(db);
            return Ok(());
        }
        let started = Instant::now();
        let max = self.max_statement_bytes;
        self.domains.resolve(&mut db, self.batch.rows(), max, &mut self.domain_ids).await?;
        self.sql.clear();
        sql::build_event_inserts(self.batch.rows(), &self.domain_ids, max, &mut self.sql)?;
        sql::build_user_agent_inserts(self.batch.rows(), max, &mut self.sql)?;
        let ends = self.batch_ends();
        legacy::build_cursor_upsert(&self.config.ingest.node_id, &ends, &mut self.sql);
        db.execute("start transaction", b"START TRANSACTION").await?;
        let sql = std::mem::take(&mut self.sql);
        let (inserted, ()) = tokio::join!(execute_all(&mut db, &sql), async { self.prefetch() });
        self.sql = sql;
        inserted?;
        self.commit_in_doubt = true;
        db.execute("commit", b"COMMIT").await?;
        self.commit_in_doubt = false;
        // `PSC_FAILPOINT=crash_after_commit[:after=N]`: abort between COMMIT and commit.meta.
        crate::failpoint::crash("crash_after_commit");
        self.db = Some(db);
        self.committed(&ends, started);
        Ok(())
    }

    fn batch_ends(&self) -> Vec<(usize, Position)> {
        self.batch.ends().iter().enumerate().filter_map(|(c, e)| e.map(|end| (c, end))).collect()
    }

    /// Opens a connection; the first one also migrates and preloads the domain cache. Every
    /// one re-reads this node's cursors and reconciles before anything is inserted.
    async fn connect(&mut self) -> Result<Db, DbError> {
        let mut db = Db::connect(&self.config.mysql).await?;
        if !self.initialised {
            let applied = migrate::migrate(&mut db).await?;
            if !applied.is_empty() {
                info!(?applied, "migrations applied");
            }
            self.domains.preload(&mut db).await?;
            self.initialised = true;
        }
        self.max_statement_bytes =
            statement_limit(self.config.mysql.max_statement_bytes, db.facts().max_allowed_packet);
        let cursors = legacy::read_cursors(&mut db, &self.config.ingest.node_id).await?;
        self.reconcile(&cursors);
        Ok(db)
    }

    /// Aligns our cursors with MySQL's, which are the truth: a batch whose COMMIT outcome was
    /// unknown was committed iff MySQL has its cursors (the transaction is atomic); a MySQL
    /// cursor ahead of ours (commit.meta lagged) discards the batch and restarts every core
    /// from MySQL's cursors, so nothing at or below them is inserted again.
    fn reconcile(&mut self, cursors: &[(usize, Position)]) {
        let mut mysql = vec![Position::default(); self.lanes.len()];
        for &(core, pos) in cursors {
            match mysql.get_mut(core) {
                Some(slot) => *slot = pos,
                None => warn!(core, "ingest_cursors has a core this node does not run"),
            }
        }
        if std::mem::take(&mut self.commit_in_doubt) {
            let ends = self.batch_ends();
            if ends.iter().all(|&(c, end)| mysql[c] >= end) {
                info!(rows = self.batch.len(), "the batch in doubt was committed before the connection died");
                self.committed(&ends, Instant::now());
            } else {
                info!(rows = self.batch.len(), "the batch in doubt was not committed; sending it again");
            }
        }
        if !self.lanes.iter().zip(&mysql).any(|(lane, &m)| m > lane.committed) {
            return;
        }
        info!(?mysql, "MySQL cursors are ahead of commit.meta; restarting from them");
        self.batch.clear();
        self.batch_started = None;
        self.next.clear();
        self.next_started = None;
        for (c, (lane, &m)) in self.lanes.iter_mut().zip(&mysql).enumerate() {
            if m > self.cores[c].written_end() {
                warn!(core = c, mysql = ?m, "MySQL cursor is past this core's WAL end");
            }
            lane.committed = lane.committed.max(m);
            lane.read = lane.committed;
            lane.mode = Mode::CatchingUp;
        }
        self.meta_dirty = true;
        self.publish_positions();
    }

    /// Records a committed batch: cursors, stats, the prefetched `next` becomes the batch, then
    /// `commit.meta` and compaction.
    fn committed(&mut self, ends: &[(usize, Position)], started: Instant) {
        for &(c, end) in ends {
            let lane = &mut self.lanes[c];
            debug_assert!(end >= lane.committed, "committed cursor moved backwards");
            debug_assert!(end <= lane.read, "committed cursor passed read");
            lane.committed = end;
        }
        let rows = self.batch.len() as u64;
        let elapsed = started.elapsed();
        let s = &self.stats;
        s.events_flushed.fetch_add(rows, Ordering::Relaxed);
        s.batches.fetch_add(1, Ordering::Relaxed);
        s.last_flush_unix_ms.store(unix_ms(), Ordering::Relaxed);
        s.last_flush_rows.store(rows, Ordering::Relaxed);
        s.last_flush_duration_us.store(elapsed.as_micros() as u64, Ordering::Relaxed);
        s.flush_duration_seconds.observe(elapsed.as_secs_f64());
        s.batch_rows.observe(rows as f64);
        self.batch.clear();
        self.batch_started = None;
        self.swap_batches();
        self.meta_dirty = true;
        self.publish_positions();
        // commit.meta is a lagging mirror of MySQL (the truth), so it is written at most once
        // per flush interval under load and whenever the queue goes idle.
        if self.meta_written_at.elapsed() >= self.flush_interval() {
            self.write_meta();
        }
    }

    /// Writes `commit.meta`, then deletes the segments behind it.
    fn write_meta(&mut self) {
        let mut meta = CommitMeta::new(self.identity.clone());
        for lane in self.lanes.iter().filter(|l| l.committed != Position::default()) {
            meta.set(lane.id, 0, lane.committed);
        }
        self.meta_written_at = Instant::now();
        if let Err(e) = write_commit_meta(&self.config.wal.dir, &meta) {
            error!(error = %e, "cannot write commit.meta; segments are kept until it succeeds");
            return;
        }
        self.meta_dirty = false;
        for lane in &self.lanes {
            // The cursor was just made durable in commit.meta (and was committed in MySQL).
            match crate::compact::compact_lane(&core_dir(&self.config.wal.dir, lane.id.core), lane.committed)
            {
                Ok(done) if done.segments == 0 => {}
                Ok(done) => {
                    self.stats.wal_disk_bytes.fetch_sub(done.bytes, Ordering::Relaxed);
                    debug!(lane = %lane.id, deleted = done.segments, bytes = done.bytes, "compacted WAL segments");
                }
                Err(e) => warn!(lane = %lane.id, error = %e, "WAL compaction failed"),
            }
        }
    }

    fn link_up(&mut self) {
        match self.link {
            Link::Down { since } => {
                info!(down_for_ms = since.elapsed().as_millis() as u64, "MySQL reachable again")
            }
            Link::Unknown => info!("MySQL reachable"),
            Link::Up => return,
        }
        self.link = Link::Up;
        self.stats.mysql_up.store(true, Ordering::Relaxed);
        self.stats.mysql_down_since_unix_ms.store(0, Ordering::Relaxed);
    }

    fn link_down(&mut self, e: &DbError) {
        self.db = None;
        if matches!(self.link, Link::Down { .. }) {
            return;
        }
        error!(error = %e, "MySQL unavailable; retrying with back-off");
        self.link = Link::Down { since: Instant::now() };
        self.stats.mysql_up.store(false, Ordering::Relaxed);
        self.stats.mysql_down_since_unix_ms.store(unix_ms(), Ordering::Relaxed);
    }
}

/// Runs every statement of `sql`, in order.
async fn execute_all(db: &mut Db, sql: &SqlBuffer) -> Result<(), DbError> {
    for statement in sql.statements() {
        db.execute("insert", statement).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Offer, QueueSender};
    use crate::wal::record::{encode, Context, Event};

    fn record(file_id: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let ev = Event { ts_ms: 1, event: "play", domain: "x.org", file_id };
        encode(&ev, &Context::NONE, &mut out);
        out
    }

    /// A chunk of `n` records of core 0 starting at `start`.
    fn chunk(start: Position, n: u64) -> WalChunk {
        let bytes: Vec<u8> = (0..n).flat_map(|i| record(start.offset + i + 1)).collect();
        let end = Position::new(start.segment, start.offset + bytes.len() as u64);
        WalChunk { core: 0, start, end, records: n as u32, bytes }
    }

    fn flusher(batch_rows: usize) -> (Flusher, tempfile::TempDir) {
        let (f, _tx, wal) = flusher_with_queue(batch_rows);
        (f, wal)
    }

    fn flusher_with_queue(batch_rows: usize) -> (Flusher, QueueSender, tempfile::TempDir) {
        let wal = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.wal.dir = wal.path().to_owned();
        config.mysql.batch_rows = batch_rows;
        let (tx, rx) = crate::queue::bounded(16);
        let cores = vec![Arc::new(CoreProgress::new(Position::default()))];
        let stats = Arc::new(FlushStats::new(1));
        let identity = WalIdentity { node: "test".into(), wal: crate::wal::identity::WalId(1) };
        let lanes = vec![open_lane(wal.path(), 0).unwrap()];
        let shutdown = Arc::new(AtomicBool::new(false));
        let f = Flusher::new(config, rx, cores, stats, Arc::default(), shutdown, (identity, lanes, None));
        (f, tx, wal)
    }

    fn on_queue(f: &mut Flusher, read: Position) {
        f.lanes[0].read = read;
        f.lanes[0].committed = read;
        f.lanes[0].mode = Mode::Queue;
    }

    #[test]
    fn chunk_at_read_is_taken_stale_dropped_gap_switches_to_catch_up() {
        let (mut f, _wal) = flusher(100);
        on_queue(&mut f, Position::new(1, 0));
        let first = chunk(Position::new(1, 0), 3);
        let first_end = first.end;
        f.take_chunk(first);
        assert_eq!((f.batch.len(), f.lanes[0].read), (3, first_end));
        f.take_chunk(chunk(Position::new(1, 0), 2));
        assert_eq!(f.batch.len(), 3, "stale chunk dropped");
        assert_eq!(f.lanes[0].mode, Mode::Queue);
        f.take_chunk(chunk(Position::new(1, first_end.offset + 500), 2));
        assert_eq!(f.batch.len(), 3, "chunk after a gap dropped");
        assert_eq!(f.lanes[0].mode, Mode::CatchingUp);
    }

    #[test]
    fn full_batch_leaves_the_rest_of_a_chunk_to_catch_up() {
        let (mut f, _wal) = flusher(2);
        on_queue(&mut f, Position::new(1, 0));
        f.take_chunk(chunk(Position::new(1, 0), 5));
        assert_eq!(f.batch.len(), 2);
        assert_eq!(f.lanes[0].read, f.batch.ends()[0].unwrap());
        assert_eq!(f.lanes[0].mode, Mode::CatchingUp);
    }

    #[test]
    fn corrupt_chunk_hands_the_core_to_the_wal() {
        let (mut f, _wal) = flusher(100);
        on_queue(&mut f, Position::new(1, 0));
        let mut c = chunk(Position::new(1, 0), 3);
        let second = record(1).len();
        c.bytes[second + 12] ^= 1;
        f.take_chunk(c);
        assert_eq!(f.batch.len(), 1, "the record before the bad one is kept");
        assert_eq!(f.lanes[0].read, Position::new(1, second as u64));
        assert_eq!(f.lanes[0].mode, Mode::CatchingUp);
    }

    /// Writes segments 1..=3 of core 0 (4 records each) with a bad CRC in record 2 of `bad`.
    fn wal_with_bad_segment(wal: &std::path::Path, bad: u32) -> Vec<u64> {
        let dir = core_dir(wal, 0);
        std::fs::create_dir_all(&dir).unwrap();
        let mut ends = Vec::new();
        for n in 1..=3u32 {
            let mut bytes: Vec<u8> = (0..4).flat_map(|i| record(u64::from(n) * 10 + i)).collect();
            if n == bad {
                bytes[record(u64::from(n) * 10).len()] ^= 0x01;
            }
            ends.push(bytes.len() as u64);
            std::fs::write(crate::wal::segment::segment_path(&dir, n), bytes).unwrap();
        }
        ends
    }

    /// Catches up until the lane has nothing more to read; returns the batch's file ids.
    fn catch_up_fully(f: &mut Flusher) -> Vec<u64> {
        for _ in 0..10 {
            f.catch_up();
        }
        f.batch.rows().rows().iter().map(|r| r.file_id).collect()
    }

    // The corruption policy changed (issue 10 item 5): a bad record costs that record only.
    // These two tests replace `corrupt_sealed_segment_is_quarantined_and_delivery_goes_on`
    // (records after the bad one were lost with their quarantined segment) and
    // `corrupt_open_segment_waits_until_it_is_sealed` (the core stalled on it).
    #[test]
    fn a_corrupt_record_in_a_sealed_segment_costs_that_record_only() {
        let (mut f, wal) = flusher(100);
        let ends = wal_with_bad_segment(wal.path(), 2);
        f.cores[0].publish_written(Position::new(3, ends[2]));
        let ids = catch_up_fully(&mut f);
        assert_eq!(ids, vec![10, 11, 12, 13, 20, 22, 23, 30, 31, 32, 33], "only record 21 is lost");
        assert_eq!(f.stats.corrupt_records.load(Ordering::Relaxed), 1);
        let at = record(20).len();
        let saved = wal.path().join("quarantine").join(format!("core-0.000002.log.at-{at}"));
        assert_eq!(std::fs::read(saved).unwrap().len(), record(21).len(), "its bytes are kept");
        assert!(core_dir(wal.path(), 0).join("000002.log").exists(), "no segment is moved");
        assert_eq!((f.lanes[0].read, f.lanes[0].mode), (Position::new(3, ends[2]), Mode::Queue));
    }

    #[test]
    fn a_corrupt_record_in_the_open_segment_is_skipped_the_same_way() {
        let (mut f, wal) = flusher(100);
        let ends = wal_with_bad_segment(wal.path(), 3);
        f.cores[0].publish_written(Position::new(3, ends[2]));
        let ids = catch_up_fully(&mut f);
        assert_eq!(&ids[8..], &[30, 32, 33]);
        assert_eq!(f.stats.corrupt_records.load(Ordering::Relaxed), 1, "counted once");
        assert_eq!(f.lanes[0].mode, Mode::Queue);
    }

    #[test]
    fn reconcile_restarts_from_mysql_when_it_is_ahead() {
        let (mut f, _wal) = flusher(100);
        on_queue(&mut f, Position::new(1, 0));
        f.take_chunk(chunk(Position::new(1, 0), 3));
        f.reconcile(&[(0, Position::new(1, 50))]);
        assert!(f.batch.is_empty());
        assert_eq!(f.lanes[0].committed, Position::new(1, 50));
        assert_eq!(f.lanes[0].read, Position::new(1, 50));
        assert_eq!(f.lanes[0].mode, Mode::CatchingUp);
        assert_eq!(f.stats.events_flushed.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn reconcile_settles_a_commit_in_doubt() {
        let (mut f, _wal) = flusher(100);
        on_queue(&mut f, Position::new(1, 0));
        let c = chunk(Position::new(1, 0), 3);
        let end = c.end;
        f.take_chunk(c);
        f.commit_in_doubt = true;
        f.reconcile(&[(0, Position::new(1, 0))]);
        assert_eq!(f.batch.len(), 3, "not committed: kept for the retry");
        assert_eq!(f.lanes[0].committed, Position::new(1, 0));
        f.commit_in_doubt = true;
        f.reconcile(&[(0, end)]);
        assert!(f.batch.is_empty(), "committed: not sent again");
        assert_eq!(f.lanes[0].committed, end);
        assert_eq!(f.stats.events_flushed.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn prefetched_rows_become_the_batch_after_commit() {
        let (mut f, tx, _wal) = flusher_with_queue(100);
        on_queue(&mut f, Position::new(1, 0));
        let first = chunk(Position::new(1, 0), 2);
        let first_end = first.end;
        f.take_chunk(first);
        assert_eq!(tx.offer(chunk(first_end, 3)), Offer::Queued);
        f.prefetch();
        assert_eq!((f.batch.len(), f.next.len()), (2, 3), "in-flight batch untouched");
        let ends = f.batch_ends();
        f.committed(&ends, Instant::now());
        assert_eq!(f.lanes[0].committed, first_end);
        assert_eq!((f.batch.len(), f.next.len()), (3, 0));
        assert!(f.batch_started.is_some());
    }
}
