//! The `[ingest]` keys: which events are accepted, how big a POST batch may be, which parts of
//! the client context are stored, and the node id.

use serde::Deserialize;

use crate::invalid::InvalidKey;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Optional allowlist of event names. Default: empty = any name matching `[a-z0-9_]{1,32}`.
    pub events: Vec<String>,
    /// Identity of this collector: the node a WAL belongs to (`<wal.dir>/IDENTITY`) and the
    /// scope of the delivery lease. Default: empty = `<hostname>-<first 8 hex of the WAL id>`,
    /// so two instances on one host (two WAL dirs) stay apart.
    pub node_id: String,
    /// Most events in one `POST /log` body; past it: 413. Default 100.
    pub max_batch_events: usize,
    /// Extra query parameters kept in the `extra` JSON column (at most 1 KiB per event).
    /// Default `[]`: extra parameters are ignored.
    pub keep_params: Vec<String>,
    /// Store the client IP (socket peer or trusted `X-Forwarded-For`). Default true.
    pub client_ip: bool,
    /// Store the User-Agent (hash in `events`, text once in `user_agents`). Default true.
    pub user_agent: bool,
    /// Store the host of the Referer. Default true.
    pub referer: bool,
    /// Reject (400) an event without a client event id (`eid` query parameter, `event_id` JSON
    /// field). Default false: ids are optional, and only events that carry one are
    /// de-duplicated.
    pub require_event_id: bool,
    /// Answer events from bot User-Agents (`crate::ingest::user_agent`) with 204 but store
    /// nothing, counted as `ingest_events_rejected_total{reason="bot"}`. Default false: bots
    /// are stored, flagged `user_agents.is_bot`.
    pub drop_bots: bool,
    /// With `drop_bots`: distinct User-Agents whose verdict each core remembers; when full it
    /// starts over (counted as `ingest_http_limit_hits_total{limit="bot_cache_entries"}`).
    /// Default 10000.
    pub bot_cache_entries: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            events: Vec::new(),
            node_id: String::new(),
            max_batch_events: 100,
            keep_params: Vec::new(),
            client_ip: true,
            user_agent: true,
            referer: true,
            require_event_id: false,
            drop_bots: false,
            bot_cache_entries: 10_000,
        }
    }
}

impl IngestConfig {
    /// Checks the `[ingest]` keys.
    pub fn validate(&self) -> Result<(), InvalidKey> {
        if self.node_id.len() > 64 {
            return InvalidKey::err("ingest.node_id", "must be at most 64 bytes");
        }
        if self.bot_cache_entries == 0 {
            return InvalidKey::err("ingest.bot_cache_entries", "must be at least 1");
        }
        if self.max_batch_events == 0 {
            return InvalidKey::err("ingest.max_batch_events", "must be at least 1");
        }
        for name in &self.keep_params {
            if name.is_empty() || name.len() > 64 || ["event", "domain", "file_id"].contains(&name.as_str()) {
                return InvalidKey::err(
                    "ingest.keep_params",
                    format!("`{name}` must be 1..=64 bytes and not event, domain or file_id"),
                );
            }
        }
        for name in &self.events {
            if !super::is_valid_event_name(name) {
                return InvalidKey::err(
                    "ingest.events",
                    format!("`{name}` does not match [a-z0-9_]{{1,32}}"),
                );
            }
        }
        Ok(())
    }
}
