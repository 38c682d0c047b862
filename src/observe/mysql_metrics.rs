//! The MySQL sink's side of a `/metrics` scrape (`crate::mysql::MysqlStats`): read once per
//! scrape, then encoded beside the rest (`super::exposition`).

use std::sync::atomic::Ordering;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Unit;

use super::encode::{counter, counter_family, gauge, R};

/// The MySQL sink's side of a scrape (`crate::mysql::MysqlStats`).
#[derive(Debug, Default)]
pub struct MysqlScrape {
    domain_entries: u64,
    domain_hits: u64,
    domain_misses: u64,
    statement_bytes_max: u64,
    rows_too_large: u64,
    schema_errors: u64,
    fenced: u64,
    load_data: bool,
    load_data_fallbacks: u64,
    rollup_keys: u64,
    deduplicated: u64,
    user_agents_parsed: u64,
    user_agent_cache_entries: u64,
    user_agent_cache_resets: u64,
    rejects_by_code: Vec<(u32, u64)>,
}

impl MysqlScrape {
    pub fn take(m: &crate::mysql::MysqlStats) -> MysqlScrape {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        MysqlScrape {
            domain_entries: load(&m.domain_cache_entries),
            domain_hits: load(&m.domain_cache_hits),
            domain_misses: load(&m.domain_cache_misses),
            statement_bytes_max: load(&m.statement_bytes_max),
            rows_too_large: load(&m.rows_too_large),
            schema_errors: load(&m.schema_errors),
            fenced: load(&m.fenced),
            load_data: m.load_data.load(Ordering::Relaxed),
            load_data_fallbacks: load(&m.load_data_fallbacks),
            rollup_keys: load(&m.rollup_keys),
            deduplicated: load(&m.events_deduplicated),
            user_agents_parsed: load(&m.user_agents_parsed),
            user_agent_cache_entries: load(&m.user_agent_cache_entries),
            user_agent_cache_resets: load(&m.user_agent_cache_resets),
            rejects_by_code: m.rejects_by_code(),
        }
    }

    pub fn encode(&self, e: &mut DescriptorEncoder) -> R {
        gauge(e, "ingest_domain_cache_entries", "Names in the domain id cache", None, self.domain_entries)?;
        counter(
            e,
            "ingest_domain_cache_hits",
            "Domain lookups answered by the cache",
            None,
            self.domain_hits,
        )?;
        counter(
            e,
            "ingest_domain_cache_misses",
            "Domain lookups that went to MySQL",
            None,
            self.domain_misses,
        )?;
        let bytes = Some(&Unit::Bytes);
        let limit =
            "Statement limit in force: min(mysql.max_statement_bytes, server max_allowed_packet - margin)";
        gauge(e, "ingest_mysql_statement_max", limit, bytes, self.statement_bytes_max)?;
        let too_large = "Rows refused because alone they exceed the statement limit";
        counter(e, "ingest_mysql_rows_too_large", too_large, None, self.rows_too_large)?;
        let schema = "MySQL failures because the schema or grants do not fit (delivery waits)";
        counter(e, "ingest_mysql_schema_errors", schema, None, self.schema_errors)?;
        counter(e, "ingest_mysql_fenced", "Deliveries fenced by a cursor elsewhere", None, self.fenced)?;
        gauge(
            e,
            "ingest_mysql_load_data",
            "1 while rows go by LOAD DATA LOCAL, 0 by INSERT",
            None,
            self.load_data as u64,
        )?;
        let fallbacks = "LOAD DATA LOCAL refused by the server (then INSERT)";
        counter(e, "ingest_mysql_load_data_fallbacks", fallbacks, None, self.load_data_fallbacks)?;
        counter(e, "ingest_mysql_rollup_keys", "Rollup keys upserted, all rollups", None, self.rollup_keys)?;
        let dedup = "Event rows not stored because their client event id (eid) was stored already";
        counter(e, "ingest_events_deduplicated", dedup, None, self.deduplicated)?;
        let parsed = "Distinct User-Agents classified and written to user_agents";
        counter(e, "ingest_user_agents_parsed", parsed, None, self.user_agents_parsed)?;
        let entries = "User-Agent hashes the sink knows are stored";
        gauge(e, "ingest_mysql_user_agent_cache_entries", entries, None, self.user_agent_cache_entries)?;
        let resets = "Times the stored User-Agent cache was full and emptied";
        counter(e, "ingest_mysql_user_agent_cache_resets", resets, None, self.user_agent_cache_resets)?;
        let rejects = self.rejects_by_code.iter().map(|&(c, n)| (c.to_string(), n));
        counter_family(
            e,
            "ingest_mysql_rejected_rows",
            "Rows dead-lettered in ingest_rejects",
            "code",
            rejects,
        )
    }
}
