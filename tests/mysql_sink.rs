//! `psc::mysql::MysqlSink` driven directly, as the delivery core drives it, against private
//! MariaDB servers: deliver and read cursors, the fence (also two connections racing for a
//! new lane), a connection cut around COMMIT (in doubt, both outcomes), a `KILL CONNECTION`,
//! rows refused under a small `max_allowed_packet` ending in `ingest_rejects`, the lease held
//! by a second connection, migration idempotency and the v1 upgrade, and no panic on rows of
//! surprising types.
mod support;

#[path = "mysql_sink/harness.rs"]
mod harness;
#[path = "mysql_sink/proxy.rs"]
mod proxy;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use harness::{batch, connect, ids, row, run, sink_at, sink_with, wal, TestRow, LANE_A, LANE_B};
use psc::config::MysqlConfig;
use psc::ingest::client::ua_hash;
use psc::mysql::config::Method;
use psc::mysql::{MysqlConn, MysqlSink};
use psc::sink::{Batch, LeaseState, SinkConn, SinkCursor, SinkError};
use psc::wal::identity::{LaneId, WalId, WalIdentity};
use psc::wal::record::{DecodedContext, Event};
use psc::wal::Position;
use support::MariaDb;

/// Longest a test waits for the server to notice a closed connection.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

fn db_cursor(db: &MariaDb, lane: LaneId) -> Vec<Vec<String>> {
    db.query_rows(&format!(
        "SELECT node, core, segment, `offset` FROM ingest_cursors WHERE wal_id = '{}' AND incarnation = '{:016x}'",
        wal().wal,
        lane.incarnation
    ))
}

#[test]
fn deliver_moves_rows_and_cursor_together_and_fences_a_stale_start() {
    let db = MariaDb::start();
    let (sink, stats) = sink_at(&db.url);
    run(async {
        let mut conn = connect(&sink).await;
        assert!(conn.cursors(&wal()).await.unwrap().is_empty(), "a fresh database has no cursors");
        let mut rows = ids(1..4);
        rows[0].ip = Some("10.1.2.3".into());
        rows[0].ua = Some("Bot/1 'x'".into());
        rows[0].referer = Some("ref.org".into());
        rows[0].extra = Some(r#"{"k":"v\t"}"#.into());
        let first = batch(LANE_A, Position::new(1, 0), &rows);
        conn.deliver(&wal(), &first).await.unwrap();
        let at = first.to();
        assert_eq!(conn.cursors(&wal()).await.unwrap(), vec![SinkCursor { lane: LANE_A, position: at }]);
        let other = WalIdentity { node: "node-a".into(), wal: WalId(7) };
        assert!(
            conn.cursors(&other).await.unwrap().is_empty(),
            "another WAL id's cursors are never returned"
        );

        // A batch from a stale start writes nothing.
        let stale = batch(LANE_A, Position::new(1, 0), &ids(10..12));
        match conn.deliver(&wal(), &stale).await {
            Err(SinkError::Fenced { lane, expected, found }) => {
                assert_eq!((lane, expected, found), (LANE_A, Position::new(1, 0), at))
            }
            other => panic!("expected a fence, got {other:?}"),
        }
        let mut conn = connect(&sink).await;
        // A batch of records of other shards only moves the cursor.
        let mut empty = Batch::new(LANE_A, 0, at);
        empty.advance_to(Position::new(2, 0));
        conn.deliver(&wal(), &empty).await.unwrap();
        let again = Batch::new(LANE_A, 0, Position::new(2, 0));
        conn.deliver(&wal(), &again).await.unwrap();
        conn.deliver(&wal(), &batch(LANE_B, Position::new(5, 40), &ids(20..22))).await.unwrap();
        let mut cursors = conn.cursors(&wal()).await.unwrap();
        cursors.sort_by_key(|c| c.lane);
        assert_eq!(cursors[0].position, Position::new(2, 0));
        assert_eq!(cursors[1], SinkCursor { lane: LANE_B, position: Position::new(5, 240) });
        conn.retire(&wal(), &[LANE_B]).await.unwrap();
        assert_eq!(conn.cursors(&wal()).await.unwrap().len(), 1);
    });
    assert_eq!(db.query_count("SELECT COUNT(*) FROM events"), 5, "3 + 2 rows, the fenced batch wrote none");
    assert_eq!(db.query_count("SELECT COUNT(*) FROM events WHERE file_id >= 10 AND file_id < 20"), 0);
    assert_eq!(db_cursor(&db, LANE_A), [["node-a", "0", "2", "0"]]);
    let context = db.query_rows(
        "SELECT INET6_NTOA(client_ip), ua_hash, referer_host, extra, d.name FROM events e \
         JOIN domains d ON d.id = e.domain_id WHERE file_id = 1",
    );
    let hash = ua_hash("Bot/1 'x'").to_string();
    assert_eq!(context, [["10.1.2.3", &hash, "ref.org", r#"{"k":"v\\t"}"#, "d1.example.org"]]);
    assert_eq!(db.query_rows(&format!("SELECT ua FROM user_agents WHERE hash = {hash}")), [["Bot/1 'x'"]]);
    assert_eq!(stats.fenced.load(Ordering::Relaxed), 1);
    assert!(stats.domain_cache_misses.load(Ordering::Relaxed) >= 3);
}

#[test]
fn connections_racing_for_a_new_lane_and_new_domains_stay_exact() {
    let db = MariaDb::start();
    let (sink, _stats) = sink_at(&db.url);
    run(async {
        let (mut one, mut two) = (connect(&sink).await, connect(&sink).await);
        // Same lane, same start, no cursor row yet: one wins, the other is fenced (or, if the
        // server chose to, told to retry) and writes nothing.
        let a = batch(LANE_A, Position::new(1, 0), &ids(100..110));
        let b = batch(LANE_A, Position::new(1, 0), &ids(200..205));
        let w = wal();
        let (ra, rb) = tokio::join!(one.deliver(&w, &a), two.deliver(&w, &b));
        let won: Vec<bool> = [&ra, &rb].iter().map(|r| r.is_ok()).collect();
        assert_eq!(won.iter().filter(|&&w| w).count(), 1, "{ra:?} {rb:?}");
        for r in [&ra, &rb].into_iter().filter(|r| r.is_err()) {
            assert!(matches!(r, Err(SinkError::Fenced { .. } | SinkError::Unavailable(_))), "{r:?}");
        }
        // Two lanes bringing the same new domain names at once end with one id per name.
        let names: Vec<TestRow> = (0..40)
            .map(|i| TestRow { file_id: 300 + i, domain: format!("new{}.org", i % 20), ..row(0) })
            .collect();
        let (mut three, mut four) = (connect(&sink).await, connect(&sink).await);
        let c = batch(LANE_B, Position::new(1, 0), &names[..20]);
        let d_lane = LaneId { core: 2, incarnation: 9 };
        let d = batch(d_lane, Position::new(1, 0), &names[20..]);
        let (rc, rd) = tokio::join!(three.deliver(&w, &c), four.deliver(&w, &d));
        rc.unwrap();
        rd.unwrap();
    });
    let events = db.query_count("SELECT COUNT(*) FROM events WHERE file_id < 300");
    assert!(events == 10 || events == 5, "{events}: exactly one of the racing batches");
    assert_eq!(db.query_count("SELECT COUNT(*) FROM domains WHERE name LIKE 'new%'"), 20);
    let mixed = db.query_count(
        "SELECT COUNT(*) FROM events e JOIN domains d ON d.id = e.domain_id \
         WHERE file_id >= 300 AND d.name <> CONCAT('new', (file_id - 300) % 20, '.org')",
    );
    assert_eq!(mixed, 0, "every event points at its own domain's id");
    assert_eq!(db.query_count("SELECT COUNT(*) FROM events WHERE file_id >= 300"), 40);
}

/// Waits until `check` holds, sleeping on the runtime; panics after `SETTLE_TIMEOUT`.
async fn settle<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_connection_cut_around_commit_is_in_doubt_and_the_cursors_tell_the_outcome() {
    let db = MariaDb::start();
    let proxy = proxy::Proxy::start(db.port);
    // TCP through the proxy: mysql_async would otherwise switch to the server's Unix socket.
    let via_proxy = db.url.replace(&format!(":{}/", db.port), &format!(":{}/", proxy.port));
    let (sink, _stats) = sink_at(&format!("{via_proxy}?prefer_socket=false"));
    let (direct, _) = sink_at(&db.url);
    run(async {
        let mut conn = connect(&sink).await;
        let first = batch(LANE_A, Position::new(1, 0), &ids(1..4));
        proxy.arm(proxy::Cut::BeforeCommit);
        let lost = conn.deliver(&wal(), &first).await;
        assert!(proxy.fired() && matches!(lost, Err(SinkError::InDoubt(_))), "{lost:?}");
        drop(conn);
        // The locking read waits for the server to roll the cut transaction back.
        let mut reader = connect(&direct).await;
        assert!(reader.cursors(&wal()).await.unwrap().is_empty(), "not committed");

        let mut conn = connect(&sink).await;
        proxy.arm(proxy::Cut::AfterCommit);
        let unknown = conn.deliver(&wal(), &first).await;
        assert!(proxy.fired() && matches!(unknown, Err(SinkError::InDoubt(_))), "{unknown:?}");
        let cursors = reader.cursors(&wal()).await.unwrap();
        assert_eq!(cursors, vec![SinkCursor { lane: LANE_A, position: first.to() }], "committed");

        // A killed connection: the next step is Unavailable, a new connection carries on.
        let mut conn = connect(&sink).await;
        let id = conn.connection_id();
        let mut killer = connect(&direct).await;
        let second = batch(LANE_A, first.to(), &ids(4..6));
        kill(&db, id);
        let gone = conn.deliver(&wal(), &second).await;
        assert!(matches!(gone, Err(SinkError::Unavailable(_))), "{gone:?}");
        killer.deliver(&wal(), &second).await.unwrap();
        settle("the killed connection to go", || async { !connection_exists(&db, id) }).await;
    });
    assert_eq!(
        db.query_count("SELECT COUNT(*) FROM events"),
        5,
        "the cut-before batch is absent, the rest once"
    );
}

fn kill(db: &MariaDb, id: u64) {
    db.query_rows(&format!("KILL CONNECTION {id}"));
}

fn connection_exists(db: &MariaDb, id: u64) -> bool {
    db.query_count(&format!("SELECT COUNT(*) FROM information_schema.processlist WHERE id = {id}")) > 0
}

/// Delivers `b` as the delivery core does: a refused batch is halved until each refused row
/// stands alone, and that row is dead-lettered. Returns the codes of the rejected rows.
fn deliver_bisecting<'a>(
    conn: &'a mut MysqlConn,
    sink: &'a MysqlSink,
    mut b: Batch,
) -> std::pin::Pin<Box<dyn Future<Output = Vec<u32>> + 'a>> {
    Box::pin(async move {
        match conn.deliver(&wal(), &b).await {
            Ok(()) => Vec::new(),
            Err(SinkError::Refused { code, message, every_row: false }) if b.len() == 1 => {
                *conn = connect(sink).await;
                conn.reject(&wal(), &b, code, &message).await.unwrap();
                vec![code]
            }
            Err(SinkError::Refused { every_row: false, .. }) => {
                *conn = connect(sink).await;
                let tail = b.split_off(b.len() / 2);
                let mut codes = deliver_bisecting(conn, sink, b).await;
                codes.extend(deliver_bisecting(conn, sink, tail).await);
                codes
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    })
}

#[test]
fn refused_rows_end_in_ingest_rejects_and_the_rest_lands_with_insert() {
    // 1406: INSERT refuses a value too long for its column under strict mode.
    refused_rows_end_in_ingest_rejects(Method::Insert, 1406);
}

#[test]
fn refused_rows_end_in_ingest_rejects_and_the_rest_lands_with_load_data() {
    // 1265: LOAD DATA LOCAL cuts the value with a warning, which the sink turns into a refusal.
    refused_rows_end_in_ingest_rejects(Method::LoadData, 1265);
}

fn refused_rows_end_in_ingest_rejects(method: Method, long_value_code: u32) {
    let db = MariaDb::start();
    let (sink, stats) = sink_with(MysqlConfig { url: db.url.clone(), method, ..MysqlConfig::default() }, &[]);
    // Migrations need the default packet size; the sink's next connections see 4 KiB.
    run(async { drop(connect(&sink).await) });
    db.query_rows("SET GLOBAL max_allowed_packet = 4096");
    let mut rows = ids(1..11);
    rows[3].ua = Some("U".repeat(5000)); // alone larger than the 4 KiB limit
    rows[7].extra = Some(format!(r#"{{"k":"{}"}}"#, "x".repeat(1100))); // > VARCHAR(1024)
    let b = batch(LANE_A, Position::new(3, 1000), &rows);
    let end = b.to();
    let codes = run(async {
        let mut conn = connect(&sink).await;
        assert_eq!(conn.statement_bytes_max(), 4096 - psc::mysql::sink::PACKET_MARGIN_BYTES);
        assert_eq!(conn.method(), method);
        let codes = deliver_bisecting(&mut conn, &sink, b).await;
        assert_eq!(conn.cursors(&wal()).await.unwrap(), vec![SinkCursor { lane: LANE_A, position: end }]);
        codes
    });
    db.query_rows("SET GLOBAL max_allowed_packet = 16777216");
    assert_eq!(codes, vec![1153, long_value_code]);
    assert_eq!(db.query_count("SELECT COUNT(*) FROM events"), 8);
    assert_eq!(db.query_count("SELECT COUNT(*) FROM events WHERE file_id IN (4, 8)"), 0);
    let rejects = db.query_rows(
        "SELECT core, incarnation, segment, `offset`, HEX(raw_line), raw_bytes, raw_truncated, error_code, \
         node, wal_id FROM ingest_rejects ORDER BY `offset`",
    );
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02X}")).collect::<String>();
    let w = wal().wal.to_string();
    // Row i starts where row i-1 ended: 1000 + 100 * i, minus nothing (offset = end - line).
    let start = (1400 - "raw 4\n".len()).to_string();
    assert_eq!(rejects[0][..4], ["0", "1111222233334444", "3", start.as_str()]);
    assert_eq!(
        rejects[0][4..],
        [hex("raw 4\n"), "6".into(), "0".into(), "1153".into(), "node-a".into(), w.clone()]
    );
    assert_eq!(rejects[1][4..8], [hex("raw 8\n"), "6".into(), "0".into(), long_value_code.to_string()]);
    let message = db.query_rows(&format!(
        "SELECT error_message FROM ingest_rejects WHERE error_code = {long_value_code}"
    ));
    assert!(message[0][0].contains("extra"), "{message:?}");
    assert_eq!(stats.rejects_by_code(), vec![(1153, 1), (long_value_code, 1)]);
    assert_eq!(stats.rows_too_large.load(Ordering::Relaxed), 1);
}

#[test]
fn a_raw_line_too_large_for_the_limit_is_stored_cut_and_flagged() {
    let db = MariaDb::start();
    let (sink, _) = sink_at(&db.url);
    run(async { drop(connect(&sink).await) });
    db.query_rows("SET GLOBAL max_allowed_packet = 4096");
    let mut b = Batch::new(LANE_A, 0, Position::new(1, 0));
    let raw = vec![b'\n'; 9000];
    let ev = Event { ts_ms: 0, event: "play", domain: "x.org", file_id: 1 };
    b.push(&ev, &DecodedContext::default(), &raw, Position::new(1, 9000));
    run(async {
        let mut conn = connect(&sink).await;
        conn.reject(&wal(), &b, 1153, &"m".repeat(2000)).await.unwrap();
    });
    db.query_rows("SET GLOBAL max_allowed_packet = 16777216");
    let stored = db.query_rows(
        "SELECT LENGTH(raw_line), raw_bytes, raw_truncated, LENGTH(error_message), `offset` FROM ingest_rejects",
    );
    let kept: usize = stored[0][0].parse().unwrap();
    assert!(kept > 1000 && kept < 2000, "{stored:?}");
    assert_eq!(stored[0][1..], ["9000", "1", "512", "0"]);
    assert_eq!(
        db.query_count(
            "SELECT COUNT(*) FROM ingest_rejects WHERE raw_line = REPEAT('\\n', LENGTH(raw_line))"
        ),
        1
    );
}

#[test]
fn the_lease_is_held_by_one_connection_at_a_time() {
    let db = MariaDb::start();
    let (sink, _) = sink_at(&db.url);
    let long_node = format!("{}-0123abcd", "h".repeat(64));
    run(async {
        let mut first = connect(&sink).await;
        let mut second = connect(&sink).await;
        for node in ["node-a", long_node.as_str()] {
            assert_eq!(first.lease(node).await.unwrap(), LeaseState::Held);
            assert_eq!(first.lease(node).await.unwrap(), LeaseState::Held, "asking again keeps it");
            match second.lease(node).await.unwrap() {
                LeaseState::HeldElsewhere { holder } => {
                    assert!(holder.contains(&first.connection_id().to_string()), "{holder}");
                    assert!(holder.contains(" from "), "the holder's host is named: {holder}");
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(second.lease("node-b").await.unwrap(), LeaseState::Held, "other nodes are free");
        drop(first);
        // The lease ends with its connection.
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while second.lease("node-a").await.unwrap() != LeaseState::Held {
            assert!(Instant::now() < deadline, "the lease outlived its connection");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

#[test]
fn migrations_are_idempotent_and_keep_v1_cursors_readable() {
    let db = MariaDb::start();
    // A v1 database: 001 and 002 applied, one v1 cursor row.
    for (name, text) in &psc::mysql::MIGRATIONS[..2] {
        for statement in psc::mysql::split_statements(text) {
            db.query_rows(&statement);
        }
        db.query_rows(&format!("INSERT INTO schema_migrations (version) VALUES ('{name}')"));
    }
    db.query_rows("INSERT INTO ingest_cursors (node, core, segment, `offset`) VALUES ('old', 0, 4, 77)");
    let (sink, _) = sink_at(&db.url);
    run(async {
        let mut conn = connect(&sink).await;
        conn.deliver(&wal(), &batch(LANE_A, Position::new(1, 0), &ids(1..2))).await.unwrap();
    });
    assert_eq!(
        db.query_rows("SELECT node, core, segment, `offset` FROM ingest_cursors_v1"),
        [["old", "0", "4", "77"]]
    );
    // 003 run again statement by statement (a crash half-way, or by hand) changes nothing.
    // One session: the guarded rename keeps its decision in a user variable.
    let again: Vec<String> = psc::mysql::split_statements(psc::mysql::MIGRATIONS[2].1).collect();
    db.query_rows(&again.join(";\n"));
    let mut config = psc::config::Config::default();
    config.mysql.url = db.url.clone();
    assert!(psc::mysql::migrate_blocking(&config).unwrap().is_empty());
    assert_eq!(db.query_count("SELECT COUNT(*) FROM ingest_cursors"), 1);
    assert_eq!(db.query_count("SELECT COUNT(*) FROM ingest_cursors_v1"), 1);
    let uncommented = db.query_rows(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = DATABASE() \
         AND table_name IN ('ingest_cursors', 'ingest_rejects') AND column_comment = ''",
    );
    assert!(uncommented.is_empty(), "every column is commented: {uncommented:?}");
}

#[test]
fn surprising_rows_and_a_broken_schema_are_errors_not_panics() {
    let db = MariaDb::start();
    let (sink, stats) = sink_at(&db.url);
    run(async {
        let mut conn = connect(&sink).await;
        conn.deliver(&wal(), &batch(LANE_A, Position::new(1, 0), &ids(1..3))).await.unwrap();
    });
    let w = wal().wal;
    db.query_rows(
        "ALTER TABLE ingest_cursors MODIFY segment VARCHAR(20) NULL, MODIFY incarnation VARCHAR(20)",
    );
    for bad in [
        format!("INSERT INTO ingest_cursors (wal_id, incarnation, node, core, segment, `offset`) VALUES ('{w}', 'zz', 'n', 1, '1', 0)"),
        format!("UPDATE ingest_cursors SET incarnation = '{:016x}', segment = 'seven' WHERE wal_id = '{w}' AND core = 1", 5),
        format!("UPDATE ingest_cursors SET segment = NULL WHERE wal_id = '{w}' AND core = 1"),
    ] {
        db.query_rows(&bad);
        let read = run(async { connect(&sink).await.cursors(&wal()).await });
        assert!(matches!(read, Err(SinkError::Unavailable(ref m)) if m.contains("read cursors")), "{read:?}");
    }
    assert!(stats.schema_errors.load(Ordering::Relaxed) >= 3);
    db.query_rows("ALTER TABLE domains MODIFY id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT");
    db.query_rows("INSERT INTO domains (id, name) VALUES (5000000000, 'huge.org')");
    db.query_rows("DELETE FROM ingest_cursors WHERE core = 1");
    let huge = TestRow { domain: "huge.org".into(), ..row(9) };
    let next = batch(LANE_A, Position::new(1, 200), &[huge]);
    let deliver = run(async { connect(&sink).await.deliver(&wal(), &next).await });
    assert!(
        matches!(deliver, Err(SinkError::Unavailable(_))),
        "an id past u32 is not a row we can use: {deliver:?}"
    );
    // A dropped table is the schema's fault, not the rows': delivery waits, nothing is rejected.
    db.query_rows("DROP TABLE user_agents");
    let mut r = row(10);
    r.ua = Some("UA".into());
    let deliver = run(async {
        connect(&sink).await.deliver(&wal(), &batch(LANE_A, Position::new(1, 200), &[r])).await
    });
    assert!(
        matches!(deliver, Err(SinkError::Unavailable(ref m)) if m.contains("user_agents")),
        "{deliver:?}"
    );
    assert_eq!(db.query_count("SELECT COUNT(*) FROM events"), 2);
    assert_eq!(db.query_count("SELECT COUNT(*) FROM ingest_rejects"), 0);
}
