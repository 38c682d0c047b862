//! A private `clickhouse-server` per test: its own config (`scripts/clickhouse.sh config`),
//! free ports of 127.0.0.1 chosen before it starts, a temp dir, and the process as our own
//! child, killed by its PID when dropped.
//!
//! Ports are picked first so that several servers can name each other in a `remote_servers`
//! cluster ([`ClickHouse::cluster`]), and so that a test can point a sink at a server that
//! is not running yet ([`ClickHouse::configure`], then [`ClickHouse::launch`]).
//!
//! Queries go over HTTP/1.0 (`POST /`, the SQL as body), one fresh connection each, with
//! timeouts; the answer is returned as text.

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Once;

use super::{free_port, read_response, repo_path, tail, wait_for, HTTP_TIMEOUT, START_TIMEOUT};

/// A private ClickHouse server in a temp dir.
pub struct ClickHouse {
    /// `http://127.0.0.1:PORT`, for `clickhouse.url` / `clickhouse.shards`.
    pub url: String,
    pub http_port: u16,
    /// The native protocol port (what a `Distributed` table's cluster names).
    pub tcp_port: u16,
    /// Config, data and logs; deleted after the server stopped.
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl ClickHouse {
    /// Configures and starts a fresh server.
    pub fn start() -> ClickHouse {
        let mut server = ClickHouse::configure();
        server.launch();
        server
    }

    /// Configures a server on fresh ports without starting it.
    pub fn configure() -> ClickHouse {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            let status = Command::new(repo_path("scripts/ensure-deps.sh"))
                .arg("clickhouse")
                .status()
                .expect("run scripts/ensure-deps.sh");
            assert!(status.success(), "scripts/ensure-deps.sh clickhouse failed: {status}");
        });
        let dir = tempfile::Builder::new().prefix("psc-clickhouse-").tempdir().expect("temp dir");
        let (http_port, tcp_port) = (free_port(), free_port());
        let output = Command::new(repo_path("scripts/clickhouse.sh"))
            .arg("config")
            .arg(dir.path())
            .env("CLICKHOUSE_HTTP_PORT", http_port.to_string())
            .env("CLICKHOUSE_TCP_PORT", tcp_port.to_string())
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/clickhouse.sh");
        assert!(output.status.success(), "clickhouse.sh config: {}", String::from_utf8_lossy(&output.stderr));
        let url = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        assert_eq!(url, format!("http://127.0.0.1:{http_port}"));
        ClickHouse { url, http_port, tcp_port, dir, child: None }
    }

    /// `n` configured servers that know each other as cluster `name` (one shard each), started.
    pub fn cluster(n: usize, name: &str) -> Vec<ClickHouse> {
        let mut servers: Vec<ClickHouse> = (0..n).map(|_| ClickHouse::configure()).collect();
        let shards: String = servers
            .iter()
            .map(|s| {
                format!("<shard><replica><host>127.0.0.1</host><port>{}</port></replica></shard>", s.tcp_port)
            })
            .collect();
        let xml = format!("<?xml version=\"1.0\"?>\n<yandex><remote_servers><{name}>{shards}</{name}></remote_servers></yandex>\n");
        for server in &mut servers {
            fs::write(server.dir.path().join("config.d/cluster.xml"), &xml).expect("write cluster.xml");
            server.launch();
        }
        servers
    }

    /// Starts the configured server (again) and waits until it answers `/ping`.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let dir = self.dir.path();
        let log = fs::OpenOptions::new().create(true).append(true).open(dir.join("log/stdout.log"));
        let log = log.expect("open the server's stdout log");
        let binary = ["/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("clickhouse-server");
        let mut child = Command::new(binary)
            .arg(format!("--config-file={}", dir.join("config.xml").display()))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn clickhouse-server");
        let port = self.http_port;
        wait_for("clickhouse-server to answer /ping", START_TIMEOUT, || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("clickhouse-server exited ({status}):\n{}", tail(&dir.join("log/stdout.log"), 30));
            }
            let ping = b"GET /ping HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
            exchange(port, ping).is_ok_and(|body| body.starts_with("Ok."))
        });
        self.child = Some(child);
    }

    /// SIGKILL and reap: a crash. [`ClickHouse::launch`] starts it again on the same data.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `sql`; returns the answer (TabSeparated unless the SQL says otherwise). Panics
    /// on an error.
    pub fn query(&self, sql: &str) -> String {
        self.try_query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// A query answering one number (`SELECT count() …`).
    pub fn count(&self, sql: &str) -> u64 {
        let text = self.query(sql);
        text.trim().parse().unwrap_or_else(|e| panic!("{sql}: {text:?} is not a count: {e}"))
    }

    /// Like [`ClickHouse::query`], with a server error or IO failure as `Err`.
    pub fn try_query(&self, sql: &str) -> Result<String, String> {
        let head = format!("POST / HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n", sql.len());
        exchange(self.http_port, &[head.as_bytes(), sql.as_bytes()].concat())
    }

    /// Sends `head` + `body` as one request on a raw socket, then closes it after
    /// `body_sent` bytes of the body: a request cut by a lost connection. Returns at once.
    pub fn send_cut(&self, head: &str, body: &[u8], body_sent: usize) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.http_port));
        let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).expect("connect");
        stream.write_all(head.as_bytes()).expect("send the head");
        stream.write_all(&body[..body_sent]).expect("send part of the body");
        stream.shutdown(std::net::Shutdown::Write).expect("close our side");
        // Wait for the server's verdict (it answers once it saw the end of our bytes).
        let _ = read_response(&mut stream);
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One request on a fresh connection to 127.0.0.1:`port`; the body of a 200 answer.
fn exchange(port: u16, request: &[u8]) -> Result<String, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let io = |e: std::io::Error| e.to_string();
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).map_err(io)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT)).map_err(io)?;
    stream.write_all(request).map_err(io)?;
    let (status, body) = read_response(&mut stream).map_err(io)?;
    if status == 200 {
        Ok(body)
    } else {
        Err(format!("HTTP {status}: {}", body.trim()))
    }
}
