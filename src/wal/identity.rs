//! Whose WAL this is: the identity of a WAL directory and of each of its lanes.
//!
//! ```text
//! <wal.dir>/IDENTITY      psc-wal-identity 1 / node <node id> / wal <32 hex> / end
//! <wal.dir>/core-N/LANE   psc-lane 1 / core <N> / incarnation <16 hex> / end
//! ```
//!
//! - A [`WalId`] is 128 random bits drawn when the directory is first used. It is written next
//!   to every cursor (`commit.meta`, the sink's cursor rows), and a cursor whose WAL id is not
//!   this directory's is never applied to it. A wiped or fresh WAL dir therefore starts from its
//!   own beginning, whatever the sink remembers about the node.
//! - A lane is one `core-N` directory in one *incarnation*: a lane that was drained, compacted
//!   away and later created again (the core count went down, then up) gets a new incarnation,
//!   so a cursor row left behind by the old one can never skip records of the new one.
//! - The node id is a label for humans and the scope of the delivery lease. The WAL records
//!   the node it was created for; a start under another node id is refused until the operator
//!   adopts the WAL (`player-stat-collector wal adopt`), because two hosts sharing one
//!   directory is far more often a mistake than a rename.
//!
//! Both files are written once, atomically (temp file, fsync, rename, fsync dir), before any
//! segment exists in their directory.

use std::fmt;
use std::str::FromStr;

/// 128 random bits naming one WAL directory for its whole life; shown as 32 lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct WalId(pub u128);

impl fmt::Display for WalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl FromStr for WalId {
    type Err = IdParseError;

    /// Exactly 32 lowercase hex digits, the only spelling [`fmt::Display`] writes.
    fn from_str(s: &str) -> Result<Self, IdParseError> {
        parse_hex(s, 32).map(WalId)
    }
}

/// The identity of a WAL directory: the node it belongs to and its random id.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WalIdentity {
    /// `ingest.node_id` of the collector the WAL was created (or last adopted) by.
    pub node: String,
    pub wal: WalId,
}

/// One lane of a WAL: a core directory in one incarnation. Lanes order by core first.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct LaneId {
    /// The `N` of `core-N`.
    pub core: u16,
    /// Random, drawn when the directory was created; shown as 16 lowercase hex.
    pub incarnation: u64,
}

impl fmt::Display for LaneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "core-{}.{:016x}", self.core, self.incarnation)
    }
}

/// Why an id text does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not {digits} lowercase hex digits")]
pub struct IdParseError {
    pub text: String,
    pub digits: usize,
}

/// Parses exactly `digits` lowercase hex digits.
pub fn parse_hex(s: &str, digits: usize) -> Result<u128, IdParseError> {
    let ok = s.len() == digits && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    match ok.then(|| u128::from_str_radix(s, 16)) {
        Some(Ok(v)) => Ok(v),
        _ => Err(IdParseError { text: s.to_owned(), digits }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_id_text_pairs_up_and_refuses_other_spellings() {
        for v in [0u128, 1, u128::MAX, 0x0123_4567_89ab_cdef_0011_2233_4455_6677] {
            let id = WalId(v);
            assert_eq!(id.to_string().len(), 32);
            assert_eq!(id.to_string().parse::<WalId>(), Ok(id));
        }
        for bad in
            ["", "abc", &"A".repeat(32), &"0".repeat(31), &"0".repeat(33), &format!("+{}", "0".repeat(31))]
        {
            assert!(bad.parse::<WalId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn lanes_order_by_core_and_show_their_incarnation() {
        let a = LaneId { core: 0, incarnation: u64::MAX };
        let b = LaneId { core: 1, incarnation: 0 };
        assert!(a < b);
        assert_eq!(b.to_string(), "core-1.0000000000000000");
    }
}
