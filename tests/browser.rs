//! A real browser speaks every beacon dialect to the real binary: Debian's headless
//! Chromium loads a page from one loopback port (a tiny std HTTP server here) that fires an
//! `<img>` pixel, `sendBeacon` with a string and with `URLSearchParams`, and a `fetch`
//! keepalive JSON batch of 10 events at the collector on another port, so CORS (preflight
//! included) is exercised for real. Every event must reach MySQL exactly once, with the
//! browser's User-Agent hash and the loopback IP.
//!
//! Chromium is installed by `scripts/ensure-deps.sh chromium` (apt) when absent; it runs
//! in its own process group with a fresh profile and is killed by group after a bounded wait.
mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use psc::ingest::client::ua_hash;
use support::{unique_file_ids, wait_for, Collector, MariaDb};

const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);
const DOMAIN: &str = "browser.example";

/// The page: fires every dialect on load and reports what it saw in the DOM.
fn page(collector: SocketAddr, ids: &[u64]) -> String {
    let base = format!("http://{collector}");
    let batch: Vec<String> = ids[3..13]
        .iter()
        .map(|id| format!(r#"{{"event":"play","domain":"{DOMAIN}","file_id":{id}}}"#))
        .collect();
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>beacons</title></head><body>
<img id="pixel" src="{base}/log.gif?event=play&domain={DOMAIN}&file_id={id0}" width="1" height="1">
<pre id="ua"></pre><pre id="beacons"></pre><pre id="fetch">pending</pre>
<script>
document.getElementById('ua').textContent = navigator.userAgent;
const sent = [
  navigator.sendBeacon('{base}/log', 'event=play&domain={DOMAIN}&file_id={id1}'),
  navigator.sendBeacon('{base}/log', new URLSearchParams({{event: 'play', domain: '{DOMAIN}', file_id: '{id2}'}})),
];
document.getElementById('beacons').textContent = sent.join(',');
fetch('{base}/log', {{method: 'POST', keepalive: true, headers: {{'Content-Type': 'application/json'}},
  body: JSON.stringify([{batch}])}})
  .then(r => {{ document.getElementById('fetch').textContent = 'status ' + r.status; }})
  .catch(e => {{ document.getElementById('fetch').textContent = 'error ' + e; }});
</script></body></html>"#,
        id0 = ids[0],
        id1 = ids[1],
        id2 = ids[2],
        batch = batch.join(","),
    )
}

/// Serves `html` for every request on a loopback port until `stop` is set.
fn serve_page(html: String, stop: Arc<AtomicBool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the page server");
    listener.set_nonblocking(true).expect("nonblocking listener");
    let addr = listener.local_addr().expect("page server address");
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => answer_page(stream, &html),
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    addr
}

fn answer_page(stream: std::net::TcpStream, html: &str) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    // The request head; its content does not matter (every path gets the page).
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
        line.clear();
    }
    let mut stream = reader.into_inner();
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        html.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(html.as_bytes());
}

fn ensure_chromium() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ensure-deps.sh");
    let status = Command::new(script).arg("chromium").status().expect("run scripts/ensure-deps.sh");
    assert!(status.success(), "scripts/ensure-deps.sh chromium failed: {status}");
}

/// Runs headless Chromium on `url` with `--dump-dom`; returns the DOM it printed.
fn chromium_dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out_path = profile.path().join("dom.html");
    let out = std::fs::File::create(&out_path).expect("dom file");
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--no-first-run",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-proxy-server",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().join("profile").display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start chromium");
    let group = child.id() as i32;
    let started = Instant::now();
    let exited = loop {
        match child.try_wait().expect("poll chromium") {
            Some(status) => break Some(status),
            None if started.elapsed() > BROWSER_TIMEOUT => break None,
            None => thread::sleep(Duration::from_millis(100)),
        }
    };
    // The whole group: renderer and helper processes may outlive the browser process.
    // SAFETY: kill(2) with a negative pid signals our own child's process group only.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    let _ = child.wait();
    assert!(exited.is_some(), "chromium did not finish within {BROWSER_TIMEOUT:?}");
    std::fs::read_to_string(&out_path).expect("read the dumped DOM")
}

/// Text of the `<pre id="{id}">` element in the dumped DOM.
fn element_text<'a>(dom: &'a str, id: &str) -> &'a str {
    let open = format!("<pre id=\"{id}\">");
    let start = dom.find(&open).unwrap_or_else(|| panic!("no #{id} in the DOM: {dom}")) + open.len();
    let end = dom[start..].find("</pre>").expect("closing </pre>") + start;
    &dom[start..end]
}

#[test]
fn headless_chromium_sends_every_dialect_once() {
    ensure_chromium();
    let db = MariaDb::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(dir.path(), &db.url, "[ingest]\nnode_id = \"browser\"\n");
    let ids = unique_file_ids(13);
    let stop = Arc::new(AtomicBool::new(false));
    let page_addr = serve_page(page(collector.addr, &ids), stop.clone());

    let dom = chromium_dump_dom(&format!("http://{page_addr}/"));
    stop.store(true, Ordering::Relaxed);
    let user_agent = element_text(&dom, "ua").replace("&amp;", "&");
    assert!(user_agent.contains("Chrome"), "user agent {user_agent:?}");
    assert_eq!(element_text(&dom, "beacons"), "true,true", "sendBeacon queued both");
    assert_eq!(element_text(&dom, "fetch"), "status 204", "CORS let the page read the answer");

    let list = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let distinct = format!("SELECT COUNT(DISTINCT file_id) FROM events WHERE file_id IN ({list})");
    wait_for("the browser's events in MySQL", DELIVERY_TIMEOUT, || db.query_count(&distinct) == 13);
    let hash = ua_hash(&user_agent);
    let rows = db.query_rows(&format!(
        "SELECT e.file_id, INET6_NTOA(e.client_ip), e.ua_hash, d.name FROM events e \
         JOIN domains d ON d.id = e.domain_id WHERE e.file_id IN ({list}) ORDER BY e.file_id"
    ));
    assert_eq!(rows.len(), 13, "each event exactly once: {rows:?}");
    for (row, id) in rows.iter().zip(&ids) {
        assert_eq!(row, &[id.to_string(), "127.0.0.1".into(), hash.to_string(), DOMAIN.into()]);
    }
    let stored_ua = db.query_rows(&format!("SELECT ua FROM user_agents WHERE hash = {hash}"));
    assert_eq!(stored_ua, vec![vec![user_agent.clone()]]);
}
