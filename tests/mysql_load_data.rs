//! The two ways event rows reach MySQL, against a private MariaDB: LOAD DATA LOCAL streamed
//! from memory and multi-row INSERT. Property test: any text a field can hold (tab, newline,
//! backslash, quotes, NUL, CR, 0x1A, the words NULL and \N, any Unicode) and any IP arrive
//! byte-identical through both, as MariaDB itself reads them back. Then the fallback: a server
//! with `local_infile` off makes the sink use INSERT (and say so); a server that refuses LOAD
//! DATA in the middle of a run makes the next connection use INSERT.
mod support;

#[path = "mysql_sink/harness.rs"]
mod harness;

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::atomic::Ordering;

use harness::{batch, connect, ids, run, sink_with, wal, TestRow, LANE_A, LANE_B};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use psc::config::MysqlConfig;
use psc::mysql::config::Method;
use psc::sink::{SinkConn, SinkError};
use psc::wal::Position;
use support::MariaDb;

/// Cases of the property test; each is one batch per method.
const CASES: u32 = 48;

/// Text that stresses TSV and SQL quoting: specials, then any characters.
fn nasty_text(max: usize) -> impl Strategy<Value = String> {
    let special = prop::sample::select(vec![
        "\t", "\n", "\\", "'", "\"", "\0", "\r", "\x1a", "NULL", "\\N", "\\t", "é", "😀", " ",
    ]);
    let piece = prop_oneof![special.prop_map(str::to_owned), any::<char>().prop_map(String::from)];
    prop::collection::vec(piece, 0..24).prop_map(move |p| {
        let mut s: String = p.concat();
        while s.chars().count() > max {
            s.pop();
        }
        s
    })
}

/// ASCII (the referer column is ascii), control characters included.
fn nasty_ascii(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(0u8..128, 0..max).prop_map(|b| b.into_iter().map(char::from).collect())
}

#[derive(Debug, Clone)]
struct Fields {
    extra: Option<String>,
    referer: Option<String>,
    ip: Option<IpAddr>,
}

fn fields() -> impl Strategy<Value = Fields> {
    (prop::option::of(nasty_text(200)), prop::option::of(nasty_ascii(60)), prop::option::of(any::<IpAddr>()))
        .prop_map(|(extra, referer, ip)| Fields { extra, referer, ip })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The rows as MariaDB reads them back: (file_id, HEX(client_ip), HEX(referer), HEX(extra)),
/// NULL as "NULL".
fn stored(db: &MariaDb, first: u64, n: u64) -> Vec<Vec<String>> {
    db.query_rows(&format!(
        "SELECT file_id, COALESCE(HEX(client_ip), 'NULL'), COALESCE(HEX(referer_host), 'NULL'), \
         COALESCE(HEX(extra), 'NULL') FROM events WHERE file_id >= {first} AND file_id < {} ORDER BY file_id",
        first + n
    ))
}

fn expected(first: u64, cases: &[Fields]) -> Vec<Vec<String>> {
    let or_null = |v: Option<Vec<u8>>| v.map_or("NULL".to_owned(), |b| hex(&b));
    cases
        .iter()
        .enumerate()
        .map(|(i, f)| {
            vec![
                (first + i as u64).to_string(),
                or_null(f.ip.map(ip_bytes)),
                or_null(f.referer.as_ref().map(|s| s.as_bytes().to_vec())),
                or_null(f.extra.as_ref().map(|s| s.as_bytes().to_vec())),
            ]
        })
        .collect()
}

fn rows_of(first: u64, cases: &[Fields]) -> Vec<TestRow> {
    cases
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut r = harness::row(first + i as u64);
            r.ip = f.ip.map(|ip| ip.to_string());
            r.referer = f.referer.clone();
            r.extra = f.extra.clone();
            r
        })
        .collect()
}

#[test]
fn every_byte_a_field_can_hold_arrives_identical_by_load_data_and_by_insert() {
    let db = MariaDb::start();
    let method = |method| MysqlConfig { url: db.url.clone(), method, ..MysqlConfig::default() };
    let (load_sink, _) = sink_with(method(Method::LoadData), &[]);
    let (insert_sink, _) = sink_with(method(Method::Insert), &[]);
    let cursors = [Cell::new(Position::new(1, 0)), Cell::new(Position::new(1, 0))];
    let next_id = Cell::new(1u64);
    let mut runner = TestRunner::new(ProptestConfig { cases: CASES, ..ProptestConfig::default() });
    let strategy = prop::collection::vec(fields(), 1..8);
    let result = runner.run(&strategy, |cases| {
        for (k, (sink, lane, want)) in
            [(&load_sink, LANE_A, Method::LoadData), (&insert_sink, LANE_B, Method::Insert)]
                .into_iter()
                .enumerate()
        {
            let first = next_id.get();
            next_id.set(first + cases.len() as u64);
            let b = batch(lane, cursors[k].get(), &rows_of(first, &cases));
            run(async {
                let mut conn = connect(sink).await;
                assert_eq!(conn.method(), want);
                conn.deliver(&wal(), &b).await
            })
            .map_err(|e| TestCaseError::fail(format!("{want:?}: {e}")))?;
            cursors[k].set(b.to());
            prop_assert_eq!(stored(&db, first, cases.len() as u64), expected(first, &cases), "{:?}", want);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn a_server_without_local_infile_gets_inserts_and_a_refusal_mid_run_falls_back() {
    let db = MariaDb::start();
    let config = MysqlConfig { url: db.url.clone(), method: Method::LoadData, ..MysqlConfig::default() };
    let (sink, stats) = sink_with(config.clone(), &[]);
    db.query_rows("SET GLOBAL local_infile = 0");
    let first = batch(LANE_A, Position::new(1, 0), &ids(1..4));
    run(async {
        let mut conn = connect(&sink).await;
        assert_eq!(conn.method(), Method::Insert, "local_infile off: INSERT");
        conn.deliver(&wal(), &first).await.unwrap();
    });
    assert!(!stats.load_data.load(Ordering::Relaxed));

    // A fresh sink on a server that allows it, then refuses it under our feet.
    db.query_rows("SET GLOBAL local_infile = 1");
    let (sink, stats) = sink_with(config, &[]);
    let second = batch(LANE_A, first.to(), &ids(4..7));
    run(async {
        let mut conn = connect(&sink).await;
        assert_eq!(conn.method(), Method::LoadData);
        db.query_rows("SET GLOBAL local_infile = 0");
        let refused = conn.deliver(&wal(), &second).await;
        assert!(matches!(refused, Err(SinkError::Unavailable(_))), "{refused:?}");
        db.query_rows("SET GLOBAL local_infile = 1");
        let mut conn = connect(&sink).await;
        assert_eq!(conn.method(), Method::Insert, "refused once: INSERT until restart");
        conn.deliver(&wal(), &second).await.unwrap();
    });
    assert_eq!(stats.load_data_fallbacks.load(Ordering::Relaxed), 1);
    assert_eq!(db.query_count("SELECT COUNT(*) FROM events"), 6);
    assert_eq!(db.query_count("SELECT COUNT(DISTINCT file_id) FROM events"), 6);
}
