//! Self-test of the integration-test harness (`tests/support`): the private MariaDB's life
//! cycle, the HTTP client and the small helpers. The collector itself is tested elsewhere.
mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;

use support::{http_get, try_http_get, MariaDb};

#[test]
fn mariadb_keeps_committed_rows_across_kill9_and_restart() {
    let mut db = MariaDb::start();
    assert!(db.url.starts_with("mysql://psc:"), "{}", db.url);
    assert!(db.url.ends_with(&format!("@127.0.0.1:{}/psc", db.port)), "{}", db.url);
    assert_ne!(db.port, 3306, "must never be the system server");
    assert_eq!(db.query_count("SELECT 1"), 1);
    assert_eq!(db.query_rows("SELECT DATABASE(), @@port"), [["psc".to_owned(), db.port.to_string()]]);

    db.query_rows("CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(20)) ENGINE=InnoDB");
    db.query_rows("INSERT INTO t VALUES (1, 'one'), (2, 'two'), (3, 'three')");

    let first_pid = db.pid();
    db.kill9();
    assert!(db.try_query_rows("SELECT 1").is_err(), "a killed server must not answer");

    db.restart();
    assert_ne!(db.pid(), first_pid);
    assert_eq!(db.query_count("SELECT COUNT(*) FROM t"), 3, "committed rows survive kill -9");
    assert_eq!(db.query_rows("SELECT id, name FROM t WHERE id = 2"), [["2", "two"]]);

    let pid = db.pid();
    let dir = db.dir().to_owned();
    drop(db);
    assert!(!is_running(pid), "mariadbd {pid} still runs after drop");
    assert!(!dir.exists(), "temp dir {dir:?} not removed");
}

#[test]
fn query_errors_carry_the_server_message() {
    let db = MariaDb::start();
    let err = db.try_query_rows("SELECT * FROM no_such_table").unwrap_err();
    assert!(err.contains("no_such_table"), "{err}");
}

fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => !status.lines().any(|l| l.starts_with("State:") && l.contains('Z')),
        Err(_) => false,
    }
}

/// Serves `response` to one connection after reading its request head; returns the head.
fn serve_once(response: &'static [u8]) -> (std::net::SocketAddr, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            conn.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        conn.write_all(response).unwrap();
        String::from_utf8(head).unwrap()
    });
    (addr, handle)
}

#[test]
fn http_get_reads_status_and_body_by_content_length() {
    // The server keeps the connection open: the client must stop at Content-Length.
    let (addr, server) =
        serve_once(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 26\r\n\r\nmissing parameter: domainXXX");
    let (status, body) = http_get(addr, "/log?event=play&file_id=1");
    assert_eq!(status, 400);
    assert_eq!(body, "missing parameter: domain\n".replace('\n', "X"));
    let head = server.join().unwrap();
    assert!(head.starts_with("GET /log?event=play&file_id=1 HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("Connection: close\r\n"), "{head}");
}

#[test]
fn http_get_handles_204_and_body_until_eof() {
    let (addr, _server) = serve_once(b"HTTP/1.1 204 No Content\r\n\r\n");
    assert_eq!(http_get(addr, "/log"), (204, String::new()));

    let (addr, _server) = serve_once(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nok");
    assert_eq!(http_get(addr, "/healthz"), (200, "ok".to_owned()));
}

#[test]
fn http_get_rejects_garbage_and_refused_connections() {
    let (addr, _server) = serve_once(b"SSH-2.0-nope\r\n\r\n");
    let err = try_http_get(addr, "/").unwrap_err();
    assert!(err.to_string().contains("bad status line"), "{err}");

    let port = support::free_closed_port();
    let err = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(try_http_get(([127, 0, 0, 1], port).into(), "/").is_err());
}

#[test]
fn unique_file_ids_never_repeat() {
    let mut ids = support::unique_file_ids(1000);
    ids.extend(support::unique_file_ids(1000));
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count);
}

#[test]
fn collector_config_puts_harness_defaults_under_the_test_keys() {
    let wal = Path::new("/tmp/work/wal");
    let text = support::collector_config(
        wal,
        "mysql://u:p@127.0.0.1:1/psc",
        "[server]\ncores = 2\n[wal]\ndir = \"/elsewhere\"\n",
    );
    let config = psc::config::Config::from_toml(&text).unwrap();
    assert_eq!(config.server.cores, 2);
    assert_eq!(config.server.listen, "127.0.0.1:0".parse().unwrap());
    assert_eq!(config.wal.dir, Path::new("/elsewhere"), "the test's own key wins");
    assert_eq!(config.mysql.url, "mysql://u:p@127.0.0.1:1/psc");

    let text = support::collector_config(wal, "", "");
    assert_eq!(psc::config::Config::from_toml(&text).unwrap().wal.dir, wal);
}
