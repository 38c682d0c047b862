//! The `[sink]` keys: which kind of database the flusher delivers to, and how rows are spread
//! over several of them.

use serde::Deserialize;

use super::shard::ShardBy;

/// Which sink implementation delivers (`sink.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Mysql,
    Clickhouse,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// `mysql` or `clickhouse`. Default `mysql`.
    pub kind: SinkKind,
    /// With several shards (`mysql.shards`, `clickhouse.shards`): `domain` or `file_id` picks
    /// a row's shard by a stable hash (`crate::sink::shard`). Default `domain`.
    pub shard_by: ShardBy,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self { kind: SinkKind::Mysql, shard_by: ShardBy::Domain }
    }
}
