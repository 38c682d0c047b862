//! Exactly once when a commit's outcome is unknown, `psc::clickhouse::ClickHouseSink` against
//! private clickhouse-servers: the rows went in but the answer was lost, the step row went in
//! but not its rows (fail points), a server killed after a commit, an INSERT still running
//! when the cursors are read (they wait for it), a server `kill -9`ed five times under a
//! delivery loop that resumes from the cursors (60,000 rows or more, each exactly once), and the
//! server property it all rests on: a Native body cut short anywhere inserts nothing.
//!
//! The cases that arm fail points need `--features failpoints` (as `make test` runs).
mod support;

#[path = "mysql_sink/harness.rs"]
mod harness;

#[path = "clickhouse_sink/common.rs"]
mod common;

#[cfg(feature = "failpoints")]
use std::io::Write;
#[cfg(feature = "failpoints")]
use std::time::Duration;

#[cfg(feature = "failpoints")]
use common::cursor_of;
use common::{connect, run, sink_at};
use harness::{batch, ids, wal, LANE_A};
#[cfg(feature = "failpoints")]
use harness::{row, TestRow};
use psc::clickhouse::schema;
#[cfg(feature = "failpoints")]
use psc::clickhouse::ClickHouseConn;
#[cfg(feature = "failpoints")]
use psc::failpoint::{arm, Spec};
#[cfg(feature = "failpoints")]
use psc::sink::{Batch, SinkConn, SinkCursor, SinkError};
use psc::wal::Position;
use support::clickhouse::ClickHouse;

#[cfg(feature = "failpoints")]
/// Delivers `b` with the fail point `point` armed: the delivery ends in doubt there.
async fn deliver_in_doubt(conn: &mut ClickHouseConn, b: &Batch, point: &str) {
    let _armed = arm(point, Spec::errno(libc::EIO).times(1));
    let result = conn.deliver(&wal(), b).await;
    assert!(matches!(result, Err(SinkError::InDoubt(_))), "{point}: {result:?}");
}

#[cfg(feature = "failpoints")]
#[test]
fn a_commit_in_doubt_is_settled_by_the_cursors_and_a_redelivery_adds_nothing() {
    let mut ch = ClickHouse::start();
    let (sink, stats) = sink_at(&ch.url);
    run(async {
        // The rows went in, the answer "was lost": the cursor says so, a resend is fenced.
        let first = batch(LANE_A, Position::new(1, 0), &ids(1..6));
        deliver_in_doubt(&mut connect(&sink).await, &first, "clickhouse.after_events").await;
        let mut conn = connect(&sink).await;
        assert_eq!(cursor_of(&mut conn).await, vec![SinkCursor { lane: LANE_A, position: first.to() }]);
        assert!(matches!(conn.deliver(&wal(), &first).await, Err(SinkError::Fenced { .. })));

        // The step is in, its rows were never sent: the cursor stays, the resend lands.
        let second = batch(LANE_A, first.to(), &ids(6..9));
        deliver_in_doubt(&mut connect(&sink).await, &second, "clickhouse.before_events").await;
        let mut conn = connect(&sink).await;
        assert_eq!(cursor_of(&mut conn).await[0].position, first.to(), "not committed");
        conn.deliver(&wal(), &second).await.unwrap();
    });
    // A server crash right after a commit: the part survives, the cursor still says so.
    ch.kill9();
    ch.launch();
    let third_from = run(async { cursor_of(&mut connect(&sink).await).await[0].position });
    assert_eq!(ch.count("SELECT count() FROM psc.events"), 8, "5 + 3 rows, each once");
    assert_eq!(ch.count("SELECT count() FROM (SELECT wal_end, count() AS n FROM psc.events GROUP BY wal_end HAVING n > 1)"), 0);
    assert_eq!(third_from, Position::new(1, 800));
    assert!(stats.snapshot().probes >= 2, "cursor reads after the doubt probed the steps");
}

#[cfg(feature = "failpoints")]
#[test]
fn the_cursors_wait_for_an_insert_still_running() {
    let ch = ClickHouse::start();
    let (sink, _) = sink_at(&ch.url);
    // Over 1 MiB: the server reads a body in 1 MiB buffers and starts the query after the
    // first, so it runs while the rest is on its way.
    let rows: Vec<TestRow> = (1..4001).map(|i| TestRow { ua: Some("U".repeat(300)), ..row(i) }).collect();
    let b = batch(LANE_A, Position::new(1, 0), &rows);
    run(async { deliver_in_doubt(&mut connect(&sink).await, &b, "clickhouse.before_events").await });
    // The step is in; now its rows arrive "late", from another connection, slowly.
    let block = psc::clickhouse::rows::events_block(&wal(), &b, 0..b.len(), Vec::new()).unwrap();
    let query_id = format!("psc-{}-0-{:016x}-1-0", wal().wal, LANE_A.incarnation);
    let insert = schema::insert_statement("psc", "events", schema::EVENTS);
    let target = format!("/?query={}&query_id={query_id}", insert.replace(' ', "%20").replace('`', "%60"));
    let head = format!("POST {target} HTTP/1.0\r\nContent-Length: {}\r\n\r\n", block.len());
    let addr = ("127.0.0.1", ch.http_port);
    let mut late = std::net::TcpStream::connect(addr).unwrap();
    late.write_all(head.as_bytes()).unwrap();
    late.write_all(&block[..block.len() - 10]).unwrap();
    let running = format!("SELECT count() FROM system.processes WHERE query_id = '{query_id}'");
    support::wait_for("the late INSERT to run", Duration::from_secs(20), || ch.count(&running) == 1);
    let started = std::time::Instant::now();
    let finisher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        late.write_all(&block[block.len() - 10..]).unwrap();
        late
    });
    let seen = run(async { cursor_of(&mut connect(&sink).await).await });
    drop(finisher.join().unwrap());
    assert_eq!(seen, vec![SinkCursor { lane: LANE_A, position: b.to() }], "the late rows count");
    assert!(started.elapsed() >= Duration::from_millis(1400), "the read waited: {:?}", started.elapsed());
    assert_eq!(ch.count("SELECT count() FROM psc.events"), 4000);
}

#[test]
fn a_native_body_cut_short_inserts_nothing() {
    let ch = ClickHouse::start();
    let (sink, _) = sink_at(&ch.url);
    run(async { drop(connect(&sink).await) });
    let b = batch(LANE_A, Position::new(1, 0), &ids(1..50));
    let block = psc::clickhouse::rows::events_block(&wal(), &b, 0..b.len(), Vec::new()).unwrap();
    let insert = schema::insert_statement("psc", "events", schema::EVENTS);
    let target = format!("/?query={}", insert.replace(' ', "%20").replace('`', "%60"));
    let head = format!("POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", block.len());
    // Cut at many places, row boundaries of the last column among them: never a prefix.
    let last_column_start = block.len() - 8 * b.len();
    let cuts = [
        1,
        10,
        block.len() / 2,
        last_column_start,
        last_column_start + 8 * 20,
        block.len() - 8,
        block.len() - 1,
    ];
    for cut in cuts {
        ch.send_cut(&head, &block, cut);
    }
    assert_eq!(ch.count("SELECT count() FROM psc.events"), 0, "no cut body inserted a row");
    ch.send_cut(&head, &block, block.len());
    assert_eq!(ch.count("SELECT count() FROM psc.events"), 49);
}

/// A delivery loop like the core's: batches from the cursor; after any failure, reconnect,
/// read the cursors, go on from there. It delivers at least `min_total` rows, and goes on
/// while `busy` is set. Returns (rows delivered, failed deliveries).
#[cfg(feature = "failpoints")]
async fn deliver_until(
    sink: &psc::clickhouse::ClickHouseSink,
    min_total: u64,
    batch_rows: u64,
    busy: &std::sync::atomic::AtomicBool,
) -> (u64, u64) {
    use psc::sink::Sink;
    use std::sync::atomic::Ordering;
    let mut failures = 0;
    let mut conn: Option<ClickHouseConn> = None;
    let mut next = 1; // file_id of the next row; row f ends at offset 100 * f
    let mut total = min_total;
    while next <= total {
        let Some(c) = conn.as_mut() else {
            match sink.connect().await {
                Ok(mut c) => {
                    let at = c.cursors(&wal()).await.ok().and_then(|v| v.first().map(|s| s.position));
                    if let Some(at) = at {
                        next = at.offset / 100 + 1;
                    }
                    conn = Some(c);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
            continue;
        };
        if busy.load(Ordering::Relaxed) {
            total = total.max(next + batch_rows);
        }
        let last = (next + batch_rows).min(total + 1);
        let b = batch(LANE_A, Position::new(1, 100 * (next - 1)), &ids(next..last));
        match c.deliver(&wal(), &b).await {
            Ok(()) => next = last,
            Err(_) => {
                failures += 1;
                conn = None;
            }
        }
    }
    (total, failures)
}

#[cfg(feature = "failpoints")]
#[test]
fn a_server_killed_five_times_under_load_loses_and_duplicates_nothing() {
    let ch = std::sync::Arc::new(std::sync::Mutex::new(ClickHouse::start()));
    let url = ch.lock().unwrap().url.clone();
    let (sink, _) = sink_at(&url);
    // The loop keeps delivering until the last kill is over, however fast it is.
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let killer = {
        let (ch, busy) = (ch.clone(), busy.clone());
        std::thread::spawn(move || {
            for pause_ms in [300, 450, 200, 600, 350] {
                std::thread::sleep(Duration::from_millis(pause_ms));
                let mut server = ch.lock().unwrap();
                server.kill9();
                server.launch();
            }
            std::thread::sleep(Duration::from_millis(300));
            busy.store(false, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let (total, failures) = run(deliver_until(&sink, 60_000, 1500, &busy));
    killer.join().unwrap();
    let ch = ch.lock().unwrap();
    assert_eq!(ch.count("SELECT count() FROM psc.events"), total, "{failures} failed deliveries");
    assert_eq!(ch.count("SELECT count() FROM (SELECT DISTINCT wal_end FROM psc.events)"), total);
    assert_eq!(ch.count("SELECT max(file_id) FROM psc.events"), total);
    assert!(failures >= 3, "the kills hit deliveries under way: {failures} failed");
}
