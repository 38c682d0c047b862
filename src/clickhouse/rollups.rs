//! The ClickHouse side of rollups (`crate::rollup`): one `rollup_<name>` table per configured
//! rollup, checked at connect, and the block one delivery step writes into it.
//!
//! - **Table:** the bucket start, in a column named after the width (`minute`, `hour` or
//!   `day`, `DateTime('UTC')`); one column per dimension, in the configured order (`event`,
//!   `domain`, `file_id`, `client_ip` as 16 bytes, `user_agent`, `referer_host`; empty or zero
//!   when a row lacks the value); `events`; and the two marker columns `steps` and `step`.
//!   `SummingMergeTree((events, steps))`, partitioned by month, ordered by
//!   `(step, <bucket>, dimensions…)`.
//! - **The definition is the column list** (names and types, in order), so a table of another
//!   bucket or other dimensions is told apart by `system.columns`. At connect such a table is
//!   dropped and created again if it is empty, and refused while it holds rows: counts of two
//!   definitions never mix in one table.
//! - **Exact without `FINAL`.** A step's block is one INSERT of rows that all fall into one
//!   month (the bucket of a row is in the month of the row, and a step's rows are one run of
//!   `super::rows::runs`): one part, all or nothing. Beside its counts it carries one *marker*
//!   row: `step` = the step's name ([`marker`]: WAL id, lane, end position), every key column
//!   empty, `events` 0, `steps` 1. Count rows have `step = ''`. The marker's key is unique, so
//!   no merge folds it into another row, and its `steps` is 1, so the SummingMergeTree rule
//!   "a row whose summed columns are all zero is deleted" never drops it. The probe
//!   `count() WHERE step = <name>` therefore finds the marker iff the block is in, before and
//!   after any merge, which is what `super::notes` needs to settle a step. No block is ever
//!   inserted twice, so `sum(events)` over the parts is exact whether or not they are merged.
//! - **Reading:** `SELECT minute, file_id, sum(events) … WHERE step = '' GROUP BY …`. The
//!   filter only leaves out the markers, which add 0 to any sum.

use super::native::NativeBlock;
use super::rows::{ip_bytes, split_ts};
use super::schema::{col, create_table, Column};
use crate::rollup::{Bucket, Count, Dimension, RollupConfig};
use crate::wal::identity::{LaneId, WalIdentity};
use crate::wal::Position;

/// `rollup_<name>`, as in MySQL.
pub fn table_name(r: &RollupConfig) -> String {
    format!("rollup_{}", r.name)
}

fn bucket_column(b: Bucket) -> Column {
    match b {
        Bucket::Minute => col("minute", "DateTime('UTC')", "Start of the minute counted, UTC"),
        Bucket::Hour => col("hour", "DateTime('UTC')", "Start of the hour counted, UTC"),
        Bucket::Day => col("day", "DateTime('UTC')", "Start of the day counted, UTC"),
    }
}

fn dimension_column(d: Dimension) -> Column {
    match d {
        Dimension::Event => col("event", "String", "Event name"),
        Dimension::Domain => col("domain", "String", "Lower-case host name the player ran on"),
        Dimension::FileId => col("file_id", "UInt64", "File played"),
        Dimension::ClientIp => {
            col("client_ip", "FixedString(16)", "Client address as IPv6 (IPv4 mapped); zero = not stored")
        }
        Dimension::UserAgent => col("user_agent", "String", "User-Agent; empty = not stored"),
        Dimension::RefererHost => col("referer_host", "String", "Host of the Referer; empty = not stored"),
    }
}

/// The table's columns, in order: bucket, dimensions, `events`, `steps`, `step`.
pub fn columns(r: &RollupConfig) -> Vec<Column> {
    let mut out = vec![bucket_column(r.bucket)];
    out.extend(r.dimensions.iter().map(|&d| dimension_column(d)));
    out.push(col("events", "UInt64", "Events counted for the key in the bucket; sum() it"));
    out.push(col("steps", "UInt64", "1 on a step's marker row, 0 on count rows"));
    out.push(col(
        "step",
        "String",
        "Marker rows only: the delivery step (WAL id/core/incarnation/segment/offset)",
    ));
    out
}

/// `CREATE TABLE IF NOT EXISTS` of `r`'s table.
pub fn create_statement(db: &str, r: &RollupConfig) -> String {
    let bucket = bucket_column(r.bucket).name;
    let mut key = vec!["step", bucket];
    key.extend(r.dimensions.iter().map(|&d| dimension_column(d).name));
    let engine = format!(
        "ENGINE = SummingMergeTree((events, steps)) PARTITION BY toYYYYMM({bucket}) ORDER BY ({})",
        key.join(", ")
    );
    create_table(db, &table_name(r), &columns(r), &engine)
}

/// The query of a table's columns as `name\ttype` lines, in table order.
pub fn shape_query(db: &str, r: &RollupConfig) -> String {
    format!(
        "SELECT name, type FROM system.columns WHERE database = '{db}' AND table = '{}' FORMAT TabSeparated",
        table_name(r)
    )
}

/// Whether the answer of [`shape_query`] is `r`'s definition. TabSeparated escapes the
/// quotes of `DateTime('UTC')`; the spec is escaped the same way to compare.
pub fn has_shape(r: &RollupConfig, answer: &[u8]) -> bool {
    let want: Vec<String> =
        columns(r).iter().map(|c| format!("{}\t{}", c.name, c.ty.replace('\'', "\\'"))).collect();
    let got: Vec<&str> = std::str::from_utf8(answer).unwrap_or("").lines().collect();
    got == want
}

/// The name a step's marker row carries: unique per step of a lane, since a lane's steps
/// end at strictly increasing positions.
pub fn marker(wal: &WalIdentity, lane: LaneId, to: Position) -> String {
    format!("{}/{}/{}/{}/{}", wal.wal, lane.core, lane.incarnation, to.segment, to.offset)
}

/// The block of `counts` (not empty, all in one month) with the marker row `marker` last,
/// under the columns `spec` of `r` ([`columns`]).
pub fn block<'b>(
    r: &RollupConfig,
    spec: &[Column],
    counts: &[Count<'b>],
    marker: &str,
) -> Result<Vec<u8>, String> {
    let last_bucket = counts.last().map_or(0, |c| c.key.bucket_start_ms);
    let mut b = NativeBlock::new(spec, counts.len() + 1, Vec::new());
    let buckets = counts.iter().map(|c| c.key.bucket_start_ms).chain([last_bucket]);
    b.fixed(buckets.map(|ms| split_ts(ms).0.to_le_bytes()));
    let text = |get: fn(&Count<'b>) -> Option<&'b str>| {
        counts.iter().map(move |c| get(c).unwrap_or("").as_bytes()).chain([&b""[..]])
    };
    for &d in &r.dimensions {
        match d {
            Dimension::Event => b.strings(text(|c| c.key.event)),
            Dimension::Domain => b.strings(text(|c| c.key.domain)),
            Dimension::UserAgent => b.strings(text(|c| c.key.user_agent)),
            Dimension::RefererHost => b.strings(text(|c| c.key.referer_host)),
            Dimension::FileId => {
                b.fixed(counts.iter().map(|c| c.key.file_id.unwrap_or(0)).chain([0]).map(u64::to_le_bytes))
            }
            Dimension::ClientIp => b.fixed(counts.iter().map(|c| ip_bytes(c.key.client_ip)).chain([[0; 16]])),
        }
    }
    b.fixed(counts.iter().map(|c| c.events).chain([0]).map(u64::to_le_bytes));
    b.fixed(counts.iter().map(|_| 0u64).chain([1]).map(u64::to_le_bytes));
    b.strings(counts.iter().map(|_| &b""[..]).chain([marker.as_bytes()]));
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollup::aggregate;
    use crate::sink::Batch;
    use crate::wal::identity::WalId;
    use crate::wal::record::{DecodedContext, Event};

    fn plays() -> RollupConfig {
        RollupConfig {
            name: "plays".into(),
            bucket: Bucket::Minute,
            dimensions: vec![Dimension::FileId, Dimension::ClientIp, Dimension::Domain],
        }
    }

    #[test]
    fn the_table_is_keyed_by_marker_bucket_and_dimensions() {
        let sql = create_statement("psc", &plays());
        assert!(
            sql.starts_with("CREATE TABLE IF NOT EXISTS `psc`.`rollup_plays` (`minute` DateTime('UTC')"),
            "{sql}"
        );
        assert!(sql.ends_with(
            "ENGINE = SummingMergeTree((events, steps)) PARTITION BY toYYYYMM(minute) \
             ORDER BY (step, minute, file_id, client_ip, domain)"
        ));
        let shape =
            "minute\tDateTime(\\'UTC\\')\nfile_id\tUInt64\nclient_ip\tFixedString(16)\ndomain\tString\n\
                     events\tUInt64\nsteps\tUInt64\nstep\tString\n";
        assert!(has_shape(&plays(), shape.as_bytes()));
        let hourly = RollupConfig { bucket: Bucket::Hour, ..plays() };
        assert!(!has_shape(&hourly, shape.as_bytes()), "another bucket is another definition");
        assert!(!has_shape(&plays(), b""));
    }

    #[test]
    fn a_block_is_the_counts_then_the_marker() {
        let mut batch = Batch::new(LaneId { core: 1, incarnation: 2 }, 0, Position::new(1, 0));
        for (i, file_id) in [7u64, 7, 8].into_iter().enumerate() {
            let ev = Event { ts_ms: 61_000 + i as u64, event: "play", domain: "a.org", file_id };
            let ctx = DecodedContext { ip: Some("10.0.0.1"), ..Default::default() };
            batch.push(&ev, &ctx, b"raw\n", Position::new(1, 10 * (i as u64 + 1)));
        }
        let r = plays();
        let counts = aggregate(&r, &batch, 0..3);
        let spec = columns(&r);
        let wal = WalIdentity { node: "n".into(), wal: WalId(9) };
        let name = marker(&wal, batch.lane(), batch.to());
        assert!(name.ends_with("/1/2/1/30"), "{name}");
        let out = block(&r, &spec, &counts, &name).unwrap();
        assert_eq!(out[..2], [spec.len() as u8, 3], "two keys and the marker");
        assert!(out.ends_with(name.as_bytes()));
        let narrow = columns(&RollupConfig { dimensions: vec![], ..r.clone() });
        assert!(block(&r, &narrow, &counts, &name).is_err(), "checked against its spec");
    }
}
