//! The ClickHouse sink's side of a `/metrics` scrape (`crate::clickhouse::ClickhouseStats`,
//! summed over the shards): copied once per scrape, then encoded beside the rest
//! (`super::exposition`). Present only when `sink.kind = "clickhouse"`.

use prometheus_client::encoding::DescriptorEncoder;

use super::encode::{counter, family, R};
use crate::clickhouse::ClickhouseSnapshot;
use prometheus_client::metrics::MetricType;

/// (name, help, value) of each counter of a snapshot.
fn counters(s: &ClickhouseSnapshot) -> [(&'static str, &'static str, u64); 12] {
    [
        (
            "ingest_clickhouse_connects",
            "Connects to a ClickHouse server (each checks the schema)",
            s.connects,
        ),
        ("ingest_clickhouse_blocks", "events blocks committed (one part each)", s.blocks),
        ("ingest_clickhouse_rows", "events rows committed", s.rows),
        ("ingest_clickhouse_block_bytes", "Bytes of committed events blocks (Native)", s.block_bytes),
        ("ingest_clickhouse_rollup_rows", "Rollup count rows committed (markers not counted)", s.rollup_rows),
        ("ingest_clickhouse_steps", "ingest_cursors step rows written", s.steps),
        ("ingest_clickhouse_probes", "Probes of a step's rows after a doubt or a reconnect", s.probes),
        (
            "ingest_clickhouse_fenced",
            "Deliveries fenced: the lane's cursor was not the batch's start",
            s.fenced,
        ),
        ("ingest_clickhouse_in_doubt", "Writes whose outcome was unknown (settled by a probe)", s.in_doubt),
        ("ingest_clickhouse_refused", "events blocks refused by the server", s.refused),
        ("ingest_clickhouse_rejected_rows", "Rows written to ingest_rejects", s.rejected_rows),
        (
            "ingest_clickhouse_schema_errors",
            "Failures because a table does not fit; an operator has to look",
            s.schema_errors,
        ),
    ]
}

pub fn encode(e: &mut DescriptorEncoder, s: &ClickhouseSnapshot) -> R {
    for (name, help, value) in counters(s) {
        counter(e, name, help, None, value)?;
    }
    let version = std::iter::once((s.server_version.clone(), 1)).filter(|(v, _)| !v.is_empty());
    family(
        e,
        MetricType::Gauge,
        ("ingest_clickhouse_server", "1, labelled with version() of the server last connected", "version"),
        version,
    )
}
