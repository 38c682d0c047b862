//! The v1 flusher's cursors, `(node, core)` rows in `ingest_cursors_v1` (renamed so by
//! migration 003). Only `crate::flush` (the v1 flusher) uses this; it goes away with it, when
//! the delivery core drives [`super::MysqlSink`].

use super::db::{cell, Db, DbError};
use super::sql::{push_quoted, SqlBuffer};
use crate::wal::Position;

/// This node's v1 cursors as (core, position), by a locking read in its own transaction.
pub async fn read_cursors(db: &mut Db, node: &str) -> Result<Vec<(usize, Position)>, DbError> {
    const WHAT: &str = "read ingest_cursors_v1";
    let mut sql = b"SELECT core, segment, `offset` FROM ingest_cursors_v1 WHERE node = ".to_vec();
    push_quoted(node, &mut sql);
    sql.extend_from_slice(b" FOR UPDATE");
    db.execute("start transaction", b"START TRANSACTION").await?;
    let rows = db.query(WHAT, &sql).await?;
    db.execute("commit", b"COMMIT").await?;
    rows.iter()
        .map(|r| Ok((cell::<u16>(WHAT, r, 0)? as usize, Position::new(cell(WHAT, r, 1)?, cell(WHAT, r, 2)?))))
        .collect()
}

/// Appends the upsert of this node's v1 cursors to `sql` (one statement, a handful of rows).
pub fn build_cursor_upsert(node: &str, ends: &[(usize, Position)], sql: &mut SqlBuffer) {
    const SUFFIX: &str = " ON DUPLICATE KEY UPDATE segment = VALUES(segment), `offset` = VALUES(`offset`)";
    const PREFIX: &str = "INSERT INTO ingest_cursors_v1 (node, core, segment, `offset`) VALUES ";
    let mut num = itoa::Buffer::new();
    for (i, &(core, pos)) in ends.iter().enumerate() {
        let pushed = sql.push_tuple((PREFIX, SUFFIX), usize::MAX, i, |out| {
            out.push(b'(');
            push_quoted(node, out);
            for n in [core as u64, u64::from(pos.segment), pos.offset] {
                out.push(b',');
                out.extend_from_slice(num.format(n).as_bytes());
            }
            out.push(b')');
        });
        debug_assert!(pushed.is_ok(), "no limit, nothing too large");
    }
    sql.finish_statement(SUFFIX);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_upsert_text() {
        let mut sql = SqlBuffer::default();
        build_cursor_upsert("n1", &[(0, Position::new(2, 10)), (3, Position::new(1, 5))], &mut sql);
        let text = String::from_utf8(sql.statements().next().unwrap().to_vec()).unwrap();
        assert_eq!(
            text,
            "INSERT INTO ingest_cursors_v1 (node, core, segment, `offset`) VALUES ('n1',0,2,10),('n1',3,1,5) \
             ON DUPLICATE KEY UPDATE segment = VALUES(segment), `offset` = VALUES(`offset`)"
        );
    }
}
