//! `/metrics` content negotiation against the real binary: `Accept: text/plain` (promtool,
//! Prometheus set to the classic format) gets the classic text format 0.0.4, Prometheus's
//! default header and no header get OpenMetrics, and `?format=` still decides over the header.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::{free_closed_port, Collector};

fn scrape(addr: SocketAddr, target: &str, accept: Option<&str>) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    let req = format!("GET {target} HTTP/1.1\r\nHost: t\r\n{accept}Connection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).expect("send");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_owned))
        .expect("a content type");
    (content_type, body.to_owned())
}

#[test]
fn the_format_follows_accept_and_the_query() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("mysql://psc:x@127.0.0.1:{}/psc", free_closed_port());
    let collector = Collector::start(dir.path(), &url, "[server]\ncores = 1\n");
    let classic = "text/plain; version=0.0.4; charset=utf-8";
    let openmetrics = "application/openmetrics-text; version=1.0.0; charset=utf-8";

    let (ct, body) = scrape(collector.addr, "/metrics", Some("text/plain"));
    assert_eq!(ct, classic);
    assert!(
        !body.contains("# EOF") && body.contains("# TYPE ingest_events_accepted_total counter"),
        "{body}"
    );

    let prometheus_default = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (ct, body) = scrape(collector.addr, "/metrics", Some(prometheus_default));
    assert_eq!(ct, openmetrics);
    assert!(body.ends_with("# EOF\n"));
    assert_eq!(scrape(collector.addr, "/metrics", None).0, openmetrics);
    assert_eq!(scrape(collector.addr, "/metrics?format=prometheus", Some(prometheus_default)).0, classic);
    assert_eq!(scrape(collector.addr, "/metrics?format=openmetrics", Some("text/plain")).0, openmetrics);
}

/// `ingest_http_answer_seconds` times one read in 16 per connection: 32 beacons answered one at
/// a time on one keep-alive connection are 32 reads, so two observations.
#[test]
fn the_answer_histogram_counts_sampled_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("mysql://psc:x@127.0.0.1:{}/psc", free_closed_port());
    let collector = Collector::start(dir.path(), &url, "[server]\ncores = 1\n");
    let mut stream = TcpStream::connect(collector.addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    for file_id in 1..=32 {
        let req =
            format!("GET /log?event=play&domain=a.example&file_id={file_id} HTTP/1.1\r\nHost: t\r\n\r\n");
        stream.write_all(req.as_bytes()).expect("send");
        let mut answer = [0u8; 256];
        let n = stream.read(&mut answer).expect("read");
        assert!(answer[..n].starts_with(b"HTTP/1.1 204"), "{}", String::from_utf8_lossy(&answer[..n]));
    }
    let (_, body) = scrape(collector.addr, "/metrics?format=prometheus", None);
    assert!(body.contains("# TYPE ingest_http_answer_seconds histogram"), "{body}");
    assert!(body.contains("ingest_http_answer_seconds_count 2\n"), "{body}");
    assert!(body.contains("ingest_http_answer_seconds_bucket{le=\"+Inf\"} 2\n"), "{body}");
}
