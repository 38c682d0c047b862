//! Helpers of the MySQL sink tests (tests/mysql_*.rs): a sink on a private server, test
//! batches, a runtime. Included with `#[path]`, so each test file compiles its own copy.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;

use psc::config::{DomainsConfig, MysqlConfig};
use psc::country::Country;
use psc::event_id::EventId;
use psc::mysql::{MysqlConn, MysqlSink, MysqlStats};
use psc::rollup::RollupConfig;
use psc::sink::{Batch, Sink};
use psc::wal::identity::{LaneId, WalId, WalIdentity};
use psc::wal::record::{DecodedContext, Event};
use psc::wal::Position;

pub const LANE_A: LaneId = LaneId { core: 0, incarnation: 0x1111_2222_3333_4444 };
pub const LANE_B: LaneId = LaneId { core: 1, incarnation: 0xaaaa_bbbb_cccc_dddd };
/// 2025-11-23 18:39:30.000 UTC.
pub const BASE_TS_MS: u64 = 1_763_923_170_000;

pub fn wal() -> WalIdentity {
    WalIdentity { node: "node-a".into(), wal: WalId(0x0123_4567_89ab_cdef_0011_2233_4455_6677) }
}

pub fn run<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

pub fn sink_at(url: &str) -> (MysqlSink, Arc<MysqlStats>) {
    sink_with(MysqlConfig { url: url.to_owned(), ..MysqlConfig::default() }, &[])
}

pub fn sink_with(config: MysqlConfig, rollups: &[RollupConfig]) -> (MysqlSink, Arc<MysqlStats>) {
    let stats = Arc::new(MysqlStats::default());
    (MysqlSink::new(&config, &DomainsConfig::default(), rollups, stats.clone()), stats)
}

pub async fn connect(sink: &MysqlSink) -> MysqlConn {
    sink.connect().await.unwrap_or_else(|e| panic!("connect to {}: {e}", sink.describe()))
}

/// A row of a test batch.
pub struct TestRow {
    pub file_id: u64,
    pub ts_ms: u64,
    pub event: String,
    pub domain: String,
    pub ip: Option<String>,
    pub ua: Option<String>,
    pub referer: Option<String>,
    pub extra: Option<String>,
    /// The client's event id, as 16 bytes.
    pub event_id: Option<[u8; 16]>,
    pub country: Option<&'static str>,
}

/// Row `file_id`: a play at BASE + file_id ms on one of three domains, no client context.
pub fn row(file_id: u64) -> TestRow {
    TestRow {
        file_id,
        ts_ms: BASE_TS_MS + file_id,
        event: "play".into(),
        domain: format!("d{}.example.org", file_id % 3),
        ip: None,
        ua: None,
        referer: None,
        extra: None,
        event_id: None,
        country: None,
    }
}

pub fn ids(range: std::ops::Range<u64>) -> Vec<TestRow> {
    range.map(row).collect()
}

/// A batch of `rows` for `lane` from `from`; row i's raw line is `raw <file_id>\n` and each
/// record is 100 bytes further on.
pub fn batch(lane: LaneId, from: Position, rows: &[TestRow]) -> Batch {
    let mut b = Batch::new(lane, 0, from);
    for (i, r) in rows.iter().enumerate() {
        let ev = Event { ts_ms: r.ts_ms, event: &r.event, domain: &r.domain, file_id: r.file_id };
        let ctx = DecodedContext {
            ip: r.ip.as_deref(),
            ua: r.ua.as_deref().map(Into::into),
            referer_host: r.referer.as_deref(),
            extra: r.extra.as_deref().map(Into::into),
            event_id: r.event_id.map(EventId::from_bytes),
            country: r.country.and_then(Country::parse),
        };
        let raw = format!("raw {}\n", r.file_id);
        let end = Position::new(from.segment, from.offset + 100 * (i as u64 + 1));
        b.push(&ev, &ctx, raw.as_bytes(), end);
    }
    b
}
