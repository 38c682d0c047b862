//! Client event ids in MySQL: how a statement of event rows that may repeat an id is checked,
//! and how its duplicates are counted (`ingest_events_deduplicated_total`).
//!
//! `events` has a unique key on `event_id`. The rows of a batch in which some row has an id go
//! in with IGNORE semantics (`INSERT IGNORE`; `LOAD DATA LOCAL … IGNORE`): a row whose id is
//! stored already — by any core, node or earlier delivery, or earlier in the same statement —
//! is skipped, with one warning 1062 each (checked against MariaDB 10.11). Rows without an id
//! never collide: a unique key holds any number of NULLs.
//!
//! But IGNORE (and LOCAL, always) also turns strict-mode data errors into warnings and cut
//! values, which the sink must still refuse: such rows go to `ingest_rejects` whole, never into
//! `events` cut. So after each statement, with `sent` rows of which the server took `took`:
//! - `duplicates = sent − took`; with no id in the statement any shortfall is a refusal;
//! - warnings == duplicates: every warning is a duplicate's: accepted;
//! - otherwise the exact count is read (`SHOW COUNT(*) WARNINGS`: the OK packet's count is 16
//!   bits) and the warnings listed; the first that is neither a note nor a 1062 is the refusal
//!   (the delivery core bisects down to its row and dead-letters it); fewer warnings than
//!   duplicates, or more than are listed, is a refusal too (nothing unexplained is committed).
//!
//! The sink's own exactly-once does not rest on this and is not touched by it: the fenced
//! cursor move runs first in the same transaction, so the rows of a WAL record are committed
//! once whatever the ids say; the unique key only ever drops a client's second copy of an
//! event. Duplicates are counted after `COMMIT` only, so a rolled-back delivery counts nothing
//! (one whose `COMMIT` outcome was unknown and that did commit is not counted: a rare
//! undercount, never an overcount).

use super::db::{cell, Db, DbError};

/// MySQL's "Duplicate entry … for key …".
pub const ER_DUP_ENTRY: u32 = 1062;

/// Why a statement of event rows was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum RowsError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// The server took the rows but warned of something other than a duplicate (a value cut
    /// or converted), or took fewer rows than it can explain: refused as an INSERT would be.
    #[error("event rows refused (code {code}): {message}")]
    Refused { code: u32, message: String },
}

/// What the counts alone say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Exactly one warning per skipped row: these many duplicates, nothing else.
    Duplicates(u64),
    /// Warnings and duplicates differ: the warnings must be read.
    Inspect { duplicates: u64 },
}

fn verdict(sent: u64, took: u64, warnings: u64, ids: bool) -> Result<Verdict, RowsError> {
    if took > sent || (took < sent && !ids) {
        let message = format!("the server took {took} rows of the {sent} sent");
        return Err(RowsError::Refused { code: 0, message });
    }
    let duplicates = sent - took;
    Ok(if warnings == duplicates { Verdict::Duplicates(duplicates) } else { Verdict::Inspect { duplicates } })
}

/// Checks the statement just run on `db`, which was sent `sent` rows (`ids`: some carry an
/// event id) and took `took`; returns how many were skipped as duplicates (module doc).
pub async fn check_rows(db: &mut Db, sent: u64, took: u64, ids: bool) -> Result<u64, RowsError> {
    let duplicates = match verdict(sent, took, u64::from(db.warnings()), ids)? {
        Verdict::Duplicates(n) => return Ok(n),
        Verdict::Inspect { duplicates } => duplicates,
    };
    const WHAT: &str = "read warnings";
    let count: u64 = cell(WHAT, &db.query_one(WHAT, b"SHOW COUNT(*) WARNINGS").await?, 0)?;
    if count == duplicates {
        return Ok(duplicates);
    }
    let listed = db.query(WHAT, b"SHOW WARNINGS").await?;
    for row in &listed {
        let level: String = cell(WHAT, row, 0)?;
        let code: u32 = cell(WHAT, row, 1)?;
        if level != "Note" && code != ER_DUP_ENTRY {
            return Err(RowsError::Refused { code, message: cell(WHAT, row, 2)? });
        }
    }
    if count < duplicates || listed.len() as u64 != count {
        let message = format!(
            "{duplicates} rows skipped with {count} warnings ({} listed): not all explained by duplicate event ids",
            listed.len()
        );
        return Err(RowsError::Refused { code: 0, message });
    }
    // Only notes beside one 1062 per skipped row.
    Ok(duplicates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(r: Result<Verdict, RowsError>) -> bool {
        matches!(r, Err(RowsError::Refused { code: 0, .. }))
    }

    #[test]
    fn counts_decide_when_one_warning_per_skipped_row() {
        assert_eq!(verdict(10, 10, 0, false).ok(), Some(Verdict::Duplicates(0)));
        assert_eq!(verdict(10, 10, 0, true).ok(), Some(Verdict::Duplicates(0)));
        assert_eq!(verdict(10, 7, 3, true).ok(), Some(Verdict::Duplicates(3)));
        assert_eq!(verdict(10, 7, 4, true).ok(), Some(Verdict::Inspect { duplicates: 3 }), "one more");
        assert_eq!(verdict(10, 10, 1, false).ok(), Some(Verdict::Inspect { duplicates: 0 }), "a cut value");
        assert_eq!(
            verdict(100_000, 0, 65_535, true).ok(),
            Some(Verdict::Inspect { duplicates: 100_000 }),
            "the OK packet's 16-bit count is not trusted"
        );
    }

    #[test]
    fn rows_lost_without_ids_or_rows_gained_are_refused() {
        assert!(refused(verdict(10, 9, 1, false)), "no id can explain a skipped row");
        assert!(refused(verdict(10, 11, 0, true)));
    }
}
