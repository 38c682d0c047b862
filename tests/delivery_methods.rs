//! The delivery methods of issue 11 end to end, through the real binary and a private MariaDB:
//!
//! - `kill -9` five times under load, with `mysql.method = insert`, with `load_data`, and with
//!   a `[[rollup]]` (event, domain, file_id per minute) beside the raw rows and alone
//!   (`raw_events = false`): every acknowledged event is counted exactly once, in `events` and
//!   in the rollup alike, and with unique file ids no rollup key counts more than one event;
//! - LOAD DATA refused by the server: a server started with `local_infile=0` gets multi-row
//!   INSERTs (said in the log), and `local_infile` switched off under a running collector makes
//!   it fall back; both deliver everything exactly once;
//! - two lanes, their delivery connections killed with `KILL CONNECTION` every 300 ms: rows of
//!   both lanes keep landing, and everything is exact at the end;
//! - field contents that stress TSV and SQL escaping (tab, newline, CR, backslash, quotes, NUL,
//!   0x1A, `NULL`, `\N`, non-ASCII), in every stored field a client controls: `extra` (from the
//!   query, percent-encoded and raw), the User-Agent, the Referer, the client IP (through
//!   `X-Forwarded-For`) and the event id, whose bytes hold the same specials; they arrive
//!   byte-identical (`HEX()`) by LOAD DATA and by INSERT.
//!
//! Every wait is bounded; every process is stopped by its PID (harness `Drop`).

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use psc::ingest::client::ua_hash;
use psc::mysql::lease::lock_name;
use support::load::{
    domain_of, event_of, peak_rss_kib, print_report, send_exact, wait_delivered, Delivery, Load, LoadReport,
    LoadShape,
};
use support::{http_get, unique_file_ids, wait_for, Collector, MariaDb};

/// Longest the collector may take to deliver its backlog once the load stopped.
const DRAIN: Duration = Duration::from_secs(120);
/// Small batches, a short flush interval and short back-off, so the scenarios move quickly.
const FAST_MYSQL: &str = "batch_rows = 2000\nflush_interval_ms = 100\nretry_max_ms = 500\n";
/// Rounds of `kill -9` per scenario (the issue's ×5).
const KILLS: usize = 5;
const ROLLUP: &str = "[[rollup]]\nname = \"plays\"\nbucket = \"minute\"\n\
                      dimensions = [\"event\", \"domain\", \"file_id\"]\n";

/// Two cores, small WAL segments (several per run, so compaction happens under the kills), and
/// `mysql_keys` under `[mysql]`; `rest` is TOML after it (other tables, `[[rollup]]`).
fn config(mysql_keys: &str, rest: &str) -> String {
    format!(
        "[server]\ncores = 2\n[queue]\ncapacity = 2048\n\
         [wal]\nsegment_bytes = 262144\nwrite_buffer_bytes = 65536\n\
         [mysql]\n{FAST_MYSQL}{mysql_keys}{rest}"
    )
}

/// Rows in `events`; 0 before the collector created the table.
fn event_rows(db: &MariaDb) -> u64 {
    let rows = db.try_query_rows("SELECT COUNT(*) FROM events").unwrap_or_default();
    rows.first().and_then(|r| r.first()).and_then(|n| n.parse().ok()).unwrap_or(0)
}

fn assert_exactly_once(d: &Delivery) {
    assert_eq!((d.lost, d.duplicated), (0, 0), "{d:?}");
}

/// The `/stats` document of `collector`.
fn stats(collector: &Collector) -> serde_json::Value {
    let (status, body) = http_get(collector.addr, "/stats");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/stats is not JSON ({e}): {body}"))
}

/// xorshift64: enough randomness for kill moments; the seed is printed for replays.
struct Rng(u64);

impl Rng {
    fn from_clock() -> Rng {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        Rng(nanos | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

// ---------------------------------------------------------------------------------------------
// 1. kill -9 under load, per method and with rollups
// ---------------------------------------------------------------------------------------------

/// Starts a collector with `config`, puts it under steady load, SIGKILLs it [`KILLS`] times at
/// random moments (0.3–1.8 s apart) and restarts it each time; returns the load's report once
/// it stopped, the collector (running) and the peak RSS seen.
fn kill9_under_load(db: &MariaDb, work: &std::path::Path, config: &str) -> (LoadReport, Collector, u64) {
    let mut rng = Rng::from_clock();
    println!("kill loop seed {}", rng.0);
    let mut collector = Collector::start(work, &db.url, config);
    let load = Load::start(collector.addr, LoadShape::default());
    wait_for("first acks", Duration::from_secs(30), || load.acked_so_far() > 500);
    let mut peak = 0;
    for _ in 0..KILLS {
        sleep(Duration::from_millis(300 + rng.below(1500)));
        peak = peak.max(peak_rss_kib(collector.child.id()).unwrap_or(0));
        collector.kill9();
        collector.restart();
        load.set_addr(collector.addr);
        let acked = load.acked_so_far();
        wait_for("acks after the restart", Duration::from_secs(30), || load.acked_so_far() > acked + 200);
    }
    let report = load.stop();
    (report, collector, peak)
}

/// One rollup row of `rollup_plays`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RollupRow {
    bucket_start: String,
    event: String,
    domain: String,
    events: u64,
}

/// Every row of `rollup_plays`, by file id.
fn rollup_rows(db: &MariaDb) -> HashMap<u64, Vec<RollupRow>> {
    let mut by_file: HashMap<u64, Vec<RollupRow>> = HashMap::new();
    let rows = db.query_rows(
        "SELECT r.file_id, r.bucket_start, r.event, d.name, r.events FROM rollup_plays r \
         JOIN domains d ON d.id = r.domain_id",
    );
    for r in rows {
        let row = RollupRow {
            bucket_start: r[1].clone(),
            event: r[2].clone(),
            domain: r[3].clone(),
            events: r[4].parse().expect("events"),
        };
        by_file.entry(r[0].parse().expect("file_id")).or_default().push(row);
    }
    by_file
}

/// Waits until every acked file id has a rollup row (bounded), lets the flusher run one more
/// second so a double count would show, and returns the rows.
fn wait_rollup(db: &MariaDb, acked: &[u64], timeout: Duration) -> HashMap<u64, Vec<RollupRow>> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = db
            .try_query_rows("SELECT COUNT(DISTINCT file_id) FROM rollup_plays")
            .ok()
            .and_then(|rows| rows.first()?.first()?.parse::<usize>().ok());
        if found >= Some(acked.len()) {
            let rows = rollup_rows(db);
            if acked.iter().all(|id| rows.contains_key(id)) {
                sleep(Duration::from_secs(1));
                return rollup_rows(db);
            }
        }
        if Instant::now() >= deadline {
            return rollup_rows(db);
        }
        sleep(Duration::from_millis(200));
    }
}

/// Raw rows per file id, and the minute of each (`received_at` cut to the minute).
fn raw_rows(db: &MariaDb) -> HashMap<u64, (u64, String)> {
    db.query_rows(
        "SELECT file_id, COUNT(*), MIN(DATE_FORMAT(received_at, '%Y-%m-%d %H:%i:00')) FROM events GROUP BY file_id",
    )
    .into_iter()
    .map(|r| (r[0].parse().expect("file_id"), (r[1].parse().expect("count"), r[2].clone())))
    .collect()
}

/// What is wrong with a rollup, counted; all zero when it is exact.
#[derive(Debug, Default, PartialEq, Eq)]
struct RollupCheck {
    /// Acked file ids with no rollup count.
    lost: u64,
    /// File ids (acked or not: an unanswered request may be in the WAL) counted more than the
    /// one event sent for each.
    over_counted: u64,
    /// File ids in more than one rollup key.
    split_keys: u64,
    /// Rollup rows whose event or domain is not the one sent for their file id.
    wrong_key: u64,
    /// With raw rows: file ids whose raw row count differs from their rollup count, or whose
    /// rollup bucket is not the minute of their raw row.
    raw_mismatch: u64,
}

fn check_rollup(
    rollup: &HashMap<u64, Vec<RollupRow>>,
    acked: &[u64],
    raw: Option<&HashMap<u64, (u64, String)>>,
) -> RollupCheck {
    let mut c = RollupCheck {
        lost: acked.iter().filter(|id| !rollup.contains_key(id)).count() as u64,
        ..RollupCheck::default()
    };
    for (&id, rows) in rollup {
        let total: u64 = rows.iter().map(|r| r.events).sum();
        c.over_counted += u64::from(total > 1);
        c.split_keys += u64::from(rows.len() > 1);
        c.wrong_key +=
            rows.iter().filter(|r| r.event != event_of(id) || r.domain != domain_of(id)).count() as u64;
        if let Some(raw) = raw {
            let matches =
                raw.get(&id).is_some_and(|(n, minute)| *n == total && rows[0].bucket_start == *minute);
            c.raw_mismatch += u64::from(!matches);
        }
    }
    if let Some(raw) = raw {
        c.raw_mismatch += raw.keys().filter(|id| !rollup.contains_key(id)).count() as u64;
    }
    c
}

/// A kill -9 scenario with raw rows only: every acked event is one `events` row.
fn kill9_raw(method: &str, log_says: &str) {
    let started = Instant::now();
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config(&format!("method = \"{method}\"\n"), "");
    let (report, collector, peak) = kill9_under_load(&db, dir.path(), &config);
    let d = wait_delivered(&db, &report.acked, 0, DRAIN);
    print_report(&format!("kill9_{method}"), &report, &d, peak);
    println!("kill9_{method}: {KILLS} kills, {:.1} s in all", started.elapsed().as_secs_f64());
    assert_exactly_once(&d);
    assert!(collector.log().contains(log_says), "the run used the method it tests:\n{}", collector.log());
    assert_eq!(db.query_count("SELECT COUNT(*) FROM ingest_rejects"), 0);
}

#[test]
fn kill_9_under_load_with_insert_counts_every_acked_event_once() {
    kill9_raw("insert", "MySQL delivery method: multi-row INSERT (mysql.method = insert)");
}

#[test]
fn kill_9_under_load_with_load_data_counts_every_acked_event_once() {
    kill9_raw("load_data", "MySQL delivery method: LOAD DATA LOCAL streamed from memory");
}

/// Raw rows and the rollup together (default method, LOAD DATA): both exact, and consistent
/// with each other for every file id, acked or not.
#[test]
fn kill_9_under_load_with_a_rollup_and_raw_rows_counts_both_exactly() {
    let started = Instant::now();
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config("raw_events = true\n", ROLLUP);
    let (report, _collector, peak) = kill9_under_load(&db, dir.path(), &config);
    let d = wait_delivered(&db, &report.acked, 0, DRAIN);
    let rollup = wait_rollup(&db, &report.acked, DRAIN);
    let raw = raw_rows(&db);
    print_report("kill9_rollup_and_raw", &report, &d, peak);
    let sum = db.query_count("SELECT COALESCE(SUM(events), 0) FROM rollup_plays");
    println!(
        "kill9_rollup_and_raw: {KILLS} kills, {} rollup keys, {sum} counted, {:.1} s in all",
        rollup.len(),
        started.elapsed().as_secs_f64()
    );
    assert_exactly_once(&d);
    assert_eq!(check_rollup(&rollup, &report.acked, Some(&raw)), RollupCheck::default());
    assert_eq!(sum, d.rows, "one count per raw row");
}

/// Rollups only: no `events` rows, the rollup exact.
#[test]
fn kill_9_under_load_with_rollups_only_counts_every_acked_event_once() {
    let started = Instant::now();
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config("raw_events = false\n", ROLLUP);
    let (report, _collector, _) = kill9_under_load(&db, dir.path(), &config);
    let rollup = wait_rollup(&db, &report.acked, DRAIN);
    let sum = db.query_count("SELECT COALESCE(SUM(events), 0) FROM rollup_plays");
    println!(
        "kill9_rollups_only: sent {} acked {} rollup keys {} counted {sum}, {KILLS} kills, {:.1} s in all",
        report.sent,
        report.acked.len(),
        rollup.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(check_rollup(&rollup, &report.acked, None), RollupCheck::default());
    assert_eq!(db.query_count("SELECT COUNT(*) FROM events"), 0, "rollups only: no events rows");
    assert!(sum >= report.acked.len() as u64 && sum <= report.sent, "{sum} counted, {report:?}");
}

// ---------------------------------------------------------------------------------------------
// 2. LOAD DATA refused by the server
// ---------------------------------------------------------------------------------------------

const FALLBACK_LOG: &str = "MySQL delivery method: multi-row INSERT, falling back";

/// The server is started with `local_infile=0` in its option file (the issue's
/// `--local-infile=0`): `mysql.method = load_data` uses INSERTs from the first batch, says so,
/// and keeps doing so across a `kill -9`.
#[test]
fn a_server_started_without_local_infile_gets_inserts_and_everything() {
    let mut db = MariaDb::start();
    let cnf = db.dir().join("my.cnf");
    let options = std::fs::read_to_string(&cnf).unwrap();
    assert!(options.contains("\nlocal_infile=1\n"), "mariadb.sh writes local_infile=1:\n{options}");
    std::fs::write(&cnf, options.replace("\nlocal_infile=1\n", "\nlocal_infile=0\n")).unwrap();
    db.kill9();
    db.restart();
    assert_eq!(db.query_rows("SELECT @@GLOBAL.local_infile"), [["0"]]);

    let dir = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(dir.path(), &db.url, &config("method = \"load_data\"\n", ""));
    let load = Load::start(collector.addr, LoadShape::default());
    wait_for("acks", Duration::from_secs(30), || load.acked_so_far() > 5000);
    collector.kill9();
    collector.restart();
    load.set_addr(collector.addr);
    let acked = load.acked_so_far();
    wait_for("acks after the restart", Duration::from_secs(30), || load.acked_so_far() > acked + 5000);
    let report = load.stop();
    let d = wait_delivered(&db, &report.acked, 0, DRAIN);
    print_report("local_infile_off", &report, &d, peak_rss_kib(collector.child.id()).unwrap_or(0));
    assert_exactly_once(&d);
    let log = collector.log();
    assert_eq!(log.matches(FALLBACK_LOG).count(), 2, "said once per run:\n{log}");
    assert!(!log.contains("LOAD DATA LOCAL streamed"), "LOAD DATA never chosen:\n{log}");
    let s = stats(&collector);
    assert_eq!(s["mysql"]["method"], "insert", "{s}");
    assert_eq!(s["mysql"]["load_data_fallbacks"], 0, "nothing was refused: it was never tried");
}

/// `local_infile` switched off under a collector that streams with LOAD DATA: the next LOAD
/// DATA is refused, the batch is sent again by INSERT, and nothing is lost or doubled.
#[test]
fn local_infile_switched_off_mid_run_falls_back_to_insert_and_loses_nothing() {
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), &db.url, &config("method = \"load_data\"\n", ""));
    let load = Load::start(collector.addr, LoadShape::default());
    wait_for("rows by LOAD DATA", Duration::from_secs(30), || event_rows(&db) > 3000);
    assert_eq!(stats(&collector)["mysql"]["method"], "load_data");
    db.query_rows("SET GLOBAL local_infile = 0");
    let switched = Instant::now();
    wait_for("the fallback", Duration::from_secs(30), || collector.log().contains(FALLBACK_LOG));
    let fell_back_after = switched.elapsed();
    let rows = event_rows(&db);
    wait_for("rows by INSERT", Duration::from_secs(30), || event_rows(&db) > rows + 3000);
    let report = load.stop();
    let d = wait_delivered(&db, &report.acked, 0, DRAIN);
    print_report("local_infile_off_mid_run", &report, &d, peak_rss_kib(collector.child.id()).unwrap_or(0));
    println!("local_infile_off_mid_run: fell back {} ms after the switch", fell_back_after.as_millis());
    assert_exactly_once(&d);
    let s = stats(&collector);
    assert_eq!(s["mysql"]["method"], "insert", "{s}");
    let fallbacks = s["mysql"]["load_data_fallbacks"].as_u64().expect("load_data_fallbacks");
    // One per connection that was open with LOAD DATA when the server started refusing it.
    assert!((1..=3).contains(&fallbacks), "{s}");
    assert_eq!(
        db.query_count("SELECT COUNT(*) FROM ingest_rejects"),
        0,
        "a refused method is no refused row"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. KILL CONNECTION in a loop
// ---------------------------------------------------------------------------------------------

/// Load that opens new connections all the time (4 per round of 500 events), so SO_REUSEPORT
/// spreads it over both cores; every event must be answered 204.
struct Steady {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u64>>>,
    thread: JoinHandle<()>,
}

impl Steady {
    fn start(addr: SocketAddr) -> Steady {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let ids = unique_file_ids(500);
                send_exact(addr, &ids, 4);
                a.lock().unwrap().extend_from_slice(&ids);
                sleep(Duration::from_millis(20));
            }
        });
        Steady { stop, acked, thread }
    }

    fn stop(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the steady sender (every event answered 204)");
        std::mem::take(&mut *self.acked.lock().unwrap())
    }
}

/// `(segment, offset)` of each core's cursor row of `node`; none before the schema exists.
fn cursors(db: &MariaDb, node: &str) -> HashMap<u16, (u64, u64)> {
    db.try_query_rows(&format!("SELECT core, segment, `offset` FROM ingest_cursors WHERE node = '{node}'"))
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r[0].parse().unwrap(), (r[1].parse().unwrap(), r[2].parse().unwrap())))
        .collect()
}

/// The newest of the collector's delivery connections: every connection of user psc on
/// database psc but this query's own and the control connection holding the node's lease.
/// The newest is the one that replaced the connection killed last, so the loop keeps hitting
/// the same slot of the pool while the older connection delivers.
fn newest_delivery_connection(db: &MariaDb, lock: &str, killed: &HashSet<u64>) -> Option<u64> {
    let ids = db
        .try_query_rows(&format!(
            "SELECT id FROM information_schema.processlist WHERE user = 'psc' AND db = 'psc' \
             AND id <> CONNECTION_ID() AND id <> IFNULL(IS_USED_LOCK('{lock}'), 0) ORDER BY id DESC"
        ))
        .ok()?;
    ids.iter().filter_map(|r| r[0].parse().ok()).find(|id| !killed.contains(id))
}

#[test]
fn delivery_connections_killed_in_a_loop_hold_up_no_lane_and_lose_nothing() {
    const LOOP: Duration = Duration::from_secs(8);
    const EVERY: Duration = Duration::from_millis(300);
    let node = "kill-conn-node";
    let lock = lock_name(node);
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let collector =
        Collector::start(dir.path(), &db.url, &config("", &format!("[ingest]\nnode_id = \"{node}\"\n")));
    let steady = Steady::start(collector.addr);
    wait_for("both lanes delivering", Duration::from_secs(30), || cursors(&db, node).len() == 2);
    wait_for("the lease", Duration::from_secs(30), || {
        db.query_rows(&format!("SELECT IS_USED_LOCK('{lock}') IS NOT NULL")) == [["1"]]
    });

    let before = cursors(&db, node);
    let mut killed = HashSet::new();
    let mut samples = vec![event_rows(&db)];
    let started = Instant::now();
    let mut next_sample = started + Duration::from_secs(1);
    while started.elapsed() < LOOP {
        if let Some(id) = newest_delivery_connection(&db, &lock, &killed) {
            if db.try_query_rows(&format!("KILL CONNECTION {id}")).is_ok() {
                killed.insert(id);
            }
        }
        if Instant::now() >= next_sample {
            samples.push(event_rows(&db));
            next_sample += Duration::from_secs(1);
        }
        sleep(EVERY);
    }
    let after = cursors(&db, node);
    let acked = steady.stop();
    let d = wait_delivered(&db, &acked, 0, DRAIN);
    let log = collector.log();
    println!(
        "kill_connection: {} kills in {:?}, {} outages noticed, {} deliveries fenced, rows per second \
         during the loop {:?}, {} acked, {d:?}",
        killed.len(),
        LOOP,
        log.matches("MySQL reachable again").count(),
        log.matches("delivery fenced").count(),
        samples.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>(),
        acked.len()
    );
    assert!(killed.len() >= 10, "the loop killed {} connections", killed.len());
    for core in [0, 1] {
        assert!(
            after[&core] > before[&core],
            "lane {core} delivered during the loop: {before:?} -> {after:?}"
        );
    }
    let stalled: Vec<_> = samples.windows(3).filter(|w| w[2] <= w[0]).collect();
    assert!(stalled.is_empty(), "no two seconds without new rows: {samples:?}");
    assert_exactly_once(&d);
    assert!(log.contains("delivery failed; the stream retries"), "the kills were noticed");
}

/// One delivery connection killed while the shard's back-off is long (3 s): the delivery that
/// meets the dead connection fails and its lane waits out the back-off, but the other lane
/// goes on delivering on its own connection meanwhile (issue 11: "one lane's connection dying
/// holds up no other lane"). Before the back-off became per stream, no lane moved for the
/// full back-off (measured: both lanes' cursors still for 4.1 s with a 4 s back-off).
#[test]
fn one_dead_delivery_connection_holds_up_no_other_lane() {
    let node = "dead-conn-node";
    let lock = lock_name(node);
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[server]\ncores = 2\n[mysql]\nbatch_rows = 2000\nflush_interval_ms = 100\n\
         retry_min_ms = 3000\nretry_max_ms = 3000\n[ingest]\nnode_id = \"{node}\"\n"
    );
    let collector = Collector::start(dir.path(), &db.url, &extra);
    let steady = Steady::start(collector.addr);
    wait_for("both lanes delivering", Duration::from_secs(30), || cursors(&db, node).len() == 2);
    sleep(Duration::from_secs(1));
    wait_for("two delivery connections", Duration::from_secs(30), || {
        newest_delivery_connection(&db, &lock, &HashSet::new()).is_some()
    });
    // The pool hands out its most recently returned connection first, so a killed idle one
    // may sit unused for a while: kill one, and if no delivery met it within the window, kill
    // the next (at most 4 tries). The window that counts is the one after a delivery failed.
    let mut killed = HashSet::new();
    let mut verdict = None;
    for _ in 0..4 {
        let Some(victim) = newest_delivery_connection(&db, &lock, &killed) else { break };
        let failures_before = collector.log().matches("delivery failed; the stream retries").count();
        db.query_rows(&format!("KILL CONNECTION {victim}"));
        killed.insert(victim);
        let killed_at = Instant::now();
        // Deliveries in flight at the kill may still land; what counts is what lands after them.
        sleep(Duration::from_millis(500));
        let settled = cursors(&db, node);
        let mut moved = HashSet::new();
        while killed_at.elapsed() < Duration::from_millis(2800) {
            let now = cursors(&db, node);
            moved.extend([0u16, 1].into_iter().filter(|core| now[core] != settled[core]));
            sleep(Duration::from_millis(100));
        }
        let noticed =
            collector.log().matches("delivery failed; the stream retries").count() > failures_before;
        if noticed {
            verdict = Some(moved);
            break;
        }
        sleep(Duration::from_secs(3)); // let any late failure's back-off pass before the next try
    }
    let acked = steady.stop();
    let d = wait_delivered(&db, &acked, 0, DRAIN);
    assert_exactly_once(&d);
    let moved = verdict
        .unwrap_or_else(|| panic!("no delivery met a killed connection in 4 tries:\n{}", collector.log()));
    assert!(!moved.is_empty(), "no lane delivered during the 3 s back-off after one connection died");
}

// ---------------------------------------------------------------------------------------------
// 4. Field contents that stress TSV and SQL escaping
// ---------------------------------------------------------------------------------------------

/// Pieces of the percent-encoded `q`: everything TSV, SQL or the form decoding could misread.
const NASTY: &[&str] = &[
    "\t", "\n", "\r", "\\", "'", "\"", "\0", "\x1a", "NULL", "\\N", "\\t", "é", "😀", " ", "+", "%", "&",
    "=", "\x7f", "\x01", "\\\\", "''", "\r\n", "#", "?", ";", "--", "/*", "`", "\\0", "\u{2028}",
];
/// Pieces of `w`, sent raw in the request target (bytes a target may hold unescaped).
const RAW: &[&str] = &[
    "'", "\"", "\\", "\\N", "NULL", "é", "{", "}", "|", "^", "`", "<", ">", "[", "]", "~", "!", "$", "(",
    ")", "*", ",", ";", ":", "@", "\\t", "\\\\",
];
/// Pieces of the User-Agent header (a header value holds tab, printable ASCII and any byte
/// >= 0x80, so UTF-8).
const UA_PIECES: &[&str] = &["\t", "\\", "'", "\"", "\\N", "NULL", "é", "😀", "%41", "+", "\\t", "`", ";"];
/// A kept parameter name that needs escaping itself (TOML spelling in the config).
const ODD_NAME: &str = "nm\t\"\\'é";
const ODD_NAME_TOML: &str = "\"nm\\t\\\"\\\\'é\"";

/// One beacon of the escaping test and what MySQL must hold for it.
struct Case {
    file_id: u64,
    target: String,
    headers: Vec<(&'static str, String)>,
    /// HEX of the stored columns, or "NULL": event_id, client_ip, referer_host, extra.
    want: [String; 4],
    ua: Option<String>,
    /// The kept parameters, decoded: what the stored JSON must parse to.
    extra: Option<serde_json::Map<String, serde_json::Value>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// JSON string as the collector writes `extra` (`ingest::extra`): `"` and `\` escaped,
/// control characters as `\u00XX`, everything else as is.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `n` pieces of `from`, starting at `k` with stride `step`.
fn pieces(from: &[&str], k: usize, step: usize, n: usize) -> String {
    (0..n).map(|j| from[(k + j * step) % from.len()]).collect()
}

/// The 16 bytes of case `k`'s event id: tab, newline, CR, backslash, NUL, 0x1A, quotes and
/// `\N` as bytes, rotated, with `k` last so every id differs (never the nil UUID).
fn event_id_bytes(k: usize) -> [u8; 16] {
    let mut b =
        [0x00, 0x09, 0x0a, 0x0d, 0x5c, 0x1a, 0x27, 0x22, 0x4e, 0x5c, 0x4e, 0x09, 0x00, 0x0a, 0x25, k as u8];
    b.rotate_left(k % 16);
    b
}

fn event_id_text(k: usize) -> String {
    let b = event_id_bytes(k);
    let digits: String =
        b.iter().map(|x| if k.is_multiple_of(2) { format!("{x:02x}") } else { format!("{x:02X}") }).collect();
    if k.is_multiple_of(3) {
        format!(
            "{}-{}-{}-{}-{}",
            &digits[..8],
            &digits[8..12],
            &digits[12..16],
            &digits[16..20],
            &digits[20..]
        )
    } else {
        digits
    }
}

fn case(k: usize, file_id: u64) -> Case {
    let mut target = format!("/log?event=play&domain=esc.example&file_id={file_id}");
    let mut headers = Vec::new();
    // Event id: absent for every fifth case.
    let event_id = (k % 5 != 4).then(|| {
        target.push_str(&format!("&eid={}", event_id_text(k)));
        hex(&event_id_bytes(k))
    });
    // Client IP: the peer, or (trusted peer) X-Forwarded-For with special bytes in it.
    let ip: Vec<u8> = match k % 4 {
        0 => vec![127, 0, 0, 1],
        1 => {
            headers.push(("X-Forwarded-For", "9.10.92.0".to_owned()));
            vec![9, 10, 92, 0]
        }
        2 => {
            headers.push(("X-Forwarded-For", "6.6.6.6, 5c09:a00:d1a:2722:5c4e:0:909:a0a".to_owned()));
            "5c09:a00:d1a:2722:5c4e:0:909:a0a".parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec()
        }
        _ => {
            headers.push(("X-Forwarded-For", format!("92.13.26.{k}")));
            vec![92, 13, 26, k as u8]
        }
    };
    // Referer: a host with `_` `-` and upper case, a path full of specials; an IPv6 host; none.
    let referer = match k % 3 {
        0 => {
            headers.push((
                "Referer",
                format!("https://Host-{k}.Example_x.ORG:8443/p\ta\\th'\"?q=\\N&x=NULL#\t"),
            ));
            Some(format!("host-{k}.example_x.org"))
        }
        1 => {
            headers.push(("Referer", "http://[::1]:34201/x\\y\t'z'".to_owned()));
            Some("[::1]".to_owned())
        }
        _ => {
            headers.push(("Referer", "/relative\tpath\\".to_owned()));
            None
        }
    };
    // User-Agent: specials inside (the ends are trimmed), "NULL" and "\N" exactly, or none.
    let ua = match k % 7 {
        5 => Some("NULL".to_owned()),
        6 => Some("\\N".to_owned()),
        4 => None,
        _ => Some(format!("Mozilla/5.0 ({}) #{k}", pieces(UA_PIECES, k, 5, 1 + k % 6))),
    };
    if let Some(ua) = &ua {
        headers.push(("User-Agent", format!("\t {ua}\t")));
    }
    // Kept parameters: in query order, as the collector writes them.
    let mut members: Vec<(String, String)> = Vec::new();
    match k {
        0 => members.push(("q".into(), "NULL".into())),
        1 => members.push(("q".into(), "\\N".into())),
        2 => members.push(("q".into(), String::new())),
        3 => {}
        _ => {
            members.push(("q".into(), pieces(NASTY, k, 7, 1 + k % 9)));
            if k.is_multiple_of(2) {
                members.push(("w".into(), pieces(RAW, k, 5, 1 + k % 7)));
            }
            if k.is_multiple_of(3) {
                members.push((ODD_NAME.into(), pieces(NASTY, k + 3, 11, 4)));
            }
        }
    }
    for (name, value) in &members {
        let value = if name == "w" { value.clone() } else { percent_encode(value) };
        target.push_str(&format!("&{}={value}", percent_encode(name)));
    }
    let (extra_hex, extra) = if members.is_empty() {
        (None, None)
    } else {
        let body: Vec<String> =
            members.iter().map(|(n, v)| format!("{}:{}", json_string(n), json_string(v))).collect();
        let json = format!("{{{}}}", body.join(","));
        let map = members.iter().map(|(n, v)| (n.clone(), serde_json::Value::String(v.clone()))).collect();
        (Some(hex(json.as_bytes())), Some(map))
    };
    let or_null = |v: Option<String>| v.unwrap_or_else(|| "NULL".to_owned());
    Case {
        file_id,
        target,
        headers,
        want: [or_null(event_id), hex(&ip), or_null(referer.map(|r| hex(r.as_bytes()))), or_null(extra_hex)],
        ua,
        extra,
    }
}

/// One request on its own connection; returns the status code.
fn send_case(addr: SocketAddr, c: &Case) -> u16 {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("GET {} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n", c.target);
    for (name, value) in &c.headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("answer");
    let head = String::from_utf8_lossy(&answer);
    head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status line: {head:?}"))
}

fn stressed_fields_arrive_byte_identical(method: &str, log_says: &str) {
    const CASES: usize = 64;
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let rest = format!(
        "[ingest]\nkeep_params = [\"q\", \"w\", {ODD_NAME_TOML}]\n[http]\ntrusted_proxies = [\"127.0.0.1\"]\n"
    );
    let mut collector =
        Collector::start(dir.path(), &db.url, &config(&format!("method = \"{method}\"\n"), &rest));
    let ids = unique_file_ids(CASES);
    let cases: Vec<Case> = ids.iter().enumerate().map(|(k, &id)| case(k, id)).collect();
    for c in &cases {
        assert_eq!(send_case(collector.addr, c), 204, "{}", c.target);
    }
    let d = wait_delivered(&db, &ids, ids[0], DRAIN);
    assert_exactly_once(&d);

    let stored = db.query_rows(&format!(
        "SELECT file_id, COALESCE(HEX(event_id), 'NULL'), COALESCE(HEX(client_ip), 'NULL'), \
         COALESCE(HEX(referer_host), 'NULL'), COALESCE(HEX(extra), 'NULL'), COALESCE(ua_hash, 'NULL') \
         FROM events WHERE file_id >= {} ORDER BY file_id",
        ids[0]
    ));
    let user_agents: HashMap<String, String> = db
        .query_rows("SELECT hash, HEX(ua) FROM user_agents")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    let mut wrong = Vec::new();
    for (c, row) in cases.iter().zip(&stored) {
        let mut want = vec![c.file_id.to_string()];
        want.extend(c.want.iter().cloned());
        want.push(c.ua.as_deref().map_or("NULL".to_owned(), |ua| ua_hash(ua).to_string()));
        if row[..] != want[..] {
            wrong.push(format!("{}\n  stored {row:?}\n  wanted {want:?}", c.target));
        }
        if let Some(ua) = &c.ua {
            if user_agents.get(&ua_hash(ua).to_string()) != Some(&hex(ua.as_bytes())) {
                wrong.push(format!(
                    "user agent {ua:?}: stored {:?}",
                    user_agents.get(&ua_hash(ua).to_string())
                ));
            }
        }
        let parsed = (row[4] != "NULL").then(|| {
            let bytes: Vec<u8> = (0..row[4].len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&row[4][i..i + 2], 16).unwrap())
                .collect();
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes)
                .unwrap_or_else(|e| panic!("extra of {} is not JSON: {e}", c.file_id))
        });
        if parsed != c.extra {
            wrong.push(format!("extra of {} parses to {parsed:?}, sent {:?}", c.file_id, c.extra));
        }
    }
    assert_eq!(stored.len(), CASES, "one row per case");
    assert!(wrong.is_empty(), "{} of {CASES} cases differ ({method}):\n{}", wrong.len(), wrong.join("\n"));
    assert!(collector.log().contains(log_says), "{}", collector.log());
    let status = collector.sigterm_and_wait(Duration::from_secs(30)).expect("stops on SIGTERM");
    assert!(status.success(), "{status}");
    println!("escaping_{method}: {CASES} cases byte-identical, {} user agents", user_agents.len());
}

#[test]
fn stressed_field_contents_arrive_byte_identical_by_load_data() {
    stressed_fields_arrive_byte_identical("load_data", "LOAD DATA LOCAL streamed from memory");
}

#[test]
fn stressed_field_contents_arrive_byte_identical_by_insert() {
    stressed_fields_arrive_byte_identical("insert", "multi-row INSERT (mysql.method = insert)");
}
