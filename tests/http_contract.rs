//! The `/log` contract over real HTTP on loopback, against the real binary with MySQL
//! unreachable: what is answered, and what reaches the WAL.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::wal::wal_file_ids;
use support::{free_closed_port, http_get, unique_file_ids, Collector};

fn start(extra: &str) -> (tempfile::TempDir, Collector) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("mysql://psc:x@127.0.0.1:{}/psc", free_closed_port());
    let collector = Collector::start(dir.path(), &url, extra);
    (dir, collector)
}

fn beacon(file_id: u64) -> String {
    format!("/log?event=play&domain=piratka.biz&file_id={file_id}")
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s
}

/// Reads until `n` responses (status lines) arrived; returns their status codes.
fn read_statuses(stream: &mut TcpStream, n: usize) -> Vec<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let statuses = parse_statuses(&buf);
        if statuses.len() >= n {
            return statuses;
        }
        let got = stream.read(&mut chunk).expect("read responses");
        assert!(got > 0, "connection closed after {} of {n} responses", statuses.len());
        buf.extend_from_slice(&chunk[..got]);
    }
}

fn parse_statuses(mut buf: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(buf) {
            Ok(httparse::Status::Complete(head)) => {
                let len = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |h| std::str::from_utf8(h.value).unwrap().parse::<usize>().unwrap());
                if buf.len() < head + len {
                    return out;
                }
                out.push(resp.code.expect("status"));
                buf = &buf[head + len..];
            }
            _ => return out,
        }
    }
}

#[test]
fn keep_alive_pipelined_and_http10_requests_are_acknowledged_and_stored() {
    let (_dir, collector) = start("");
    let ids = unique_file_ids(301);

    // keep-alive: 100 requests one after the other on one connection
    let mut s = connect(collector.addr);
    for &id in &ids[..100] {
        write!(s, "GET {} HTTP/1.1\r\nHost: x\r\n\r\n", beacon(id)).unwrap();
        assert_eq!(read_statuses(&mut s, 1), vec![204]);
    }
    // pipelined: 200 requests in one write, answered in order
    let mut batch = String::new();
    for &id in &ids[100..300] {
        batch.push_str(&format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", beacon(id)));
    }
    s.write_all(batch.as_bytes()).unwrap();
    assert_eq!(read_statuses(&mut s, 200), vec![204; 200]);

    // HTTP/1.0 without keep-alive: answered, then closed by the server
    let mut s10 = connect(collector.addr);
    write!(s10, "GET {} HTTP/1.0\r\n\r\n", beacon(ids[300])).unwrap();
    let mut all = String::new();
    s10.read_to_string(&mut all).expect("server closes an HTTP/1.0 connection");
    assert!(all.starts_with("HTTP/1.1 204"), "{all}");
    assert!(all.to_ascii_lowercase().contains("connection: close"), "{all}");

    let mut stored = wal_file_ids(&collector.wal_dir);
    stored.sort_unstable();
    assert_eq!(stored, ids, "every acknowledged event is in the WAL exactly once");
}

#[test]
fn bad_requests_get_their_4xx_with_a_reason_and_leave_no_trace() {
    let (_dir, collector) = start("[http]\nmax_url_bytes = 1024\nmax_header_bytes = 4096\n");
    let long = "a".repeat(2000);
    let cases: Vec<(String, u16, &str)> = vec![
        ("/log?domain=piratka.biz&file_id=1".into(), 400, "event"),
        ("/log?event=play&file_id=1".into(), 400, "domain"),
        ("/log?event=play&domain=piratka.biz".into(), 400, "file_id"),
        ("/log?event=&domain=piratka.biz&file_id=1".into(), 400, "event"),
        ("/log?event=play&event=play&domain=piratka.biz&file_id=1".into(), 400, "event"),
        ("/log?event=Play!&domain=piratka.biz&file_id=1".into(), 400, "event"),
        ("/log?event=play&domain=-bad-.biz&file_id=1".into(), 400, "domain"),
        ("/log?event=play&domain=piratka.biz&file_id=0".into(), 400, "file_id"),
        ("/log?event=play&domain=piratka.biz&file_id=-5".into(), 400, "file_id"),
        ("/log?event=play&domain=piratka.biz&file_id=99999999999999999999".into(), 400, "file_id"),
        ("/log?event=pl%ffay&domain=piratka.biz&file_id=1".into(), 400, "UTF-8"),
        ("/log?event=pl%zzay&domain=piratka.biz&file_id=1".into(), 400, "percent"),
        (format!("/log?event=play&domain={long}.biz&file_id=1"), 414, ""),
        ("/nope".into(), 404, ""),
    ];
    for (target, status, needle) in &cases {
        let (got, body) = http_get(collector.addr, target);
        assert_eq!(got, *status, "{target}: {body}");
        assert_eq!(body.trim_end().lines().count(), 1, "one-line reason for {target}: {body:?}");
        assert!(body.contains(needle), "{target}: reason {body:?} should mention {needle:?}");
    }
    // wrong method
    let mut s = connect(collector.addr);
    s.write_all(b"DELETE /log?event=play&domain=a.b&file_id=1 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_statuses(&mut s, 1), vec![405]);
    // header block too large
    let mut s = connect(collector.addr);
    let big =
        format!("GET /log?event=play&domain=a.b&file_id=1 HTTP/1.1\r\nX-Big: {}\r\n\r\n", "b".repeat(5000));
    s.write_all(big.as_bytes()).unwrap();
    assert_eq!(read_statuses(&mut s, 1), vec![431]);
    // body too large
    let mut s = connect(collector.addr);
    s.write_all(b"GET /log?event=play&domain=a.b&file_id=1 HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n")
        .unwrap();
    assert_eq!(read_statuses(&mut s, 1), vec![413]);

    // one good event proves the WAL is live; nothing else is in it
    let id = unique_file_ids(1)[0];
    assert_eq!(http_get(collector.addr, &beacon(id)).0, 204);
    assert_eq!(wal_file_ids(&collector.wal_dir), vec![id]);
}

#[test]
fn hostile_connections_do_not_stop_valid_requests() {
    let (_dir, collector) = start("[http]\nidle_timeout_ms = 60000\n");
    // 2,000 idle connections holding half a request each
    let mut idle = Vec::new();
    for _ in 0..2000 {
        let mut s = connect(collector.addr);
        s.write_all(b"GET /log?event=play&dom").unwrap();
        idle.push(s);
    }
    // garbage on fresh connections: each is closed, nothing else happens
    for garbage in
        [&b"\x00\x01\x02\xff\xfe\r\n\r\n"[..], b"HELLO\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", &[0u8; 4096]]
    {
        let mut s = connect(collector.addr);
        let _ = s.write_all(garbage);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink); // the server closes it
    }
    let ids = unique_file_ids(100);
    for &id in &ids {
        assert_eq!(http_get(collector.addr, &beacon(id)).0, 204);
    }
    let mut stored = wal_file_ids(&collector.wal_dir);
    stored.sort_unstable();
    assert_eq!(stored, ids);
    drop(idle);
}

#[test]
fn a_second_instance_on_the_same_wal_refuses_to_start() {
    let (dir, collector) = start("");
    let out = collector.run_subcommand(&["serve"]);
    assert!(!out.status.success(), "second instance must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another running instance"), "{stderr}");
    drop(dir);
}

#[test]
fn idle_and_slow_connections_are_closed_by_the_sweep_and_busy_ones_are_not() {
    let (_dir, collector) = start("[http]\nidle_timeout_ms = 400\n");
    let started = std::time::Instant::now();
    let mut partial = connect(collector.addr);
    partial.write_all(b"GET /log?event=play&domain=a.org&file_id=1 HTTP/1.1\r\nHost:").unwrap();
    let mut idle = connect(collector.addr);
    let mut busy = connect(collector.addr);
    // One beacon every 100 ms keeps a connection open well past the idle timeout.
    for i in 0..12u64 {
        busy.write_all(format!("GET {} HTTP/1.1\r\nHost: t\r\n\r\n", beacon(500 + i)).as_bytes()).unwrap();
        assert_eq!(read_statuses(&mut busy, 1), vec![204], "request {i}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut answer = String::new();
    partial.read_to_string(&mut answer).expect("the partial request is answered, then closed");
    assert!(answer.starts_with("HTTP/1.1 408 Request Timeout"), "{answer}");
    let mut rest = Vec::new();
    assert_eq!(idle.read_to_end(&mut rest).expect("closed"), 0, "an idle connection closes silently");
    assert!(started.elapsed() >= Duration::from_millis(300), "not before the timeout");
    let (_, metrics) = http_get(collector.addr, "/metrics?format=prometheus");
    let hits = metrics
        .lines()
        .find(|l| l.starts_with("ingest_http_limit_hits_total{limit=\"idle_timeout\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(hits.is_some_and(|n| n >= 2.0), "both are counted: {hits:?}");
}
