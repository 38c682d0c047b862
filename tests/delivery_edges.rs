//! The edges of delivery, against the real binary (built with `failpoints`) and a private
//! MariaDB: a clean shutdown delivers everything and exits 0, or, with MySQL down, exits 75
//! and says how many events are left (issue 10 item 8); `EMFILE` on every few WAL reads
//! during catch-up duplicates and loses nothing (item 6); with `commit.meta` unwritable (a full
//! disk), segments behind MySQL's committed cursor are still deleted (item 9).

mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use psc::wal::segment::{core_dir, list_segments};
use support::load::{restart_with_env, send_exact, wait_delivered};
use support::{free_closed_port, unique_file_ids, wait_for, Collector, MariaDb};

const DRAIN: Duration = Duration::from_secs(90);

#[test]
fn sigterm_exits_0_only_after_every_event_is_delivered() {
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    // A long flush interval: at SIGTERM the events are still in the open batches.
    let config = "[mysql]\nbatch_rows = 100000\nflush_interval_ms = 60000\n[server]\ncores = 2\n";
    let mut collector = Collector::start(dir.path(), &db.url, config);
    let ids = unique_file_ids(3000);
    send_exact(collector.addr, &ids, 8);
    let status = collector.sigterm_and_wait(Duration::from_secs(30)).expect("stops");
    assert!(status.success(), "{status}; log:\n{}", collector.log());
    let d = support::load::delivery(&db, &ids, ids[0]);
    assert_eq!((d.rows, d.lost, d.duplicated), (3000, 0, 0), "delivered before the exit: {d:?}");
}

#[test]
fn sigterm_with_mysql_down_exits_75_and_counts_what_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let closed = format!("mysql://root@127.0.0.1:{}/psc", free_closed_port());
    let config = "[server]\nshutdown_timeout_ms = 2000\n";
    let mut collector = Collector::start(dir.path(), &closed, config);
    send_exact(collector.addr, &unique_file_ids(700), 4);
    let status = collector.sigterm_and_wait(Duration::from_secs(30)).expect("stops");
    assert_eq!(status.code(), Some(75), "EX_TEMPFAIL: events left; log:\n{}", collector.log());
    assert!(collector.log().contains("events_left=700"), "{}", collector.log());
}

#[test]
fn emfile_during_catch_up_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let closed = format!("mysql://root@127.0.0.1:{}/psc", free_closed_port());
    let config = "[mysql]\nbatch_rows = 300\nflush_interval_ms = 100\nretry_max_ms = 300\n\
                  [wal]\nsegment_bytes = 262144\nwrite_buffer_bytes = 16384\n";
    let mut collector = Collector::start(dir.path(), &closed, config);
    let ids = unique_file_ids(6000);
    send_exact(collector.addr, &ids, 4);
    collector.kill9();
    // The backlog is replayed from sealed segments (mmap) and the open one (pread), and every
    // few calls fail with EMFILE (24).
    let db = MariaDb::start();
    let toml = fs::read_to_string(collector.config_path()).unwrap().replace(&closed, &db.url);
    fs::write(collector.config_path(), toml).unwrap();
    let spec = "reader.mmap:after=1:times=3:errno=24,reader.pread:after=2:times=3:errno=24,reader.open:after=3:times=2:errno=24";
    restart_with_env(&mut collector, &[("PSC_FAILPOINT", spec)]);
    let d = wait_delivered(&db, &ids, ids[0], DRAIN);
    assert_eq!((d.lost, d.duplicated), (0, 0), "{d:?}");
    assert!(
        collector.log().contains("cannot read the WAL; retrying"),
        "the fail points fired: {}",
        collector.log()
    );
}

fn segment_count(wal: &Path) -> usize {
    list_segments(&core_dir(wal, 0)).map_or(0, |s| s.len())
}

#[test]
fn compaction_trusts_mysqls_cursor_when_commit_meta_cannot_be_written() {
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let config = "[mysql]\nbatch_rows = 500\nflush_interval_ms = 100\n[wal]\nsegment_bytes = 65536\nwrite_buffer_bytes = 16384\n";
    let mut collector = Collector::start(dir.path(), &db.url, config);
    // Every commit.meta write fails with ENOSPC (28) from now on.
    restart_with_env(&mut collector, &[("PSC_FAILPOINT", "cursor.create:errno=28")]);
    let ids = unique_file_ids(8000);
    send_exact(collector.addr, &ids, 4);
    let d = wait_delivered(&db, &ids, ids[0], DRAIN);
    assert_eq!((d.lost, d.duplicated), (0, 0), "{d:?}");
    let wal = collector.wal_dir.clone();
    wait_for("segments behind MySQL's cursor to be deleted", DRAIN, || segment_count(&wal) <= 2);
    assert!(
        collector.log().contains("cannot write commit.meta"),
        "the fail point fired: {}",
        collector.log()
    );
}
