//! The shared integration-test harness: real processes on 127.0.0.1, nothing mocked.
//!
//! - [`MariaDb`]: a private MariaDB server per test (`scripts/mariadb.sh` on a temp dir), which
//!   a test can `kill9` and `restart` on the same datadir and port.
//! - [`Collector`]: the debug binary, started on port 0 with a generated config; its bound
//!   address comes from the file named by `PSC_PORT_FILE` (never from parsing its logs), and
//!   its stderr goes to `collector.log` in the work dir ([`Collector::log`]).
//! - [`http_get`]: one request per fresh connection, with timeouts.
//! - [`clickhouse::ClickHouse`]: a private clickhouse-server per test, killed by PID on drop.
//!
//! Invariants: every wait is bounded and panics with the relevant log when it runs out; every
//! process is stopped by its own PID (never by name), also when a test panics (`Drop`).
#![allow(dead_code)]

pub mod clickhouse;
pub mod load;
pub mod wal;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How long a MariaDB or a collector may take to come up or go down before a test fails.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Read and write timeout of one [`http_get`].
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest HTTP response [`http_get`] accepts; the collector's answers are tiny.
const HTTP_RESPONSE_BYTES_MAX: usize = 1 << 20;

/// Environment variables the collector reads; cleared so a developer's shell cannot leak in.
const COLLECTOR_ENV: &[&str] = &[
    "PSC_SERVER_LISTEN",
    "PSC_SERVER_CORES",
    "PSC_WAL_DIR",
    "PSC_WAL_SYNC",
    "PSC_QUEUE_CAPACITY",
    "PSC_MYSQL_URL",
    "PSC_CLICKHOUSE_URL",
    "PSC_NODE_ID",
    "PSC_LOG_FORMAT",
    "PSC_PORT_FILE",
];

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Polls `check` until it holds; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        sleep(POLL_INTERVAL);
    }
}

/// True if `pid` has exited. A zombie counts as exited (and is reaped if it is ours).
fn process_gone(pid: u32) -> bool {
    let zombie = match fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => status.lines().any(|l| l.starts_with("State:") && l.contains('Z')),
        Err(_) => return true,
    };
    if zombie {
        let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
        // SAFETY: a null status pointer is allowed; for a process that is not our child this
        // only fails with ECHILD.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    }
    zombie
}

/// mariadbd is started in the background by a script that exits at once, so it is orphaned.
/// Its new parent is normally PID 1, which in some containers never reaps; as a subreaper the
/// test process adopts it instead and reaps it in [`process_gone`].
fn adopt_orphans() {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory of ours.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) };
}

fn send_signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill has no memory-safety preconditions; a stale pid only yields ESRCH.
    unsafe { libc::kill(pid, signal) };
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("<cannot read {path:?}: {e}>"));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A private MariaDB server in a temp dir, stopped (TERM, then KILL) when dropped.
pub struct MariaDb {
    /// `mysql://psc:PASS@127.0.0.1:PORT/psc`, for the collector's `mysql.url`.
    pub url: String,
    pub port: u16,
    /// Holds datadir, option files, socket and error log; deleted after the server stopped.
    dir: tempfile::TempDir,
    /// The running mariadbd; re-read after every (re)start.
    pid: u32,
}

impl MariaDb {
    /// Creates and starts a fresh server; panics with the script's output and error log.
    pub fn start() -> MariaDb {
        static INSTALL: Once = Once::new();
        // Once per process; parallel tests must not run apt-get at the same time.
        INSTALL.call_once(|| {
            adopt_orphans();
            let status = Command::new(repo_path("scripts/ensure-deps.sh"))
                .arg("mariadb")
                .status()
                .expect("run scripts/ensure-deps.sh");
            assert!(status.success(), "scripts/ensure-deps.sh mariadb failed: {status}");
        });
        let dir = tempfile::Builder::new().prefix("psc-mariadb-").tempdir().expect("temp dir");
        let url = run_mariadb_script(dir.path());
        let port = port_of_url(&url);
        let pid = read_pid(dir.path());
        MariaDb { url, port, dir, pid }
    }

    /// SIGKILLs mariadbd and waits until it is gone: a crash, not a shutdown.
    pub fn kill9(&mut self) {
        send_signal(self.pid, libc::SIGKILL);
        let pid = self.pid;
        wait_for("mariadbd to die after SIGKILL", STOP_TIMEOUT, || process_gone(pid));
    }

    /// Starts the server again on the same datadir and port (InnoDB recovers a crash).
    pub fn restart(&mut self) {
        let url = run_mariadb_script(self.dir.path());
        assert_eq!(url, self.url, "restarted server must keep its URL");
        self.pid = read_pid(self.dir.path());
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The directory with `client.cnf`, `error.log` and the datadir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs a query expected to return one integer (e.g. `SELECT COUNT(*) ...`).
    pub fn query_count(&self, sql: &str) -> u64 {
        let rows = self.query_rows(sql);
        assert!(rows.len() == 1 && rows[0].len() == 1, "{sql}: expected one value, got {rows:?}");
        rows[0][0].parse().unwrap_or_else(|e| panic!("{sql}: {:?} is not a count: {e}", rows[0][0]))
    }

    /// Runs SQL as `psc` over TCP; returns the rows, columns split on tabs. Panics on error.
    pub fn query_rows(&self, sql: &str) -> Vec<Vec<String>> {
        self.try_query_rows(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Like [`MariaDb::query_rows`], but a failure (server down, SQL error) is an `Err`.
    pub fn try_query_rows(&self, sql: &str) -> Result<Vec<Vec<String>>, String> {
        let output = Command::new("mariadb")
            .arg(format!("--defaults-file={}", self.dir.path().join("client.cnf").display()))
            .args(["--batch", "--skip-column-names", "--execute", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run the mariadb client: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        Ok(stdout.lines().map(|l| l.split('\t').map(str::to_owned).collect()).collect())
    }

    fn stop(&mut self) {
        if process_gone(self.pid) {
            return;
        }
        send_signal(self.pid, libc::SIGTERM);
        if wait_gone(self.pid, STOP_TIMEOUT) {
            return;
        }
        eprintln!("mariadbd {} ignored SIGTERM for {STOP_TIMEOUT:?}; sending SIGKILL", self.pid);
        send_signal(self.pid, libc::SIGKILL);
        if !wait_gone(self.pid, STOP_TIMEOUT) {
            eprintln!("mariadbd {} survived SIGKILL", self.pid);
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !process_gone(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        sleep(POLL_INTERVAL);
    }
    true
}

/// `scripts/mariadb.sh start DIR`; returns the URL it prints.
fn run_mariadb_script(dir: &Path) -> String {
    let output = Command::new(repo_path("scripts/mariadb.sh"))
        .arg("start")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/mariadb.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "scripts/mariadb.sh start {dir:?} failed ({}):\n{}\n{}\nerror.log:\n{}",
        output.status,
        stdout,
        String::from_utf8_lossy(&output.stderr),
        tail(&dir.join("error.log"), 40),
    );
    stdout.trim().lines().last().expect("mariadb.sh prints the URL").to_owned()
}

fn port_of_url(url: &str) -> u16 {
    let host_port = url.rsplit('@').next().and_then(|rest| rest.split('/').next());
    let port = host_port.and_then(|hp| hp.rsplit(':').next()).and_then(|p| p.parse().ok());
    port.unwrap_or_else(|| panic!("no port in MySQL URL {url}"))
}

fn read_pid(dir: &Path) -> u32 {
    let path = dir.join("mysqld.pid");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    text.trim().parse().unwrap_or_else(|e| panic!("{path:?} holds {text:?}: {e}"))
}

/// A running `player-stat-collector` (the debug binary cargo built for the tests).
pub struct Collector {
    /// Where it listens (127.0.0.1, port chosen by the kernel), from `PSC_PORT_FILE`.
    pub addr: SocketAddr,
    pub child: Child,
    /// `wal.dir` of the generated config: `<work_dir>/wal`.
    pub wal_dir: PathBuf,
    config_path: PathBuf,
    /// The binary writes `127.0.0.1:PORT\n` here once every core listens.
    port_file: PathBuf,
    /// stdout and stderr of every run of this collector, appended.
    log_path: PathBuf,
}

impl Collector {
    /// Writes `<work_dir>/config.toml` (listen 127.0.0.1:0, wal.dir `<work_dir>/wal`,
    /// mysql.url, merged with `extra_toml`, whose keys win), starts the binary and waits until
    /// it has written its port file.
    pub fn start(work_dir: &Path, mysql_url: &str, extra_toml: &str) -> Collector {
        fs::create_dir_all(work_dir).expect("create the collector's work dir");
        let wal_dir = work_dir.join("wal");
        let config_path = work_dir.join("config.toml");
        let config = collector_config(&wal_dir, mysql_url, extra_toml);
        fs::write(&config_path, config).expect("write the collector config");
        let port_file = work_dir.join("port");
        let log_path = work_dir.join("collector.log");
        let child = spawn_collector(&config_path, &port_file, &log_path);
        let mut collector = Collector {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
            wal_dir,
            config_path,
            port_file,
            log_path,
        };
        collector.addr = collector.wait_for_port_file();
        collector
    }

    /// Stops this process if it still runs and starts a new one with the same config and
    /// WAL; `addr` is updated (the port changes).
    pub fn restart(&mut self) {
        self.kill9();
        self.child = spawn_collector(&self.config_path, &self.port_file, &self.log_path);
        self.addr = self.wait_for_port_file();
    }

    /// SIGKILL and reap: a crash, not a shutdown.
    pub fn kill9(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // Child::kill sends SIGKILL.
            self.child.kill().expect("SIGKILL the collector");
        }
        self.child.wait().expect("reap the collector");
    }

    /// SIGTERM, then waits up to `timeout` for the exit; `None` if it is still running.
    pub fn sigterm_and_wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.child.try_wait().expect("poll the collector") {
            return Some(status);
        }
        send_signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the collector") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            sleep(POLL_INTERVAL);
        }
    }

    /// Everything the collector wrote to stdout and stderr so far, across restarts.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Runs the binary once with `args` followed by `--config <this config>`, e.g.
    /// `["wal", "verify"]`, and returns its output.
    pub fn run_subcommand(&self, args: &[&str]) -> Output {
        collector_command()
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .output()
            .expect("run player-stat-collector")
    }

    fn wait_for_port_file(&mut self) -> SocketAddr {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the collector") {
                panic!("collector exited during start-up ({status}); log:\n{}", self.log());
            }
            // The binary writes the file atomically, so a readable file is a complete one.
            if let Ok(text) = fs::read_to_string(&self.port_file) {
                return text
                    .trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("port file {:?} holds {text:?}: {e}", self.port_file));
            }
            if Instant::now() >= deadline {
                let log = self.log();
                self.kill9();
                panic!("collector wrote no port file within {START_TIMEOUT:?}; log:\n{log}");
            }
            sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `Command` for the binary under test with the `PSC_*` environment cleared.
pub fn collector_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_player-stat-collector"));
    for var in COLLECTOR_ENV {
        command.env_remove(var);
    }
    command
}

fn spawn_collector(config_path: &Path, port_file: &Path, log_path: &Path) -> Child {
    match fs::remove_file(port_file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("remove stale port file {port_file:?}: {e}"),
    }
    let log = fs::OpenOptions::new().create(true).append(true).open(log_path).expect("open log");
    collector_command()
        .arg("--config")
        .arg(config_path)
        .env("PSC_PORT_FILE", port_file)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log handle"))
        .stderr(log)
        .spawn()
        .expect("spawn player-stat-collector")
}

/// Runs the binary with `args --config config`, killed by PID if it runs for over 20 s;
/// returns its exit status and stderr.
pub fn run_bounded(config: &Path, args: &[&str], work: &Path) -> (ExitStatus, String) {
    let err_path = work.join("run-bounded.err");
    let err = fs::File::create(&err_path).expect("create the stderr file");
    let mut child = collector_command()
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("spawn the collector");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the collector") {
            break status;
        }
        if Instant::now() >= deadline {
            child.kill().expect("SIGKILL the collector");
            let _ = child.wait();
            panic!("`{args:?}` still runs after 20 s");
        }
        sleep(POLL_INTERVAL);
    };
    (status, fs::read_to_string(&err_path).unwrap_or_default())
}

/// The test config: harness defaults for listen, wal.dir and mysql.url, under `extra_toml`.
pub fn collector_config(wal_dir: &Path, mysql_url: &str, extra_toml: &str) -> String {
    let mut config: toml::Table =
        toml::from_str(extra_toml).unwrap_or_else(|e| panic!("extra_toml is not TOML: {e}"));
    let defaults = [
        ("server", "listen", "127.0.0.1:0".to_owned()),
        ("wal", "dir", wal_dir.to_str().expect("UTF-8 work dir").to_owned()),
        ("mysql", "url", mysql_url.to_owned()),
    ];
    for (section, key, value) in defaults {
        let table = config
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap_or_else(|| panic!("extra_toml: `{section}` must be a table"));
        table.entry(key).or_insert(toml::Value::String(value));
    }
    toml::to_string(&config).expect("serialize the collector config")
}

/// One `GET target` on a fresh connection; returns the status code and the body.
/// Panics on any IO error; see [`try_http_get`] for tests that expect failures.
pub fn http_get(addr: SocketAddr, target: &str) -> (u16, String) {
    try_http_get(addr, target).unwrap_or_else(|e| panic!("GET {target} from {addr}: {e}"))
}

/// Like [`http_get`], but connection and protocol errors are returned.
pub fn try_http_get(addr: SocketAddr, target: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    read_response(&mut stream)
}

/// Reads one response: the head, then `Content-Length` bytes (or up to EOF without one).
fn read_response(stream: &mut TcpStream) -> std::io::Result<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(invalid_data(format!("connection closed after {} bytes", buf.len())));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > HTTP_RESPONSE_BYTES_MAX {
            return Err(invalid_data("response head too large".into()));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = parse_status(&head)?;
    match content_length(&head)? {
        Some(len) if len > HTTP_RESPONSE_BYTES_MAX => {
            return Err(invalid_data(format!("Content-Length {len} too large")))
        }
        Some(len) => {
            while buf.len() < head_end + len {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(invalid_data("connection closed inside the body".into()));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.truncate(head_end + len);
        }
        None => {
            stream.take(HTTP_RESPONSE_BYTES_MAX as u64).read_to_end(&mut buf)?;
        }
    }
    Ok((status, String::from_utf8_lossy(&buf[head_end..]).into_owned()))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid_data(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

fn parse_status(head: &str) -> std::io::Result<u16> {
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(version), Some(Ok(code))) if version.starts_with("HTTP/1.") => Ok(code),
        _ => Err(invalid_data(format!("bad status line {status_line:?}"))),
    }
}

fn content_length(head: &str) -> std::io::Result<Option<usize>> {
    for line in head.lines().skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                let len = value
                    .trim()
                    .parse()
                    .map_err(|e| invalid_data(format!("bad Content-Length {value:?}: {e}")))?;
                return Ok(Some(len));
            }
        }
    }
    Ok(None)
}

/// A port on 127.0.0.1 that refuses connections for the rest of this test process, for
/// "MySQL unreachable" tests: a socket bound to it and never listening is kept open (leaked
/// on purpose), so no server started meanwhile, by this process's other tests or anyone
/// else, can take it. A port bound and released again could be handed out by the next bind
/// to port 0, and an "unreachable" URL then reached a live server.
pub fn free_closed_port() -> u16 {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind 127.0.0.1:0");
    let port = socket.local_addr().expect("local addr").as_socket().expect("an IPv4 address").port();
    std::mem::forget(socket);
    port
}

/// A free port on 127.0.0.1 for a server a test starts (bound once by us, then released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// `n` file ids never handed out before in this test process, so a test can track each
/// acknowledged event in MySQL by its own `file_id`.
pub fn unique_file_ids(n: usize) -> Vec<u64> {
    static NEXT: AtomicU64 = AtomicU64::new(1_000_000_000);
    let first = NEXT.fetch_add(n as u64, Ordering::Relaxed);
    (first..first + n as u64).collect()
}
