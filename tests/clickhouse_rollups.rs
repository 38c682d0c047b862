//! Rollups in ClickHouse (issue 12, item 5), `psc::clickhouse::ClickHouseSink` driven directly
//! against private clickhouse-servers (Debian's 18.16): `sum(events)` is exact without
//! `FINAL`, and a step's marker row outlives `OPTIMIZE … FINAL`; a delivery stopped between
//! the `events` block and a rollup block is completed from each table's own cursor, even by a
//! batch cut elsewhere, without a duplicate (fail points); a rollup table of another
//! definition is refused while it holds counts and made again while empty; rollups only; a
//! rollup added to a lane with history starts where the lane is.
//!
//! The cases that arm fail points need `--features failpoints` (as `make test` runs).
mod support;

#[path = "mysql_sink/harness.rs"]
mod harness;

#[path = "clickhouse_sink/common.rs"]
mod common;

use common::{connect, cursor_of, run, sink_with_rollups};
use harness::{batch, ids, wal, LANE_A};
use psc::clickhouse::ClickhouseConfig;
use psc::rollup::{Bucket, Dimension, RollupConfig};
use psc::sink::{Sink, SinkConn, SinkCursor, SinkError};
use psc::wal::Position;
use support::clickhouse::ClickHouse;

fn by_domain() -> RollupConfig {
    RollupConfig {
        name: "by_domain".into(),
        bucket: Bucket::Minute,
        dimensions: vec![Dimension::Event, Dimension::Domain],
    }
}

fn per_hour() -> RollupConfig {
    RollupConfig { name: "per_hour".into(), bucket: Bucket::Hour, dimensions: vec![] }
}

fn both() -> Vec<RollupConfig> {
    vec![by_domain(), per_hour()]
}

fn rollup_sum(ch: &ClickHouse, table: &str) -> u64 {
    ch.count(&format!("SELECT sum(events) FROM psc.{table} WHERE step = ''"))
}

fn markers(ch: &ClickHouse, table: &str) -> u64 {
    ch.count(&format!("SELECT count() FROM psc.{table} WHERE step != '' AND steps = 1 AND events = 0"))
}

/// Rows, distinct WAL positions, and both rollups' sums: all must agree.
fn assert_exact(ch: &ClickHouse, events: u64, counted: u64) {
    assert_eq!(ch.count("SELECT count() FROM psc.events"), events, "events rows");
    assert_eq!(
        ch.count("SELECT count() FROM (SELECT DISTINCT wal_end FROM psc.events)"),
        events,
        "no duplicate"
    );
    assert_eq!(rollup_sum(ch, "rollup_by_domain"), counted, "by_domain counts every event once");
    assert_eq!(rollup_sum(ch, "rollup_per_hour"), counted, "per_hour counts every event once");
}

#[test]
fn rollups_count_every_row_once_and_markers_outlive_merges() {
    let ch = ClickHouse::start();
    let (sink, stats) = sink_with_rollups(&ch.url, ClickhouseConfig::default(), &both());
    let to = run(async {
        let mut conn = connect(&sink).await;
        let mut at = Position::new(1, 0);
        for k in 0..3 {
            let b = batch(LANE_A, at, &ids(1000 * k + 1..1000 * k + 1001));
            conn.deliver(&wal(), &b).await.unwrap();
            at = b.to();
        }
        at
    });
    assert_exact(&ch, 3000, 3000);
    let per_domain = ch.query(
        "SELECT domain, sum(events) FROM psc.rollup_by_domain WHERE step = '' GROUP BY domain ORDER BY domain",
    );
    assert_eq!(per_domain, "d0.example.org\t1000\nd1.example.org\t1000\nd2.example.org\t1000\n");
    assert_eq!((markers(&ch, "rollup_by_domain"), markers(&ch, "rollup_per_hour")), (3, 3), "one per step");
    for table in ["rollup_by_domain", "rollup_per_hour"] {
        ch.query(&format!("OPTIMIZE TABLE psc.{table} FINAL"));
    }
    assert_eq!(
        ch.count("SELECT count() FROM psc.rollup_per_hour WHERE step = ''"),
        1,
        "the merge summed the hour"
    );
    assert_exact(&ch, 3000, 3000);
    assert_eq!(
        (markers(&ch, "rollup_by_domain"), markers(&ch, "rollup_per_hour")),
        (3, 3),
        "markers survive"
    );
    // A connection that knows nothing probes the markers, merged or not.
    let cursors = run(async { cursor_of(&mut connect(&sink).await).await });
    assert_eq!(cursors, vec![SinkCursor { lane: LANE_A, position: to }]);
    let s = stats.snapshot();
    assert!(s.probes >= 3 && s.rollup_rows >= 4, "{s:?}");
}

#[cfg(feature = "failpoints")]
mod in_doubt {
    use super::*;
    use psc::clickhouse::ClickHouseConn;
    use psc::failpoint::{arm, Spec};
    use psc::sink::Batch;

    async fn deliver_in_doubt(conn: &mut ClickHouseConn, b: &Batch, point: &str) {
        let _armed = arm(point, Spec::errno(libc::EIO).times(1));
        let result = conn.deliver(&wal(), b).await;
        assert!(matches!(result, Err(SinkError::InDoubt(_))), "{point}: {result:?}");
    }

    #[test]
    fn a_delivery_stopped_after_events_is_completed_by_batches_cut_elsewhere() {
        let ch = ClickHouse::start();
        let (sink, _) = sink_with_rollups(&ch.url, ClickhouseConfig::default(), &both());
        run(async {
            let start = Position::new(1, 0);
            let first = batch(LANE_A, start, &ids(1..1001));
            deliver_in_doubt(&mut connect(&sink).await, &first, "clickhouse.after_events").await;
            // The events are in, the rollups are not: the lane resumes where the rollups are.
            let mut conn = connect(&sink).await;
            assert_eq!(cursor_of(&mut conn).await, vec![SinkCursor { lane: LANE_A, position: start }]);
            // The core resends from there, cut shorter this time: only the rollups take it.
            let short = batch(LANE_A, start, &ids(1..601));
            conn.deliver(&wal(), &short).await.unwrap();
            // Then a batch past the first one's end: events take only their new rows.
            let rest = batch(LANE_A, short.to(), &ids(601..2001));
            conn.deliver(&wal(), &rest).await.unwrap();
            let fresh = cursor_of(&mut connect(&sink).await).await;
            assert_eq!(fresh, vec![SinkCursor { lane: LANE_A, position: rest.to() }]);
        });
        assert_exact(&ch, 2000, 2000);
    }

    #[test]
    fn a_rollup_block_in_doubt_is_settled_by_its_marker() {
        let ch = ClickHouse::start();
        let (sink, _) = sink_with_rollups(&ch.url, ClickhouseConfig::default(), &both());
        run(async {
            // by_domain's block is in, its answer lost; per_hour's step is in, its block
            // never went. The lane resumes where per_hour is, and only per_hour takes it.
            let start = Position::new(1, 0);
            let first = batch(LANE_A, start, &ids(1..501));
            deliver_in_doubt(&mut connect(&sink).await, &first, "clickhouse.after_rollup").await;
            let mut conn = connect(&sink).await;
            assert_eq!(cursor_of(&mut conn).await[0].position, start);
            conn.deliver(&wal(), &first).await.unwrap();
            let mut conn = connect(&sink).await;
            assert_eq!(cursor_of(&mut conn).await[0].position, first.to());
            assert!(matches!(conn.deliver(&wal(), &first).await, Err(SinkError::Fenced { .. })));
            // events in, both rollup steps in, no rollup block: the resend adds the counts once.
            let second = batch(LANE_A, first.to(), &ids(501..801));
            deliver_in_doubt(&mut connect(&sink).await, &second, "clickhouse.before_rollup").await;
            let mut conn = connect(&sink).await;
            assert_eq!(cursor_of(&mut conn).await[0].position, first.to());
            conn.deliver(&wal(), &second).await.unwrap();
        });
        assert_exact(&ch, 800, 800);
        assert_eq!(markers(&ch, "rollup_per_hour"), 2, "one per committed step");
    }
}

#[test]
fn a_table_of_another_definition_is_refused_while_it_holds_counts() {
    let ch = ClickHouse::start();
    let (sink, _) = sink_with_rollups(&ch.url, ClickhouseConfig::default(), &[by_domain()]);
    run(async {
        connect(&sink).await.deliver(&wal(), &batch(LANE_A, Position::new(1, 0), &ids(1..11))).await
    })
    .unwrap();
    let hourly = RollupConfig { bucket: Bucket::Hour, ..by_domain() };
    let (changed, _) = sink_with_rollups(&ch.url, ClickhouseConfig::default(), std::slice::from_ref(&hourly));
    match run(changed.connect()) {
        Err(SinkError::Unavailable(why)) => assert!(why.contains("another definition"), "{why}"),
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("a table of minute counts was taken for hourly counts"),
    }
    assert_eq!(rollup_sum(&ch, "rollup_by_domain"), 10, "the counts are left alone");
    // Empty, it is made again with the new definition.
    ch.query("DROP TABLE psc.rollup_by_domain");
    ch.query("CREATE TABLE psc.rollup_by_domain (x UInt8) ENGINE = MergeTree ORDER BY x");
    run(async { drop(connect(&changed).await) });
    let columns =
        ch.query("SELECT name FROM system.columns WHERE database = 'psc' AND table = 'rollup_by_domain'");
    assert!(columns.starts_with("hour\nevent\ndomain\n"), "{columns}");
}

#[test]
fn rollups_only_and_a_rollup_added_later_starts_where_the_lane_is() {
    let ch = ClickHouse::start();
    let only = ClickhouseConfig { raw_events: false, ..ClickhouseConfig::default() };
    let (sink, _) = sink_with_rollups(&ch.url, only, &[per_hour()]);
    let first = batch(LANE_A, Position::new(1, 0), &ids(1..301));
    run(async { connect(&sink).await.deliver(&wal(), &first).await }).unwrap();
    assert_eq!(ch.count("SELECT count() FROM psc.events"), 0, "no raw rows");
    assert_eq!(rollup_sum(&ch, "rollup_per_hour"), 300);
    // Now with raw events and a second rollup: both start at the lane's cursor.
    let (sink, _) = sink_with_rollups(&ch.url, ClickhouseConfig::default(), &both());
    run(async {
        let mut conn = connect(&sink).await;
        assert_eq!(cursor_of(&mut conn).await[0].position, first.to());
        conn.deliver(&wal(), &batch(LANE_A, first.to(), &ids(301..501))).await.unwrap();
    });
    assert_eq!(ch.count("SELECT count() FROM psc.events"), 200);
    assert_eq!(rollup_sum(&ch, "rollup_by_domain"), 200);
    assert_eq!(rollup_sum(&ch, "rollup_per_hour"), 500);
}
