//! The collector delivering into ClickHouse (issue 12), against the real binary and private
//! clickhouse-servers (Debian's 18.16; own config, free ports, temp dirs, stopped by PID):
//! 10,000 mixed events over two shards land exactly once and a `Distributed` table counts
//! their sum; `kill -9` ×5 under load is exact with no duplicate row; one shard down for 20 s
//! holds up only its own rows; ClickHouse unreachable at start, then up; a shard whose schema
//! refuses the rows dead-letters them while the other shard goes on; a rollup stays exact
//! through `kill -9` ×5 under load. `count()` is read
//! without `FINAL`: duplicates must never be inserted.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use support::clickhouse::ClickHouse;
use support::load::{send_exact, Load, LoadShape};
use support::{http_get, unique_file_ids, wait_for, Collector};

const DRAIN: Duration = Duration::from_secs(90);

fn config(shards: &[&ClickHouse]) -> String {
    let urls: Vec<String> = shards.iter().map(|s| format!("\"{}\"", s.url)).collect();
    format!(
        "[sink]\nkind = \"clickhouse\"\nshard_by = \"file_id\"\n\
         [clickhouse]\nshards = [{}]\nbatch_rows = 2000\nflush_interval_ms = 200\nretry_max_ms = 500\n\
         connect_timeout_ms = 1000\nquery_timeout_ms = 5000\n[server]\ncores = 2\n",
        urls.join(", ")
    )
}

/// (rows, lost, duplicated) of `acked` over `servers`, counted without FINAL. Ids are read
/// in windows so that no answer exceeds the harness's response cap.
fn exactness(servers: &[&ClickHouse], acked: &[u64]) -> (u64, u64, u64) {
    const WINDOW: u64 = 40_000;
    let (floor, top) = (acked.iter().min().copied().unwrap_or(0), acked.iter().max().copied().unwrap_or(0));
    let mut seen = HashSet::new();
    let (mut rows, mut duplicated) = (0, 0);
    for s in servers {
        let mut lo = floor;
        while lo <= top {
            let sql =
                format!("SELECT file_id FROM psc.events WHERE file_id >= {lo} AND file_id < {}", lo + WINDOW);
            // Before the collector's first connect the database does not exist yet: no rows.
            let text = s.try_query(&sql).unwrap_or_default();
            for line in text.lines() {
                let id: u64 = line.parse().unwrap_or_else(|e| panic!("answer line {line:?}: {e}"));
                rows += 1;
                duplicated += u64::from(!seen.insert(id));
            }
            lo += WINDOW;
        }
    }
    let lost = acked.iter().filter(|id| !seen.contains(id)).count() as u64;
    (rows, lost, duplicated)
}

fn wait_exact(servers: &[&ClickHouse], acked: &[u64]) {
    let deadline = Instant::now() + DRAIN;
    let mut last = exactness(servers, acked);
    while last.1 > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        last = exactness(servers, acked);
    }
    std::thread::sleep(Duration::from_secs(1)); // a duplicate would show now
    let (rows, lost, duplicated) = exactness(servers, acked);
    assert_eq!((lost, duplicated), (0, 0), "rows {rows} of {} acked (before: {last:?})", acked.len());
}

#[test]
fn ten_thousand_events_over_two_shards_land_once_and_distributed_counts_the_sum() {
    let servers = ClickHouse::cluster(2, "psc_test");
    let (a, b) = (&servers[0], &servers[1]);
    let dir = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(dir.path(), "", &config(&[a, b]));
    let ids = unique_file_ids(10_000);
    send_exact(collector.addr, &ids, 8);
    wait_exact(&[a, b], &ids);
    let (on_a, on_b) = (a.count("SELECT count() FROM psc.events"), b.count("SELECT count() FROM psc.events"));
    assert!(on_a > 0 && on_b > 0, "both shards hold rows: {on_a} + {on_b}");
    a.query("CREATE TABLE psc.events_all AS psc.events ENGINE = Distributed(psc_test, psc, events, rand())");
    assert_eq!(a.count("SELECT count() FROM psc.events_all"), on_a + on_b);
    assert_eq!(on_a + on_b, 10_000);
    // The sink's own counters on /metrics, summed over the shards.
    let metrics = http_get(collector.addr, "/metrics").1;
    let value = |name: &str| -> u64 {
        let line =
            metrics.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in\n{metrics}"));
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{line}"))
    };
    assert_eq!(value("ingest_clickhouse_rows_total"), 10_000);
    assert!(value("ingest_clickhouse_blocks_total") >= 2 && value("ingest_clickhouse_in_doubt_total") == 0);
    assert!(metrics.contains("ingest_clickhouse_server{version=\"18.16"), "{metrics}");
    let status = collector.sigterm_and_wait(Duration::from_secs(30)).expect("stops");
    assert!(status.success(), "{status}; log:\n{}", collector.log());
}

#[test]
fn kill_9_five_times_under_load_is_exact() {
    let server = ClickHouse::start();
    let dir = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(dir.path(), "", &config(&[&server]));
    let load = Load::start(collector.addr, LoadShape::default());
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(1500));
        collector.restart();
        load.set_addr(collector.addr);
    }
    std::thread::sleep(Duration::from_secs(1));
    let report = load.stop();
    assert!(report.acked.len() > 1000, "the load ran: {}", report.acked.len());
    wait_exact(&[&server], &report.acked);
    collector.sigterm_and_wait(Duration::from_secs(30));
}

#[test]
fn rollups_stay_exact_without_final_through_kill_9_under_load() {
    let server = ClickHouse::start();
    let dir = tempfile::tempdir().unwrap();
    let rollup = "[[rollup]]\nname = \"per_file\"\nbucket = \"minute\"\ndimensions = [\"file_id\"]\n";
    let mut collector = Collector::start(dir.path(), "", &format!("{}{rollup}", config(&[&server])));
    let load = Load::start(collector.addr, LoadShape::default());
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(1500));
        collector.restart();
        load.set_addr(collector.addr);
    }
    let report = load.stop();
    wait_exact(&[&server], &report.acked);
    let rows = server.count("SELECT count() FROM psc.events");
    let counted = || server.count("SELECT sum(events) FROM psc.rollup_per_file WHERE step = ''");
    wait_for("the rollup to catch up with events", DRAIN, || counted() == rows);
    let twice = "SELECT count() FROM (SELECT file_id, sum(events) AS n FROM psc.rollup_per_file \
                 WHERE step = '' GROUP BY file_id HAVING n != 1)";
    assert_eq!(server.count(twice), 0, "every file id counted exactly once");
    assert!(rows >= report.acked.len() as u64 && rows > 1000, "{rows} rows, {} acked", report.acked.len());
    collector.sigterm_and_wait(Duration::from_secs(30));
}

#[test]
fn one_shard_down_for_20_s_holds_up_only_its_own_rows() {
    let mut servers = ClickHouse::cluster(2, "psc_test");
    let dir = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(dir.path(), "", &config(&[&servers[0], &servers[1]]));
    let load = Load::start(collector.addr, LoadShape::default());
    std::thread::sleep(Duration::from_secs(2));
    servers[1].kill9();
    let before = servers[0].count("SELECT count() FROM psc.events");
    std::thread::sleep(Duration::from_secs(20));
    let during = servers[0].count("SELECT count() FROM psc.events");
    assert!(during > before + 1000, "the live shard kept taking rows: {before} -> {during}");
    let stats: serde_json::Value = serde_json::from_str(&http_get(collector.addr, "/stats").1).unwrap();
    let shards = stats["shards"].as_array().expect("/stats shards");
    assert_eq!((shards[0]["up"].as_bool(), shards[1]["up"].as_bool()), (Some(true), Some(false)), "{stats}");
    assert!(
        shards[1]["lag_bytes"].as_u64() > shards[0]["lag_bytes"].as_u64(),
        "the down shard lags: {stats}"
    );
    let metrics = http_get(collector.addr, "/metrics").1;
    assert!(metrics.contains("ingest_sink_shard_up{shard=\"1\"} 0"), "{metrics}");
    assert!(metrics.contains("ingest_sink_shard_lag_bytes{shard=\"1\"}"), "{metrics}");
    servers[1].launch();
    std::thread::sleep(Duration::from_secs(2));
    let report = load.stop();
    wait_exact(&[&servers[0], &servers[1]], &report.acked);
    collector.sigterm_and_wait(Duration::from_secs(30));
}

#[test]
fn clickhouse_unreachable_at_start_then_up_delivers_everything() {
    let mut server = ClickHouse::configure();
    let dir = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(dir.path(), "", &config(&[&server]));
    let ids = unique_file_ids(3000);
    send_exact(collector.addr, &ids, 4);
    std::thread::sleep(Duration::from_secs(2));
    server.launch();
    wait_exact(&[&server], &ids);
    collector.sigterm_and_wait(Duration::from_secs(30));
}

#[test]
fn a_shard_whose_schema_refuses_the_rows_dead_letters_them_and_the_other_goes_on() {
    let servers = ClickHouse::cluster(2, "psc_test");
    let dir = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(dir.path(), "", &config(&[&servers[0], &servers[1]]));
    let first = unique_file_ids(200);
    send_exact(collector.addr, &first, 2);
    wait_exact(&[&servers[0], &servers[1]], &first);
    // Shard 1's events table no longer fits our rows: another type for a column we send.
    servers[1].query("ALTER TABLE psc.events MODIFY COLUMN received_ms UInt32");
    let ids = unique_file_ids(4000);
    send_exact(collector.addr, &ids, 4);
    let on_a = |ids: &[u64]| {
        let floor = ids[0];
        servers[0].count(&format!("SELECT count() FROM psc.events WHERE file_id >= {floor}"))
    };
    wait_for("shard 0's rows", DRAIN, || on_a(&ids) > 1000);
    wait_for(&format!("shard 1's dead letters; log:\n{}", collector.log()), DRAIN, || {
        servers[1].count("SELECT count() FROM psc.ingest_rejects") + on_a(&ids) >= 4000
    });
    let dead = servers[1].count("SELECT count() FROM psc.ingest_rejects");
    assert_eq!(on_a(&ids) + dead, 4000, "every row landed or is a dead letter, once");
    collector.sigterm_and_wait(Duration::from_secs(30));
}
