//! The `[clickhouse]` keys: where the servers are, which database, who logs in, timeouts,
//! whether raw events are stored.

use serde::Deserialize;

use crate::invalid::InvalidKey;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickhouseConfig {
    /// The HTTP interface of the one server, `http://host:port` (no TLS, no path). Used when
    /// `shards` is empty. Default `http://127.0.0.1:8123`.
    pub url: String,
    /// Database holding `events`, `ingest_cursors` and `ingest_rejects`; created at connect.
    /// Default `psc`.
    pub database: String,
    /// User to log in as (`X-ClickHouse-User`); empty = the server's `default` user.
    /// Default empty.
    pub user: String,
    /// Password (`X-ClickHouse-Key`), sent only with a non-empty `user`. Default empty.
    pub password: String,
    /// Timeout of a TCP connect to a server. Default 5000 ms.
    pub connect_timeout_ms: u64,
    /// Timeout of one HTTP request, from sending it to the last byte of the answer; also the
    /// longest `cursors()` waits for an INSERT still running on the server. Default 30000 ms.
    pub query_timeout_ms: u64,
    /// One URL per shard (`http://host:port`); rows are spread by `sink.shard_by`. Empty =
    /// one shard at `url`. Default empty.
    pub shards: Vec<String>,
    /// How INSERT bodies are sent: `none`, or `gzip` (fastest level, `Content-Encoding: gzip`),
    /// which pays over a network slower than about 1 Gbit/s and costs the flusher thread CPU
    /// everywhere. Default `none`.
    pub compression: Compression,
    /// A batch is cut at this many rows. Each batch is one part on the server, so batches
    /// must be large (ClickHouse refuses inserts with "too many parts" otherwise). Default
    /// 100000.
    pub batch_rows: usize,
    /// A batch is cut at the latest this long after its first row. Default 1000 ms.
    pub flush_interval_ms: u64,
    /// First retry delay after a failure; doubles up to `retry_max_ms`. Default 100 ms.
    pub retry_min_ms: u64,
    /// Longest retry delay. Default 5000 ms.
    pub retry_max_ms: u64,
    /// Whether every event is stored in `events`. `false` keeps only the `[[rollup]]` counts
    /// (at least one is then required). Default true.
    pub raw_events: bool,
}

/// `clickhouse.compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
}

impl Default for ClickhouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "psc".into(),
            user: String::new(),
            password: String::new(),
            connect_timeout_ms: 5000,
            query_timeout_ms: 30_000,
            shards: Vec::new(),
            compression: Compression::None,
            batch_rows: 100_000,
            flush_interval_ms: 1000,
            retry_min_ms: 100,
            retry_max_ms: 5000,
            raw_events: true,
        }
    }
}

impl ClickhouseConfig {
    /// The shards' URLs: `shards`, or `url` alone.
    pub fn shard_urls(&self) -> Vec<String> {
        if self.shards.is_empty() {
            vec![self.url.clone()]
        } else {
            self.shards.clone()
        }
    }

    /// Checks the `[clickhouse]` keys.
    pub fn validate(&self) -> Result<(), InvalidKey> {
        if self.batch_rows == 0 {
            return InvalidKey::err("clickhouse.batch_rows", "must be at least 1");
        }
        if self.flush_interval_ms == 0 {
            return InvalidKey::err("clickhouse.flush_interval_ms", "must be at least 1");
        }
        if self.retry_min_ms == 0 || self.retry_min_ms > self.retry_max_ms {
            return InvalidKey::err(
                "clickhouse.retry_min_ms",
                "must be at least 1 and at most clickhouse.retry_max_ms",
            );
        }
        if let Err(why) = super::http::Endpoint::parse(&self.url) {
            return InvalidKey::err("clickhouse.url", why);
        }
        if self.shards.len() > usize::from(u16::MAX) {
            return InvalidKey::err("clickhouse.shards", "at most 65535 shards");
        }
        for url in &self.shards {
            if let Err(why) = super::http::Endpoint::parse(url) {
                return InvalidKey::err("clickhouse.shards", format!("{url}: {why}"));
            }
        }
        if !is_identifier(&self.database) {
            return InvalidKey::err("clickhouse.database", "must match [A-Za-z_][A-Za-z0-9_]{0,63}");
        }
        if self.connect_timeout_ms == 0 {
            return InvalidKey::err("clickhouse.connect_timeout_ms", "must be at least 1");
        }
        if self.query_timeout_ms == 0 {
            return InvalidKey::err("clickhouse.query_timeout_ms", "must be at least 1");
        }
        let header_safe = |s: &str| s.bytes().all(|b| (0x20..0x7f).contains(&b));
        if !header_safe(&self.user) || !header_safe(&self.password) {
            return InvalidKey::err("clickhouse.user", "user and password must be printable ASCII");
        }
        Ok(())
    }
}

/// A name that needs no quoting in ClickHouse SQL (and is backquoted anyway).
pub fn is_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    first_ok && s.len() <= 64 && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_one_shard() {
        let c = ClickhouseConfig::default();
        c.validate().expect("defaults are valid");
        assert_eq!(c.shard_urls(), vec!["http://127.0.0.1:8123".to_string()]);
    }

    #[test]
    fn bad_values_name_their_key() {
        let key = |c: ClickhouseConfig| c.validate().unwrap_err().key;
        let base = ClickhouseConfig::default;
        assert_eq!(key(ClickhouseConfig { url: "https://x:1".into(), ..base() }), "clickhouse.url");
        assert_eq!(key(ClickhouseConfig { shards: vec!["x".into()], ..base() }), "clickhouse.shards");
        assert_eq!(key(ClickhouseConfig { database: "a-b".into(), ..base() }), "clickhouse.database");
        assert_eq!(key(ClickhouseConfig { database: String::new(), ..base() }), "clickhouse.database");
        assert_eq!(key(ClickhouseConfig { query_timeout_ms: 0, ..base() }), "clickhouse.query_timeout_ms");
        assert_eq!(key(ClickhouseConfig { password: "a\nb".into(), ..base() }), "clickhouse.user");
    }
}
