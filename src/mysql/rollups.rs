//! The MySQL side of rollups (`crate::rollup`): one table `rollup_<name>` per configured
//! rollup, created at start, and the per-batch upsert.
//!
//! - Table: `bucket_start DATETIME`, one column per dimension (`event`, `domain_id`,
//!   `file_id`, `client_ip`, `ua_hash`, `referer_host`), `events BIGINT UNSIGNED`, primary key
//!   (bucket_start, dimensions in the configured order). Key columns are NOT NULL: a context
//!   value the row lacks is stored as empty (`''`, `0`).
//! - The definition is stored in the table comment (`psc-rollup v1 bucket=… dimensions=…`).
//!   At start a table whose comment differs is dropped and created again if it is empty, and
//!   refused ([`DbError::RollupChanged`]) if it holds rows: counts of two definitions never
//!   mix in one table.
//! - Upsert: `INSERT … VALUES … ON DUPLICATE KEY UPDATE events = events + VALUES(events)`, in
//!   the delivery's transaction after the fenced cursor move, so a batch's counts are added
//!   exactly once. Keys go in [`crate::rollup::aggregate`]'s order (one lock order for every
//!   connection).

use super::db::{cell, Db, DbError};
use super::sql::{push_datetime_ms, push_hex_literal, push_quoted, SqlBuffer, TooLarge};
use crate::ingest::client::ua_hash;
use crate::rollup::{Count, Dimension, RollupConfig};
use crate::sink::Batch;

const COMMENT_PREFIX: &str = "psc-rollup v1 ";

/// `rollup_<name>`.
pub fn table_name(r: &RollupConfig) -> String {
    format!("rollup_{}", r.name)
}

/// The column of a dimension and its definition.
fn column(d: Dimension) -> (&'static str, &'static str) {
    match d {
        Dimension::Event => ("event", "VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL COMMENT 'Event name'"),
        Dimension::Domain => ("domain_id", "INT UNSIGNED NOT NULL COMMENT 'domains.id of the page'"),
        Dimension::FileId => ("file_id", "BIGINT UNSIGNED NOT NULL COMMENT 'The player''s file id'"),
        Dimension::ClientIp => (
            "client_ip",
            "VARBINARY(16) NOT NULL COMMENT 'Client IP, 4 or 16 bytes (INET6_NTOA to read); empty if not stored'",
        ),
        Dimension::UserAgent => {
            ("ua_hash", "BIGINT UNSIGNED NOT NULL COMMENT 'user_agents.hash of the User-Agent; 0 if not stored'")
        }
        Dimension::RefererHost => (
            "referer_host",
            "VARCHAR(253) CHARACTER SET ascii NOT NULL COMMENT 'Lower-case Referer host; empty if not stored'",
        ),
    }
}

/// `CREATE TABLE IF NOT EXISTS rollup_<name> (…)` with the definition in its comment.
pub fn create_table_sql(r: &RollupConfig) -> String {
    let mut columns =
        vec!["bucket_start DATETIME NOT NULL COMMENT 'Start of the time bucket, UTC'".to_owned()];
    let mut key = vec!["bucket_start"];
    for &d in &r.dimensions {
        let (name, definition) = column(d);
        columns.push(format!("{name} {definition}"));
        key.push(name);
    }
    columns.push("events BIGINT UNSIGNED NOT NULL COMMENT 'Events counted in the bucket for the key'".into());
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({})) ENGINE=InnoDB COMMENT='{COMMENT_PREFIX}{}'",
        table_name(r),
        columns.join(", "),
        key.join(", "),
        r.definition()
    )
}

/// Creates the tables of `rollups`, or checks that existing ones hold their definition.
pub async fn ensure_tables(db: &mut Db, rollups: &[RollupConfig]) -> Result<(), DbError> {
    for r in rollups {
        db.execute("create rollup table", create_table_sql(r).as_bytes()).await?;
        let stored = stored_definition(db, r).await?;
        let configured = format!("{COMMENT_PREFIX}{}", r.definition());
        if stored == configured {
            continue;
        }
        let table = table_name(r);
        let mut probe = b"SELECT COUNT(*) FROM (SELECT 1 FROM ".to_vec();
        probe.extend_from_slice(table.as_bytes());
        probe.extend_from_slice(b" LIMIT 1) AS t");
        let rows: u64 = cell("probe rollup table", &db.query_one("probe rollup table", &probe).await?, 0)?;
        if rows > 0 {
            return Err(DbError::RollupChanged { table, stored, configured });
        }
        db.execute("drop empty rollup table", format!("DROP TABLE {table}").as_bytes()).await?;
        db.execute("create rollup table", create_table_sql(r).as_bytes()).await?;
    }
    Ok(())
}

async fn stored_definition(db: &mut Db, r: &RollupConfig) -> Result<String, DbError> {
    const WHAT: &str = "read rollup definition";
    let mut sql = b"SELECT table_comment FROM information_schema.tables \
        WHERE table_schema = DATABASE() AND table_name = "
        .to_vec();
    push_quoted(&table_name(r), &mut sql);
    cell(WHAT, &db.query_one(WHAT, &sql).await?, 0)
}

/// Builds the upserts of `counts` (of `batch`, rollup `r`) into `sql`; `domain_ids` are the
/// batch rows' domain ids (needed when `r` has the domain dimension).
pub fn build_upserts(
    r: &RollupConfig,
    counts: &[Count<'_>],
    batch: &Batch,
    domain_ids: &[u32],
    max_bytes: usize,
    sql: &mut SqlBuffer,
) -> Result<(), TooLarge> {
    let mut prefix = format!("INSERT INTO {} (bucket_start", table_name(r));
    for &d in &r.dimensions {
        prefix.push_str(", ");
        prefix.push_str(column(d).0);
    }
    prefix.push_str(", events) VALUES ");
    const SUFFIX: &str = " ON DUPLICATE KEY UPDATE events = events + VALUES(events)";
    let mut num = itoa::Buffer::new();
    for c in counts {
        sql.push_tuple((&prefix, SUFFIX), max_bytes, c.first_row, |out| {
            out.extend_from_slice(b"('");
            // Whole seconds: the column is DATETIME.
            push_datetime_ms(c.key.bucket_start_ms, out);
            out.truncate(out.len() - 4);
            out.push(b'\'');
            for &d in &r.dimensions {
                out.push(b',');
                push_dimension(d, c, batch, domain_ids, out);
            }
            out.push(b',');
            out.extend_from_slice(num.format(c.events).as_bytes());
            out.push(b')');
        })?;
    }
    sql.finish_statement(SUFFIX);
    Ok(())
}

fn push_dimension(d: Dimension, c: &Count<'_>, batch: &Batch, domain_ids: &[u32], out: &mut Vec<u8>) {
    let mut num = itoa::Buffer::new();
    match d {
        Dimension::Event => push_quoted(c.key.event.unwrap_or(""), out),
        Dimension::Domain => out.extend_from_slice(num.format(domain_ids[c.first_row]).as_bytes()),
        Dimension::FileId => out.extend_from_slice(num.format(c.key.file_id.unwrap_or(0)).as_bytes()),
        Dimension::ClientIp => match super::sql::ip_octets(batch, &batch.rows()[c.first_row]) {
            Some((octets, len)) => push_hex_literal(&octets[..len], out),
            None => out.extend_from_slice(b"''"),
        },
        Dimension::UserAgent => {
            out.extend_from_slice(num.format(c.key.user_agent.map_or(0, ua_hash)).as_bytes())
        }
        Dimension::RefererHost => push_quoted(c.key.referer_host.unwrap_or(""), out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollup::{aggregate, Bucket};
    use crate::wal::identity::LaneId;
    use crate::wal::record::{DecodedContext, Event};
    use crate::wal::Position;

    fn rollup(dimensions: Vec<Dimension>) -> RollupConfig {
        RollupConfig { name: "plays".into(), bucket: Bucket::Minute, dimensions }
    }

    #[test]
    fn table_has_the_key_of_its_definition() {
        let sql = create_table_sql(&rollup(vec![Dimension::FileId, Dimension::Domain]));
        assert!(
            sql.starts_with("CREATE TABLE IF NOT EXISTS rollup_plays (bucket_start DATETIME NOT NULL"),
            "{sql}"
        );
        assert!(sql.contains("PRIMARY KEY (bucket_start, file_id, domain_id)"), "{sql}");
        assert!(sql.ends_with("COMMENT='psc-rollup v1 bucket=minute dimensions=file_id,domain'"), "{sql}");
    }

    #[test]
    fn upsert_adds_the_batch_counts() {
        let mut b = Batch::new(LaneId { core: 0, incarnation: 1 }, 0, Position::new(1, 0));
        let ctx = DecodedContext { ip: Some("10.0.0.1"), ..DecodedContext::default() };
        for (i, (ts, file_id)) in [(61_000u64, 7u64), (62_000, 7), (62_500, 8)].into_iter().enumerate() {
            let ev = Event { ts_ms: ts, event: "play", domain: "a.org", file_id };
            b.push(&ev, &ctx, b"", Position::new(1, i as u64 + 1));
        }
        let r =
            rollup(vec![Dimension::Domain, Dimension::FileId, Dimension::ClientIp, Dimension::RefererHost]);
        let counts = aggregate(&r, &b, 0..b.len());
        let mut sql = SqlBuffer::default();
        build_upserts(&r, &counts, &b, &[9, 9, 9], 1 << 20, &mut sql).unwrap();
        let text = String::from_utf8(sql.statements().next().unwrap().to_vec()).unwrap();
        assert_eq!(
            text,
            "INSERT INTO rollup_plays (bucket_start, domain_id, file_id, client_ip, referer_host, events) VALUES \
             ('1970-01-01 00:01:00',9,7,X'0A000001','',2),('1970-01-01 00:01:00',9,8,X'0A000001','',1) \
             ON DUPLICATE KEY UPDATE events = events + VALUES(events)"
        );
    }
}
