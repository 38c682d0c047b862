//! The fields of issue 14 through `psc::mysql::MysqlSink`, driven directly as the delivery
//! core drives it, against a private MariaDB, with both methods (multi-row INSERT and LOAD
//! DATA LOCAL): client event ids de-duplicated by the unique key across lanes, deliveries and
//! inside one batch, and counted; a data error hidden among duplicates still refused, never
//! stored cut; the country column; `user_agents` classified once per distinct UA (a second
//! sink finds them stored, a row from before migration 004 gets its class); migration 004 run
//! twice changes nothing and comments every column.
mod support;

#[path = "mysql_sink/harness.rs"]
mod harness;

use std::sync::atomic::Ordering;

use harness::{batch, connect, ids, run, sink_with, wal, TestRow, LANE_A, LANE_B};
use psc::config::MysqlConfig;
use psc::ingest::client::ua_hash;
use psc::mysql::config::Method;
use psc::sink::{SinkConn, SinkError};
use psc::wal::Position;
use support::MariaDb;

const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
const CHROME_ANDROID: &str =
    "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) \
                              Chrome/120.0.0.0 Mobile Safari/537.36";

fn config(db: &MariaDb, method: Method) -> MysqlConfig {
    MysqlConfig { url: db.url.clone(), method, ..MysqlConfig::default() }
}

fn with_id(file_id: u64, id: u8) -> TestRow {
    TestRow { event_id: Some([id; 16]), ..harness::row(file_id) }
}

fn dedup_across_lanes_deliveries_and_one_batch(method: Method) {
    let db = MariaDb::start();
    let (sink, stats) = sink_with(config(&db, method), &[]);
    run(async {
        let mut conn = connect(&sink).await;
        assert_eq!(conn.method(), method);
        let first = [with_id(1, 0xe1), with_id(2, 0xe2), harness::row(3)];
        conn.deliver(&wal(), &batch(LANE_A, Position::new(1, 0), &first)).await.unwrap();
        // Another lane (core) retries e2, and sends e3 twice in one batch, and two rows without
        // an id (NULLs never collide).
        let second =
            [with_id(11, 0xe2), with_id(12, 0xe3), with_id(13, 0xe3), harness::row(14), harness::row(15)];
        let b = batch(LANE_B, Position::new(4, 0), &second);
        conn.deliver(&wal(), &b).await.unwrap();
        assert_eq!(stats.events_deduplicated.load(Ordering::Relaxed), 2);
        // A later delivery of lane A with e1 again: the cursor moves, no row is added.
        let later = batch(LANE_A, Position::new(1, 300), &[with_id(21, 0xe1)]);
        conn.deliver(&wal(), &later).await.unwrap();
        let mut cursors = conn.cursors(&wal()).await.unwrap();
        cursors.sort_by_key(|c| c.lane);
        assert_eq!(cursors[0].position, later.to(), "the sink's own cursor is exact");
        assert_eq!(cursors[1].position, b.to());
    });
    assert_eq!(stats.events_deduplicated.load(Ordering::Relaxed), 3);
    let kept = db
        .query_rows("SELECT HEX(event_id), file_id FROM events WHERE event_id IS NOT NULL ORDER BY file_id");
    let hex = |b: u8| format!("{b:02X}").repeat(16);
    assert_eq!(kept, [[hex(0xe1), "1".into()], [hex(0xe2), "2".into()], [hex(0xe3), "12".into()]]);
    assert_eq!(db.query_count("SELECT COUNT(*) FROM events WHERE event_id IS NULL"), 3);
}

#[test]
fn event_ids_are_deduplicated_with_insert() {
    dedup_across_lanes_deliveries_and_one_batch(Method::Insert);
}

#[test]
fn event_ids_are_deduplicated_with_load_data() {
    dedup_across_lanes_deliveries_and_one_batch(Method::LoadData);
}

/// IGNORE semantics must not let a value MySQL would refuse in strict mode through, cut.
fn a_data_error_among_duplicates_is_refused(method: Method) {
    let db = MariaDb::start();
    let (sink, stats) = sink_with(config(&db, method), &[]);
    run(async {
        let mut conn = connect(&sink).await;
        conn.deliver(&wal(), &batch(LANE_A, Position::new(1, 0), &[with_id(1, 7)])).await.unwrap();
        // referer_host is a VARCHAR(253): this value cannot be stored as it is.
        let bad = TestRow { referer: Some("r".repeat(300)), ..with_id(3, 8) };
        let rows = [with_id(2, 7), bad];
        let b = batch(LANE_A, Position::new(1, 100), &rows);
        match conn.deliver(&wal(), &b).await {
            Err(SinkError::Refused { code, .. }) => assert_ne!(code, 1062, "refused for the value"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    });
    assert_eq!(db.query_count("SELECT COUNT(*) FROM events"), 1, "nothing of the refused batch");
    assert_eq!(stats.events_deduplicated.load(Ordering::Relaxed), 0, "counted after COMMIT only");
}

#[test]
fn a_data_error_among_duplicates_is_refused_with_insert() {
    a_data_error_among_duplicates_is_refused(Method::Insert);
}

#[test]
fn a_data_error_among_duplicates_is_refused_with_load_data() {
    a_data_error_among_duplicates_is_refused(Method::LoadData);
}

#[test]
fn countries_and_user_agent_classes_are_stored_once_per_distinct_ua() {
    let db = MariaDb::start();
    let (sink, stats) = sink_with(config(&db, Method::LoadData), &[]);
    let mut rows = ids(1..5);
    rows[0].country = Some("US");
    rows[0].ua = Some(GOOGLEBOT.into());
    rows[1].ua = Some(CHROME_ANDROID.into());
    rows[2].ua = Some(GOOGLEBOT.into());
    rows[3].ua = Some("legacy/1.0".into());
    // A row stored before migration 004 (no class yet), once the tables exist.
    run(async { drop(connect(&sink).await) });
    let legacy = ua_hash("legacy/1.0");
    db.query_rows(&format!("INSERT INTO user_agents (hash, ua) VALUES ({legacy}, 'legacy/1.0')"));
    run(async {
        let mut conn = connect(&sink).await;
        conn.deliver(&wal(), &batch(LANE_A, Position::new(1, 0), &rows)).await.unwrap();
        let same_uas = [
            TestRow { ua: Some(GOOGLEBOT.into()), ..harness::row(8) },
            TestRow { ua: Some(CHROME_ANDROID.into()), ..harness::row(9) },
        ];
        let again = batch(LANE_A, Position::new(1, 400), &same_uas);
        conn.deliver(&wal(), &again).await.unwrap();
    });
    assert_eq!(stats.user_agents_parsed.load(Ordering::Relaxed), 3, "each distinct UA once");
    assert_eq!(db.query_rows("SELECT country FROM events WHERE file_id = 1"), [["US"]]);
    assert_eq!(db.query_count("SELECT COUNT(*) FROM events WHERE country IS NULL"), 5);
    let class = |ua: &str| {
        db.query_rows(&format!(
            "SELECT IFNULL(family, '-'), IFNULL(os, '-'), IFNULL(device, '-'), is_bot FROM user_agents WHERE hash = {}",
            ua_hash(ua)
        ))
    };
    assert_eq!(class(GOOGLEBOT), [["Googlebot", "-", "bot", "1"]]);
    assert_eq!(class(CHROME_ANDROID), [["Chrome", "Android", "mobile", "0"]]);
    assert_eq!(class("legacy/1.0"), [["-", "-", "-", "0"]], "classified when next seen");
    assert_eq!(db.query_rows(&format!("SELECT ua FROM user_agents WHERE hash = {legacy}")), [["legacy/1.0"]]);

    // Another process: its cache is empty, the SELECT finds every UA stored and classified.
    let (fresh, fresh_stats) = sink_with(config(&db, Method::Insert), &[]);
    run(async {
        let mut conn = connect(&fresh).await;
        conn.deliver(&wal(), &batch(LANE_B, Position::new(2, 0), &rows)).await.unwrap();
    });
    assert_eq!(fresh_stats.user_agents_parsed.load(Ordering::Relaxed), 0);
    assert_eq!(fresh_stats.user_agent_cache_entries.load(Ordering::Relaxed), 3);
}

#[test]
fn migration_004_is_idempotent_and_comments_every_column() {
    let db = MariaDb::start();
    let (sink, _) = sink_with(config(&db, Method::Insert), &[]);
    run(async { drop(connect(&sink).await) });
    for statement in psc::mysql::split_statements(psc::mysql::MIGRATIONS[3].1) {
        db.query_rows(&statement);
    }
    let mut cfg = psc::config::Config::default();
    cfg.mysql.url = db.url.clone();
    assert!(psc::mysql::migrate_blocking(&cfg).unwrap().is_empty());
    let uncommented = db.query_rows(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = DATABASE() \
         AND table_name IN ('events', 'user_agents') AND column_comment = '' \
         AND column_name IN ('event_id', 'country', 'family', 'os', 'device', 'is_bot')",
    );
    assert!(uncommented.is_empty(), "every new column is commented: {uncommented:?}");
    let unique = db.query_rows(
        "SELECT non_unique, column_name FROM information_schema.statistics WHERE table_schema = DATABASE() \
         AND table_name = 'events' AND index_name = 'uk_events_event_id'",
    );
    assert_eq!(unique, [["0", "event_id"]]);
}
