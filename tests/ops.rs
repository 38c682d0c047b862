//! Operating the collector with the real tools: Prometheus scraping it, `promtool`, SIGTERM
//! drains, `/readyz` during a MySQL outage and during a drain, the JSON documents, the
//! systemd unit (`systemd-analyze verify`), `scripts/install.sh` into a staging root and the
//! Grafana dashboard.
//!
//! Every process is started by the test and stopped by its PID; every wait is bounded.

mod support;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{free_closed_port, http_get, try_http_get, unique_file_ids, wait_for, Collector, MariaDb};

const WAIT: Duration = Duration::from_secs(60);

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn json(addr: SocketAddr, target: &str) -> serde_json::Value {
    let (status, body) = http_get(addr, target);
    assert_eq!(status, 200, "GET {target}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {target} is not JSON ({e}): {body}"))
}

fn beacon(addr: SocketAddr, domain: &str, file_id: u64) -> u16 {
    http_get(addr, &format!("/log?event=play&domain={domain}&file_id={file_id}")).0
}

fn sigterm(child: &Child) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
}

/// Waits for `child` to exit, without signalling it (a second SIGTERM means "exit now").
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("poll the collector") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One raw request on `stream`; returns the response head and body.
fn read_response(stream: &mut TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).expect("read the response");
        assert!(n > 0, "connection closed before a full response: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .expect("Content-Length");
            if body.len() >= len {
                return (head.to_owned(), body[..len].to_owned());
            }
        }
    }
}

// ---- Prometheus -------------------------------------------------------------------------

/// A private Prometheus on loopback, with its own config and data dir; killed by PID on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let status = Command::new(repo_path("scripts/ensure-deps.sh"))
            .arg("prometheus")
            .status()
            .expect("run scripts/ensure-deps.sh prometheus");
        assert!(status.success(), "scripts/ensure-deps.sh prometheus failed: {status}");
        let dir = tempfile::Builder::new().prefix("psc-prometheus-").tempdir().expect("temp dir");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
             - job_name: psc\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write prometheus.yml");
        let addr = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, addr, _dir: dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The value of the first sample of an instant query, if there is one.
    fn query(&self, promql: &str) -> Option<f64> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = try_http_get(self.addr, &format!("/api/v1/query?query={encoded}")).ok()?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_the_collector_and_promtool_accepts_the_metrics() {
    let work = tempfile::tempdir().unwrap();
    let mysql_url = format!("mysql://psc:x@127.0.0.1:{}/psc", free_closed_port());
    let collector = Collector::start(work.path(), &mysql_url, "[server]\ncores = 2\n");
    for id in unique_file_ids(5) {
        assert_eq!(beacon(collector.addr, "prom.example", id), 204);
    }

    // OpenMetrics by default, with its content type and EOF marker.
    let mut stream = TcpStream::connect(collector.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let (head, body) = read_response(&mut stream);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"));
    assert!(body.contains("ingest_events_accepted_total 5\n"), "{body}");

    let prom = Prometheus::start(collector.addr);
    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    let (_, classic) = http_get(collector.addr, "/metrics?format=prometheus");
    let mut promtool = promtool;
    promtool.stdin.take().unwrap().write_all(classic.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let deadline = Instant::now() + WAIT;
    let found = loop {
        let up = prom.query("up{job=\"psc\"}");
        let accepted = prom.query("ingest_events_accepted_total{job=\"psc\"}");
        let wal = prom.query("ingest_wal_size_bytes{job=\"psc\"}");
        if let (Some(up), Some(accepted), Some(wal)) = (up, accepted, wal) {
            break (up, accepted, wal);
        }
        assert!(Instant::now() < deadline, "Prometheus never scraped; its log:\n{}", prom.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(found.0, 1.0, "up");
    assert_eq!(found.1, 5.0, "ingest_events_accepted_total");
    assert!(found.2 > 0.0, "ingest_wal_size_bytes");
}

// ---- drain ------------------------------------------------------------------------------

#[test]
fn sigterm_under_load_exits_0_and_every_acked_event_lands_once() {
    let db = MariaDb::start();
    let work = tempfile::tempdir().unwrap();
    let config = "[server]\ncores = 2\nshutdown_timeout_ms = 20000\n[mysql]\nflush_interval_ms = 100\n";
    let mut collector = Collector::start(work.path(), &db.url, config);
    let addr = collector.addr;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let loaders: Vec<_> = (0..4)
        .map(|t| {
            let (acked, stop) = (acked.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let id = unique_file_ids(1)[0];
                    let target = format!("/log?event=play&domain=load{t}.example&file_id={id}");
                    match try_http_get(addr, &target) {
                        Ok((204, _)) => acked.lock().unwrap().push(id),
                        Ok(_) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        })
        .collect();
    wait_for("500 acked events", WAIT, || acked.lock().unwrap().len() >= 500);
    let status = collector.sigterm_and_wait(WAIT).expect("collector still running after SIGTERM");
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.join().unwrap();
    }
    assert!(status.success(), "exit status {status}; log:\n{}", collector.log());
    let acked: HashSet<u64> = acked.lock().unwrap().iter().copied().collect();

    collector.restart();
    wait_for("every acked event in MySQL", WAIT, || {
        db.query_count("SELECT COUNT(*) FROM events") >= acked.len() as u64
    });
    let in_db: Vec<u64> =
        db.query_rows("SELECT file_id FROM events").iter().map(|r| r[0].parse().unwrap()).collect();
    let distinct: HashSet<u64> = in_db.iter().copied().collect();
    assert_eq!(distinct.len(), in_db.len(), "an event landed twice");
    let missing: Vec<_> = acked.difference(&distinct).collect();
    assert!(missing.is_empty(), "{} acked events missing, e.g. {:?}", missing.len(), missing.first());
    assert!(collector.log().contains("draining"), "drain not logged");
}

/// /stats and /debug/domain-cache with MySQL up, /readyz 200 while MySQL is down, and 503 with
/// `Connection: close` for a request that was in flight when the drain began.
#[test]
fn readyz_stays_200_without_mysql_and_is_503_during_drain() {
    let mut db = MariaDb::start();
    let work = tempfile::tempdir().unwrap();
    let config = "[server]\ncores = 2\nshutdown_timeout_ms = 24000\n\
                  [http]\nidle_timeout_ms = 60000\n[mysql]\nflush_interval_ms = 100\nretry_max_ms = 500\n";
    let mut collector = Collector::start(work.path(), &db.url, config);
    let addr = collector.addr;
    let ids = unique_file_ids(30);
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(beacon(addr, &format!("d{}.example", i % 3), id), 204);
    }
    wait_for("30 events flushed", WAIT, || {
        let stats = json(addr, "/stats");
        stats["events"]["flushed"].as_u64() >= Some(30) && stats["mysql"]["up"] == true
    });

    let stats = json(addr, "/stats");
    for key in ["version", "uptime_seconds", "cores", "queue", "wal", "mysql", "replay", "events"] {
        assert!(!stats[key].is_null(), "/stats lacks {key}: {stats}");
    }
    assert_eq!(stats["cores"].as_array().map(Vec::len), Some(2));
    for key in
        ["accepted", "wal_segment", "wal_offset", "committed", "backlog_bytes", "backlog_events_estimate"]
    {
        assert!(!stats["cores"][0][key].is_null(), "/stats core lacks {key}: {stats}");
    }
    assert_eq!(stats["mysql"]["up"], true, "{stats}\n{}", collector.log());
    assert!(stats["mysql"]["last_flush_unix_ms"].as_u64().is_some());
    assert!(stats["queue"]["capacity"].as_u64() > Some(0));
    assert!(stats["drain_rate_rows_per_second"].is_number());

    wait_for("domain cache snapshot", WAIT, || {
        json(addr, "/debug/domain-cache")["top"].as_array().map(Vec::len) == Some(3)
    });
    let cache = json(addr, "/debug/domain-cache");
    assert_eq!(cache["size"], 3);
    assert!(cache["capacity"].as_u64() > Some(0));
    assert!(cache["last_load_unix_ms"].as_u64().is_some());
    assert!(cache["last_refresh_unix_ms"].as_u64().is_some());
    assert_eq!(cache["hits"].as_u64().unwrap() + cache["misses"].as_u64().unwrap(), 30);
    assert!(cache["top"][0]["name"].as_str().unwrap().ends_with(".example"));

    // MySQL dies: the WAL still takes events and the node stays in the balancer.
    db.kill9();
    for &id in &unique_file_ids(5) {
        assert_eq!(beacon(addr, "outage.example", id), 204);
    }
    wait_for("flusher to notice MySQL is down", WAIT, || json(addr, "/stats")["mysql"]["up"] == false);
    let (status, body) = http_get(addr, "/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"mysql_up\":false"), "{body}");
    println!("/stats during the outage: {}", json(addr, "/stats"));

    // A request in flight when the drain starts: head half sent before the signal.
    let mut in_flight = TcpStream::connect(addr).unwrap();
    in_flight.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    in_flight.write_all(b"GET /readyz HTTP/1.1\r\nHost: t\r\n").unwrap();
    wait_for("the in-flight connection to be accepted", WAIT, || {
        json(addr, "/stats")["cores"].as_array().unwrap().iter().any(|c| c["connections_open"] == 1)
    });
    sigterm(&collector.child);
    wait_for("listeners to stop accepting", WAIT, || TcpStream::connect(addr).is_err());
    in_flight.write_all(b"\r\n").unwrap();
    let (head, body) = read_response(&mut in_flight);
    assert!(head.starts_with("HTTP/1.1 503"), "{head}\n{body}");
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    assert!(body.contains("\"reason\":\"draining\""), "{body}");

    // MySQL back: the flusher's last attempt delivers and the process exits 0.
    db.restart();
    let status = wait_exit(&mut collector.child, WAIT).expect("collector still running");
    assert!(status.success(), "exit status {status}; log:\n{}", collector.log());
    assert_eq!(
        db.query_count("SELECT COUNT(DISTINCT file_id) FROM events"),
        db.query_count("SELECT COUNT(*) FROM events")
    );
}

// ---- deployment files -------------------------------------------------------------------

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        println!("SKIPPED: systemd-analyze is not installed here");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(repo_path("scripts/player-stat-collector.service")).unwrap();
    for key in
        ["Type=notify", "LimitMEMLOCK=infinity", "LimitNOFILE=", "Restart=on-failure", "StateDirectory="]
    {
        assert!(unit.contains(key), "unit lacks {key}");
    }
    let timeout_stop_s: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim().parse().ok())
        .expect("TimeoutStopSec in seconds");
    let drain_s = psc::config::Config::default().server.shutdown_timeout_ms / 1000;
    assert!(timeout_stop_s > drain_s, "TimeoutStopSec must exceed the drain ({drain_s} s)");
    // verify checks that ExecStart's binary exists: point it at the one under test.
    let path = dir.path().join("player-stat-collector.service");
    let unit =
        unit.replace("/usr/local/bin/player-stat-collector", env!("CARGO_BIN_EXE_player-stat-collector"));
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "systemd-analyze verify: {text}");
    assert!(!text.contains("Unknown"), "systemd-analyze verify: {text}");
}

#[test]
fn install_script_stages_binary_config_and_unit_idempotently() {
    let root = tempfile::tempdir().unwrap();
    let run = || {
        let out = Command::new(repo_path("scripts/install.sh"))
            .env("DESTDIR", root.path())
            .env("PREFIX", "/opt/psc")
            .env("BINARY", env!("CARGO_BIN_EXE_player-stat-collector"))
            .output()
            .expect("run install.sh");
        assert!(out.status.success(), "install.sh: {}", String::from_utf8_lossy(&out.stderr));
    };
    run();
    let config = root.path().join("etc/player-stat-collector/config.toml");
    let unit = root.path().join("etc/systemd/system/player-stat-collector.service");
    assert!(root.path().join("opt/psc/bin/player-stat-collector").is_file());
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    assert!(unit_text.contains("ExecStart=/opt/psc/bin/player-stat-collector "), "{unit_text}");
    std::fs::write(&config, "# edited by the operator\n").unwrap();
    run();
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "# edited by the operator\n", "config overwritten");
}

#[test]
fn grafana_dashboard_is_valid_json_with_the_panels() {
    let text = std::fs::read_to_string(repo_path("scripts/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let exprs: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    for metric in [
        "ingest_events_accepted_total",
        "ingest_events_rejected_total",
        "ingest_queue_depth",
        "ingest_commit_lag_bytes",
        "ingest_flush_duration_seconds_bucket",
        "ingest_mysql_up",
        "ingest_commit_lag_events",
    ] {
        assert!(exprs.iter().any(|e| e.contains(metric)), "no panel queries {metric}");
    }
    assert!(dashboard["title"].is_string());
    assert!(dashboard["schemaVersion"].is_number());
}

#[test]
fn second_signal_exits_at_once_during_a_long_drain() {
    let work = tempfile::tempdir().unwrap();
    let mysql_url = format!("mysql://psc:x@127.0.0.1:{}/psc", free_closed_port());
    // With MySQL unreachable the flusher's last attempt would last 150 s (half the budget).
    let config = "[server]\ncores = 1\nshutdown_timeout_ms = 300000\n";
    let mut collector = Collector::start(work.path(), &mysql_url, config);
    for id in unique_file_ids(3) {
        assert_eq!(beacon(collector.addr, "second.example", id), 204);
    }
    sigterm(&collector.child);
    wait_for("listeners to stop accepting", WAIT, || TcpStream::connect(collector.addr).is_err());
    wait_for("the drain to be logged", WAIT, || collector.log().contains("draining"));
    sigterm(&collector.child);
    let status = wait_exit(&mut collector.child, WAIT).expect("second SIGTERM did not end the process");
    assert_eq!(status.code(), Some(130), "log:\n{}", collector.log());
}
