//! The tables in ClickHouse: their columns (one spec used by the DDL, the INSERT column lists
//! and the Native encoder), their engines and keys, and why.
//!
//! Columns this version adds to a table created by an older one are added at connect
//! (`ALTER TABLE … ADD COLUMN`, after reading `system.columns`); nothing is ever dropped or
//! retyped: a column of another type is the operator's choice, and the INSERT is refused.
//!
//! Only what Debian's 18.16 has: `DateTime` (seconds; the milliseconds in their own column),
//! no `DateTime64`, no `LowCardinality`, no `IPv6` type (a `FixedString(16)`), no TTL, no
//! table comments (column comments exist). Tables are created with `IF NOT EXISTS` at every
//! connect, so a dropped table comes back on the next connect; a table that exists with other
//! columns is left alone (an INSERT into it is refused, and the rows are dead-lettered).

/// One column: name, ClickHouse type, comment (stored with the column).
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub ty: &'static str,
    pub comment: &'static str,
}

pub(super) const fn col(name: &'static str, ty: &'static str, comment: &'static str) -> Column {
    Column { name, ty, comment }
}

/// `events`: one row per event, in the order the Native encoder writes them.
pub static EVENTS: &[Column] = &[
    col("received_at", "DateTime('UTC')", "When a core accepted the event (UTC, seconds)"),
    col("received_ms", "UInt16", "Milliseconds of received_at, 0-999"),
    col("event", "String", "Event name, [a-z0-9_]{1,32}"),
    col("domain", "String", "Lower-case host name the player ran on"),
    col("file_id", "UInt64", "File played"),
    col("client_ip", "FixedString(16)", "Client address as IPv6 (IPv4 mapped); all zero = not stored"),
    col("user_agent", "String", "User-Agent; empty = not stored"),
    col("referer_host", "String", "Host of the Referer; empty = not stored"),
    col("extra", "String", "Kept extra parameters as a JSON object; empty = none"),
    col("event_id", "FixedString(16)", "Client event id (eid / event_id), the UUID bytes; all zero = none"),
    col(
        "country",
        "FixedString(2)",
        "ISO 3166-1 alpha-2 country of client_ip (enrich.geoip_db); zero = unknown",
    ),
    col("node", "String", "ingest.node_id of the collector that accepted it"),
    col("wal_id", "String", "WAL id (32 hex) of that collector's WAL"),
    col("core", "UInt16", "Lane: the N of core-N"),
    col("incarnation", "UInt64", "Lane: incarnation of core-N"),
    col("wal_segment", "UInt32", "WAL segment of the record"),
    col("wal_end", "UInt64", "Offset just past the record: the lane's cursor once this row is in"),
];

/// Why this sort key (also in the README): the primary index serves a domain and a time range
/// (`domain`, then the hour), and a file and a time range too: a file is played on a handful
/// of domains, and within (domain, hour) rows are sorted by `file_id`, so the index skips the
/// granules of other files even when the domain is not given. `received_at` last makes a row
/// findable by its full key, which is how `ingest_cursors` probes are looked up.
pub const EVENTS_ENGINE: &str = "ENGINE = MergeTree \
     PARTITION BY toYYYYMM(received_at) \
     ORDER BY (domain, toStartOfHour(received_at), file_id, received_at)";

/// `ingest_cursors`: one row per delivery step of a lane (`super::notes`).
pub static CURSORS: &[Column] = &[
    col("wal_id", "String", "WAL id (32 hex)"),
    col("node", "String", "ingest.node_id of the collector that wrote the step"),
    col("core", "UInt16", "Lane: the N of core-N"),
    col("incarnation", "UInt64", "Lane: incarnation of core-N"),
    col("seq", "UInt64", "Step number within the lane; the highest decides the cursor"),
    col("kind", "UInt8", "0 advance (committed as written), 1 events, 2 rejects, 3 retired, 4 rollup"),
    col("from_segment", "UInt32", "Cursor before the step: segment"),
    col("from_offset", "UInt64", "Cursor before the step: offset"),
    col("to_segment", "UInt32", "Cursor once the step is committed: segment"),
    col("to_offset", "UInt64", "Cursor once the step is committed: offset"),
    col("probe_domain", "String", "Kinds 1-2: the step's last row: domain"),
    col("probe_at", "DateTime('UTC')", "Kinds 1-2: the step's last row: received_at"),
    col("probe_file_id", "UInt64", "Kinds 1-2: the step's last row: file_id"),
    col("probe_segment", "UInt32", "Kinds 1-2: the step's last row: WAL segment"),
    col("probe_end", "UInt64", "Kinds 1-2: the step's last row: offset just past it"),
    col("written_at", "DateTime('UTC')", "When the step was written (collector clock)"),
    col(
        "target",
        "String",
        "Table whose cursor the step moves: events or rollup_<name>; empty = every table of the lane",
    ),
];

pub const CURSORS_ENGINE: &str = "ENGINE = MergeTree ORDER BY (wal_id, core, incarnation, seq)";

/// `ingest_rejects`: dead letters, one row per refused WAL record.
pub static REJECTS: &[Column] = &[
    col("node", "String", "ingest.node_id of the collector that dead-lettered the row"),
    col("wal_id", "String", "WAL id (32 hex) the record comes from"),
    col("core", "UInt16", "Lane: the N of core-N"),
    col("incarnation", "UInt64", "Lane: incarnation of core-N"),
    col("segment", "UInt32", "WAL segment of the record"),
    col("offset", "UInt64", "Byte offset where the record starts in that segment"),
    col("end_offset", "UInt64", "Offset just past the record"),
    col("raw_line", "String", "The WAL record line as on disk, newline included"),
    col("error_code", "UInt32", "ClickHouse error code of the refusal (0: refused by the collector)"),
    col("error_message", "String", "Error message of the refusal (at most 1000 characters)"),
    col("rejected_at", "DateTime('UTC')", "When the row was dead-lettered (collector clock)"),
];

pub const REJECTS_ENGINE: &str =
    "ENGINE = MergeTree ORDER BY (wal_id, core, incarnation, segment, end_offset)";

/// The statements that create the database and the tables, in order.
pub fn create_statements(db: &str) -> Vec<String> {
    vec![
        format!("CREATE DATABASE IF NOT EXISTS `{db}`"),
        create_table(db, "events", EVENTS, EVENTS_ENGINE),
        create_table(db, "ingest_cursors", CURSORS, CURSORS_ENGINE),
        create_table(db, "ingest_rejects", REJECTS, REJECTS_ENGINE),
    ]
}

/// The names of `table`'s columns, one a line.
pub fn columns_query(db: &str, table: &str) -> String {
    format!(
        "SELECT name FROM system.columns WHERE database = '{db}' AND table = '{table}' FORMAT TabSeparated"
    )
}

/// The tables and their specs, for [`add_missing_columns`].
pub fn tables() -> [(&'static str, &'static [Column]); 3] {
    [("events", EVENTS), ("ingest_cursors", CURSORS), ("ingest_rejects", REJECTS)]
}

/// `ALTER TABLE … ADD COLUMN` statements for the columns of `spec` not in `present`.
pub fn add_missing_columns(db: &str, table: &str, spec: &[Column], present: &[&str]) -> Vec<String> {
    spec.iter()
        .filter(|c| !present.contains(&c.name))
        .map(|c| format!("ALTER TABLE `{db}`.`{table}` ADD COLUMN {}", column_definition(c)))
        .collect()
}

fn column_definition(c: &Column) -> String {
    format!("`{}` {} COMMENT '{}'", c.name, c.ty, c.comment.replace('\'', "\\'"))
}

pub(super) fn create_table(db: &str, table: &str, columns: &[Column], engine: &str) -> String {
    let defs: Vec<String> = columns.iter().map(column_definition).collect();
    format!("CREATE TABLE IF NOT EXISTS `{db}`.`{table}` ({}) {engine}", defs.join(", "))
}

/// `INSERT INTO db.table (c1, …) FORMAT Native`: the column list makes the server refuse a
/// table that lacks one of our columns (code 16) instead of silently dropping its values.
pub fn insert_statement(db: &str, table: &str, columns: &[Column]) -> String {
    let names: Vec<String> = columns.iter().map(|c| format!("`{}`", c.name)).collect();
    format!("INSERT INTO `{db}`.`{table}` ({}) FORMAT Native", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickhouse::native::fixed_width;

    #[test]
    fn every_column_has_a_type_the_encoder_writes_and_a_comment() {
        for c in EVENTS.iter().chain(CURSORS).chain(REJECTS) {
            assert!(fixed_width(c.ty).is_some() || c.ty == "String", "{}: {}", c.name, c.ty);
            assert!(!c.comment.is_empty(), "{}", c.name);
        }
    }

    #[test]
    fn statements_name_the_database() {
        let all = create_statements("psc_t");
        assert_eq!(all.len(), 4);
        assert!(
            all[1].starts_with("CREATE TABLE IF NOT EXISTS `psc_t`.`events` (`received_at` DateTime('UTC')")
        );
        assert!(all[1].ends_with("ORDER BY (domain, toStartOfHour(received_at), file_id, received_at)"));
        let added = add_missing_columns("psc", "events", EVENTS, &["received_at", "extra"]);
        assert_eq!(added.len(), EVENTS.len() - 2);
        assert!(added[0].starts_with("ALTER TABLE `psc`.`events` ADD COLUMN `received_ms` UInt16 COMMENT"));
        let insert = insert_statement("psc", "ingest_rejects", REJECTS);
        assert!(insert.starts_with("INSERT INTO `psc`.`ingest_rejects` (`node`, `wal_id`"));
        assert!(insert.ends_with("`rejected_at`) FORMAT Native"));
    }
}
