//! Rollups: events counted per time bucket and per key of chosen dimensions, written in the
//! same transaction (or atomic block) as the lane's cursor, so the counts are exact across
//! crashes, replays and retries. This module is sink-neutral: the definitions (`[[rollup]]`
//! in the config) and the pure per-batch aggregation; each sink turns counts into its own
//! upsert (`crate::mysql::rollups`, and the ClickHouse sink may reuse the same counts).
//!
//! ```toml
//! [[rollup]]
//! name = "plays_per_file"      # table rollup_plays_per_file; [a-z0-9_], 1..=48 bytes
//! bucket = "minute"            # minute | hour | day (UTC)
//! dimensions = ["event", "domain", "file_id"]
//! ```
//!
//! Invariants:
//! - a rollup's *definition* ([`RollupConfig::definition`]) is its bucket and its dimensions
//!   in the configured order; a table holds counts of one definition only (the sink refuses
//!   to start on a table with rows of another one);
//! - [`aggregate`] counts every row of the batch exactly once, under the key of its bucket and
//!   dimension values; it returns keys in one total order, so concurrent transactions upsert
//!   shared keys in the same order (no deadlock between lanes, only waits);
//! - a dimension the rollup does not have is `None` in every key; a selected dimension the
//!   row lacks (no client context) is `None` too, which sinks store as an empty value.
//!
//! `extra` (kept query parameters, up to 1 KiB of JSON) is not a dimension: it is unbounded in
//! shape and too wide for a key.

use std::collections::HashMap;
use std::ops::Range;

use serde::Deserialize;

use crate::invalid::InvalidKey;
use crate::sink::Batch;

/// Longest rollup name: `rollup_` + 48 fits MySQL's 64-character table names.
pub const NAME_BYTES_MAX: usize = 48;

/// What a rollup can be keyed by, besides its time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    Event,
    Domain,
    FileId,
    ClientIp,
    UserAgent,
    RefererHost,
}

impl Dimension {
    /// The name in the config and in a stored definition.
    pub fn name(self) -> &'static str {
        match self {
            Dimension::Event => "event",
            Dimension::Domain => "domain",
            Dimension::FileId => "file_id",
            Dimension::ClientIp => "client_ip",
            Dimension::UserAgent => "user_agent",
            Dimension::RefererHost => "referer_host",
        }
    }
}

/// The width of a rollup's time buckets (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    Minute,
    Hour,
    Day,
}

impl Bucket {
    pub fn millis(self) -> u64 {
        match self {
            Bucket::Minute => 60_000,
            Bucket::Hour => 3_600_000,
            Bucket::Day => 86_400_000,
        }
    }

    /// Start of the bucket holding `ts_ms`, ms since the epoch.
    pub fn start_ms(self, ts_ms: u64) -> u64 {
        ts_ms - ts_ms % self.millis()
    }

    pub fn name(self) -> &'static str {
        match self {
            Bucket::Minute => "minute",
            Bucket::Hour => "hour",
            Bucket::Day => "day",
        }
    }
}

/// One `[[rollup]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollupConfig {
    /// `[a-z0-9_]`, 1..=48 bytes; the table is `rollup_<name>`.
    pub name: String,
    /// `minute`, `hour` or `day`.
    pub bucket: Bucket,
    /// Any subset of event, domain, file_id, client_ip, user_agent, referer_host, in the
    /// order of the table's key. Empty: one count per bucket.
    pub dimensions: Vec<Dimension>,
}

impl RollupConfig {
    pub fn has(&self, d: Dimension) -> bool {
        self.dimensions.contains(&d)
    }

    /// The definition as stored next to the counts: `bucket=minute dimensions=event,domain`.
    pub fn definition(&self) -> String {
        let dims: Vec<&str> = self.dimensions.iter().map(|d| d.name()).collect();
        format!("bucket={} dimensions={}", self.bucket.name(), dims.join(","))
    }

    fn validate(&self) -> Result<(), InvalidKey> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= NAME_BYTES_MAX
            && self.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            return InvalidKey::err(
                "rollup.name",
                format!("`{}` must be [a-z0-9_], 1..=48 bytes", self.name),
            );
        }
        for (i, d) in self.dimensions.iter().enumerate() {
            if self.dimensions[..i].contains(d) {
                return InvalidKey::err(
                    "rollup.dimensions",
                    format!("rollup `{}` lists `{}` twice", self.name, d.name()),
                );
            }
        }
        Ok(())
    }
}

/// Checks every `[[rollup]]` entry and that names are unique.
pub fn validate(rollups: &[RollupConfig]) -> Result<(), InvalidKey> {
    for (i, r) in rollups.iter().enumerate() {
        r.validate()?;
        if rollups[..i].iter().any(|o| o.name == r.name) {
            return InvalidKey::err("rollup.name", format!("two rollups are named `{}`", r.name));
        }
    }
    Ok(())
}

/// A rollup key: the bucket and the row's values of the rollup's dimensions (module doc).
/// Field order is the sort order of [`aggregate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key<'b> {
    pub bucket_start_ms: u64,
    pub event: Option<&'b str>,
    pub domain: Option<&'b str>,
    pub file_id: Option<u64>,
    pub client_ip: Option<&'b str>,
    pub user_agent: Option<&'b str>,
    pub referer_host: Option<&'b str>,
}

/// The events of one key in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count<'b> {
    pub key: Key<'b>,
    pub events: u64,
    /// Index of the first batch row with this key, for per-row data a sink resolved (the
    /// domain id of a row, say), identical for every row of the key.
    pub first_row: usize,
}

/// The counts of `batch.rows()[rows]` under `rollup`, sorted by key (`first_row` indexes the
/// whole batch).
pub fn aggregate<'b>(rollup: &RollupConfig, batch: &'b Batch, rows: Range<usize>) -> Vec<Count<'b>> {
    let pick = |d: Dimension, v: Option<&'b str>| if rollup.has(d) { v } else { None };
    let mut at: HashMap<Key<'b>, usize> = HashMap::new();
    let mut counts: Vec<Count<'b>> = Vec::new();
    let start = rows.start;
    for (i, row) in batch.rows()[rows].iter().enumerate().map(|(i, r)| (i + start, r)) {
        let key = Key {
            bucket_start_ms: rollup.bucket.start_ms(row.ts_ms),
            event: pick(Dimension::Event, Some(batch.event(row))),
            domain: pick(Dimension::Domain, Some(batch.domain(row))),
            file_id: rollup.has(Dimension::FileId).then_some(row.file_id),
            client_ip: pick(Dimension::ClientIp, batch.ip(row)),
            user_agent: pick(Dimension::UserAgent, batch.user_agent(row)),
            referer_host: pick(Dimension::RefererHost, batch.referer_host(row)),
        };
        match at.get(&key) {
            Some(&slot) => counts[slot].events += 1,
            None => {
                at.insert(key, counts.len());
                counts.push(Count { key, events: 1, first_row: i });
            }
        }
    }
    counts.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::identity::LaneId;
    use crate::wal::record::{DecodedContext, Event};
    use crate::wal::Position;
    use proptest::prelude::*;

    fn rollup(bucket: Bucket, dimensions: Vec<Dimension>) -> RollupConfig {
        RollupConfig { name: "r".into(), bucket, dimensions }
    }

    fn batch(rows: &[(u64, &str, &str, u64, Option<&str>)]) -> Batch {
        let mut b = Batch::new(LaneId { core: 0, incarnation: 1 }, 0, Position::new(1, 0));
        for (i, &(ts_ms, event, domain, file_id, ip)) in rows.iter().enumerate() {
            let ctx = DecodedContext { ip, ..DecodedContext::default() };
            b.push(&Event { ts_ms, event, domain, file_id }, &ctx, b"", Position::new(1, i as u64 + 1));
        }
        b
    }

    #[test]
    fn buckets_start_on_their_boundary() {
        assert_eq!(Bucket::Minute.start_ms(1_763_923_170_123), 1_763_923_140_000);
        assert_eq!(Bucket::Hour.start_ms(3_600_000 * 5 + 1), 3_600_000 * 5);
        assert_eq!(Bucket::Day.start_ms(86_400_000 - 1), 0);
    }

    #[test]
    fn counts_per_bucket_and_dimension_sorted() {
        let b = batch(&[
            (60_001, "play", "b.org", 7, None),
            (60_002, "play", "a.org", 7, Some("::1")),
            (119_999, "play", "b.org", 8, None),
            (120_000, "play", "b.org", 7, None),
        ]);
        let r = rollup(Bucket::Minute, vec![Dimension::Domain]);
        let got: Vec<(u64, Option<&str>, u64, usize)> = aggregate(&r, &b, 0..b.len())
            .iter()
            .map(|c| (c.key.bucket_start_ms, c.key.domain, c.events, c.first_row))
            .collect();
        assert_eq!(
            got,
            [(60_000, Some("a.org"), 1, 1), (60_000, Some("b.org"), 2, 0), (120_000, Some("b.org"), 1, 3)]
        );
        let by_ip = rollup(Bucket::Hour, vec![Dimension::ClientIp, Dimension::FileId]);
        let keys: Vec<(Option<&str>, Option<u64>, u64)> = aggregate(&by_ip, &b, 0..b.len())
            .iter()
            .map(|c| (c.key.client_ip, c.key.file_id, c.events))
            .collect();
        assert_eq!(
            keys,
            [(None, Some(7), 2), (Some("::1"), Some(7), 1), (None, Some(8), 1)],
            "file_id sorts before client_ip"
        );
        assert!(aggregate(&by_ip, &b, 0..b.len())
            .iter()
            .all(|c| c.key.domain.is_none() && c.key.event.is_none()));
    }

    #[test]
    fn a_range_counts_only_its_rows_and_indexes_the_whole_batch() {
        let b = batch(&[
            (1, "play", "a.org", 7, None),
            (2, "play", "a.org", 7, None),
            (3, "play", "b.org", 7, None),
        ]);
        let r = rollup(Bucket::Minute, vec![Dimension::Domain]);
        let got: Vec<(Option<&str>, u64, usize)> =
            aggregate(&r, &b, 1..3).iter().map(|c| (c.key.domain, c.events, c.first_row)).collect();
        assert_eq!(got, [(Some("a.org"), 1, 1), (Some("b.org"), 1, 2)]);
        assert!(aggregate(&r, &b, 3..3).is_empty());
    }

    #[test]
    fn definitions_name_bucket_and_dimensions_in_order() {
        let r = rollup(Bucket::Day, vec![Dimension::FileId, Dimension::Event]);
        assert_eq!(r.definition(), "bucket=day dimensions=file_id,event");
        assert_eq!(rollup(Bucket::Minute, vec![]).definition(), "bucket=minute dimensions=");
    }

    #[test]
    fn validation_names_the_bad_key() {
        let ok = rollup(Bucket::Minute, vec![Dimension::Event]);
        assert!(validate(std::slice::from_ref(&ok)).is_ok());
        let twice = rollup(Bucket::Minute, vec![Dimension::Event, Dimension::Event]);
        assert_eq!(validate(&[twice]).unwrap_err().key, "rollup.dimensions");
        for name in ["", "Upper", "a-b", &"x".repeat(49)] {
            let bad = RollupConfig { name: name.into(), ..ok.clone() };
            assert_eq!(validate(&[bad]).unwrap_err().key, "rollup.name", "{name}");
        }
        assert!(validate(&[ok.clone(), ok]).unwrap_err().message.contains("two rollups"));
    }

    proptest! {
        #[test]
        fn every_row_is_counted_once_under_its_own_key(
            rows in proptest::collection::vec((0u64..400_000, 0usize..3, 0u64..4), 0..200),
            dims in proptest::sample::subsequence(vec![Dimension::Event, Dimension::Domain, Dimension::FileId], 0..=3),
        ) {
            const EVENTS: [&str; 3] = ["play", "pause", "end"];
            let named: Vec<(u64, &str, &str, u64, Option<&str>)> =
                rows.iter().map(|&(ts, e, f)| (ts, EVENTS[e], EVENTS[(e + 1) % 3], f, None)).collect();
            let b = batch(&named);
            let r = rollup(Bucket::Minute, dims);
            let counts = aggregate(&r, &b, 0..b.len());
            prop_assert_eq!(counts.iter().map(|c| c.events).sum::<u64>(), rows.len() as u64);
            prop_assert!(counts.windows(2).all(|w| w[0].key < w[1].key), "sorted, distinct");
            for c in &counts {
                let row = &b.rows()[c.first_row];
                prop_assert_eq!(c.key.bucket_start_ms, row.ts_ms - row.ts_ms % 60_000);
                prop_assert_eq!(c.key.file_id, r.has(Dimension::FileId).then_some(row.file_id));
            }
        }
    }
}
