//! `psc::clickhouse::ClickHouseSink` driven directly, as the delivery core drives it, against
//! private clickhouse-servers (Debian's 18.16): rows and cursors land together and
//! `count()` without `FINAL` is exact; the fence; runs per month; gzip bodies; a table that
//! does not fit refuses the batch, which then lands in `ingest_rejects`; a server down at
//! connect; two shards behind a `Distributed` table; surprising answers are errors, not
//! panics; `migrate` creates the schema. Commits in doubt: tests/clickhouse_doubt.rs.
mod support;

#[path = "mysql_sink/harness.rs"]
mod harness;

#[path = "clickhouse_sink/common.rs"]
mod common;

use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use common::{connect, cursor_of, run, sink_at, sink_with};
use harness::{batch, ids, row, wal, TestRow, LANE_A, LANE_B};
use psc::clickhouse::config::Compression;
use psc::clickhouse::{ClickHouseSink, ClickhouseConfig, ClickhouseStats};
use psc::sink::shard::{shard_of, ShardBy};
use psc::sink::{Batch, LeaseState, Sink, SinkConn, SinkCursor, SinkError};
use psc::wal::identity::{WalId, WalIdentity};
use psc::wal::Position;
use support::clickhouse::ClickHouse;

#[test]
fn rows_and_cursors_land_together_and_a_stale_start_is_fenced() {
    let ch = ClickHouse::start();
    let (sink, stats) = sink_at(&ch.url);
    run(async {
        let mut conn = connect(&sink).await;
        assert!(conn.cursors(&wal()).await.unwrap().is_empty(), "a fresh database has no cursors");
        assert_eq!(conn.lease("node-a").await.unwrap(), LeaseState::Unsupported);
        let mut rows = ids(1..4);
        rows[0].ip = Some("10.1.2.3".into());
        rows[0].ua = Some("Bot/1 'x'\t\\".into());
        rows[0].referer = Some("ref.org".into());
        rows[0].extra = Some(r#"{"k":"v"}"#.into());
        rows[0].event_id = Some(*b"0123456789abcdef");
        rows[0].country = Some("DE");
        let first = batch(LANE_A, Position::new(1, 0), &rows);
        conn.deliver(&wal(), &first).await.unwrap();
        assert_eq!(cursor_of(&mut conn).await, vec![SinkCursor { lane: LANE_A, position: first.to() }]);
        let other = WalIdentity { node: "node-a".into(), wal: WalId(7) };
        assert!(
            conn.cursors(&other).await.unwrap().is_empty(),
            "another WAL id's cursors are never returned"
        );

        let stale = batch(LANE_A, Position::new(1, 0), &ids(10..12));
        match conn.deliver(&wal(), &stale).await {
            Err(SinkError::Fenced { lane, expected, found }) => {
                assert_eq!((lane, expected, found), (LANE_A, Position::new(1, 0), first.to()))
            }
            other => panic!("expected a fence, got {other:?}"),
        }
        // A new connection (knowing nothing) carries on; a batch of other shards' records
        // only moves the cursor, also when it moves nothing.
        let mut conn = connect(&sink).await;
        let mut empty = Batch::new(LANE_A, 0, first.to());
        empty.advance_to(Position::new(2, 0));
        conn.deliver(&wal(), &empty).await.unwrap();
        conn.deliver(&wal(), &Batch::new(LANE_A, 0, Position::new(2, 0))).await.unwrap();
        let mut tail = batch(LANE_A, Position::new(2, 0), &ids(4..6));
        tail.advance_to(Position::new(2, 5000));
        conn.deliver(&wal(), &tail).await.unwrap();
        conn.deliver(&wal(), &batch(LANE_B, Position::new(5, 40), &ids(20..22))).await.unwrap();
        let cursors = cursor_of(&mut connect(&sink).await).await;
        assert_eq!(cursors[0], SinkCursor { lane: LANE_A, position: Position::new(2, 5000) });
        assert_eq!(cursors[1], SinkCursor { lane: LANE_B, position: Position::new(5, 240) });
        conn.retire(&wal(), &[LANE_B]).await.unwrap();
        assert_eq!(cursor_of(&mut connect(&sink).await).await.len(), 1, "a retired lane has no cursor");
    });
    assert_eq!(ch.count("SELECT count() FROM psc.events"), 7, "3 + 2 + 2 rows, the fenced batch wrote none");
    // Retiring deleted the lane's steps but its tombstone (once the mutation is done).
    let pending = "SELECT count() FROM system.mutations WHERE database = 'psc' AND is_done = 0";
    support::wait_for("the retire mutation", Duration::from_secs(30), || ch.count(pending) == 0);
    let lane_b = format!("SELECT kind FROM psc.ingest_cursors WHERE incarnation = {}", LANE_B.incarnation);
    assert_eq!(ch.query(&lane_b), "3\n");
    assert_eq!(ch.count("SELECT count() FROM psc.events WHERE file_id >= 10 AND file_id < 20"), 0);
    let without = "SELECT count() FROM psc.events WHERE event_id = toFixedString('', 16) AND country = toFixedString('', 2)";
    assert_eq!(ch.count(without), 6, "rows without an event id or a country store zeros");
    let context = ch.query(
        "SELECT IPv6NumToString(client_ip), user_agent, referer_host, extra, domain, event, received_ms, \
         toUInt64(received_at) * 1000 + received_ms, node, core, wal_segment, wal_end, event_id, country \
         FROM psc.events WHERE file_id = 1 FORMAT TabSeparated",
    );
    let ts = harness::BASE_TS_MS + 1;
    // TabSeparated escapes the quotes, the tab and the backslash of the User-Agent.
    let ua = r"Bot/1 \'x\'\t\\";
    let fields = ["::ffff:10.1.2.3", ua, "ref.org", r#"{"k":"v"}"#, "d1.example.org", "play"];
    let want =
        format!("{}\t{}\t{ts}\tnode-a\t0\t1\t100\t0123456789abcdef\tDE\n", fields.join("\t"), ts % 1000);
    assert_eq!(context, want);
    let snapshot = stats.snapshot();
    assert_eq!((snapshot.fenced, snapshot.rows, snapshot.blocks), (1, 7, 3));
    assert_eq!(snapshot.server_version, ch.query("SELECT version()").trim());
}

#[test]
fn a_batch_across_a_month_boundary_lands_as_one_block_per_month() {
    let ch = ClickHouse::start();
    let (sink, _) = sink_at(&ch.url);
    // 2025-11-30 23:59:59.500 UTC, then 1 s later: December.
    let times = [1_764_547_199_500, 1_764_547_199_900, 1_764_547_200_100, 1_764_547_200_900];
    let rows: Vec<TestRow> =
        times.iter().enumerate().map(|(i, &t)| TestRow { ts_ms: t, ..row(i as u64 + 1) }).collect();
    run(async {
        let mut conn = connect(&sink).await;
        let b = batch(LANE_A, Position::new(1, 0), &rows);
        conn.deliver(&wal(), &b).await.unwrap();
        assert_eq!(cursor_of(&mut connect(&sink).await).await[0].position, b.to());
    });
    let parts = ch.query(
        "SELECT partition, rows FROM system.parts WHERE database = 'psc' AND table = 'events' AND active \
         ORDER BY partition FORMAT TabSeparated",
    );
    assert_eq!(parts, "202511\t2\n202512\t2\n");
    assert_eq!(ch.count("SELECT count() FROM psc.ingest_cursors WHERE kind = 1"), 2, "one step per run");
}

#[test]
fn gzipped_bodies_land_the_same() {
    let ch = ClickHouse::start();
    let gzip = ClickhouseConfig { compression: Compression::Gzip, ..Default::default() };
    let (sink, stats) = sink_with(&ch.url, gzip);
    let mut rows = ids(1..2001);
    rows.iter_mut().for_each(|r| r.ua = Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0".into()));
    let b = batch(LANE_A, Position::new(1, 0), &rows);
    run(async {
        let mut conn = connect(&sink).await;
        conn.deliver(&wal(), &b).await.unwrap();
        assert_eq!(cursor_of(&mut conn).await, vec![SinkCursor { lane: LANE_A, position: b.to() }]);
    });
    assert_eq!(ch.count("SELECT count() FROM psc.events"), 2000);
    assert_eq!(ch.count("SELECT count() FROM psc.events WHERE user_agent LIKE '%Firefox/120.0'"), 2000);
    assert_eq!(stats.snapshot().rows, 2000);
}

#[test]
fn a_table_that_does_not_fit_refuses_the_batch_and_its_rows_are_dead_lettered() {
    let ch = ClickHouse::start();
    let (sink, stats) = sink_at(&ch.url);
    run(async {
        connect(&sink).await.deliver(&wal(), &batch(LANE_A, Position::new(1, 0), &ids(1..3))).await.unwrap()
    });
    // A column missing (a table of an older version) is added at the next connect.
    ch.query("ALTER TABLE psc.events DROP COLUMN extra");
    run(async { drop(connect(&sink).await) });
    let has_extra =
        "SELECT count() FROM system.columns WHERE database = 'psc' AND table = 'events' AND name = 'extra'";
    assert_eq!(ch.count(has_extra), 1);
    // A column of another type is the operator's choice: every batch is refused.
    ch.query("ALTER TABLE psc.events MODIFY COLUMN received_ms UInt32");
    let b = batch(LANE_A, Position::new(1, 200), &ids(3..6));
    run(async {
        let mut conn = connect(&sink).await;
        let (code, message) = match conn.deliver(&wal(), &b).await {
            Err(SinkError::Refused { code, message, every_row: true }) => (code, message),
            other => panic!("expected a refusal of every row, got {other:?}"),
        };
        assert_eq!(code, 368, "{message}");
        let mut conn = connect(&sink).await;
        assert_eq!(cursor_of(&mut conn).await[0].position, Position::new(1, 200), "nothing committed");
        conn.reject(&wal(), &b, code, &message).await.unwrap();
        assert_eq!(cursor_of(&mut conn).await[0].position, b.to());
        assert!(matches!(conn.reject(&wal(), &b, code, &message).await, Err(SinkError::Fenced { .. })));
    });
    assert_eq!(ch.count("SELECT count() FROM psc.events"), 2);
    let rejects = ch.query(
        "SELECT core, incarnation, segment, offset, end_offset, raw_line, error_code, node, wal_id \
         FROM psc.ingest_rejects ORDER BY offset FORMAT TabSeparated",
    );
    let w = wal().wal;
    let line = |i: u64| {
        format!(
            "0\t{}\t1\t{}\t{}\traw {i}\\n\t368\tnode-a\t{w}",
            LANE_A.incarnation,
            200 + 100 * (i - 2) - 6,
            200 + 100 * (i - 2)
        )
    };
    assert_eq!(rejects, format!("{}\n{}\n{}\n", line(3), line(4), line(5)));
    let s = stats.snapshot();
    assert_eq!((s.refused, s.rejected_rows), (1, 3));
    assert!(s.schema_errors >= 1);
}

#[test]
fn a_server_down_at_connect_is_unavailable_then_everything_lands() {
    let mut ch = ClickHouse::configure();
    let (sink, _) = sink_at(&ch.url);
    let down = run(async { sink.connect().await.err() });
    assert!(matches!(down, Some(SinkError::Unavailable(_))), "{down:?}");
    ch.launch();
    run(async {
        let mut conn = connect(&sink).await;
        conn.deliver(&wal(), &batch(LANE_A, Position::new(1, 0), &ids(1..11))).await.unwrap();
    });
    assert_eq!(ch.count("SELECT count() FROM psc.events"), 10);
    // Down again under an open connection: the next delivery fails before it writes.
    let next = batch(LANE_A, Position::new(1, 1000), &ids(11..12));
    let gone = run(async {
        let mut conn = connect(&sink).await;
        ch.kill9();
        conn.deliver(&wal(), &next).await
    });
    assert!(matches!(gone, Err(SinkError::Unavailable(_))), "{gone:?}");
}

#[test]
fn two_shards_behind_a_distributed_table_count_every_event_once() {
    let shards = ClickHouse::cluster(2, "psc_cluster");
    let sinks: Vec<(ClickHouseSink, Arc<ClickhouseStats>)> = shards.iter().map(|s| sink_at(&s.url)).collect();
    let rows: Vec<TestRow> =
        (1..=10_000).map(|i| TestRow { domain: format!("site{}.example", i % 97), ..row(i) }).collect();
    let mut split: [Vec<TestRow>; 2] = [Vec::new(), Vec::new()];
    for r in rows {
        split[usize::from(shard_of(ShardBy::Domain, &r.domain, r.file_id, 2))].push(r);
    }
    run(async {
        for (k, (sink, _)) in sinks.iter().enumerate() {
            let mut conn = connect(sink).await;
            let mut from = Position::new(1, 0);
            for chunk in split[k].chunks(2500) {
                let b = batch(LANE_A, from, chunk);
                conn.deliver(&wal(), &b).await.unwrap();
                from = b.to();
            }
        }
    });
    let on = |k: usize| shards[k].count("SELECT count() FROM psc.events");
    assert_eq!((on(0), on(1)), (split[0].len() as u64, split[1].len() as u64));
    assert!(on(0) > 3000 && on(1) > 3000, "both shards hold a share: {} {}", on(0), on(1));
    shards[0]
        .query("CREATE TABLE psc.events_all AS psc.events ENGINE = Distributed(psc_cluster, psc, events)");
    assert_eq!(shards[0].count("SELECT count() FROM psc.events_all"), 10_000);
    let distinct = shards[0].count("SELECT count() FROM (SELECT DISTINCT file_id FROM psc.events_all)");
    assert_eq!(distinct, 10_000, "no event on two shards");
}

#[test]
fn surprising_answers_and_rows_are_errors_not_panics() {
    let ch = ClickHouse::start();
    let (sink, stats) = sink_at(&ch.url);
    run(async {
        connect(&sink).await.deliver(&wal(), &batch(LANE_A, Position::new(1, 0), &ids(1..3))).await.unwrap()
    });
    let w = wal().wal;
    ch.query(&format!(
        "INSERT INTO psc.ingest_cursors (wal_id, core, incarnation, seq, kind) VALUES ('{w}', 0, {}, 99, 9)",
        LANE_A.incarnation
    ));
    let read = run(async { connect(&sink).await.cursors(&wal()).await });
    assert!(matches!(read, Err(SinkError::Unavailable(ref m)) if m.contains("read cursors")), "{read:?}");
    assert!(stats.snapshot().schema_errors >= 1);

    // A server that answers every request with 200 and nonsense.
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", fake.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in fake.incoming().flatten().take(64) {
            let mut buf = [0u8; 65536];
            let _ = std::io::Read::read(&mut stream, &mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\n\xff\t\tnope\n\n",
            );
        }
    });
    let (odd, _) = sink_at(&url);
    let answers = run(async {
        let mut conn = odd.connect().await.expect("a 200 to every DDL statement is a connect");
        (
            conn.cursors(&wal()).await,
            conn.deliver(&wal(), &batch(LANE_A, Position::new(1, 0), &ids(1..2))).await,
        )
    });
    assert!(matches!(answers.0, Err(SinkError::Unavailable(_))), "{:?}", answers.0);
    assert!(matches!(answers.1, Err(SinkError::Unavailable(_))), "{:?}", answers.1);
}

#[test]
fn migrate_creates_the_schema_on_every_shard() {
    let shards = [ClickHouse::start(), ClickHouse::start()];
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let toml = format!(
        "[sink]\nkind = \"clickhouse\"\n[clickhouse]\ndatabase = \"psc_m\"\nshards = [\"{}\", \"{}\"]\n",
        shards[0].url, shards[1].url
    );
    std::fs::write(&config, toml).unwrap();
    let out = support::collector_command().arg("migrate").arg("--config").arg(&config).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().filter(|l| l.ends_with("schema is up to date")).count(), 2, "{stdout}");
    for shard in &shards {
        let tables = shard.query("SELECT name FROM system.tables WHERE database = 'psc_m' ORDER BY name");
        assert_eq!(tables, "events\ningest_cursors\ningest_rejects\n");
    }
}
