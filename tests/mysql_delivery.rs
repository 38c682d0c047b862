//! The flusher against a real MariaDB: WAL segments written with the record encoder, the
//! flusher thread spawned as the server does, and the database checked row by row.
//!
//! Covered: exactly-once delivery from a WAL replay, restart without re-delivery, MySQL
//! unreachable at start with a `commit.meta` behind MySQL, and delivery through the queue
//! with chunks dropped when it is full (plus a segment roll and compaction).
mod support;

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use psc::config::Config;
use psc::cursor::read_commit_meta;
use psc::flush::core::LaneInit;
use psc::flush::stats::FlushStats;
use psc::flush::{self, FlusherHandle, FlusherInputs};
use psc::queue::{self, CoreProgress, Offer, QueueReceiver, WalChunk};
use psc::wal::identity::read_identity;
use psc::wal::lane::{open_lane, read_lane};
use psc::wal::record::{encode, Context, Event};
use psc::wal::segment::{core_dir, segment_path};
use psc::wal::Position;
use support::{unique_file_ids, wait_for, MariaDb};

const NODE: &str = "test-node";
const EVENTS: [&str; 4] = ["play", "pause", "start", "end"];
const DOMAINS: usize = 50;
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// 2025-11-23 18:39:30.000 UTC.
const BASE_TS_MS: u64 = 1_763_923_170_000;

fn domain(i: usize) -> String {
    format!("d{}.example.org", i % DOMAINS)
}

/// Appends `file_ids.len()` events to `<wal>/core-N/<segment>.log`; returns the new tail
/// and adds each event's domain to `per_domain`.
fn append_events(
    wal: &Path,
    core: u16,
    segment: u32,
    file_ids: &[u64],
    per_domain: &mut HashMap<String, u64>,
) -> Position {
    let dir = core_dir(wal, core);
    fs::create_dir_all(&dir).unwrap();
    let mut bytes = Vec::new();
    for (i, &file_id) in file_ids.iter().enumerate() {
        let name = domain(file_id as usize);
        let ev = Event { ts_ms: BASE_TS_MS + (file_id % 1000), event: EVENTS[i % 4], domain: &name, file_id };
        encode(&ev, &Context::NONE, &mut bytes);
        *per_domain.entry(name).or_default() += 1;
    }
    let path = segment_path(&dir, segment);
    let mut file = OpenOptions::new().create(true).append(true).open(&path).unwrap();
    file.write_all(&bytes).unwrap();
    Position::new(segment, fs::metadata(&path).unwrap().len())
}

fn config(wal: &Path, url: &str, batch_rows: usize) -> Config {
    let mut c = Config::default();
    c.wal.dir = wal.to_owned();
    c.mysql.url = url.to_owned();
    c.mysql.batch_rows = batch_rows;
    c.mysql.flush_interval_ms = 50;
    c.mysql.connect_timeout_ms = 2000;
    c.mysql.retry_min_ms = 20;
    c.mysql.retry_max_ms = 200;
    c.ingest.node_id = NODE.into();
    c.server.shutdown_timeout_ms = 5000;
    c.validate().unwrap();
    c
}

struct Running {
    handle: FlusherHandle,
    stats: Arc<FlushStats>,
    shutdown: Arc<AtomicBool>,
    started: Instant,
}

fn start_flusher(config: &Config, queue: QueueReceiver, cores: Vec<Arc<CoreProgress>>) -> Running {
    let stats = Arc::new(FlushStats::new(cores.len(), 1));
    let shutdown = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    // What the server does before it starts the flusher, minus recovery (these WALs are
    // written by hand, and their newest segments are appended to across restarts).
    let dir = &config.wal.dir;
    let identity = psc::cursor::open_wal_identity(dir, NODE, "test-host").unwrap();
    let lanes = (0..cores.len() as u16)
        .map(|core| LaneInit {
            id: open_lane(dir, core).unwrap(),
            live: true,
            end: cores[usize::from(core)].written_end(),
        })
        .collect();
    let meta = read_commit_meta(dir, &identity).unwrap();
    let inputs = FlusherInputs {
        config: config.clone(),
        identity,
        lanes,
        meta,
        queue,
        progress: cores,
        stats: stats.clone(),
        mysql_stats: Arc::default(),
        clickhouse_stats: Arc::default(),
        shutdown: shutdown.clone(),
    };
    let handle = flush::spawn(inputs).unwrap();
    Running { handle, stats, shutdown, started }
}

/// A flusher over a WAL written beforehand, with an empty queue nobody sends to.
fn start_on_wal(config: &Config, tails: &[Position]) -> Running {
    let (_tx, rx) = queue::bounded(16);
    let cores = tails.iter().map(|&t| Arc::new(CoreProgress::new(t))).collect();
    start_flusher(config, rx, cores)
}

impl Running {
    /// Waits until `n` rows are flushed; returns the rate since start (rows/s).
    fn wait_flushed(&self, n: u64) -> f64 {
        wait_for(&format!("{n} rows flushed"), DELIVERY_TIMEOUT, || {
            self.stats.events_flushed.load(Ordering::Relaxed) >= n
        });
        n as f64 / self.started.elapsed().as_secs_f64()
    }

    fn stop(self) -> Arc<FlushStats> {
        self.shutdown.store(true, Ordering::Release);
        self.handle.join();
        self.stats
    }
}

fn db_cursors(db: &MariaDb) -> Vec<Position> {
    db.query_rows(&format!(
        "SELECT segment, `offset` FROM ingest_cursors WHERE node = '{NODE}' ORDER BY core"
    ))
    .iter()
    .map(|r| Position::new(r[0].parse().unwrap(), r[1].parse().unwrap()))
    .collect()
}

/// The cursor `commit.meta` holds for each core's lane (shard 0), in core order.
fn commit_meta_cursors(wal: &Path) -> Vec<Position> {
    let identity = read_identity(wal).unwrap().expect("IDENTITY");
    let meta = read_commit_meta(wal, &identity).unwrap().expect("commit.meta");
    let mut cursors = Vec::new();
    while let Some(lane) = read_lane(&core_dir(wal, cursors.len() as u16)).unwrap() {
        cursors.push(meta.get(lane, 0).unwrap_or_default());
    }
    cursors
}

fn db_per_domain(db: &MariaDb) -> HashMap<String, u64> {
    db.query_rows(
        "SELECT d.name, COUNT(*) FROM events e JOIN domains d ON d.id = e.domain_id GROUP BY d.name",
    )
    .iter()
    .map(|r| (r[0].clone(), r[1].parse().unwrap()))
    .collect()
}

/// Writes `per_core` events to segment 1 of each of 2 cores; returns the tails.
fn write_two_cores(wal: &Path, per_core: usize, per_domain: &mut HashMap<String, u64>) -> Vec<Position> {
    (0..2).map(|core| append_events(wal, core, 1, &unique_file_ids(per_core), per_domain)).collect()
}

fn assert_exactly_once(db: &MariaDb, total: u64, per_domain: &HashMap<String, u64>) {
    assert_eq!(db.query_count("SELECT COUNT(*) FROM events"), total);
    assert_eq!(db.query_count("SELECT COUNT(DISTINCT file_id) FROM events"), total);
    assert_eq!(db.query_count("SELECT COUNT(*) FROM domains"), per_domain.len() as u64);
    assert_eq!(&db_per_domain(db), per_domain);
}

#[test]
fn replays_a_wal_into_mysql_exactly_once() {
    let db = MariaDb::start();
    let wal = tempfile::tempdir().unwrap();
    let mut per_domain = HashMap::new();
    let tails = write_two_cores(wal.path(), 5000, &mut per_domain);
    let config = config(wal.path(), &db.url, 5000);

    let flusher = start_on_wal(&config, &tails);
    let rate = flusher.wait_flushed(10_000);
    let stats = flusher.stop();
    eprintln!("10,000-row replay drained at {rate:.0} rows/s");

    assert_exactly_once(&db, 10_000, &per_domain);
    assert_eq!(stats.events_flushed.load(Ordering::Relaxed), 10_000);
    assert_eq!(stats.wal_replay_total.load(Ordering::Relaxed), 10_000);
    assert!(stats.replay_done.load(Ordering::Relaxed));
    assert_eq!(stats.corrupt_records.load(Ordering::Relaxed), 0);
    assert_eq!(db_cursors(&db), tails);
    assert_eq!(commit_meta_cursors(wal.path()), tails);
    // Each run of 5000 consecutive file ids covers every millisecond 000..999 five times.
    assert_eq!(
        db.query_count("SELECT COUNT(*) FROM events WHERE received_at = '2025-11-23 18:39:30.123'"),
        10
    );
    assert_eq!(
        db.query_count(
            "SELECT COUNT(*) FROM events \
             WHERE received_at < '2025-11-23 18:39:30' OR received_at >= '2025-11-23 18:39:31'"
        ),
        0
    );
}

#[test]
fn restart_delivers_only_new_events() {
    let db = MariaDb::start();
    let wal = tempfile::tempdir().unwrap();
    let mut per_domain = HashMap::new();
    let tails = write_two_cores(wal.path(), 5000, &mut per_domain);
    let config = config(wal.path(), &db.url, 5000);
    let first = start_on_wal(&config, &tails);
    first.wait_flushed(10_000);
    first.stop();

    let tails = write_two_cores(wal.path(), 250, &mut per_domain);
    let second = start_on_wal(&config, &tails);
    second.wait_flushed(500);
    let stats = second.stop();

    assert_exactly_once(&db, 10_500, &per_domain);
    assert_eq!(stats.events_flushed.load(Ordering::Relaxed), 500);
    assert_eq!(stats.wal_replay_total.load(Ordering::Relaxed), 500, "committed events re-read");
    assert_eq!(db_cursors(&db), tails);
    assert_eq!(commit_meta_cursors(wal.path()), tails);
}

/// MySQL down at start and `commit.meta` lost: the flusher must learn MySQL's cursors on
/// reconnect, before inserting anything, and deliver only what MySQL does not have.
#[test]
fn mysql_unreachable_at_start_then_back_delivers_exactly_once() {
    let mut db = MariaDb::start();
    let wal = tempfile::tempdir().unwrap();
    let mut per_domain = HashMap::new();
    let tails = write_two_cores(wal.path(), 5000, &mut per_domain);
    let config = config(wal.path(), &db.url, 1000);
    let first = start_on_wal(&config, &tails);
    first.wait_flushed(10_000);
    first.stop();

    fs::remove_file(wal.path().join("commit.meta")).unwrap();
    let tails = write_two_cores(wal.path(), 250, &mut per_domain);
    db.kill9();
    let second = start_on_wal(&config, &tails);
    wait_for("the flusher to notice MySQL is down", DELIVERY_TIMEOUT, || {
        second.stats.mysql_down_since_unix_ms.load(Ordering::Relaxed) != 0
    });
    // Let it retry a few times against the dead server with a full batch in hand.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(second.stats.events_flushed.load(Ordering::Relaxed), 0);
    db.restart();
    second.wait_flushed(500);
    let stats = second.stop();

    assert_exactly_once(&db, 10_500, &per_domain);
    assert_eq!(stats.events_flushed.load(Ordering::Relaxed), 500);
    assert!(stats.mysql_up.load(Ordering::Relaxed));
    assert_eq!(db_cursors(&db), tails);
    assert_eq!(commit_meta_cursors(wal.path()), tails);
}

/// What a core does, simplified: append a chunk to its segment, publish it, offer it.
struct FakeCore {
    core: u16,
    wal: std::path::PathBuf,
    segment: u32,
    progress: Arc<CoreProgress>,
    tx: queue::QueueSender,
    queued: u64,
    full: u64,
}

impl FakeCore {
    fn write_chunk(&mut self, file_ids: &[u64], per_domain: &mut HashMap<String, u64>) {
        let start = self.progress.written_end();
        let start = if start.segment == self.segment { start } else { Position::new(self.segment, 0) };
        let end = append_events(&self.wal, self.core, self.segment, file_ids, per_domain);
        let path = segment_path(&core_dir(&self.wal, self.core), self.segment);
        let mut bytes = vec![0; (end.offset - start.offset) as usize];
        fs::File::open(path).unwrap().read_exact_at(&mut bytes, start.offset).unwrap();
        self.progress.publish_written(end);
        let chunk = WalChunk { core: self.core, start, end, records: file_ids.len() as u32, bytes };
        match self.tx.offer(chunk) {
            Offer::Queued => self.queued += 1,
            Offer::Full => self.full += 1,
            Offer::Closed => panic!("flusher gone"),
        }
    }
}

#[test]
fn queue_path_with_full_queue_loses_and_duplicates_nothing() {
    let db = MariaDb::start();
    let wal = tempfile::tempdir().unwrap();
    let config = config(wal.path(), &db.url, 500);
    let (tx, rx) = queue::bounded(16);
    let progress: Vec<_> = (0..2).map(|_| Arc::new(CoreProgress::new(Position::default()))).collect();
    for core in 0..2 {
        fs::create_dir_all(core_dir(wal.path(), core)).unwrap();
    }
    let flusher = start_flusher(&config, rx, progress.clone());
    let mut cores: Vec<FakeCore> = (0..2u16)
        .map(|core| FakeCore {
            core,
            wal: wal.path().to_owned(),
            segment: 1,
            progress: progress[core as usize].clone(),
            tx: tx.clone(),
            queued: 0,
            full: 0,
        })
        .collect();
    let mut per_domain = HashMap::new();
    let per_core = 5000;
    let mut written = 0;
    let mut chunk_records = 1;
    while written < per_core {
        if written >= per_core / 2 {
            cores.iter_mut().for_each(|c| c.segment = 2);
        }
        let n = chunk_records.min(per_core - written);
        for core in &mut cores {
            core.write_chunk(&unique_file_ids(n), &mut per_domain);
        }
        written += n;
        chunk_records = chunk_records % 7 + 1;
        if written % 100 < 7 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let rate = flusher.wait_flushed(10_000);
    eprintln!("queue path drained at {rate:.0} rows/s");
    wait_for("segment 1 of every core compacted", DELIVERY_TIMEOUT, || {
        (0..2).all(|c| !segment_path(&core_dir(wal.path(), c), 1).exists())
    });
    let stats = flusher.stop();

    let (queued, full): (u64, u64) = cores.iter().fold((0, 0), |(q, f), c| (q + c.queued, f + c.full));
    assert!(queued > 0 && full > 0, "queued {queued}, full {full}: both paths must be exercised");
    assert_exactly_once(&db, 10_000, &per_domain);
    assert_eq!(stats.events_flushed.load(Ordering::Relaxed), 10_000);
    let tails: Vec<Position> = progress.iter().map(|p| p.written_end()).collect();
    assert_eq!(db_cursors(&db), tails);
    assert_eq!(commit_meta_cursors(wal.path()), tails);
    assert!(tails.iter().all(|t| t.segment == 2));
}

/// Not a benchmark with assertions: prints the drain and replay rate of a bigger WAL.
#[test]
fn drain_rate_of_200k_events() {
    // Shows the flusher's own log, including its "WAL replay done … events_per_sec" line.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let db = MariaDb::start();
    let wal = tempfile::tempdir().unwrap();
    let mut per_domain = HashMap::new();
    let tails = write_two_cores(wal.path(), 100_000, &mut per_domain);
    let config = config(wal.path(), &db.url, 5000);
    let flusher = start_on_wal(&config, &tails);
    let rate = flusher.wait_flushed(200_000);
    let stats = flusher.stop();
    eprintln!(
        "200,000-event replay drained at {rate:.0} rows/s in {} batches (last {} µs)",
        stats.batches.load(Ordering::Relaxed),
        stats.last_flush_duration_us.load(Ordering::Relaxed)
    );
    assert_exactly_once(&db, 200_000, &per_domain);
}

/// A corrupt record in the middle of a segment costs that record only: everything before and
/// after it is delivered, it is counted and its bytes are kept in `quarantine/`, nothing
/// panics.
///
/// Changed with issue 10 item 5: this test was `corrupt_record_stalls_its_core_without_skipping`
/// and asserted the old policy (the core stopped at the bad record: 50 rows, cursor and read
/// position at its start). The new policy skips the bad record after saving its bytes.
#[test]
fn corrupt_record_costs_that_record_only() {
    let db = MariaDb::start();
    let wal = tempfile::tempdir().unwrap();
    let mut bytes = Vec::new();
    let mut ends = Vec::new();
    for (i, file_id) in unique_file_ids(100).into_iter().enumerate() {
        let ev = Event { ts_ms: BASE_TS_MS, event: EVENTS[i % 4], domain: "x.org", file_id };
        encode(&ev, &Context::NONE, &mut bytes);
        ends.push(bytes.len() as u64);
    }
    // Change the first CRC digit of record 50 to another hex digit.
    let bad = ends[49] as usize;
    bytes[bad] = if bytes[bad] == b'0' { b'1' } else { b'0' };
    let dir = core_dir(wal.path(), 0);
    fs::create_dir_all(&dir).unwrap();
    fs::write(segment_path(&dir, 1), &bytes).unwrap();
    let tail = Position::new(1, bytes.len() as u64);

    let flusher = start_on_wal(&config(wal.path(), &db.url, 5000), &[tail]);
    flusher.wait_flushed(99);
    let stats = flusher.stop();

    assert_eq!(db.query_count("SELECT COUNT(*) FROM events"), 99);
    assert_eq!(stats.corrupt_records.load(Ordering::Relaxed), 1);
    assert_eq!(db_cursors(&db), vec![tail]);
    assert_eq!(Position::unpack(stats.read[0].load(Ordering::Relaxed)), tail);
    let saved = wal.path().join("quarantine").join(format!("core-0.000001.log.at-{bad}"));
    assert_eq!(fs::read(saved).unwrap(), &bytes[bad..ends[50] as usize]);
}

#[test]
fn migrate_blocking_applies_each_migration_once() {
    let db = MariaDb::start();
    let wal = tempfile::tempdir().unwrap();
    let config = config(wal.path(), &db.url, 5000);
    assert_eq!(
        psc::mysql::migrate_blocking(&config).unwrap(),
        vec![
            "001_init".to_owned(),
            "002_client_context".to_owned(),
            "003_lanes".to_owned(),
            "004_stored_fields".to_owned()
        ]
    );
    assert!(psc::mysql::migrate_blocking(&config).unwrap().is_empty());
    assert_eq!(db.query_count("SELECT COUNT(*) FROM schema_migrations"), 4);
    let tables = db.query_rows("SHOW TABLES");
    let mut names: Vec<&str> = tables.iter().map(|r| r[0].as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "domains",
            "events",
            "ingest_cursors",
            "ingest_cursors_v1",
            "ingest_rejects",
            "schema_migrations",
            "user_agents"
        ]
    );
    // 002 re-applied statement by statement (a crash half-way) is harmless.
    for statement in psc::mysql::split_statements(psc::mysql::MIGRATIONS[1].1) {
        db.query_rows(&statement);
    }
    let nullable = db.query_count(
        "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE() \
         AND table_name = 'events' AND is_nullable = 'YES' AND column_comment <> '' \
         AND column_name IN ('client_ip', 'ua_hash', 'referer_host', 'extra')",
    );
    assert_eq!(nullable, 4, "the context columns are nullable and commented");
}

#[test]
fn migrate_blocking_reports_an_unreachable_server() {
    let wal = tempfile::tempdir().unwrap();
    let url = format!("mysql://psc:x@127.0.0.1:{}/psc", support::free_closed_port());
    let err = psc::mysql::migrate_blocking(&config(wal.path(), &url, 5000)).unwrap_err();
    assert!(err.to_string().contains("connect"), "{err}");
}
