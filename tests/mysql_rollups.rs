//! Rollups in MySQL, against a private MariaDB: tables created at start with every column
//! commented and the key of their definition; counts exact per bucket and key, committed with
//! the cursor (a fenced re-delivery adds nothing); rollups-only mode writes no `events` rows;
//! a changed definition is refused on a table with rows and quietly applied to an empty one.
mod support;

#[path = "mysql_sink/harness.rs"]
mod harness;

use std::collections::BTreeMap;

use harness::{batch, connect, ids, run, sink_with, wal, TestRow, BASE_TS_MS, LANE_A, LANE_B};
use psc::config::MysqlConfig;
use psc::rollup::{Bucket, Dimension, RollupConfig};
use psc::sink::{Sink, SinkConn, SinkError};
use psc::wal::Position;
use support::MariaDb;

fn rollups() -> Vec<RollupConfig> {
    vec![
        RollupConfig {
            name: "plays".into(),
            bucket: Bucket::Minute,
            dimensions: vec![Dimension::Event, Dimension::Domain, Dimension::FileId],
        },
        RollupConfig {
            name: "clients".into(),
            bucket: Bucket::Hour,
            dimensions: vec![Dimension::ClientIp, Dimension::UserAgent, Dimension::RefererHost],
        },
        RollupConfig { name: "total".into(), bucket: Bucket::Day, dimensions: vec![] },
    ]
}

/// 600 rows over three minutes, 4 events, 3 domains, 20 files; every third with a context.
fn traffic(first: u64) -> Vec<TestRow> {
    let mut rows = ids(first..first + 600);
    for (i, r) in rows.iter_mut().enumerate() {
        r.ts_ms = BASE_TS_MS + (i as u64 % 3) * 60_000 + i as u64;
        r.event = ["play", "pause", "start", "end"][i % 4].into();
        r.file_id = 100 + (i as u64 % 20);
        if i % 3 == 0 {
            r.ip = Some(format!("10.0.0.{}", i % 5));
            r.ua = Some(format!("UA {}", i % 2));
            r.referer = Some("ref.org".into());
        }
    }
    rows
}

fn minute(ts_ms: u64) -> String {
    let secs = (ts_ms / 60_000 * 60) as i64;
    let days = secs.div_euclid(86_400);
    // 2025-11-23 is day 20415 since the epoch; the test's traffic stays on that day.
    assert_eq!(days, 20_415);
    let s = secs.rem_euclid(86_400);
    format!("2025-11-23 {:02}:{:02}:00", s / 3600, s / 60 % 60)
}

#[test]
fn rollup_counts_are_exact_and_committed_with_the_cursor() {
    let db = MariaDb::start();
    let config = MysqlConfig { url: db.url.clone(), raw_events: false, ..MysqlConfig::default() };
    let (sink, stats) = sink_with(config, &rollups());
    let rows = traffic(1);
    let (head, tail) = rows.split_at(250);
    run(async {
        let mut conn = connect(&sink).await;
        let first = batch(LANE_A, Position::new(1, 0), head);
        conn.deliver(&wal(), &first).await.unwrap();
        let again = conn.deliver(&wal(), &first).await;
        assert!(matches!(again, Err(SinkError::Fenced { .. })), "{again:?}");
        let mut conn = connect(&sink).await;
        conn.deliver(&wal(), &batch(LANE_B, Position::new(1, 0), tail)).await.unwrap();
    });
    assert_eq!(db.query_count("SELECT COUNT(*) FROM events"), 0, "rollups only: no events rows");
    let mut want: BTreeMap<(String, String, String, u64), u64> = BTreeMap::new();
    for r in &rows {
        *want.entry((minute(r.ts_ms), r.event.clone(), r.domain.clone(), r.file_id)).or_default() += 1;
    }
    let got: BTreeMap<(String, String, String, u64), u64> = db
        .query_rows(
            "SELECT r.bucket_start, r.event, d.name, r.file_id, r.events FROM rollup_plays r \
             JOIN domains d ON d.id = r.domain_id",
        )
        .into_iter()
        .map(|c| ((c[0].clone(), c[1].clone(), c[2].clone(), c[3].parse().unwrap()), c[4].parse().unwrap()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        db.query_rows("SELECT bucket_start, events FROM rollup_total"),
        [["2025-11-23 00:00:00", "600"]]
    );
    let with_context = db.query_count(
        "SELECT SUM(events) FROM rollup_clients WHERE client_ip <> '' AND ua_hash <> 0 AND referer_host = 'ref.org'",
    );
    assert_eq!(with_context, 200);
    assert_eq!(
        db.query_count("SELECT SUM(events) FROM rollup_clients WHERE client_ip = '' AND ua_hash = 0"),
        400
    );
    assert_eq!(db.query_count("SELECT COUNT(*) FROM user_agents"), 2, "the rollup keeps the UA texts");
    assert!(stats.rollup_keys.load(std::sync::atomic::Ordering::Relaxed) > 0);
    let uncommented = db.query_count(
        "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE() \
         AND table_name LIKE 'rollup\\_%' AND column_comment = ''",
    );
    assert_eq!(uncommented, 0, "every rollup column is commented");
    let key = db.query_rows(
        "SELECT GROUP_CONCAT(column_name ORDER BY seq_in_index) FROM information_schema.statistics \
         WHERE table_schema = DATABASE() AND table_name = 'rollup_plays' AND index_name = 'PRIMARY'",
    );
    assert_eq!(key, [["bucket_start,event,domain_id,file_id"]]);
}

#[test]
fn raw_events_and_rollups_are_written_together() {
    let db = MariaDb::start();
    let (sink, _) = sink_with(MysqlConfig { url: db.url.clone(), ..MysqlConfig::default() }, &rollups()[..1]);
    run(async {
        let mut conn = connect(&sink).await;
        conn.deliver(&wal(), &batch(LANE_A, Position::new(1, 0), &traffic(1))).await.unwrap();
    });
    assert_eq!(db.query_count("SELECT COUNT(*) FROM events"), 600);
    assert_eq!(db.query_count("SELECT SUM(events) FROM rollup_plays"), 600);
}

#[test]
fn a_changed_definition_is_refused_on_a_table_with_rows_only() {
    let db = MariaDb::start();
    let url = MysqlConfig { url: db.url.clone(), ..MysqlConfig::default() };
    let (sink, _) = sink_with(url.clone(), &rollups()[..1]);
    run(async {
        let mut conn = connect(&sink).await;
        conn.deliver(&wal(), &batch(LANE_A, Position::new(1, 0), &ids(1..5))).await.unwrap();
    });
    let mut changed = rollups();
    changed[0].dimensions = vec![Dimension::FileId];
    changed[2].dimensions = vec![Dimension::Event]; // rollup_total exists only now: created
    let (sink, stats) = sink_with(url.clone(), &changed);
    let refused = run(async { sink.connect().await.map(drop) });
    match refused {
        Err(SinkError::Unavailable(m)) => {
            assert!(m.contains("rollup_plays") && m.contains("dimensions=event,domain,file_id"), "{m}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(stats.schema_errors.load(std::sync::atomic::Ordering::Relaxed), 1);
    let config = psc::config::Config { mysql: url.clone(), rollup: changed.clone(), ..Default::default() };
    let err = psc::mysql::migrate_blocking(&config).unwrap_err();
    assert!(err.to_string().contains("give the changed rollup a new name"), "{err}");
    assert_eq!(db.query_count("SELECT SUM(events) FROM rollup_plays"), 4, "the old counts are untouched");

    // Emptied by the operator: the new definition replaces the old one.
    db.query_rows("DELETE FROM rollup_plays");
    let (sink, _) = sink_with(url, &changed);
    run(async { drop(connect(&sink).await) });
    let comment = db.query_rows(
        "SELECT table_comment FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = 'rollup_plays'",
    );
    assert_eq!(comment, [["psc-rollup v1 bucket=minute dimensions=file_id"]]);
}
