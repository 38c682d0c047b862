//! What the MySQL sink publishes for `/metrics`, `/stats` and `/debug/domain-cache`.
//!
//! Written by the flusher thread only, read by any core answering a scrape: plain atomics
//! (Relaxed: each value is independent) plus two small mutexes, one for the domain cache
//! snapshot (replaced at most once per flush interval) and one for the per-code reject
//! counts (touched only when rows are dead-lettered, which is rare).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::domains::{DomainCache, DomainCacheSnapshot};

/// Domains listed by `/debug/domain-cache`.
pub const DOMAIN_CACHE_TOP_N: usize = 20;

/// Counters and snapshots of the MySQL sink (all connections of one process).
#[derive(Debug, Default)]
pub struct MysqlStats {
    /// Entries in the domain name → id cache.
    pub domain_cache_entries: AtomicU64,
    /// Row lookups the cache answered.
    pub domain_cache_hits: AtomicU64,
    /// Row lookups that went to MySQL.
    pub domain_cache_misses: AtomicU64,
    /// Unix ms of the last preload from MySQL; 0 = never.
    pub domain_cache_loaded_unix_ms: AtomicU64,
    /// Unix ms of the last fetch of names the cache missed; 0 = never.
    pub domain_cache_refreshed_unix_ms: AtomicU64,
    /// The statement limit in force: min(`mysql.max_statement_bytes`, the server's
    /// `@@max_allowed_packet` minus a margin), as of the last connect.
    pub statement_bytes_max: AtomicU64,
    /// Rows refused because alone they do not fit the statement limit (the limit hit).
    pub rows_too_large: AtomicU64,
    /// Failures because the schema does not fit our statements (unknown table or column,
    /// denied, a cursor column of another type): delivery waits for an operator.
    pub schema_errors: AtomicU64,
    /// Deliveries fenced because the sink's cursor was not where the batch started.
    pub fenced: AtomicU64,
    /// Whether the last connection sends event rows with LOAD DATA LOCAL (else INSERT).
    pub load_data: AtomicBool,
    /// Times LOAD DATA LOCAL was refused by the server and delivery fell back to INSERT.
    pub load_data_fallbacks: AtomicU64,
    /// Rollup keys upserted (one per key per committed batch), all rollups.
    pub rollup_keys: AtomicU64,
    /// Event rows not stored because their client event id was stored already (counted after
    /// COMMIT: `super::dedup`).
    pub events_deduplicated: AtomicU64,
    /// Distinct User-Agents classified and upserted into `user_agents` (`super::user_agents`).
    pub user_agents_parsed: AtomicU64,
    /// Hashes in the cache of User-Agents known to be stored.
    pub user_agent_cache_entries: AtomicU64,
    /// Times that cache was full and emptied (`mysql.user_agent_cache_entries` hit).
    pub user_agent_cache_resets: AtomicU64,
    /// Copy of the cache's shape and hottest names.
    domain_cache: Mutex<DomainCacheSnapshot>,
    /// Dead-lettered rows by MySQL error code.
    rejected_rows: Mutex<BTreeMap<u32, u64>>,
}

impl MysqlStats {
    /// Publishes a snapshot of `cache` unless one was taken less than `min_interval_ms` ago
    /// (`0` forces it). Sorting the top names is O(entries), hence the rate limit.
    pub fn publish_domain_cache(&self, cache: &DomainCache, now_unix_ms: u64, min_interval_ms: u64) {
        self.domain_cache_entries.store(cache.len() as u64, Ordering::Relaxed);
        let mut snapshot = match self.domain_cache.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if min_interval_ms > 0 && now_unix_ms.saturating_sub(snapshot.published_unix_ms) < min_interval_ms {
            return;
        }
        *snapshot = DomainCacheSnapshot {
            size: cache.len(),
            capacity: cache.capacity(),
            last_load_unix_ms: self.domain_cache_loaded_unix_ms.load(Ordering::Relaxed),
            last_refresh_unix_ms: self.domain_cache_refreshed_unix_ms.load(Ordering::Relaxed),
            published_unix_ms: now_unix_ms,
            top: cache.top_by_hits(DOMAIN_CACHE_TOP_N),
        };
    }

    /// The last published domain cache snapshot.
    pub fn domain_cache(&self) -> DomainCacheSnapshot {
        match self.domain_cache.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Counts `rows` dead-lettered rows refused with `code`.
    pub fn count_rejects(&self, code: u32, rows: u64) {
        let mut by_code = match self.rejected_rows.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *by_code.entry(code).or_default() += rows;
    }

    /// Dead-lettered rows by error code, lowest code first.
    pub fn rejects_by_code(&self) -> Vec<(u32, u64)> {
        let by_code = match self.rejected_rows.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        by_code.iter().map(|(&c, &n)| (c, n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_cache_snapshot_is_rate_limited_unless_forced() {
        let stats = MysqlStats::default();
        let mut cache = DomainCache::new(10);
        cache.insert("a.org", 1);
        stats.publish_domain_cache(&cache, 1_000, 0);
        cache.insert("b.org", 2);
        stats.publish_domain_cache(&cache, 1_500, 1_000);
        assert_eq!(stats.domain_cache().size, 1, "published again too soon");
        stats.publish_domain_cache(&cache, 2_000, 1_000);
        let snap = stats.domain_cache();
        assert_eq!((snap.size, snap.capacity, snap.top.len()), (2, 10, 2));
        assert_eq!(stats.domain_cache_entries.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn rejects_add_up_per_code() {
        let stats = MysqlStats::default();
        stats.count_rejects(1406, 2);
        stats.count_rejects(1153, 1);
        stats.count_rejects(1406, 1);
        assert_eq!(stats.rejects_by_code(), vec![(1153, 1), (1406, 3)]);
    }
}
