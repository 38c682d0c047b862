//! Helpers of the ClickHouse sink tests (tests/clickhouse_*.rs): a sink on a private server,
//! connections, cursor reads, a runtime that bounds each test. Included with `#[path]`.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use psc::clickhouse::{ClickHouseConn, ClickHouseSink, ClickhouseConfig, ClickhouseStats};
use psc::rollup::RollupConfig;
use psc::sink::{Sink, SinkConn, SinkCursor};

use super::harness::{self, wal};

/// Longest any one test's async part may take.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

pub fn run<F: Future>(f: F) -> F::Output {
    harness::run(async { tokio::time::timeout(TEST_TIMEOUT, f).await.expect("test timed out") })
}

pub fn sink_at(url: &str) -> (ClickHouseSink, Arc<ClickhouseStats>) {
    sink_with(url, ClickhouseConfig::default())
}

pub fn sink_with(url: &str, config: ClickhouseConfig) -> (ClickHouseSink, Arc<ClickhouseStats>) {
    sink_with_rollups(url, config, &[])
}

pub fn sink_with_rollups(
    url: &str,
    config: ClickhouseConfig,
    rollups: &[RollupConfig],
) -> (ClickHouseSink, Arc<ClickhouseStats>) {
    let config = ClickhouseConfig { query_timeout_ms: 10_000, connect_timeout_ms: 2000, ..config };
    let stats = Arc::new(ClickhouseStats::default());
    (ClickHouseSink::new(&config, url, rollups, stats.clone()).expect("valid sink config"), stats)
}

pub async fn connect(sink: &ClickHouseSink) -> ClickHouseConn {
    sink.connect().await.unwrap_or_else(|e| panic!("connect to {}: {e}", sink.describe()))
}

pub async fn cursor_of(conn: &mut ClickHouseConn) -> Vec<SinkCursor> {
    let mut cursors = conn.cursors(&wal()).await.expect("cursors");
    cursors.sort_by_key(|c| c.lane);
    cursors
}
