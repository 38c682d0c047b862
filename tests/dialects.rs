//! Every beacon dialect against the real binary and a private MariaDB: pixels, POST bodies
//! (form, text, JSON object and batch, chunked), batch rules and limits, CORS, and the client
//! context (IP with the X-Forwarded-For trust rules, User-Agent hash, Referer host, extra
//! parameters), checked row by row in MySQL.
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use psc::ingest::client::ua_hash;
use support::{unique_file_ids, wait_for, Collector, MariaDb};

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);
const UA: &str = "dialects-test/1.0 (\"quoted\"; back\\slash)";

/// One parsed answer.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Sends `head` (without the final blank line; `Connection: close` is added) and `body`,
/// reads the answer to EOF.
fn send(addr: SocketAddr, head: &str, body: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let mut bytes = format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n").into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read the answer");
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(len) = resp.parse(&out).expect("valid response") else {
        panic!("incomplete response {:?}", String::from_utf8_lossy(&out));
    };
    Answer {
        status: resp.code.expect("status"),
        headers: resp
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
            .collect(),
        body: out[len..].to_vec(),
    }
}

fn post(addr: SocketAddr, content_type: &str, extra_headers: &str, body: &str) -> Answer {
    let head = format!(
        "POST /log HTTP/1.1\r\nContent-Type: {content_type}\r\nContent-Length: {}{extra_headers}",
        body.len()
    );
    send(addr, &head, body.as_bytes())
}

fn json_items(ids: &[u64]) -> String {
    let items: Vec<String> = ids
        .iter()
        .map(|id| format!(r#"{{"event":"play","domain":"batch.example","file_id":{id}}}"#))
        .collect();
    format!("[{}]", items.join(","))
}

fn chunked(body: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body.as_bytes().chunks(7) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn start(db: &MariaDb, node: &str, extra: &str) -> (tempfile::TempDir, Collector) {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!("[ingest]\nnode_id = \"{node}\"\n{extra}");
    let collector = Collector::start(dir.path(), &db.url, &toml);
    (dir, collector)
}

fn id_list(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// Waits until every id in `ids` has a row, then checks each has exactly one.
fn wait_rows(db: &MariaDb, ids: &[u64]) {
    let sql = format!("SELECT COUNT(DISTINCT file_id) FROM events WHERE file_id IN ({})", id_list(ids));
    wait_for("events in MySQL", DELIVERY_TIMEOUT, || db.query_count(&sql) == ids.len() as u64);
    let total = format!("SELECT COUNT(*) FROM events WHERE file_id IN ({})", id_list(ids));
    assert_eq!(db.query_count(&total), ids.len() as u64, "each event exactly once");
}

/// (ip text, ua hash, referer host, extra) of the event with `file_id`; "NULL" for NULL.
fn context_of(db: &MariaDb, file_id: u64) -> Vec<String> {
    let rows = db.query_rows(&format!(
        "SELECT IFNULL(INET6_NTOA(client_ip),'NULL'), IFNULL(ua_hash,'NULL'), IFNULL(referer_host,'NULL'), \
         IFNULL(extra,'NULL') FROM events WHERE file_id = {file_id}"
    ));
    assert_eq!(rows.len(), 1, "{file_id}: {rows:?}");
    rows[0].clone()
}

#[test]
fn every_dialect_lands_once_with_its_client_context() {
    let db = MariaDb::start();
    let (_a_dir, a) = start(&db, "dialects-a", "");
    let (_b_dir, b) = start(
        &db,
        "dialects-b",
        "keep_params = [\"quality\"]\n[http]\ntrusted_proxies = [\"127.0.0.0/8\"]\n\
         cors_origins = [\"http://allowed.example\"]\n",
    );
    let ids = unique_file_ids(40);
    let mut stored = Vec::new();

    // Pixels: 200 + the GIF, no-store.
    for (path, id) in [("/log.gif", ids[0]), ("/pixel.gif", ids[1])] {
        let head = format!(
            "GET {path}?event=play&domain=pixel.example&file_id={id} HTTP/1.1\r\nUser-Agent: {UA}\r\n\
             Referer: https://Page.Example:8443/watch?v=1\r\nX-Forwarded-For: 6.6.6.6"
        );
        let r = send(a.addr, &head, b"");
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some("image/gif"));
        assert_eq!(r.header("cache-control"), Some("no-store, max-age=0"));
        assert_eq!(r.body.len(), 43);
        assert!(r.body.starts_with(b"GIF89a"));
        stored.push(id);
    }
    // Plain GET /log keeps its 204.
    let r = send(a.addr, &format!("GET /log?event=play&domain=get.example&file_id={} HTTP/1.1", ids[2]), b"");
    assert_eq!((r.status, r.header("cache-control")), (204, Some("no-store")));
    stored.push(ids[2]);

    // POST bodies: form, text/plain form, text/plain JSON, JSON object, chunked JSON batch.
    let form = |id: u64| format!("event=play&domain=form.example&file_id={id}");
    let ua = format!("\r\nUser-Agent: {UA}");
    assert_eq!(post(a.addr, "application/x-www-form-urlencoded", &ua, &form(ids[3])).status, 204);
    assert_eq!(post(a.addr, "text/plain;charset=UTF-8", &ua, &form(ids[4])).status, 204);
    assert_eq!(post(a.addr, "text/plain;charset=UTF-8", &ua, &json_items(&ids[5..8])).status, 204);
    let object = format!(r#"{{"event":"pause","domain":"json.example","file_id":"{}"}}"#, ids[8]);
    assert_eq!(post(a.addr, "application/json", &ua, &object).status, 204);
    stored.extend_from_slice(&ids[3..9]);
    let batch = json_items(&ids[9..19]);
    let head = "POST /log HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked";
    let r = send(a.addr, head, &chunked(&batch));
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    stored.extend_from_slice(&ids[9..19]);

    // All-or-nothing: item 2 is bad, nothing of the batch is stored.
    let mut bad = json_items(&ids[19..22]);
    bad = bad.replacen(&format!("\"file_id\":{}", ids[21]), "\"file_id\":0", 1);
    let r = post(a.addr, "application/json", "", &bad);
    assert_eq!(r.status, 400);
    assert_eq!(String::from_utf8_lossy(&r.body).trim(), "item 2: file_id must be an integer >= 1");
    // Limits: 101 events, a body past 64 KiB (announced and chunked), an unknown type.
    let too_many: Vec<u64> = (0..101).map(|i| ids[22] * 1000 + i).collect();
    assert_eq!(post(a.addr, "application/json", "", &json_items(&too_many)).status, 413);
    // (Only the head, or the first chunk-size line, is sent: the server answers before
    // reading more, and unread bytes would turn its close into a reset.)
    let announced = "POST /log HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 65537";
    assert_eq!(send(a.addr, announced, b"").status, 413);
    assert_eq!(send(a.addr, head, b"10001\r\n").status, 413);
    assert_eq!(send(a.addr, head, b"zz\r\n").status, 400, "malformed chunked framing");
    assert_eq!(post(a.addr, "multipart/form-data; boundary=x", "", "--x--").status, 415);

    // CORS with the default "*": preflight and the answer to the POST.
    let pre = send(
        a.addr,
        "OPTIONS /log HTTP/1.1\r\nOrigin: http://any.example\r\nAccess-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: content-type",
        b"",
    );
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("access-control-allow-origin"), Some("*"));
    assert_eq!(pre.header("vary"), Some("Origin"));
    assert!(pre.header("access-control-max-age").is_some());
    assert!(pre.header("access-control-allow-headers").is_some_and(|h| h.contains("Content-Type")));
    assert_eq!(pre.header("access-control-allow-credentials"), None);
    let r = post(a.addr, "application/json", "\r\nOrigin: http://any.example", &json_items(&ids[22..23]));
    assert_eq!((r.status, r.header("access-control-allow-origin")), (204, Some("*")));
    stored.push(ids[22]);

    // Collector B: explicit origins, trusted proxies, kept parameters.
    let allowed = "\r\nOrigin: http://allowed.example";
    let r = post(b.addr, "application/json", allowed, &json_items(&ids[23..24]));
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("http://allowed.example"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("vary"), Some("Origin"));
    let pre = |origin: &str| {
        let head =
            format!("OPTIONS /log HTTP/1.1\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: POST");
        send(b.addr, &head, b"")
    };
    assert_eq!(pre("http://allowed.example").status, 204);
    assert_eq!(pre("http://allowed.example").header("access-control-allow-credentials"), Some("true"));
    assert_eq!(pre("http://evil.example").status, 403);
    // The peer (127.0.0.1) is trusted: the right-most untrusted X-Forwarded-For entry wins,
    // the forged left-most one is never used.
    let head = format!(
        "GET /log?event=play&domain=b.example&file_id={}&quality=720p&junk=1 HTTP/1.1\r\n\
         X-Forwarded-For: 6.6.6.6, 198.51.100.7, 127.0.0.9",
        ids[24]
    );
    assert_eq!(send(b.addr, &head, b"").status, 204);
    stored.extend_from_slice(&ids[23..25]);

    wait_rows(&db, &stored);
    let none = format!("SELECT COUNT(*) FROM events WHERE file_id IN ({})", id_list(&ids[19..22]));
    assert_eq!(db.query_count(&none), 0, "nothing of a rejected batch is stored");

    let hash = ua_hash(UA).to_string();
    // Untrusted peer: X-Forwarded-For ignored (spoofing), the socket peer is the client.
    assert_eq!(context_of(&db, ids[0]), ["127.0.0.1", &hash, "page.example", "NULL"]);
    assert_eq!(context_of(&db, ids[2]), ["127.0.0.1", "NULL", "NULL", "NULL"]);
    for &id in &ids[3..9] {
        assert_eq!(context_of(&db, id)[..2], ["127.0.0.1".to_string(), hash.clone()], "{id}");
    }
    for &id in &ids[9..19] {
        assert_eq!(context_of(&db, id), ["127.0.0.1", "NULL", "NULL", "NULL"], "{id}: no User-Agent sent");
    }
    assert_eq!(context_of(&db, ids[24]), ["198.51.100.7", "NULL", "NULL", r#"{"quality":"720p"}"#]);
    let ua_rows = db.query_rows(&format!("SELECT ua FROM user_agents WHERE hash = {hash}"));
    assert_eq!(ua_rows, vec![vec![UA.replace('\\', "\\\\")]], "the text once, by its hash");
    let batch_rows = db.query_count(&format!(
        "SELECT COUNT(*) FROM events e JOIN domains d ON d.id = e.domain_id \
         WHERE d.name = 'batch.example' AND e.file_id IN ({})",
        id_list(&ids[9..19])
    ));
    assert_eq!(batch_rows, 10);
}
