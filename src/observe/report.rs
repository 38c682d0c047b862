//! The JSON documents for humans: `/stats` (where the events are) and `/debug/domain-cache`.
//!
//! Per core, `/stats` shows accepted events, the WAL write position, the committed cursor and
//! the backlog between them: `backlog_bytes` is exact, `backlog_events_estimate` is bytes ÷
//! the mean record size (see [`super::wal_usage`]). The drain rate is rows committed per
//! second between this request and the previous sample at least [`DRAIN_SAMPLE_MIN`] older.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::exposition::{commit_lag, positions};
use super::{json_line, Observer};
use crate::flush::stats::ShardStats;
use crate::metrics;
use crate::wal::Position;

/// Shortest interval the drain rate is measured over.
pub const DRAIN_SAMPLE_MIN: Duration = Duration::from_secs(1);

/// The previous drain-rate sample.
#[derive(Debug, Default)]
pub struct DrainSample {
    at: Option<Instant>,
    flushed: u64,
    rows_per_second: f64,
}

impl DrainSample {
    /// Updates the sample with the flushed count at `now` and returns the current rate.
    pub fn rate(&mut self, flushed: u64, now: Instant) -> f64 {
        match self.at {
            Some(at) if now.duration_since(at) < DRAIN_SAMPLE_MIN => {}
            Some(at) => {
                let secs = now.duration_since(at).as_secs_f64();
                self.rows_per_second = flushed.saturating_sub(self.flushed) as f64 / secs;
                self.at = Some(now);
                self.flushed = flushed;
            }
            None => {
                self.at = Some(now);
                self.flushed = flushed;
            }
        }
        self.rows_per_second
    }
}

/// `/stats` body.
pub fn stats_json(observer: &Observer) -> Vec<u8> {
    json_line(&stats_value(observer))
}

pub fn stats_value(observer: &Observer) -> Value {
    let totals = metrics::sum(observer.cores.iter().map(|c| &**c));
    let usage = observer.wal_usage();
    let f = &observer.flush;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let cores = cores_value(observer, &usage);
    let (lag_bytes, lag_events) = commit_lag(observer, &usage, &totals);
    let flushed = load(&f.events_flushed);
    let rate = match observer.drain_sample.lock() {
        Ok(mut s) => s.rate(flushed, Instant::now()),
        Err(poisoned) => poisoned.into_inner().rate(flushed, Instant::now()),
    };
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "node_id": observer.node_id,
        "uptime_seconds": observer.started.elapsed().as_secs(),
        "ready": observer.not_ready().is_none(),
        "draining": observer.draining.load(Ordering::Acquire),
        "events": {
            "accepted": totals.events_accepted,
            "flushed": flushed,
            "dropped": 0,
            "commit_lag_bytes": lag_bytes,
            "commit_lag_events_estimate": lag_events,
        },
        "cores": cores,
        "queue": {"depth": observer.queue_depth.load(Ordering::Relaxed), "capacity": observer.queue_capacity},
        "wal": {
            "dir": observer.wal_dir.display().to_string(),
            "bytes": usage.total_bytes(),
            "segments": usage.total_segments(),
            "corrupt_records": load(&f.corrupt_records),
            "corrupt_bytes": load(&f.corrupt_bytes),
            "write_errors": totals.wal_write_errors,
        },
        "mysql": mysql_value(observer),
        "shards": shards(observer, &usage),
        "lease_held_elsewhere_by": f.lease_held_elsewhere_by.lock().ok().and_then(|h| h.clone()),
        "drain_rate_rows_per_second": rate,
        "replay": {
            "done": f.replay_done.load(Ordering::Relaxed),
            "events_replayed": load(&f.wal_replay_total),
            "events_caught_up": load(&f.wal_catchup_total),
        },
    })
}

/// Per core: accepted events, WAL position, committed cursor, backlog.
fn cores_value(observer: &Observer, usage: &super::wal_usage::WalUsage) -> Value {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let cores: Vec<Value> = (0..observer.cores.len())
        .map(|c| {
            let counters = &observer.cores[c];
            let (committed, written) = positions(observer, c);
            let backlog = usage.backlog_bytes(c, committed, written);
            let events = super::wal_usage::estimate_events(
                backlog,
                load(&counters.wal_bytes_written),
                load(&counters.events_accepted),
            );
            json!({
                "core": c,
                "accepted": load(&counters.events_accepted),
                "wal_segment": written.segment,
                "wal_offset": written.offset,
                "committed": {"segment": committed.segment, "offset": committed.offset},
                "backlog_bytes": backlog,
                "backlog_events_estimate": events,
                "backlog_segments": usage.uncommitted_segments(c, committed, written),
                "wal_refusing": counters.wal_refusing.load(Ordering::Relaxed),
                "connections_open": load(&counters.connections_open),
            })
        })
        .collect();
    Value::Array(cores)
}

/// The MySQL sink: up, last flush, limits, method, rejects.
fn mysql_value(observer: &Observer) -> Value {
    let f = &observer.flush;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let down_since = load(&f.mysql_down_since_unix_ms);
    json!({
        "up": f.mysql_up.load(Ordering::Relaxed),
        "down_since_unix_ms": (down_since != 0).then_some(down_since),
        "last_flush_unix_ms": non_zero(load(&f.last_flush_unix_ms)),
        "last_flush_rows": load(&f.last_flush_rows),
        "last_flush_duration_ms": load(&f.last_flush_duration_us) as f64 / 1000.0,
        "batches": load(&f.batches),
        "statement_bytes_max": load(&observer.mysql.statement_bytes_max),
        "rows_too_large": load(&observer.mysql.rows_too_large),
        "schema_errors": load(&observer.mysql.schema_errors),
        "fenced": load(&observer.mysql.fenced),
        "method": if observer.mysql.load_data.load(Ordering::Relaxed) { "load_data" } else { "insert" },
        "load_data_fallbacks": load(&observer.mysql.load_data_fallbacks),
        "rollup_keys": load(&observer.mysql.rollup_keys),
        "rejected_rows_by_code": rejects_by_code(observer),
    })
}

/// Per shard of the sink: up, taking deliveries, rows committed, and its lag: WAL bytes
/// written but not yet committed into it, over the running cores.
fn shards(observer: &Observer, usage: &super::wal_usage::WalUsage) -> Value {
    let shards = observer.flush.shards.iter().enumerate().map(|(i, s)| {
        json!({"shard": i, "up": s.up.load(Ordering::Relaxed), "ready": s.ready.load(Ordering::Relaxed),
               "rows": s.rows.load(Ordering::Relaxed), "lag_bytes": shard_lag(observer, usage, s)})
    });
    Value::Array(shards.collect())
}

/// WAL bytes written past what `shard` committed, over the running cores.
pub fn shard_lag(observer: &Observer, usage: &super::wal_usage::WalUsage, shard: &ShardStats) -> u64 {
    let lag = |(c, committed): (usize, &std::sync::atomic::AtomicU64)| {
        let written = observer.progress.get(c).map_or(Position::default(), |p| p.written_end());
        usage.backlog_bytes(c, Position::unpack(committed.load(Ordering::Relaxed)), written)
    };
    shard.committed.iter().enumerate().map(lag).sum()
}

/// `{"1406": 3, …}`: dead-lettered rows per MySQL error code.
fn rejects_by_code(observer: &Observer) -> Value {
    let by_code = observer.mysql.rejects_by_code().into_iter().map(|(c, n)| (c.to_string(), json!(n)));
    Value::Object(by_code.collect())
}

fn non_zero(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

/// `/debug/domain-cache` body: the flusher's last snapshot plus the live counters.
pub fn domain_cache_json(observer: &Observer) -> Vec<u8> {
    json_line(&domain_cache_value(observer))
}

pub fn domain_cache_value(observer: &Observer) -> Value {
    let m = &observer.mysql;
    let snapshot = m.domain_cache();
    json!({
        "size": m.domain_cache_entries.load(Ordering::Relaxed),
        "capacity": snapshot.capacity,
        "hits": m.domain_cache_hits.load(Ordering::Relaxed),
        "misses": m.domain_cache_misses.load(Ordering::Relaxed),
        "last_load_unix_ms": non_zero(snapshot.last_load_unix_ms),
        "last_refresh_unix_ms": non_zero(snapshot.last_refresh_unix_ms),
        "snapshot_unix_ms": non_zero(snapshot.published_unix_ms),
        "mysql_up": observer.flush.mysql_up.load(Ordering::Relaxed),
        "top": snapshot.top,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::observer;
    use super::*;
    use crate::mysql::domains::DomainCache;
    use crate::wal::Position;

    #[test]
    fn stats_show_per_core_backlog_and_mysql_state() {
        let dir = tempfile::tempdir().unwrap();
        let core0 = crate::wal::segment::core_dir(dir.path(), 0);
        std::fs::create_dir_all(&core0).unwrap();
        std::fs::write(crate::wal::segment::segment_path(&core0, 1), vec![b'x'; 500]).unwrap();
        let obs = observer(1, dir.path().to_owned());
        obs.progress[0].publish_written(Position::new(1, 500));
        obs.flush.committed[0].store(Position::new(1, 200).pack(), Ordering::Relaxed);
        metrics::bump(&obs.cores[0].events_accepted, 5);
        metrics::bump(&obs.cores[0].wal_bytes_written, 500);
        obs.flush.mysql_down_since_unix_ms.store(1234, Ordering::Relaxed);
        let v: Value = serde_json::from_slice(&stats_json(&obs)).unwrap();
        let core = &v["cores"][0];
        assert_eq!(core["accepted"], 5);
        assert_eq!(core["wal_segment"], 1);
        assert_eq!(core["wal_offset"], 500);
        assert_eq!(core["committed"]["offset"], 200);
        assert_eq!(core["backlog_bytes"], 300);
        assert_eq!(core["backlog_events_estimate"], 3);
        assert_eq!(core["backlog_segments"], 1);
        assert_eq!(v["wal"]["bytes"], 500);
        assert_eq!(v["mysql"]["up"], false);
        assert_eq!(v["mysql"]["down_since_unix_ms"], 1234);
        assert_eq!(v["queue"]["capacity"], 100);
        obs.mysql.count_rejects(1406, 2);
        let v: Value = serde_json::from_slice(&stats_json(&obs)).unwrap();
        assert_eq!(v["mysql"]["rejected_rows_by_code"]["1406"], 2);
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn drain_rate_is_rows_over_the_sample_interval() {
        let mut s = DrainSample::default();
        let t0 = Instant::now();
        assert_eq!(s.rate(100, t0), 0.0);
        assert_eq!(s.rate(150, t0 + Duration::from_millis(10)), 0.0, "too short to measure");
        assert_eq!(s.rate(300, t0 + Duration::from_secs(2)), 100.0);
    }

    #[test]
    fn domain_cache_document_lists_top_domains() {
        let dir = tempfile::tempdir().unwrap();
        let obs = observer(1, dir.path().to_owned());
        let mut cache = DomainCache::new(8);
        cache.insert("hot.org", 7);
        cache.get("hot.org");
        obs.mysql.publish_domain_cache(&cache, 99, 0);
        let v: Value = serde_json::from_slice(&domain_cache_json(&obs)).unwrap();
        assert_eq!(v["size"], 1);
        assert_eq!(v["capacity"], 8);
        assert_eq!(v["top"][0]["name"], "hot.org");
        assert_eq!(v["top"][0]["hits"], 1);
        assert!(v["last_load_unix_ms"].is_null());
    }
}
