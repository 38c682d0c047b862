//! The delivery lease of a node: a MySQL user lock, `GET_LOCK('psc-node:<node id>', 0)`, held
//! by one connection for as long as it lives.
//!
//! - A lock name is at most 64 characters: a node id too long for `psc-node:` + id is spelled
//!   as its first characters, `~` and the FNV-1a 64 of the whole id in hex (stable across
//!   processes and versions, so every instance of one node id asks for the same lock).
//! - Taking the lease never waits (timeout 0) and is confirmed with
//!   `IS_USED_LOCK(name) = CONNECTION_ID()`; asking again on the holding connection does not
//!   nest the lock (it is checked before `GET_LOCK` is called).
//! - When another connection holds it, the answer names that connection's id and, when
//!   `information_schema.processlist` shows it (PROCESS privilege), its host.

use super::db::{cell, Db, DbError};
use super::sql::push_quoted;
use crate::sink::LeaseState;

/// Longest user-lock name MySQL and MariaDB take.
const LOCK_NAME_CHARS_MAX: usize = 64;
const PREFIX: &str = "psc-node:";

/// The lock name of `node` (module doc).
pub fn lock_name(node: &str) -> String {
    let whole = format!("{PREFIX}{node}");
    if whole.chars().count() <= LOCK_NAME_CHARS_MAX {
        return whole;
    }
    let hash =
        node.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let keep = LOCK_NAME_CHARS_MAX - PREFIX.len() - 1 - 16;
    let head: String = node.chars().take(keep).collect();
    format!("{PREFIX}{head}~{hash:016x}")
}

/// Takes or confirms the lease of `node` on `db`.
pub async fn lease(db: &mut Db, node: &str) -> Result<LeaseState, DbError> {
    const WHAT: &str = "lease";
    let name = lock_name(node);
    if let Some(state) = holder(db, &name).await? {
        return Ok(state);
    }
    let mut sql = b"SELECT GET_LOCK(".to_vec();
    push_quoted(&name, &mut sql);
    sql.extend_from_slice(b", 0)");
    // 1 taken, 0 held by another session, NULL on an error: confirmed below either way.
    let _: Option<u64> = cell(WHAT, &db.query_one(WHAT, &sql).await?, 0)?;
    match holder(db, &name).await? {
        Some(state) => Ok(state),
        None => Ok(LeaseState::HeldElsewhere { holder: "nobody after GET_LOCK failed".into() }),
    }
}

/// `Held` if this connection holds the lock, `HeldElsewhere` if another does, `None` if free.
async fn holder(db: &mut Db, name: &str) -> Result<Option<LeaseState>, DbError> {
    const WHAT: &str = "lease holder";
    let mut sql = b"SELECT IS_USED_LOCK(".to_vec();
    push_quoted(name, &mut sql);
    sql.extend_from_slice(b"), CONNECTION_ID()");
    let row = db.query_one(WHAT, &sql).await?;
    let (used_by, me): (Option<u64>, u64) = (cell(WHAT, &row, 0)?, cell(WHAT, &row, 1)?);
    let Some(other) = used_by else { return Ok(None) };
    if other == me {
        return Ok(Some(LeaseState::Held));
    }
    let mut sql = b"SELECT host FROM information_schema.processlist WHERE id = ".to_vec();
    sql.extend_from_slice(itoa::Buffer::new().format(other).as_bytes());
    let host = match db.query(WHAT, &sql).await?.first() {
        Some(row) => cell::<Option<String>>(WHAT, row, 0)?,
        None => None,
    };
    let holder = match host {
        Some(host) => format!("MySQL connection {other} from {host}"),
        None => format!("MySQL connection {other}"),
    };
    Ok(Some(LeaseState::HeldElsewhere { holder }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_spelled_out_long_ones_hashed_to_fit() {
        assert_eq!(lock_name("web-1-0123abcd"), "psc-node:web-1-0123abcd");
        let exact = "n".repeat(64 - PREFIX.len());
        assert_eq!(lock_name(&exact), format!("{PREFIX}{exact}"));
        let long = format!("{}-89abcdef", "h".repeat(64));
        let name = lock_name(&long);
        assert_eq!(name.chars().count(), 64);
        assert!(name.starts_with("psc-node:hhhh"), "{name}");
        assert_eq!(name, lock_name(&long), "stable");
        assert_ne!(name, lock_name(&format!("{}-89abcdee", "h".repeat(64))), "the tail still counts");
        assert_eq!(lock_name(&"é".repeat(60)).chars().count(), 64, "counted in characters");
    }
}
