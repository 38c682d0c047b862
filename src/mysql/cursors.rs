//! The lanes' cursors in `ingest_cursors` (migration 003): the fenced move that opens every
//! delivery transaction, the locking read, and retirement.
//!
//! Invariants:
//! - a cursor row is keyed by (WAL id, lane incarnation); a query never touches rows of
//!   another WAL id;
//! - a move happens only inside the caller's transaction and only from where the batch
//!   starts: `UPDATE … WHERE segment/offset = from` matches one row or none (the session
//!   counts found rows, so an empty batch's no-op move still matches), and on none the row is
//!   read with `FOR UPDATE`: absent → inserted (a concurrent insert of the same lane makes
//!   ours a duplicate key, which is a fence), elsewhere → fenced;
//! - reads are locking reads inside a transaction, so a transaction still committing on the
//!   server (a connection given up on) is waited for, never read around.

use super::db::{cell, Db, DbError};
use super::sql::push_quoted;
use crate::sink::SinkCursor;
use crate::wal::identity::{parse_hex, LaneId, WalIdentity};
use crate::wal::Position;

/// `ER_DUP_ENTRY`.
const ER_DUP_ENTRY: u16 = 1062;

/// What the fenced move found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    /// The cursor is at `to` now (inside the open transaction).
    Done,
    /// The lane's cursor is elsewhere; nothing was changed.
    Fenced(Position),
}

/// Moves `lane`'s cursor from `from` to `to` inside the open transaction (module doc).
pub async fn move_cursor(
    db: &mut Db,
    wal: &WalIdentity,
    lane: LaneId,
    from: Position,
    to: Position,
) -> Result<Moved, DbError> {
    let mut sql = b"UPDATE ingest_cursors SET ".to_vec();
    push_position(to, &mut sql);
    sql.extend_from_slice(b", node = ");
    push_quoted(&wal.node, &mut sql);
    push_lane_key(wal, lane, &mut sql);
    sql.extend_from_slice(b" AND segment = ");
    push_number(u64::from(from.segment), &mut sql);
    sql.extend_from_slice(b" AND `offset` = ");
    push_number(from.offset, &mut sql);
    if db.execute("move cursor", &sql).await? == 1 {
        return Ok(Moved::Done);
    }
    match lock_cursor(db, wal, lane).await? {
        Some(found) => Ok(Moved::Fenced(found)),
        None => insert_cursor(db, wal, lane, to).await,
    }
}

async fn insert_cursor(db: &mut Db, wal: &WalIdentity, lane: LaneId, to: Position) -> Result<Moved, DbError> {
    let mut sql =
        b"INSERT INTO ingest_cursors (wal_id, incarnation, node, core, segment, `offset`) VALUES ('".to_vec();
    sql.extend_from_slice(wal.wal.to_string().as_bytes());
    sql.extend_from_slice(b"','");
    sql.extend_from_slice(incarnation_hex(lane).as_bytes());
    sql.extend_from_slice(b"',");
    push_quoted(&wal.node, &mut sql);
    for n in [u64::from(lane.core), u64::from(to.segment), to.offset] {
        sql.push(b',');
        push_number(n, &mut sql);
    }
    sql.push(b')');
    match db.execute("insert cursor", &sql).await {
        Ok(_) => Ok(Moved::Done),
        // Another session inserted the lane's first cursor since our read; it is committed
        // (our insert waited for its lock), so a locking read sees it.
        Err(e) if e.server_code() == Some(ER_DUP_ENTRY) => match lock_cursor(db, wal, lane).await? {
            Some(found) => Ok(Moved::Fenced(found)),
            None => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// The lane's cursor, read with `FOR UPDATE` inside the open transaction.
async fn lock_cursor(db: &mut Db, wal: &WalIdentity, lane: LaneId) -> Result<Option<Position>, DbError> {
    const WHAT: &str = "lock cursor";
    let mut sql = b"SELECT segment, `offset` FROM ingest_cursors".to_vec();
    push_lane_key(wal, lane, &mut sql);
    sql.extend_from_slice(b" FOR UPDATE");
    match db.query(WHAT, &sql).await?.first() {
        Some(row) => Ok(Some(Position::new(cell(WHAT, row, 0)?, cell(WHAT, row, 1)?))),
        None => Ok(None),
    }
}

/// Every cursor of `wal`, by a locking read in its own transaction.
pub async fn read_cursors(db: &mut Db, wal: &WalIdentity) -> Result<Vec<SinkCursor>, DbError> {
    const WHAT: &str = "read cursors";
    let mut sql =
        b"SELECT incarnation, core, segment, `offset` FROM ingest_cursors WHERE wal_id = '".to_vec();
    sql.extend_from_slice(wal.wal.to_string().as_bytes());
    sql.extend_from_slice(b"' FOR UPDATE");
    // Inside a transaction: a locking read under autocommit is not guaranteed to lock.
    db.execute("start transaction", b"START TRANSACTION").await?;
    let rows = db.query(WHAT, &sql).await?;
    db.execute("commit", b"COMMIT").await?;
    rows.iter()
        .map(|row| {
            let text: String = cell(WHAT, row, 0)?;
            let incarnation = parse_hex(&text, 16).map_err(|_| DbError::Decode {
                what: WHAT,
                column: 0,
                value: text.clone(),
                expected: "16 lowercase hex digits",
            })? as u64;
            let lane = LaneId { core: cell(WHAT, row, 1)?, incarnation };
            Ok(SinkCursor { lane, position: Position::new(cell(WHAT, row, 2)?, cell(WHAT, row, 3)?) })
        })
        .collect()
}

/// Deletes the cursor rows of `lanes` of `wal` (autocommit; idempotent).
pub async fn retire(db: &mut Db, wal: &WalIdentity, lanes: &[LaneId]) -> Result<(), DbError> {
    if lanes.is_empty() {
        return Ok(());
    }
    let mut sql = b"DELETE FROM ingest_cursors WHERE wal_id = '".to_vec();
    sql.extend_from_slice(wal.wal.to_string().as_bytes());
    sql.extend_from_slice(b"' AND incarnation IN (");
    for (i, &lane) in lanes.iter().enumerate() {
        if i > 0 {
            sql.push(b',');
        }
        sql.push(b'\'');
        sql.extend_from_slice(incarnation_hex(lane).as_bytes());
        sql.push(b'\'');
    }
    sql.push(b')');
    db.execute("retire cursors", &sql).await.map(drop)
}

/// The incarnation as `LaneId`'s display and the LANE file spell it.
pub fn incarnation_hex(lane: LaneId) -> String {
    format!("{:016x}", lane.incarnation)
}

/// ` WHERE wal_id = '…' AND incarnation = '…'`
fn push_lane_key(wal: &WalIdentity, lane: LaneId, sql: &mut Vec<u8>) {
    sql.extend_from_slice(b" WHERE wal_id = '");
    sql.extend_from_slice(wal.wal.to_string().as_bytes());
    sql.extend_from_slice(b"' AND incarnation = '");
    sql.extend_from_slice(incarnation_hex(lane).as_bytes());
    sql.push(b'\'');
}

fn push_position(p: Position, sql: &mut Vec<u8>) {
    sql.extend_from_slice(b"segment = ");
    push_number(u64::from(p.segment), sql);
    sql.extend_from_slice(b", `offset` = ");
    push_number(p.offset, sql);
}

fn push_number(n: u64, sql: &mut Vec<u8>) {
    sql.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_key_and_position_text() {
        let wal = WalIdentity { node: "n'1".into(), wal: crate::wal::identity::WalId(0xab) };
        let lane = LaneId { core: 3, incarnation: 0xff };
        let mut sql = Vec::new();
        push_position(Position::new(2, 10), &mut sql);
        push_lane_key(&wal, lane, &mut sql);
        assert_eq!(
            String::from_utf8(sql).unwrap(),
            format!(
                "segment = 2, `offset` = 10 WHERE wal_id = '{}ab' AND incarnation = '00000000000000ff'",
                "0".repeat(30)
            )
        );
    }
}
