//! File descriptors (issue 10, item 7) against the real binary: the collector raises its soft
//! `RLIMIT_NOFILE` to the hard limit, says at start when `http.max_connections_per_core` does
//! not fit, serves exactly as many connections as fit, and closes (and counts) the rest
//! instead of leaving them hanging on `EMFILE`.
//!
//! This file is its own test binary with one test: it lowers the limits of the test process,
//! which the collector inherits.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::{free_closed_port, http_get, wait_for, Collector};

const SOFT: u64 = 128;
const HARD: u64 = 256;
const WAIT: Duration = Duration::from_secs(30);

fn set_nofile(soft: u64, hard: u64) {
    let lim = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    // SAFETY: a valid rlimit; lowering limits needs no privilege.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0, "setrlimit");
}

fn soft_limit_of(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read /proc/PID/limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("Max open files line");
    line.split_whitespace().nth(3).expect("soft column").parse().expect("a number")
}

/// One beacon on `stream`, kept alive; returns the status.
fn beacon(stream: &mut TcpStream, file_id: u64) -> u16 {
    let req = format!("GET /log?event=play&domain=a.org&file_id={file_id} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(req.as_bytes()).expect("send");
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf).expect("read the answer");
    let head = std::str::from_utf8(&buf[..n]).expect("ascii");
    head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn metric(addr: std::net::SocketAddr, line_start: &str) -> u64 {
    let (_, body) = http_get(addr, "/metrics?format=prometheus");
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[test]
fn the_connection_cap_is_fitted_to_the_descriptor_limit_and_the_rest_are_refused() {
    set_nofile(SOFT, HARD);
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("mysql://psc:x@127.0.0.1:{}/psc", free_closed_port());
    let collector = Collector::start(dir.path(), &url, "[server]\ncores = 1\n");
    set_nofile(HARD, HARD); // the test's own connections
    assert_eq!(soft_limit_of(collector.child.id()), HARD, "the soft limit was raised to the hard one");
    let log = collector.log();
    let cap = log
        .split("serving at most ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no warning about the connection cap in the log:\n{log}"));
    assert!(log.contains("http.max_connections_per_core = 10000"), "{log}");
    assert!(cap > 100 && cap < HARD as usize, "cap {cap}");

    let mut served: Vec<TcpStream> = (0..cap)
        .map(|_| {
            let s = TcpStream::connect(collector.addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            s
        })
        .collect();
    for (i, stream) in served.iter_mut().enumerate() {
        assert_eq!(beacon(stream, i as u64 + 1), 204, "connection {i} of {cap}");
    }
    for _ in 0..5 {
        let mut extra = TcpStream::connect(collector.addr).expect("the kernel still accepts");
        extra.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut buf = [0u8; 16];
        let closed = matches!(extra.read(&mut buf), Ok(0) | Err(_));
        assert!(closed, "a connection over the cap is closed at once, not left hanging");
    }
    served.truncate(cap - 10);
    let open = |c: &Collector| metric(c.addr, "ingest_connections_open ");
    wait_for("closed connections to be noticed", WAIT, || {
        std::panic::catch_unwind(|| open(&collector)).is_ok_and(|n| n < cap as u64)
    });
    let hits = metric(collector.addr, "ingest_http_limit_hits_total{limit=\"connections\"}");
    assert!(hits >= 5, "the refused connections are counted: {hits}");
    assert_eq!(metric(collector.addr, "ingest_http_limit_hits_total{limit=\"fds\"}"), 0, "no EMFILE");
    for (i, stream) in served.iter_mut().enumerate() {
        assert_eq!(beacon(stream, 1000 + i as u64), 204, "still served after the refusals");
    }
}
