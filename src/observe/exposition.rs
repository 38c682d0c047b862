//! `/metrics`: OpenMetrics text rendered by prometheus-client from a [`Scrape`], a snapshot of
//! every source taken at request time (per-core counters summed with [`metrics::sum`], flusher
//! stats, queue depth, WAL listing, `/proc/self` through [`super::process`]). Nothing is
//! registered ahead of time: the snapshot is the collector, so the hot path never touches a
//! shared metric.
//!
//! Names follow the conventions: base units in the name (`_bytes`, `_seconds`), counters end
//! in `_total` (prometheus-client appends it), `ingest_` prefix for the collector's own.
//!
//! `ingest_commit_lag_bytes` is exact: the WAL bytes between each core's committed cursor and
//! its written end. `ingest_commit_lag_events` is those bytes divided by the mean record size
//! this process wrote (an estimate: counting would mean reading the WAL).

use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::encode::{counter, counter_family, family, fixed_histogram, gauge, histogram, R};
use super::mysql_metrics::MysqlScrape;
use super::negotiate::{negotiate, MetricsFormat};
use super::process::ProcessStats;
use super::wal_usage::{self, WalUsage};
use super::Observer;
use crate::ingest::encoding::{Coding, CodingTotals};
use crate::metrics::{self, CoreTotals, LIMITS, REJECT_REASONS, STATUS_CODES};
use crate::wal::Position;

/// Content type of `/metrics` (OpenMetrics 1.0 text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every value one scrape shows, read once.
#[derive(Debug)]
pub struct Scrape {
    totals: CoreTotals,
    events_flushed: u64,
    batches: u64,
    mysql_up: bool,
    queue_depth: u64,
    queue_capacity: u64,
    wal_bytes: u64,
    wal_segments: u64,
    wal_replay: u64,
    wal_catchup: u64,
    corrupt_records: u64,
    corrupt_bytes: u64,
    commit_lag_bytes: u64,
    commit_lag_events: u64,
    mysql: MysqlScrape,
    clickhouse: Option<crate::clickhouse::ClickhouseSnapshot>,
    ready: bool,
    uptime_seconds: f64,
    process: ProcessStats,
    flush_duration: Histogram,
    batch_rows: Histogram,
    /// Per shard of the sink: (up, rows committed, lag bytes).
    shards: Vec<(bool, u64, u64)>,
}

/// Commit lag over all cores: (bytes, estimated events).
pub fn commit_lag(observer: &Observer, usage: &WalUsage, totals: &CoreTotals) -> (u64, u64) {
    let bytes: u64 = (0..observer.cores.len())
        .map(|c| {
            let (committed, written) = positions(observer, c);
            usage.backlog_bytes(c, committed, written)
        })
        .sum();
    (bytes, wal_usage::estimate_events(bytes, totals.wal_bytes_written, totals.events_accepted))
}

/// (committed, written end) of core `c`.
pub fn positions(observer: &Observer, c: usize) -> (Position, Position) {
    let committed = observer.flush.committed.get(c).map_or(0, |p| p.load(Ordering::Relaxed));
    let written = observer.progress.get(c).map_or(Position::default(), |p| p.written_end());
    (Position::unpack(committed), written)
}

impl Scrape {
    pub fn take(observer: &Observer) -> Scrape {
        let totals = metrics::sum(observer.cores.iter().map(|c| &**c));
        let usage = observer.wal_usage();
        let (commit_lag_bytes, commit_lag_events) = commit_lag(observer, &usage, &totals);
        let f = &observer.flush;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Scrape {
            events_flushed: load(&f.events_flushed),
            batches: load(&f.batches),
            mysql_up: f.mysql_up.load(Ordering::Relaxed),
            queue_depth: observer.queue_depth.load(Ordering::Relaxed) as u64,
            queue_capacity: observer.queue_capacity as u64,
            wal_bytes: usage.total_bytes(),
            wal_segments: usage.total_segments() as u64,
            wal_replay: load(&f.wal_replay_total),
            wal_catchup: load(&f.wal_catchup_total),
            corrupt_records: load(&f.corrupt_records),
            corrupt_bytes: load(&f.corrupt_bytes),
            commit_lag_bytes,
            commit_lag_events,
            mysql: MysqlScrape::take(&observer.mysql),
            clickhouse: observer.clickhouse.as_ref().map(|c| c.snapshot()),
            ready: observer.not_ready().is_none(),
            uptime_seconds: observer.started.elapsed().as_secs_f64(),
            process: ProcessStats::read(),
            shards: (f.shards.iter())
                .map(|s| {
                    let lag = super::report::shard_lag(observer, &usage, s);
                    (s.up.load(Ordering::Relaxed), s.rows.load(Ordering::Relaxed), lag)
                })
                .collect(),
            flush_duration: f.flush_duration_seconds.clone(),
            batch_rows: f.batch_rows.clone(),
            totals,
        }
    }

    /// Renders the OpenMetrics text, `# EOF` included.
    pub fn render(self) -> Vec<u8> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::with_capacity(16 * 1024);
        match prometheus_client::encoding::text::encode(&mut out, &registry) {
            Ok(()) => out.into_bytes(),
            Err(_) => b"# EOF\n".to_vec(),
        }
    }
}

/// `/metrics` body for `observer`.
pub fn metrics_text(observer: &Observer) -> Vec<u8> {
    Scrape::take(observer).render()
}

/// Content type of `/metrics?format=prometheus` (the classic text format 0.0.4).
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `/metrics` as `(content type, body)`: OpenMetrics, or the classic Prometheus text format
/// when the query or the `Accept` header asks for it (rules in `super::negotiate`; for tools
/// that only parse that, such as `promtool check metrics` of Prometheus 2.x).
pub fn metrics_reply(observer: &Observer, query: &str, accept: Option<&[u8]>) -> (&'static str, Vec<u8>) {
    let openmetrics = metrics_text(observer);
    match negotiate(query, accept) {
        MetricsFormat::Prometheus => {
            let text = String::from_utf8_lossy(&openmetrics);
            (PROMETHEUS_CONTENT_TYPE, to_prometheus_text(&text).into_bytes())
        }
        MetricsFormat::OpenMetrics => (CONTENT_TYPE, openmetrics),
    }
}

/// OpenMetrics text → Prometheus text 0.0.4: a counter family's `HELP`/`TYPE` lines name its
/// `_total` sample, and `# UNIT` and `# EOF` (unknown to the classic format) are dropped.
/// The `HELP` line precedes its `TYPE` line, so it is held back until the type is known.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let suffix = if kind == "counter" { "_total" } else { "" };
            if let Some(h) = help.take() {
                let text = h.split_once(' ').map_or("", |(_, text)| text);
                out.push_str(&format!("# HELP {name}{suffix} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// POST bodies by `Content-Encoding` (`crate::ingest::encoding`).
fn encode_codings(e: &mut DescriptorEncoder, c: &CodingTotals) -> R {
    let by_coding = |values: [u64; Coding::ALL.len()]| {
        Coding::ALL.into_iter().zip(values).map(|(coding, n)| (coding.label().to_owned(), n))
    };
    counter_family(
        e,
        "ingest_body_decoded",
        "POST bodies read, by Content-Encoding",
        "encoding",
        by_coding(c.bodies),
    )?;
    let help = "POST body bytes as received, by Content-Encoding";
    counter_family(e, "ingest_body_in_bytes", help, "encoding", by_coding(c.bytes_in))?;
    let help = "POST body bytes once decoded, by Content-Encoding";
    counter_family(e, "ingest_body_out_bytes", help, "encoding", by_coding(c.bytes_out))?;
    let help =
        "Compressed bodies refused for expanding past http.max_body_bytes or http.max_decompression_ratio";
    counter(e, "ingest_body_bombs_refused", help, None, c.bombs)
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let t = &self.totals;
        let e = &mut e;
        let codes = STATUS_CODES.iter().zip(t.requests).map(|(code, n)| (code_label(*code), n));
        counter_family(e, "ingest_requests", "HTTP responses sent, by status code", "code", codes)?;
        counter(
            e,
            "ingest_events_accepted",
            "Events written to the WAL and acknowledged",
            None,
            t.events_accepted,
        )?;
        let reasons = REJECT_REASONS.iter().zip(t.rejected).map(|(r, n)| (r.to_string(), n));
        counter_family(e, "ingest_events_rejected", "Events refused, by reason", "reason", reasons)?;
        counter(e, "ingest_events_flushed", "Events committed to MySQL", None, self.events_flushed)?;
        counter(e, "ingest_events_dropped", "Acknowledged events lost (must stay 0)", None, 0)?;
        counter(e, "ingest_flush_batches", "MySQL transactions committed", None, self.batches)?;
        gauge(e, "ingest_queue_depth", "Events in the core-to-flusher queue", None, self.queue_depth)?;
        gauge(e, "ingest_queue_capacity", "Capacity of the queue in events", None, self.queue_capacity)?;
        counter(
            e,
            "ingest_queue_full_chunks",
            "WAL chunks left to catch-up because the queue was full",
            None,
            t.queue_full_chunks,
        )?;
        self.encode_wal(e)?;
        histogram(
            e,
            "ingest_flush_duration",
            "Wall time of one MySQL transaction",
            Some(&Unit::Seconds),
            &self.flush_duration,
        )?;
        histogram(e, "ingest_flush_batch_rows", "Rows per committed batch", None, &self.batch_rows)?;
        let answer = &t.answer_latency;
        let what = (
            "ingest_http_answer",
            "From a read's completion to the write of its answers (parse, WAL write, answer), one read in 16",
            Some(&Unit::Seconds),
        );
        fixed_histogram(e, what, answer.sum_us as f64 / 1e6, &answer.seconds_buckets())?;
        gauge(e, "ingest_mysql_up", "1 if the last MySQL operation succeeded", None, self.mysql_up as u64)?;
        gauge(e, "ingest_ready", "1 while /readyz answers 200", None, self.ready as u64)?;
        self.mysql.encode(e)?;
        if let Some(c) = &self.clickhouse {
            super::clickhouse_metrics::encode(e, c)?;
        }
        let limits = LIMITS.iter().zip(t.limit_hits).map(|(l, n)| (l.to_string(), n));
        counter_family(
            e,
            "ingest_http_limit_hits",
            "Connections closed by a limit or framing error",
            "limit",
            limits,
        )?;
        encode_codings(e, &t.codings)?;
        self.encode_process(e)
    }
}

impl Scrape {
    fn encode_wal(&self, e: &mut DescriptorEncoder) -> R {
        let t = &self.totals;
        let bytes = Some(&Unit::Bytes);
        gauge(e, "ingest_wal_size", "Bytes of WAL segments on disk", bytes, self.wal_bytes)?;
        gauge(e, "ingest_wal_segments", "WAL segment files on disk", None, self.wal_segments)?;
        counter(
            e,
            "ingest_wal_replay",
            "Events read back from the WAL by the startup replay",
            None,
            self.wal_replay,
        )?;
        counter(
            e,
            "ingest_wal_catchup",
            "Events read back from the WAL after the replay",
            None,
            self.wal_catchup,
        )?;
        counter(
            e,
            "ingest_wal_corrupt_records",
            "WAL records that failed to decode",
            None,
            self.corrupt_records,
        )?;
        counter(
            e,
            "ingest_wal_corrupt",
            "Bytes of corrupt WAL records copied to quarantine/ and skipped",
            bytes,
            self.corrupt_bytes,
        )?;
        counter(e, "ingest_wal_write_errors", "Failed WAL writes", None, t.wal_write_errors)?;
        counter(e, "ingest_wal_written", "Bytes written to the WAL", bytes, t.wal_bytes_written)?;
        counter(e, "ingest_wal_writes", "WAL writes (one per tick of group commit)", None, t.wal_writes)?;
        counter(
            e,
            "ingest_wal_truncated",
            "Bytes cut from torn WAL tails at startup",
            bytes,
            t.wal_truncated_bytes,
        )?;
        gauge(
            e,
            "ingest_commit_lag",
            "WAL bytes written but not committed to MySQL",
            bytes,
            self.commit_lag_bytes,
        )?;
        gauge(
            e,
            "ingest_commit_lag_events",
            "Events written but not committed (estimate)",
            None,
            self.commit_lag_events,
        )?;
        Ok(())
    }

    /// Connections, uptime, the process, and each shard of the sink.
    fn encode_process(&self, e: &mut DescriptorEncoder) -> R {
        let t = &self.totals;
        let bytes = Some(&Unit::Bytes);
        gauge(e, "ingest_connections_open", "Client connections open", None, t.connections_open)?;
        counter(
            e,
            "ingest_connections_accepted",
            "Client connections accepted",
            None,
            t.connections_accepted,
        )?;
        let mut m = e.encode_descriptor(
            "ingest_uptime",
            "Seconds since start",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        m.encode_gauge(&self.uptime_seconds)?;
        if let Some(rss) = self.process.resident_bytes {
            gauge(e, "process_resident_memory", "Resident set size", bytes, rss)?;
        }
        if let Some(fds) = self.process.open_fds {
            gauge(e, "process_open_fds", "Open file descriptors", None, fds)?;
        }
        let up = self.shards.iter().enumerate().map(|(i, &(up, ..))| (i.to_string(), u64::from(up)));
        family(
            e,
            MetricType::Gauge,
            ("ingest_sink_shard_up", "1 if the last step on the shard succeeded", "shard"),
            up,
        )?;
        let rows = self.shards.iter().enumerate().map(|(i, &(_, rows, _))| (i.to_string(), rows));
        counter_family(e, "ingest_sink_shard_rows", "Rows committed into the shard", "shard", rows)?;
        let lag = self.shards.iter().enumerate().map(|(i, &(.., lag))| (i.to_string(), lag));
        let what =
            ("ingest_sink_shard_lag_bytes", "WAL bytes written but not committed into the shard", "shard");
        family(e, MetricType::Gauge, what, lag)?;
        Ok(())
    }
}

/// `code` label value; the catch-all slot (0) is `other`.
fn code_label(code: u16) -> String {
    if code == 0 {
        "other".into()
    } else {
        code.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::observer;
    use super::*;

    #[test]
    fn exposition_has_required_families_and_ends_with_eof() {
        let dir = tempfile::tempdir().unwrap();
        let obs = observer(2, dir.path().to_owned());
        obs.cores[0].count_response(204);
        obs.cores[1].count_response(204);
        obs.cores[1].count_rejection("bad_domain");
        metrics::bump(&obs.cores[0].events_accepted, 2);
        obs.flush.flush_duration_seconds.observe(0.02);
        obs.mysql.count_rejects(1406, 2);
        obs.mysql.events_deduplicated.store(3, Ordering::Relaxed);
        let text = String::from_utf8(metrics_text(&obs)).unwrap();
        for needle in [
            "ingest_requests_total{code=\"204\"} 2\n",
            "ingest_events_accepted_total 2\n",
            "ingest_events_rejected_total{reason=\"bad_domain\"} 1\n",
            "ingest_events_dropped_total 0\n",
            "ingest_events_flushed_total 0\n",
            "ingest_queue_capacity 100\n",
            "ingest_wal_size_bytes 0\n",
            "ingest_wal_segments 0\n",
            "ingest_wal_replay_total 0\n",
            "ingest_wal_corrupt_records_total 0\n",
            "ingest_commit_lag_events 0\n",
            "ingest_flush_duration_seconds_count 1\n",
            "ingest_flush_batch_rows_count 0\n",
            "ingest_http_answer_seconds_count 0\n",
            "ingest_http_answer_seconds_bucket{le=\"+Inf\"} 0\n",
            "ingest_mysql_up 0\n",
            "ingest_domain_cache_entries 0\n",
            "ingest_domain_cache_hits_total 0\n",
            "ingest_domain_cache_misses_total 0\n",
            "ingest_mysql_rejected_rows_total{code=\"1406\"} 2\n",
            "ingest_mysql_statement_max_bytes 0\n",
            "ingest_events_deduplicated_total 3\n",
            "ingest_user_agents_parsed_total 0\n",
            "ingest_mysql_user_agent_cache_entries 0\n",
            "ingest_http_limit_hits_total{limit=\"url_bytes\"} 0\n",
            "process_open_fds ",
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn prometheus_text_names_counter_families_by_their_total_sample() {
        let om = "# HELP a_b Things.\n# TYPE a_b counter\na_b_total{x=\"1\"} 2\n\
                  # HELP w_size Bytes.\n# TYPE w_size gauge\n# UNIT w_size bytes\nw_size_bytes 3\n# EOF\n";
        let text = to_prometheus_text(om);
        assert_eq!(
            text,
            "# HELP a_b_total Things.\n# TYPE a_b_total counter\na_b_total{x=\"1\"} 2\n\
             # HELP w_size Bytes.\n# TYPE w_size gauge\nw_size_bytes 3\n"
        );
    }
}
