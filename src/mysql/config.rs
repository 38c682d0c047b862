//! The `[mysql]` and `[domains]` keys: where the database is, how batches are cut, timeouts and
//! retries, statement size, and the domain cache.

use serde::Deserialize;

use crate::invalid::InvalidKey;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MysqlConfig {
    /// `mysql://user:pass@host:port/db`. Default empty = `make run` starts a private MariaDB.
    pub url: String,
    /// A batch is cut at this many rows. Default 5000.
    pub batch_rows: usize,
    /// A batch is cut at the latest this long after its first row. Default 1000 ms.
    pub flush_interval_ms: u64,
    /// Timeout of a connect attempt. Default 5000 ms.
    pub connect_timeout_ms: u64,
    /// Timeout of one statement or transaction step. Default 30000 ms.
    pub query_timeout_ms: u64,
    /// First retry delay after a failure; doubles up to `retry_max_ms`. Default 100 ms.
    pub retry_min_ms: u64,
    /// Longest retry delay. Default 5000 ms.
    pub retry_max_ms: u64,
    /// Largest statement sent; the server's `@@max_allowed_packet` (read at connect) lowers
    /// it further. Default 8 MiB.
    pub max_statement_bytes: usize,
    /// How event rows are sent: `load_data` (`LOAD DATA LOCAL`, streamed from memory as
    /// TSV; where the server has `local_infile` off, multi-row INSERT, said in the log) or
    /// `insert`. Default `load_data`.
    pub method: Method,
    /// Write one `events` row per event. `false`: rollups only (needs a `[[rollup]]`).
    /// Default true.
    pub raw_events: bool,
    /// Delivery connections open at once per shard; each lane delivers on its own connection
    /// with its own transaction and cursor row. 0 = one per lane. Default 0.
    pub connections: usize,
    /// Several MySQL databases, each a shard (`sink.shard_by` picks a row's); empty = `url`
    /// alone. Default empty.
    pub shards: Vec<String>,
    /// Most User-Agent hashes the sink remembers as stored in `user_agents` with their class,
    /// so each distinct UA is classified once; when full it starts over (counted as
    /// `ingest_mysql_user_agent_cache_resets_total`). Default 100000.
    pub user_agent_cache_entries: usize,
}

/// `mysql.method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    LoadData,
    Insert,
}

impl Default for MysqlConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            batch_rows: 5000,
            flush_interval_ms: 1000,
            connect_timeout_ms: 5000,
            query_timeout_ms: 30_000,
            retry_min_ms: 100,
            retry_max_ms: 5000,
            max_statement_bytes: 8 * 1024 * 1024,
            method: Method::LoadData,
            raw_events: true,
            connections: 0,
            shards: Vec::new(),
            user_agent_cache_entries: 100_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DomainsConfig {
    /// Most domain name → id entries the flusher keeps in memory. Default 100000.
    pub cache_entries: usize,
}

impl Default for DomainsConfig {
    fn default() -> Self {
        Self { cache_entries: 100_000 }
    }
}

impl MysqlConfig {
    /// Checks the `[mysql]` keys and how they relate to each other.
    pub fn validate(&self) -> Result<(), InvalidKey> {
        if self.batch_rows == 0 {
            return InvalidKey::err("mysql.batch_rows", "must be at least 1");
        }
        if self.user_agent_cache_entries == 0 {
            return InvalidKey::err("mysql.user_agent_cache_entries", "must be at least 1");
        }
        if self.flush_interval_ms == 0 {
            return InvalidKey::err("mysql.flush_interval_ms", "must be at least 1");
        }
        if self.retry_min_ms == 0 || self.retry_min_ms > self.retry_max_ms {
            return InvalidKey::err(
                "mysql.retry_min_ms",
                "must be at least 1 and at most mysql.retry_max_ms",
            );
        }
        if self.max_statement_bytes < 64 * 1024 {
            return InvalidKey::err("mysql.max_statement_bytes", "must be at least 65536");
        }
        if !self.url.is_empty() && !self.url.starts_with("mysql://") {
            return InvalidKey::err("mysql.url", "must look like mysql://user:pass@host:port/db");
        }
        Ok(())
    }
}

impl DomainsConfig {
    /// Checks the `[domains]` keys.
    pub fn validate(&self) -> Result<(), InvalidKey> {
        if self.cache_entries == 0 {
            return InvalidKey::err("domains.cache_entries", "must be at least 1");
        }
        Ok(())
    }
}
