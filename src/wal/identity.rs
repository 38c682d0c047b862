//! Whose WAL this is: the identity of a WAL directory (`IDENTITY`); lanes are in `super::lane`.
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
//!   the node it was created for; a start under another node id is refused
//!   ([`IdentityError::NodeMismatch`]) until the operator adopts the WAL ([`adopt`],
//!   `player-stat-collector wal adopt`), because two hosts sharing one directory is far more
//!   often a mistake than a rename. Cursors are keyed by the WAL id, so adopting keeps them.
//! - An empty `ingest.node_id` means the derived default `<hostname>-<first 8 hex of the WAL
//!   id>` ([`expected_node`]): two instances on one host, with two WAL dirs, stay apart.
//!
//! Invariants: `IDENTITY` is written (atomically, `super::durable::write_atomic`) before any
//! `core-N` directory exists, and its WAL id never changes ([`adopt`] rewrites only the node).
//! [`open_identity`] creates it only in a directory that holds no WAL data; a directory with
//! segments or `commit.meta` but no `IDENTITY` is a WAL of the previous version (upgraded by
//! `crate::cursor::open_wal_identity`, which knows `commit.meta`) or a damaged one (refused).

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::durable::{atomic_points, write_atomic};
use super::segment::{core_dir, list_cores, list_segments};
use super::WalError;
use crate::failpoint;

/// File name of the identity inside `wal.dir`.
pub const IDENTITY_FILE: &str = "IDENTITY";
const IDENTITY_HEADER: &str = "psc-wal-identity 1";
/// `commit.meta`'s name, only to recognise a directory that already holds a WAL.
const COMMIT_META_FILE: &str = "commit.meta";
/// The sub-command named in [`IdentityError::NodeMismatch`].
pub const ADOPT_COMMAND: &str = "player-stat-collector wal adopt --config FILE";

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

/// Why a WAL directory's identity or a lane could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("{path} is corrupt at line {line}: {reason}")]
    Corrupt { path: PathBuf, line: usize, reason: &'static str },
    #[error(
        "WAL {dir} (wal id {wal}) belongs to node `{wal_node}`, but this collector runs as node \
         `{node}`{how}. If this host now owns that WAL (the hostname or ingest.node_id changed), \
         adopt it with `{ADOPT_COMMAND}`: its cursors are keyed by the WAL id and carry over. \
         Otherwise point wal.dir at this node's own WAL.",
        how = if *.derived { " (the default: <hostname>-<first 8 hex of the wal id>)" } else { "" }
    )]
    NodeMismatch { dir: PathBuf, wal: WalId, wal_node: String, node: String, derived: bool },
    #[error(
        "{dir} holds WAL data (segments or commit.meta) but no IDENTITY file. A WAL of the \
         previous version is upgraded when the collector starts; otherwise IDENTITY was removed: \
         restore it (a new WAL id would deliver again what the sink already holds) or move the \
         directory aside"
    )]
    Missing { dir: PathBuf },
    #[error("node id `{node}` cannot be stored: it must be non-empty printable text without spaces")]
    BadNode { node: String },
    #[error("{path} belongs to core {found}, not core {expected} (was the directory renamed?)")]
    LaneMismatch { path: PathBuf, expected: u16, found: u16 },
    #[error("cannot draw random bits for a new id: {0}")]
    Random(io::Error),
}

/// The node id a collector configured with `configured` (`ingest.node_id`, empty = derived)
/// on `hostname` expects a WAL with id `wal` to carry.
pub fn expected_node(configured: &str, hostname: &str, wal: WalId) -> String {
    if configured.is_empty() {
        format!("{hostname}-{}", &wal.to_string()[..8])
    } else {
        configured.to_owned()
    }
}

/// `<wal_dir>/IDENTITY`.
pub fn identity_path(wal_dir: &Path) -> PathBuf {
    wal_dir.join(IDENTITY_FILE)
}

/// The text of an `IDENTITY` file.
pub fn render_identity(id: &WalIdentity) -> String {
    debug_assert!(node_is_storable(&id.node));
    format!("{IDENTITY_HEADER}\nnode {}\nwal {}\nend\n", id.node, id.wal)
}

/// Inverse of [`render_identity`]; `Err((line, reason))`.
pub fn parse_identity(text: &str) -> Result<WalIdentity, (usize, &'static str)> {
    let [node, wal] = parse_fields(text, IDENTITY_HEADER, ["node", "wal"])?;
    let wal = wal.parse().map_err(|_| (3, "wal id is not 32 lowercase hex digits"))?;
    if !node_is_storable(node) {
        return Err((2, "bad node id"));
    }
    Ok(WalIdentity { node: node.to_owned(), wal })
}

/// Node ids are one word of printable ASCII or UTF-8, so they fit one line of the formats.
pub(crate) fn node_is_storable(node: &str) -> bool {
    !node.is_empty() && !node.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Parses `header`, then one `key value` line per key in order, then `end`: the shape of the
/// WAL's small files. Returns the values; `Err((line number, reason))`.
pub(crate) fn parse_fields<'t, const N: usize>(
    text: &'t str,
    header: &str,
    keys: [&str; N],
) -> Result<[&'t str; N], (usize, &'static str)> {
    let mut lines = text.lines();
    if lines.next() != Some(header) {
        return Err((1, "missing or unknown header"));
    }
    let mut values = [""; N];
    for (i, key) in keys.iter().enumerate() {
        let line = lines.next().ok_or((i + 2, "truncated"))?;
        match line.split_once(' ') {
            Some((k, v)) if k == *key => values[i] = v,
            _ => return Err((i + 2, "unexpected line")),
        }
    }
    match (lines.next(), lines.next()) {
        (Some("end"), None) => Ok(values),
        _ => Err((N + 2, "truncated or trailing lines (no end line)")),
    }
}

/// Reads `<wal_dir>/IDENTITY`; `Ok(None)` if there is none.
pub fn read_identity(wal_dir: &Path) -> Result<Option<WalIdentity>, IdentityError> {
    let path = identity_path(wal_dir);
    let Some(text) = read_small_file(&path, "identity.read")? else {
        return Ok(None);
    };
    parse_identity(&text).map(Some).map_err(|(line, reason)| IdentityError::Corrupt { path, line, reason })
}

/// Reads a small text file; `Ok(None)` if it does not exist. Not UTF-8 is corrupt at line 0.
pub(crate) fn read_small_file(path: &Path, point: &str) -> Result<Option<String>, IdentityError> {
    match failpoint::io(point).and_then(|()| fs::read_to_string(path)) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            Err(IdentityError::Corrupt { path: path.to_owned(), line: 0, reason: "not UTF-8" })
        }
        Err(source) => Err(WalError::Io { path: path.to_owned(), source }.into()),
    }
}

/// Writes `<wal_dir>/IDENTITY` atomically (creating `wal_dir` if needed).
pub fn write_identity(wal_dir: &Path, id: &WalIdentity) -> Result<(), IdentityError> {
    if !node_is_storable(&id.node) {
        return Err(IdentityError::BadNode { node: id.node.clone() });
    }
    super::durable::create_dir(wal_dir, "identity.mkdir")?;
    write_atomic(wal_dir, IDENTITY_FILE, render_identity(id).as_bytes(), atomic_points!("identity"))?;
    Ok(())
}

/// The identity of `wal_dir`: read and checked against the node this collector runs as, or
/// created with a new random WAL id when the directory holds no WAL yet (see the module doc).
pub fn open_identity(
    wal_dir: &Path,
    configured_node: &str,
    hostname: &str,
) -> Result<WalIdentity, IdentityError> {
    if let Some(id) = read_identity(wal_dir)? {
        check_node(wal_dir, &id, configured_node, hostname)?;
        return Ok(id);
    }
    if holds_wal_data(wal_dir)? {
        return Err(IdentityError::Missing { dir: wal_dir.to_owned() });
    }
    create_identity(wal_dir, configured_node, hostname)
}

/// Draws a new WAL id and writes `IDENTITY` with the node this collector runs as. Only for a
/// directory without WAL data, or one of the previous version that never committed anything.
pub fn create_identity(
    wal_dir: &Path,
    configured_node: &str,
    hostname: &str,
) -> Result<WalIdentity, IdentityError> {
    let wal = WalId(random_u128()?);
    let id = WalIdentity { node: expected_node(configured_node, hostname, wal), wal };
    write_identity(wal_dir, &id)?;
    tracing::info!(dir = %wal_dir.display(), node = %id.node, wal = %id.wal, "WAL identity created");
    Ok(id)
}

/// Refuses an identity whose node is not the one this collector runs as.
pub fn check_node(
    wal_dir: &Path,
    id: &WalIdentity,
    configured_node: &str,
    hostname: &str,
) -> Result<(), IdentityError> {
    let node = expected_node(configured_node, hostname, id.wal);
    if id.node == node {
        return Ok(());
    }
    Err(IdentityError::NodeMismatch {
        dir: wal_dir.to_owned(),
        wal: id.wal,
        wal_node: id.node.clone(),
        node,
        derived: configured_node.is_empty(),
    })
}

/// What [`adopt`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    pub previous: WalIdentity,
    pub now: WalIdentity,
}

/// Makes the WAL of `wal_dir` this node's: rewrites its node id (same WAL id, so every cursor
/// keyed by it carries over). The caller holds the WAL's lock (no collector runs on it).
pub fn adopt(wal_dir: &Path, configured_node: &str, hostname: &str) -> Result<Adopted, IdentityError> {
    let previous =
        read_identity(wal_dir)?.ok_or_else(|| IdentityError::Missing { dir: wal_dir.to_owned() })?;
    let now = WalIdentity { node: expected_node(configured_node, hostname, previous.wal), wal: previous.wal };
    if now != previous {
        write_identity(wal_dir, &now)?;
    }
    Ok(Adopted { previous, now })
}

/// True if `wal_dir` has `commit.meta` or a `core-N` directory with a segment or a LANE file.
pub fn holds_wal_data(wal_dir: &Path) -> Result<bool, IdentityError> {
    if wal_dir.join(COMMIT_META_FILE).exists() {
        return Ok(true);
    }
    any_core_dir(wal_dir, |dir, segments| !segments.is_empty() || dir.join(super::lane::LANE_FILE).exists())
}

/// True if a `core-N` directory of `wal_dir` has a LANE file: the WAL was written by this
/// version (the previous one had no LANE files).
pub fn holds_lanes(wal_dir: &Path) -> Result<bool, IdentityError> {
    any_core_dir(wal_dir, |dir, _| dir.join(super::lane::LANE_FILE).exists())
}

/// True if `test(core dir, its segments)` holds for a `core-N` directory of `wal_dir`.
fn any_core_dir(wal_dir: &Path, test: impl Fn(&Path, &[u32]) -> bool) -> Result<bool, IdentityError> {
    let io = |source| IdentityError::Wal(WalError::Io { path: wal_dir.to_owned(), source });
    let cores = match failpoint::io("identity.list").and_then(|()| list_cores(wal_dir)) {
        Ok(cores) => cores,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io(e)),
    };
    for core in cores {
        let dir = core_dir(wal_dir, core);
        let segments = failpoint::io("identity.list").and_then(|()| list_segments(&dir)).map_err(io)?;
        if test(&dir, &segments) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// 128 bits from the kernel's CSPRNG (`getrandom(2)`).
pub(crate) fn random_u128() -> Result<u128, IdentityError> {
    random_bytes().map(u128::from_le_bytes)
}

/// 64 bits from the kernel's CSPRNG (`getrandom(2)`).
pub(crate) fn random_u64() -> Result<u64, IdentityError> {
    random_bytes().map(u64::from_le_bytes)
}

fn random_bytes<const N: usize>() -> Result<[u8; N], IdentityError> {
    failpoint::io("identity.random").map_err(IdentityError::Random)?;
    let mut buf = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: the pointer and length describe the unfilled rest of `buf`.
        let got = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), N - filled, 0) };
        if got < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(IdentityError::Random(err));
        }
        filled += got as usize;
    }
    Ok(buf)
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

    fn segment_in(wal: &Path, core: u16) {
        let dir = core_dir(wal, core);
        fs::create_dir_all(&dir).unwrap();
        fs::write(crate::wal::segment::segment_path(&dir, 1), b"").unwrap();
    }

    #[test]
    fn identity_text_pairs_up() {
        let id = WalIdentity { node: "web-1".into(), wal: WalId(0xabcdef) };
        let text = render_identity(&id);
        assert_eq!(text, format!("psc-wal-identity 1\nnode web-1\nwal {}\nend\n", id.wal));
        assert_eq!(parse_identity(&text), Ok(id));
        for bad in [
            "",
            "psc-wal-identity 2\nnode a\nwal 00000000000000000000000000000000\nend\n",
            "psc-wal-identity 1\nnode a\nwal 0\nend\n",
            "psc-wal-identity 1\nnode a\nwal 00000000000000000000000000000000\n",
            "psc-wal-identity 1\nwal 00000000000000000000000000000000\nnode a\nend\n",
            "psc-wal-identity 1\nnode a\nwal 00000000000000000000000000000000\nend\nmore\n",
        ] {
            assert!(parse_identity(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_new_directory_gets_an_identity_with_the_derived_node() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("wal");
        let id = open_identity(&wal, "", "host").unwrap();
        assert_eq!(id.node, format!("host-{}", &id.wal.to_string()[..8]));
        assert_eq!(read_identity(&wal).unwrap(), Some(id.clone()));
        assert_eq!(open_identity(&wal, "", "host").unwrap(), id, "read back, not drawn again");
        let other = open_identity(&dir.path().join("wal2"), "", "host").unwrap();
        assert_ne!(other.wal, id.wal, "two WAL dirs on one host stay apart");
        assert_ne!(other.node, id.node);
        let configured = open_identity(&dir.path().join("wal3"), "edge-7", "host").unwrap();
        assert_eq!(configured.node, "edge-7");
    }

    #[test]
    fn another_node_is_refused_with_both_ids_and_the_adopt_command() {
        let dir = tempfile::tempdir().unwrap();
        let id = open_identity(dir.path(), "", "old-host").unwrap();
        let err = open_identity(dir.path(), "", "new-host").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, IdentityError::NodeMismatch { derived: true, .. }));
        for needle in [&id.node[..], "new-host-", &id.wal.to_string(), ADOPT_COMMAND] {
            assert!(text.contains(needle), "{needle} missing from: {text}");
        }
        assert!(text.contains(&dir.path().display().to_string()));
        let err = open_identity(dir.path(), "edge-1", "old-host").unwrap_err();
        assert!(matches!(err, IdentityError::NodeMismatch { derived: false, .. }), "{err}");
    }

    #[test]
    fn adopt_keeps_the_wal_id_and_takes_the_new_node() {
        let dir = tempfile::tempdir().unwrap();
        let id = open_identity(dir.path(), "", "old-host").unwrap();
        let adopted = adopt(dir.path(), "", "new-host").unwrap();
        assert_eq!(adopted.previous, id);
        assert_eq!(adopted.now.wal, id.wal);
        assert_eq!(open_identity(dir.path(), "", "new-host").unwrap(), adopted.now);
        assert_eq!(adopt(dir.path(), "", "new-host").unwrap().previous, adopted.now, "idempotent");
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(adopt(empty.path(), "", "h"), Err(IdentityError::Missing { .. })));
    }

    #[test]
    fn a_directory_with_wal_data_but_no_identity_is_not_new() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(core_dir(dir.path(), 3)).unwrap();
        assert!(!holds_wal_data(dir.path()).unwrap(), "an empty core dir is no data");
        segment_in(dir.path(), 3);
        assert!(holds_wal_data(dir.path()).unwrap());
        assert!(matches!(open_identity(dir.path(), "", "h"), Err(IdentityError::Missing { .. })));
        assert!(!identity_path(dir.path()).exists());
    }

    #[test]
    fn unstorable_node_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for node in ["two words", "line\nbreak"] {
            let err = open_identity(dir.path(), node, "h").unwrap_err();
            assert!(matches!(err, IdentityError::BadNode { .. }), "{err}");
        }
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(random_u128().unwrap(), random_u128().unwrap());
        assert_ne!(random_u64().unwrap(), random_u64().unwrap());
    }
}
