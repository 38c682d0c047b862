//! Issue 14 against the real binary and a private MariaDB: compressed POST bodies (gzip,
//! deflate, a bomb, an unknown coding), `Expect: 100-continue`, `X-Forwarded-For` over several
//! lines, the connection limits, client event ids and `ingest.drop_bots`, checked row by row;
//! then the stored fields: a retried `eid` accepted on both cores is one row, a known IP's
//! country through a trusted proxy (the real test database of `scripts/geoip-test-db.sh`),
//! a Googlebot flagged and a browser parsed in `user_agents`. Only rows in MySQL and the
//! collector's own endpoints are checked, never how the flusher got them there.
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
use flate2::Compression;
use support::{http_get, unique_file_ids, wait_for, Collector, MariaDb};

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);
const IO_TIMEOUT: Duration = Duration::from_secs(20);
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";
const CHROME_WIN: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
                          Chrome/120.0.0.0 Safari/537.36";
/// Sends of one event id on fresh connections until both cores took one; 2^-63 to fail.
const RETRIES_MAX: usize = 64;

fn start(db: &MariaDb, node: &str, extra: &str) -> (tempfile::TempDir, Collector) {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!("[ingest]\nnode_id = \"{node}\"\n{extra}");
    let collector = Collector::start(dir.path(), &db.url, &toml);
    (dir, collector)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s
}

/// Reads one response head and its `Content-Length` body; (status, head text, body).
fn read_answer(s: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).expect("read the answer"), 1, "closed inside a head: {buf:?}");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let status = head[9..12].parse().expect("a status code");
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>())
        })
        .map_or(0, |v| v.expect("a length"));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("the body");
    (status, head, body)
}

/// POSTs `body` with `headers` (each `Name: value`) on a fresh connection.
fn post(addr: SocketAddr, headers: &[&str], body: &[u8]) -> (u16, String) {
    let mut s = connect(addr);
    let mut req = format!("POST /log HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n", body.len());
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("send the head");
    s.write_all(body).expect("send the body");
    let (status, _, body) = read_answer(&mut s);
    (status, String::from_utf8_lossy(&body).trim().to_owned())
}

fn batch(ids: &[u64], domain: &str) -> Vec<u8> {
    let items: Vec<String> =
        ids.iter().map(|id| format!(r#"{{"event":"play","domain":"{domain}","file_id":{id}}}"#)).collect();
    format!("[{}]", items.join(",")).into_bytes()
}

fn compress(coding: &str, data: &[u8]) -> Vec<u8> {
    let level = Compression::default();
    let out = match coding {
        "gzip" => {
            let mut e = GzEncoder::new(Vec::new(), level);
            e.write_all(data).and_then(|_| e.finish())
        }
        "zlib" => {
            let mut e = ZlibEncoder::new(Vec::new(), level);
            e.write_all(data).and_then(|_| e.finish())
        }
        _ => {
            let mut e = DeflateEncoder::new(Vec::new(), level);
            e.write_all(data).and_then(|_| e.finish())
        }
    };
    out.expect("compress in memory")
}

fn id_list(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// Rows of `ids`; 0 while the collector's flusher has not created `events` yet (it migrates
/// on its first connection, which can come after the HTTP part of a test is done).
fn count(db: &MariaDb, ids: &[u64]) -> u64 {
    let sql = format!("SELECT COUNT(*) FROM events WHERE file_id IN ({})", id_list(ids));
    match db.try_query_rows(&sql) {
        Ok(rows) => rows.first().and_then(|r| r.first()).and_then(|n| n.parse().ok()).unwrap_or(0),
        Err(e) if e.contains("1146") => 0,
        Err(e) => panic!("{sql}: {e}"),
    }
}

fn wait_rows(db: &MariaDb, ids: &[u64]) {
    wait_for("events in MySQL", DELIVERY_TIMEOUT, || count(db, ids) >= ids.len() as u64);
    assert_eq!(count(db, ids), ids.len() as u64, "each event exactly once");
}

fn metric(addr: SocketAddr, sample: &str) -> u64 {
    let (_, text) = http_get(addr, "/metrics");
    let line =
        text.lines().find(|l| l.starts_with(sample)).unwrap_or_else(|| panic!("no {sample} in\n{text}"));
    line[sample.len()..].trim().parse().expect("a counter value")
}

#[test]
fn compressed_bodies_land_and_bombs_and_unknown_codings_are_refused() {
    let db = MariaDb::start();
    let (_dir, c) = start(&db, "intake-codings", "");
    let ids = unique_file_ids(30);
    let json = "Content-Type: application/json";
    let gz = compress("gzip", &batch(&ids[0..10], "gzip.example"));
    assert_eq!(post(c.addr, &[json, "Content-Encoding: gzip"], &gz), (204, String::new()));
    let zl = compress("zlib", &batch(&ids[10..20], "deflate.example"));
    assert_eq!(post(c.addr, &[json, "Content-Encoding: deflate"], &zl).0, 204);
    let raw = compress("raw", &batch(&ids[20..25], "deflate.example"));
    assert_eq!(post(c.addr, &[json, "Content-Encoding: Deflate"], &raw).0, 204, "raw deflate too");

    // A bomb: 8 MiB of spaces inside a JSON array, ~8 KiB gzipped: refused at 64 KiB.
    let mut bomb = b"[".to_vec();
    bomb.resize(8 << 20, b' ');
    bomb.extend_from_slice(&batch(&ids[25..26], "bomb.example")[1..]);
    let bomb = compress("gzip", &bomb);
    assert!(bomb.len() < 64 * 1024);
    let (status, reason) = post(c.addr, &[json, "Content-Encoding: gzip"], &bomb);
    assert_eq!((status, reason.as_str()), (413, "decompressed body exceeds http.max_body_bytes"));
    let (status, reason) = post(c.addr, &[json, "Content-Encoding: br"], b"xx");
    assert_eq!(status, 415, "{reason}");
    assert!(reason.contains("gzip, deflate or identity"), "{reason}");
    let stacked = ["Content-Encoding: gzip", "Content-Encoding: gzip"];
    assert_eq!(post(c.addr, &[json, stacked[0], stacked[1]], &gz).0, 415);
    let (status, reason) = post(c.addr, &[json, "Content-Encoding: gzip"], &gz[..gz.len() - 4]);
    assert_eq!(status, 400, "a truncated stream: {reason}");

    wait_rows(&db, &ids[0..25]);
    assert_eq!(count(&db, &ids[25..26]), 0, "nothing of a bomb is stored");
    assert_eq!(metric(c.addr, "ingest_body_bombs_refused_total"), 1);
    assert_eq!(metric(c.addr, "ingest_body_decoded_total{encoding=\"gzip\"}"), 1);
    assert_eq!(metric(c.addr, "ingest_body_decoded_total{encoding=\"deflate\"}"), 2);
    assert_eq!(metric(c.addr, "ingest_body_in_bytes_total{encoding=\"gzip\"}"), gz.len() as u64);
    let out = batch(&ids[0..10], "gzip.example").len() as u64;
    assert_eq!(metric(c.addr, "ingest_body_out_bytes_total{encoding=\"gzip\"}"), out);
    assert_eq!(metric(c.addr, "ingest_events_rejected_total{reason=\"body_bomb\"}"), 1);
    assert_eq!(metric(c.addr, "ingest_http_limit_hits_total{limit=\"decompressed_bytes\"}"), 1);
    assert_eq!(metric(c.addr, "ingest_events_rejected_total{reason=\"content_encoding\"}"), 2);
}

#[test]
fn continue_forwarded_lines_limits_event_ids_and_bots() {
    let db = MariaDb::start();
    let extra =
        "drop_bots = true\n[http]\ntrusted_proxies = [\"127.0.0.0/8\"]\nmax_requests_per_connection = 3\n";
    let (_dir, c) = start(&db, "intake-http", extra);
    let ids = unique_file_ids(10);

    // Expect: 100-continue: the interim answer comes before the body is sent.
    let mut s = connect(c.addr);
    let body = format!("event=play&domain=continue.example&file_id={}", ids[0]);
    let head = format!(
        "POST /log HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Expect: 100-continue\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("send the head");
    let (status, _, _) = read_answer(&mut s);
    assert_eq!(status, 100, "100 Continue before the body");
    s.write_all(body.as_bytes()).expect("send the body");
    assert_eq!(read_answer(&mut s).0, 204);
    let mut s = connect(c.addr);
    s.write_all(b"GET /log?event=play&domain=a.b&file_id=1 HTTP/1.1\r\nExpect: teapot\r\n\r\n")
        .expect("send");
    assert_eq!(read_answer(&mut s).0, 417);

    // X-Forwarded-For over two lines is one list: the right-most untrusted entry is the client.
    let mut s = connect(c.addr);
    let get = |id: u64, extra: &str| {
        format!("GET /log?event=play&domain=xff.example&file_id={id} HTTP/1.1\r\nHost: t\r\n{extra}\r\n")
    };
    let xff = "X-Forwarded-For: 6.6.6.6, 198.51.100.7\r\nX-Forwarded-For: 127.0.0.9\r\n";
    s.write_all(get(ids[1], xff).as_bytes()).expect("send");
    let (status, head, _) = read_answer(&mut s);
    assert_eq!(status, 204);
    assert!(!head.to_ascii_lowercase().contains("connection: close"), "{head}");
    // max_requests_per_connection = 3: the third answer closes.
    let eid = "3f2b8c1e-9d4a-4c6b-8e21-7a5f0d9c1b2e";
    s.write_all(get(ids[2], "").replace(" HTTP/1.1", &format!("&eid={eid} HTTP/1.1")).as_bytes())
        .expect("send");
    assert_eq!(read_answer(&mut s).0, 204);
    s.write_all(get(ids[3], "").as_bytes()).expect("send");
    let (status, head, _) = read_answer(&mut s);
    assert_eq!(status, 204);
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).expect("EOF after the last answer"), 0);

    // A bad event id is a 400 with its reason; a bot's valid event is a 204 that stores nothing.
    let (status, body) = http_get(c.addr, &format!("/log?event=play&domain=a.b&file_id={}&eid=nope", ids[4]));
    assert_eq!(
        (status, body.trim()),
        (400, "eid / event_id must be a UUID (8-4-4-4-12 hex digits), not the nil UUID")
    );
    let mut s = connect(c.addr);
    s.write_all(get(ids[5], &format!("User-Agent: {GOOGLEBOT}\r\nConnection: close\r\n")).as_bytes())
        .expect("send");
    assert_eq!(read_answer(&mut s).0, 204);
    let mut s = connect(c.addr);
    s.write_all(get(ids[6], &format!("User-Agent: {FIREFOX}\r\nConnection: close\r\n")).as_bytes())
        .expect("send");
    assert_eq!(read_answer(&mut s).0, 204);

    let stored = [ids[0], ids[1], ids[2], ids[3], ids[6]];
    wait_rows(&db, &stored);
    assert_eq!(count(&db, &[ids[4], ids[5]]), 0, "neither the bad id nor the bot");
    let ip = db.query_rows(&format!("SELECT INET6_NTOA(client_ip) FROM events WHERE file_id = {}", ids[1]));
    assert_eq!(ip, [["198.51.100.7"]]);
    assert_eq!(metric(c.addr, "ingest_events_rejected_total{reason=\"bot\"}"), 1);
    assert_eq!(metric(c.addr, "ingest_http_limit_hits_total{limit=\"connection_requests\"}"), 1);
    assert_eq!(metric(c.addr, "ingest_requests_total{code=\"100\"}"), 1);
    assert_eq!(metric(c.addr, "ingest_requests_total{code=\"417\"}"), 1);
}

/// The country database of the GeoIP tests, fetched once by the script.
fn geoip_db() -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/geoip-test-db.sh");
    let out = std::process::Command::new(script).output().expect("run scripts/geoip-test-db.sh");
    assert!(out.status.success(), "geoip-test-db.sh: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("a UTF-8 path").trim().to_owned()
}

/// Events each core accepted, from `/stats`.
fn accepted_per_core(addr: SocketAddr) -> Vec<u64> {
    let (_, text) = http_get(addr, "/stats");
    let stats: serde_json::Value = serde_json::from_str(&text).expect("/stats is JSON");
    let cores = stats["cores"].as_array().expect("/stats has cores");
    cores.iter().map(|c| c["accepted"].as_u64().expect("accepted")).collect()
}

/// GETs `target(i)`, i = 0, 1, …, each on a fresh connection (the kernel picks the core), until
/// every one of the two cores took at least one of them; returns how many were sent.
fn until_both_cores_take_one(addr: SocketAddr, target: impl Fn(usize) -> String) -> usize {
    let before = accepted_per_core(addr);
    let mut sent = 0;
    loop {
        let now = accepted_per_core(addr);
        if now.len() == 2 && now.iter().zip(&before).all(|(n, b)| n > b) {
            return sent;
        }
        assert!(sent < RETRIES_MAX, "every connection went to one core: {before:?} -> {now:?}");
        assert_eq!(http_get(addr, &target(sent)).0, 204);
        sent += 1;
    }
}

/// One GET on a fresh connection with extra header lines; the status.
fn get_with(addr: SocketAddr, target: &str, headers: &str) -> u16 {
    let mut s = connect(addr);
    let req = format!("GET {target} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("send");
    read_answer(&mut s).0
}

#[test]
fn retried_event_ids_countries_and_user_agents_are_stored() {
    let db = MariaDb::start();
    let geoip = geoip_db();
    let extra = format!(
        "[server]\ncores = 2\n[http]\ntrusted_proxies = [\"127.0.0.0/8\"]\n[enrich]\ngeoip_db = \"{geoip}\"\n"
    );
    let (_dir, c) = start(&db, "intake-stored", &extra);
    let ids = unique_file_ids(3 + RETRIES_MAX);
    let (status, body) = http_get(c.addr, "/debug/geoip");
    let geo: serde_json::Value = serde_json::from_str(&body).expect("/debug/geoip is JSON");
    assert_eq!((status, &geo["enabled"]), (200, &serde_json::Value::Bool(true)), "{body}");
    assert!(geo["database"]["build_epoch_s"].as_u64().is_some_and(|s| s > 0), "{body}");

    // The SDK retries one event (lost answers) until both cores have taken a copy of it.
    let eid = "0b6f2c4e-1a3d-4e5f-8a9b-0c1d2e3f4a5b";
    let retried = format!("/log?event=play&domain=eid.example&file_id={}&eid={eid}", ids[0]);
    let sent = until_both_cores_take_one(c.addr, |_| retried.clone());
    let xff = "X-Forwarded-For: 8.8.8.8\r\n";
    let geo_get = |id: u64| format!("/log?event=play&domain=geo.example&file_id={id}");
    assert_eq!(get_with(c.addr, &geo_get(ids[1]), &format!("{xff}User-Agent: {GOOGLEBOT}\r\n")), 204);
    assert_eq!(get_with(c.addr, &geo_get(ids[2]), &format!("User-Agent: {CHROME_WIN}\r\n")), 204);
    // Markers sent after every copy, on both cores: once a core's marker is in MySQL, so is
    // everything that core took before it (each core's WAL is delivered in order).
    let markers = &ids[3..];
    let marked = until_both_cores_take_one(c.addr, |i| {
        format!("/log?event=mark&domain=m.example&file_id={}", markers[i])
    });

    wait_rows(&db, &ids[1..3]);
    wait_rows(&db, &markers[..marked]);
    assert_eq!(count(&db, &ids[..1]), 1, "{sent} sends of one event id on two cores: one row");
    let stored = db.query_rows(&format!("SELECT HEX(event_id) FROM events WHERE file_id = {}", ids[0]));
    assert_eq!(stored, [[eid.replace('-', "").to_uppercase()]]);
    // Every extra copy is one duplicate, counted once its transaction committed.
    let deduplicated = metric(c.addr, "ingest_events_deduplicated_total");
    assert_eq!(deduplicated, sent as u64 - 1, "{deduplicated} of {sent}");

    let fields = |id: u64| {
        db.query_rows(&format!(
            "SELECT IFNULL(e.country, '-'), u.family, IFNULL(u.os, '-'), u.device, u.is_bot \
             FROM events e JOIN user_agents u ON u.hash = e.ua_hash WHERE e.file_id = {id}"
        ))
    };
    assert_eq!(fields(ids[1]), [["US", "Googlebot", "-", "bot", "1"]], "country through the proxy");
    assert_eq!(fields(ids[2]), [["-", "Chrome", "Windows 10", "desktop", "0"]], "loopback: no country");
}
