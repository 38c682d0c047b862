//! Steady beacon load for the fault suite, and the checks every scenario ends with.
//!
//! [`Load`] runs sender threads that keep pipelining `GET /log` batches (each event with a
//! `file_id` never used before) to a port that may change (the collector restarts on port 0)
//! and records which ids were answered 204. A request whose answer never came (the collector
//! was killed) is neither acked nor counted lost: it may or may not be in the WAL.
//! [`check_exactly_once`] then compares MySQL's rows with the acked ids.
//!
//! Everything is bounded: connects and reads time out, threads stop when asked.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

use super::{collector_command, unique_file_ids, wait_for, Collector, MariaDb};

const IO_TIMEOUT: Duration = Duration::from_secs(10);
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);
/// Event names and domains cycled through by the load, so batches mix them.
pub const EVENTS: [&str; 4] = ["play", "pause", "view", "ad_click"];
pub const DOMAINS: [&str; 5] = ["piratka.biz", "kino.example.org", "a.b.c.example.net", "x.io", "films.ru"];

/// Shape of the load.
#[derive(Debug, Clone, Copy)]
pub struct LoadShape {
    pub threads: usize,
    /// Requests pipelined per write.
    pub batch: usize,
    /// Pause after each answered batch (limits the rate and the CPU taken from the collector).
    pub pause: Duration,
}

impl Default for LoadShape {
    fn default() -> Self {
        Self { threads: 2, batch: 20, pause: Duration::from_millis(2) }
    }
}

/// What the senders saw.
#[derive(Debug, Default)]
struct Seen {
    acked: Vec<u64>,
    /// Since when no request got a 204 (a 503 or a refused connection came first).
    failing_since: Option<Instant>,
    longest_failing: Duration,
}

/// A running load; [`Load::stop`] joins it.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    seen: Arc<Mutex<Seen>>,
    sent: Arc<AtomicU64>,
    got_503: Arc<AtomicU64>,
    /// Port of the collector on 127.0.0.1; tests update it after a restart.
    pub port: Arc<AtomicU16>,
}

/// Totals once the load stopped.
#[derive(Debug)]
pub struct LoadReport {
    pub sent: u64,
    pub acked: Vec<u64>,
    pub got_503: u64,
    /// Longest stretch with answers but no 204 (503s or refused connections).
    pub longest_unavailable: Duration,
}

impl Load {
    pub fn start(addr: SocketAddr, shape: LoadShape) -> Load {
        let load = Load {
            stop: Arc::default(),
            threads: Vec::new(),
            seen: Arc::default(),
            sent: Arc::default(),
            got_503: Arc::default(),
            port: Arc::new(AtomicU16::new(addr.port())),
        };
        let threads = (0..shape.threads).map(|_| load.spawn_sender(shape)).collect();
        Load { threads, ..load }
    }

    fn spawn_sender(&self, shape: LoadShape) -> JoinHandle<()> {
        let sender = Sender {
            stop: self.stop.clone(),
            seen: self.seen.clone(),
            sent: self.sent.clone(),
            got_503: self.got_503.clone(),
            port: self.port.clone(),
            shape,
        };
        std::thread::spawn(move || sender.run())
    }

    pub fn set_addr(&self, addr: SocketAddr) {
        self.port.store(addr.port(), Ordering::Relaxed);
    }

    pub fn acked_so_far(&self) -> usize {
        self.seen.lock().expect("load state").acked.len()
    }

    pub fn got_503(&self) -> u64 {
        self.got_503.load(Ordering::Relaxed)
    }

    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("load sender thread");
        }
        let seen = std::mem::take(&mut *self.seen.lock().expect("load state"));
        let longest = match seen.failing_since {
            Some(since) => seen.longest_failing.max(since.elapsed()),
            None => seen.longest_failing,
        };
        LoadReport {
            sent: self.sent.load(Ordering::Relaxed),
            acked: seen.acked,
            got_503: self.got_503.load(Ordering::Relaxed),
            longest_unavailable: longest,
        }
    }
}

struct Sender {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    sent: Arc<AtomicU64>,
    got_503: Arc<AtomicU64>,
    port: Arc<AtomicU16>,
    shape: LoadShape,
}

impl Sender {
    fn run(&self) {
        let mut conn: Option<Conn> = None;
        while !self.stop.load(Ordering::Relaxed) {
            let c = match conn.take() {
                Some(c) => c,
                None => match Conn::open(self.port.load(Ordering::Relaxed)) {
                    Ok(c) => c,
                    Err(_) => {
                        self.note(&[], true);
                        sleep(RECONNECT_PAUSE);
                        continue;
                    }
                },
            };
            conn = self.one_batch(c);
            sleep(self.shape.pause);
        }
    }

    /// Sends one pipelined batch; returns the connection if it is still usable.
    fn one_batch(&self, mut conn: Conn) -> Option<Conn> {
        let ids = unique_file_ids(self.shape.batch);
        let mut req = Vec::with_capacity(ids.len() * 100);
        for id in &ids {
            push_request(&mut req, *id);
        }
        self.sent.fetch_add(ids.len() as u64, Ordering::Relaxed);
        if conn.stream.write_all(&req).is_err() {
            return None;
        }
        let mut acked = Vec::with_capacity(ids.len());
        let mut any_503 = false;
        for id in &ids {
            match conn.read_status() {
                Ok(204) => acked.push(*id),
                Ok(503) => {
                    any_503 = true;
                    self.got_503.fetch_add(1, Ordering::Relaxed);
                }
                Ok(other) => panic!("unexpected status {other} for file_id {id}"),
                Err(_) => {
                    self.note(&acked, acked.is_empty());
                    return None;
                }
            }
        }
        self.note(&acked, any_503 && acked.is_empty());
        (!conn.closing).then_some(conn)
    }

    /// Records acks and the 503 window: a batch with a 204 ends it, a failure starts it.
    fn note(&self, acked: &[u64], failed: bool) {
        let mut seen = self.seen.lock().expect("load state");
        seen.acked.extend_from_slice(acked);
        if !acked.is_empty() {
            if let Some(since) = seen.failing_since.take() {
                seen.longest_failing = seen.longest_failing.max(since.elapsed());
            }
        } else if failed && seen.failing_since.is_none() {
            seen.failing_since = Some(Instant::now());
        }
    }
}

/// Event name of the beacon for `file_id` (mixed, deterministic).
pub fn event_of(file_id: u64) -> &'static str {
    EVENTS[(file_id % EVENTS.len() as u64) as usize]
}

/// Domain of the beacon for `file_id` (mixed, deterministic, not in step with the event).
pub fn domain_of(file_id: u64) -> &'static str {
    DOMAINS[(file_id / 3 % DOMAINS.len() as u64) as usize]
}

fn push_request(out: &mut Vec<u8>, id: u64) {
    let (event, domain) = (event_of(id), domain_of(id));
    let line = format!("GET /log?event={event}&domain={domain}&file_id={id} HTTP/1.1\r\nHost: t\r\n\r\n");
    out.extend_from_slice(line.as_bytes());
}

/// Sends exactly `ids` over `conns` keep-alive connections in pipelined batches of 50 and
/// asserts every one is answered 204.
pub fn send_exact(addr: SocketAddr, ids: &[u64], conns: usize) {
    let per = ids.len().div_ceil(conns.max(1));
    let threads: Vec<_> = ids
        .chunks(per)
        .map(|part| {
            let part = part.to_vec();
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr.port()).expect("connect");
                for batch in part.chunks(50) {
                    let mut req = Vec::new();
                    batch.iter().for_each(|&id| push_request(&mut req, id));
                    conn.stream.write_all(&req).expect("send");
                    for id in batch {
                        assert_eq!(conn.read_status().expect("answer"), 204, "file_id {id}");
                    }
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().expect("sender"));
}

/// A keep-alive connection with a response reader that keeps bytes of the next response.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The server said `Connection: close`.
    closing: bool,
}

impl Conn {
    fn open(port: u16) -> std::io::Result<Conn> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn { stream, buf: Vec::with_capacity(8192), closing: false })
    }

    /// Reads one whole response (head + Content-Length body) and returns its status.
    fn read_status(&mut self) -> std::io::Result<u16> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let status = head.get(9..12).and_then(|s| s.parse().ok()).ok_or_else(|| bad("status line"))?;
        let body: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(Ok(0), |v| v.trim().parse().map_err(|_| bad("content-length")))?;
        self.closing |= head.contains("connection: close");
        while self.buf.len() < head_end + body {
            self.fill()?;
        }
        self.buf.drain(..head_end + body);
        Ok(status)
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("connection closed"));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

/// Rows in `events` for the acked ids: how many are missing and how many are duplicated.
#[derive(Debug, PartialEq, Eq)]
pub struct Delivery {
    pub rows: u64,
    pub lost: u64,
    pub duplicated: u64,
}

/// Counts rows per `file_id` at or above the smallest acked id (every id this test sent is
/// above it; ids are unique per test process).
pub fn delivery(db: &MariaDb, acked: &[u64], floor: u64) -> Delivery {
    let rows = db.query_rows(&format!(
        "SELECT file_id, COUNT(*) FROM events WHERE file_id >= {floor} GROUP BY file_id"
    ));
    let mut present = HashSet::with_capacity(rows.len());
    let (mut total, mut duplicated) = (0u64, 0u64);
    for row in rows {
        let id: u64 = row[0].parse().expect("file_id");
        let n: u64 = row[1].parse().expect("count");
        total += n;
        duplicated += n - 1;
        present.insert(id);
    }
    let lost = acked.iter().filter(|id| !present.contains(id)).count() as u64;
    Delivery { rows: total, lost, duplicated }
}

/// Waits until every acked id is in MySQL (bounded by `timeout`), then lets the flusher run
/// one more short while so a duplicate would show, and returns the final count.
pub fn wait_delivered(db: &MariaDb, acked: &[u64], floor: u64, timeout: Duration) -> Delivery {
    let mut last = None;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match db
            .try_query_rows(&format!("SELECT COUNT(DISTINCT file_id) FROM events WHERE file_id >= {floor}"))
        {
            Ok(rows)
                if rows.first().and_then(|r| r.first()).and_then(|v| v.parse::<usize>().ok())
                    >= Some(acked.len()) =>
            {
                let d = delivery(db, acked, floor);
                if d.lost == 0 {
                    sleep(Duration::from_secs(1));
                    return delivery(db, acked, floor);
                }
                last = Some(d);
            }
            _ => {}
        }
        sleep(Duration::from_millis(200));
    }
    last.unwrap_or_else(|| delivery(db, acked, floor))
}

/// Peak resident set (`VmHWM`) of a live process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident set now (`VmRSS`), in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Restarts `collector` (SIGKILL if running) with extra environment variables, e.g. a fail
/// point; a later [`Collector::restart`] starts it without them again.
pub fn restart_with_env(collector: &mut Collector, env: &[(&str, &str)]) {
    collector.kill9();
    let _ = std::fs::remove_file(&collector.port_file);
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(&collector.log_path).expect("open log");
    collector.child = collector_command()
        .arg("--config")
        .arg(&collector.config_path)
        .env("PSC_PORT_FILE", &collector.port_file)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("clone the log handle"))
        .stderr(log)
        .spawn()
        .expect("spawn player-stat-collector");
    collector.addr = collector.wait_for_port_file();
}

/// Whether the full-length fault suite was asked for (`make chaos` sets `PSC_CHAOS=1`).
pub fn chaos() -> bool {
    std::env::var("PSC_CHAOS").is_ok_and(|v| v == "1")
}

/// Waits until `count()` reaches `n`, bounded.
pub fn wait_count(what: &str, timeout: Duration, n: usize, count: impl Fn() -> usize) {
    wait_for(what, timeout, || count() >= n);
}

/// One line per scenario, the figures the closing report needs.
pub fn print_report(scenario: &str, load: &LoadReport, d: &Delivery, peak_rss_kib: u64) {
    println!(
        "FAULT-REPORT {scenario}: sent {} acked {} rows {} lost {} duplicated {} got_503 {} \
         longest_503_window_ms {} peak_rss_kib {peak_rss_kib}",
        load.sent,
        load.acked.len(),
        d.rows,
        d.lost,
        d.duplicated,
        load.got_503,
        load.longest_unavailable.as_millis()
    );
}
