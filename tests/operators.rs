//! What operators do in an ordinary week, against the real binary and a private MariaDB
//! (issue 10 items 1 and 2): a wiped WAL dir while MySQL still holds this node's cursors, a
//! node rename adopted with `wal adopt`, the newest segment cut back below the durable cursor,
//! and the core count going 2 → 1 → 2. After each, every acknowledged event is in MySQL
//! exactly once. Every process is stopped by PID (harness `Drop`); every wait is bounded.

mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use psc::wal::segment::{core_dir, list_segments, segment_path};
use support::load::{send_exact, wait_delivered};
use support::{free_closed_port, run_bounded, unique_file_ids, wait_for, Collector, MariaDb};

const DRAIN: Duration = Duration::from_secs(90);
const STOP: Duration = Duration::from_secs(30);

fn extra(cores: usize, node: &str) -> String {
    format!(
        "[server]\ncores = {cores}\n[ingest]\nnode_id = \"{node}\"\n\
         [mysql]\nbatch_rows = 500\nflush_interval_ms = 100\nretry_max_ms = 300\n"
    )
}

/// Sends `n` new events and returns their ids.
fn send(collector: &Collector, n: usize) -> Vec<u64> {
    let ids = unique_file_ids(n);
    send_exact(collector.addr, &ids, 8);
    ids
}

fn assert_exact(db: &MariaDb, acked: &[u64]) {
    let floor = *acked.iter().min().expect("some ids");
    let d = wait_delivered(db, acked, floor, DRAIN);
    assert_eq!((d.lost, d.duplicated), (0, 0), "{d:?}");
}

fn stop_clean(collector: &mut Collector) {
    let status = collector.sigterm_and_wait(STOP).expect("the collector stops on SIGTERM");
    assert!(status.success(), "a drained stop exits 0: {status}; log:\n{}", collector.log());
}

#[test]
fn a_wiped_wal_dir_starts_over_and_loses_nothing() {
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(dir.path(), &db.url, &extra(1, "wipe-node"));
    let mut acked = send(&collector, 2000);
    assert_exact(&db, &acked);
    stop_clean(&mut collector);
    // New disk: MySQL still holds cursors for this node, of the old WAL id.
    fs::remove_dir_all(&collector.wal_dir).unwrap();
    let mut collector = Collector::start(dir.path(), &db.url, &extra(1, "wipe-node"));
    acked.extend(send(&collector, 2000));
    assert_exact(&db, &acked);
    stop_clean(&mut collector);
}

#[test]
fn a_renamed_node_adopts_its_wal_and_delivers_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    // Events left in the WAL (MySQL unreachable), then the host is renamed.
    let closed = format!("mysql://root@127.0.0.1:{}/psc", free_closed_port());
    let mut collector = Collector::start(dir.path(), &closed, &extra(1, "old-name"));
    let mut acked = send(&collector, 1500);
    collector.kill9();
    let db = MariaDb::start();
    let config = dir.path().join("config.toml");
    fs::write(&config, support::collector_config(&collector.wal_dir, &db.url, &extra(1, "new-name")))
        .unwrap();
    let (status, stderr) = run_bounded(&config, &["serve"], dir.path());
    assert!(!status.success(), "a start under another node id is refused");
    assert!(
        stderr.contains("old-name") && stderr.contains("new-name") && stderr.contains("wal adopt"),
        "{stderr}"
    );
    let (status, stderr) = run_bounded(&config, &["wal", "adopt"], dir.path());
    assert!(status.success(), "wal adopt: {stderr}");
    let mut collector = Collector::start(dir.path(), &db.url, &extra(1, "new-name"));
    acked.extend(send(&collector, 1500));
    assert_exact(&db, &acked);
    stop_clean(&mut collector);
}

/// Truncates the newest non-empty segment of core 0 to half its size.
fn cut_newest_segment(wal: &Path) -> (u32, u64) {
    let dir = core_dir(wal, 0);
    let segments = list_segments(&dir).unwrap();
    let (n, len) = segments
        .iter()
        .rev()
        .map(|&n| (n, fs::metadata(segment_path(&dir, n)).unwrap().len()))
        .find(|&(_, len)| len > 0)
        .expect("a segment with records");
    let file = fs::OpenOptions::new().write(true).open(segment_path(&dir, n)).unwrap();
    file.set_len(len / 2).unwrap();
    (n, len)
}

#[test]
fn a_segment_cut_below_the_cursor_does_not_skip_new_events() {
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{}[wal]\nsync = \"none\"\n", extra(1, "cut-node"));
    let mut collector = Collector::start(dir.path(), &db.url, &config);
    let mut acked = send(&collector, 2000);
    assert_exact(&db, &acked);
    stop_clean(&mut collector);
    // Power loss under sync = none: the newest segment lost bytes the cursor had passed.
    cut_newest_segment(&collector.wal_dir);
    let mut collector = Collector::start(dir.path(), &db.url, &config);
    acked.extend(send(&collector, 2000));
    assert_exact(&db, &acked);
    stop_clean(&mut collector);
    assert!(collector.log().contains("cut below the committed cursor"), "{}", collector.log());
}

fn lane_bytes(wal: &Path, core: u16) -> u64 {
    let dir = core_dir(wal, core);
    let Ok(segments) = list_segments(&dir) else { return 0 };
    segments.iter().map(|&n| fs::metadata(segment_path(&dir, n)).map_or(0, |m| m.len())).sum()
}

#[test]
fn core_count_changes_strand_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let closed = format!("mysql://root@127.0.0.1:{}/psc", free_closed_port());
    // Two cores write while MySQL is unreachable; both lanes hold events.
    let mut collector = Collector::start(dir.path(), &closed, &extra(2, "cores-node"));
    let mut acked = Vec::new();
    for _ in 0..20 {
        acked.extend(send(&collector, 200));
        if lane_bytes(&collector.wal_dir, 1) > 0 && lane_bytes(&collector.wal_dir, 0) > 0 {
            break;
        }
    }
    assert!(lane_bytes(&collector.wal_dir, 1) > 0, "SO_REUSEPORT gave core 1 no connection");
    collector.kill9();
    // One core now: core-1 is delivered to its end, then removed.
    let db = MariaDb::start();
    let mut collector = Collector::start(dir.path(), &db.url, &extra(1, "cores-node"));
    acked.extend(send(&collector, 1000));
    assert_exact(&db, &acked);
    let wal = collector.wal_dir.clone();
    wait_for("core-1 to be removed", DRAIN, || !core_dir(&wal, 1).exists());
    wait_for("core-1's cursor row to be retired", DRAIN, || {
        db.query_count("SELECT COUNT(*) FROM ingest_cursors WHERE node = 'cores-node'") == 1
    });
    stop_clean(&mut collector);
    // Two cores again.
    let mut collector = Collector::start(dir.path(), &db.url, &extra(2, "cores-node"));
    acked.extend(send(&collector, 2000));
    assert_exact(&db, &acked);
    stop_clean(&mut collector);
}
