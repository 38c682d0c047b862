//! Batches MySQL refuses (issue 10 item 4), against the real binary and a private MariaDB:
//! rows the schema cannot take (here `events.file_id` narrowed to `INT`, so ids past 2³¹ are
//! out of range: error 1264) are found by bisection and land in `ingest_rejects` with their
//! raw WAL line and MySQL's code and message, while every other row is delivered once and the
//! lane goes on; the rejects are counted in `/metrics` and `/stats` by code. A server with a
//! small `max_allowed_packet` gets statements cut to it, and nothing is lost.

mod support;

use std::time::Duration;

use support::load::{send_exact, wait_delivered};
use support::{http_get, unique_file_ids, wait_for, Collector, MariaDb};

const FAST: &str = "[mysql]\nbatch_rows = 1000\nflush_interval_ms = 100\nretry_max_ms = 300\n";

fn refused_run(method: &str) {
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{FAST}method = \"{method}\"\n");
    let mut collector = Collector::start(dir.path(), &db.url, &config);
    wait_for("the schema", Duration::from_secs(30), || {
        db.try_query_rows("SELECT COUNT(*) FROM events").is_ok()
    });
    db.query_rows("ALTER TABLE events MODIFY file_id INT NOT NULL");
    let good = unique_file_ids(3000);
    // Every 300th event carries an id no INT holds; they are spread over several batches.
    let bad: Vec<u64> = (0..10).map(|k| 3_000_000_000 + good[0] + k).collect();
    let mut mixed = Vec::new();
    for (i, chunk) in good.chunks(300).enumerate() {
        mixed.extend_from_slice(chunk);
        mixed.push(bad[i]);
    }
    send_exact(collector.addr, &mixed, 4);
    let d = wait_delivered(&db, &good, good[0], Duration::from_secs(90));
    assert_eq!((d.lost, d.duplicated), (0, 0), "{d:?}");
    wait_for("ten dead letters", Duration::from_secs(60), || {
        db.query_count("SELECT COUNT(*) FROM ingest_rejects") >= 10
    });
    let rejects = db.query_rows("SELECT error_code, raw_line FROM ingest_rejects ORDER BY id");
    assert_eq!(rejects.len(), 10, "exactly the bad rows: {rejects:?}");
    for id in &bad {
        let row = rejects.iter().find(|r| r[1].contains(&format!("\"file_id\":{id}")));
        let row = row.unwrap_or_else(|| panic!("no dead letter holds the raw line of {id}: {rejects:?}"));
        assert_eq!(row[0], "1264", "{row:?}");
    }
    let (_, metrics) = http_get(collector.addr, "/metrics");
    assert!(metrics.contains("code=\"1264\""), "rejects by code in /metrics");
    let (_, stats) = http_get(collector.addr, "/stats");
    assert!(stats.contains("\"1264\":10"), "rejects by code in /stats: {stats}");
    let status = collector.sigterm_and_wait(Duration::from_secs(30)).expect("stops");
    assert!(status.success(), "{status}");
}

#[test]
fn refused_rows_become_dead_letters_and_the_lane_goes_on_with_load_data() {
    refused_run("load_data");
}

#[test]
fn refused_rows_become_dead_letters_and_the_lane_goes_on_with_insert() {
    refused_run("insert");
}

#[test]
fn a_small_max_allowed_packet_cuts_statements_and_loses_nothing() {
    let db = MariaDb::start();
    db.query_rows("SET GLOBAL max_allowed_packet = 16384");
    let dir = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(dir.path(), &db.url, FAST);
    let ids = unique_file_ids(5000);
    send_exact(collector.addr, &ids, 4);
    let d = wait_delivered(&db, &ids, ids[0], Duration::from_secs(90));
    assert_eq!((d.lost, d.duplicated), (0, 0), "{d:?}");
    assert_eq!(db.query_count("SELECT COUNT(*) FROM ingest_rejects"), 0);
    let (_, stats) = http_get(collector.addr, "/stats");
    assert!(stats.contains("\"statement_bytes_max\":16128"), "the server's limit is used: {stats}");
    collector.sigterm_and_wait(Duration::from_secs(30));
}
