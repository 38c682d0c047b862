//! One node id, one live process (issue 10 item 3), against the real binary and a private
//! MariaDB: a second collector with the same node id (its own WAL dir) takes events into its
//! WAL but delivers none while the first lives, and says so in its log and in `/readyz`; once
//! the first is gone it takes the lease and delivers. Two collectors with the default node id
//! and different WAL dirs are kept apart and both deliver.

mod support;

use std::time::Duration;

use support::load::{send_exact, wait_delivered};
use support::{http_get, unique_file_ids, wait_for, Collector, MariaDb};

const FAST: &str = "[mysql]\nbatch_rows = 500\nflush_interval_ms = 100\nretry_max_ms = 300\n";

fn count(db: &MariaDb, ids: &[u64]) -> u64 {
    let list: Vec<String> = ids.iter().map(u64::to_string).collect();
    db.query_count(&format!("SELECT COUNT(*) FROM events WHERE file_id IN ({})", list.join(",")))
}

#[test]
fn a_second_process_with_the_same_node_id_does_not_deliver() {
    let db = MariaDb::start();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let same = format!("[ingest]\nnode_id = \"twin\"\n{FAST}");
    let mut a = Collector::start(a_dir.path(), &db.url, &same);
    let a_ids = unique_file_ids(500);
    send_exact(a.addr, &a_ids, 4);
    let d = wait_delivered(&db, &a_ids, a_ids[0], Duration::from_secs(60));
    assert_eq!((d.lost, d.duplicated), (0, 0), "{d:?}");

    let mut b = Collector::start(b_dir.path(), &db.url, &same);
    wait_for("the second process to report the lease", Duration::from_secs(30), || {
        let (status, body) = http_get(b.addr, "/readyz");
        status == 503 && body.contains("lease_held_elsewhere")
    });
    let b_ids = unique_file_ids(500);
    send_exact(b.addr, &b_ids, 4);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count(&db, &b_ids), 0, "the second process delivered while the first holds the lease");
    assert!(b.log().contains("another live process holds this node's delivery lease"), "{}", b.log());
    let (status, _) = http_get(a.addr, "/readyz");
    assert_eq!(status, 200, "the lease holder stays ready");

    a.kill9();
    let d = wait_delivered(&db, &b_ids, b_ids[0], Duration::from_secs(60));
    assert_eq!((d.lost, d.duplicated), (0, 0), "after the first is gone: {d:?}");
    wait_for("the second process to be ready", Duration::from_secs(30), || {
        http_get(b.addr, "/readyz").0 == 200
    });
    b.sigterm_and_wait(Duration::from_secs(30));
}

#[test]
fn default_node_ids_keep_two_instances_on_one_host_apart() {
    let db = MariaDb::start();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Collector::start(a_dir.path(), &db.url, FAST);
    let mut b = Collector::start(b_dir.path(), &db.url, FAST);
    let (a_ids, b_ids) = (unique_file_ids(500), unique_file_ids(500));
    send_exact(a.addr, &a_ids, 4);
    send_exact(b.addr, &b_ids, 4);
    let mut all = a_ids.clone();
    all.extend(&b_ids);
    let floor = *all.iter().min().unwrap();
    let d = wait_delivered(&db, &all, floor, Duration::from_secs(60));
    assert_eq!((d.lost, d.duplicated), (0, 0), "{d:?}");
    let nodes = db.query_count("SELECT COUNT(DISTINCT node) FROM ingest_cursors");
    assert_eq!(nodes, 2, "two instances, two node ids");
    a.sigterm_and_wait(Duration::from_secs(30));
    b.sigterm_and_wait(Duration::from_secs(30));
}
