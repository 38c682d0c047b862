//! Changing the sink's routing (`mysql.shards`, `sink.shard_by`) against the real binary and
//! private MariaDB servers: after a drained shutdown a new shard is added and every event of
//! before and after lands exactly once over the shards; while events still wait for a shard
//! that is down, a start under another routing is refused with what to do, and the old
//! routing still starts and delivers them.

mod support;

use std::collections::HashSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::load::send_exact;
use support::{
    collector_command, collector_config, free_closed_port, unique_file_ids, wait_for, Collector, MariaDb,
};

const WAIT: Duration = Duration::from_secs(60);

fn sharded(urls: &[&str], by: &str) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "[sink]\nshard_by = \"{by}\"\n[mysql]\nshards = [{}]\nflush_interval_ms = 100\nretry_max_ms = 300\n\
         connect_timeout_ms = 500\n[server]\ncores = 2\nshutdown_timeout_ms = 3000\n",
        urls.join(", ")
    )
}

/// Every file id stored over `dbs`, and how many were stored more than once.
fn stored(dbs: &[&MariaDb]) -> (HashSet<u64>, u64) {
    let (mut seen, mut twice) = (HashSet::new(), 0);
    for db in dbs {
        for row in db.try_query_rows("SELECT file_id FROM events").unwrap_or_default() {
            let id: u64 = row[0].parse().unwrap_or_else(|e| panic!("file_id {:?}: {e}", row[0]));
            twice += u64::from(!seen.insert(id));
        }
    }
    (seen, twice)
}

#[test]
fn a_shard_added_after_a_drain_gets_new_events_and_nothing_twice() {
    let (a, b) = (MariaDb::start(), MariaDb::start());
    let dir = tempfile::tempdir().unwrap();
    let mut one = Collector::start(dir.path(), "", &sharded(&[&a.url], "file_id"));
    let before = unique_file_ids(3000);
    send_exact(one.addr, &before, 4);
    wait_for("the first 3000 in shard a", WAIT, || stored(&[&a]).0.len() == 3000);
    let status = one.sigterm_and_wait(WAIT).expect("stops");
    assert!(status.success(), "drained: {status}");

    let mut two = Collector::start(dir.path(), "", &sharded(&[&a.url, &b.url], "file_id"));
    assert!(two.log().contains("sink routing changed at a clean cut"), "{}", two.log());
    let after: Vec<u64> = unique_file_ids(6000).split_off(3000);
    send_exact(two.addr, &after, 4);
    wait_for("all 6000 over both shards", WAIT, || stored(&[&a, &b]).0.len() == 6000);
    std::thread::sleep(Duration::from_millis(500)); // a duplicate would show now
    let (ids, twice) = stored(&[&a, &b]);
    assert_eq!((ids.len(), twice), (6000, 0), "every event once over the shards");
    assert!(before.iter().chain(&after).all(|id| ids.contains(id)));
    let on_b = stored(&[&b]).0;
    assert!(!on_b.is_empty() && on_b.iter().all(|id| after.contains(id)), "b holds only new events");
    two.sigterm_and_wait(WAIT);
}

#[test]
fn another_routing_is_refused_while_a_shard_still_owes_events() {
    let a = MariaDb::start();
    let down = format!("mysql://psc:x@127.0.0.1:{}/psc", free_closed_port());
    let dir = tempfile::tempdir().unwrap();
    let extra = sharded(&[&a.url, &down], "file_id");
    let mut two = Collector::start(dir.path(), "", &extra);
    send_exact(two.addr, &unique_file_ids(2000), 4);
    let status = two.sigterm_and_wait(WAIT).expect("stops");
    assert_eq!(status.code(), Some(75), "events left for the shard that is down");

    // One shard now: refused before serving, saying what to do.
    let config = dir.path().join("one-shard.toml");
    std::fs::write(&config, collector_config(&two.wal_dir, "", &sharded(&[&a.url], "file_id"))).unwrap();
    let mut child = collector_command()
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().unwrap().is_none() {
        child.kill().unwrap();
        panic!("a start under another routing was not refused");
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("routing changed from `file_id 2` to `file_id 1`"), "{text}");
    assert!(text.contains("let it drain"), "{text}");
    // The old routing starts again and keeps the events for the shard that is down.
    let mut again = Collector::start(dir.path(), "", &extra);
    assert!(!again.log().contains("clean cut"));
    again.sigterm_and_wait(WAIT);
}
