//! `commit.meta`: the cursors durable in the sink, mirrored on local disk, one per stream
//! (lane × shard), next to the identity of the WAL they belong to.
//!
//! ```text
//! psc-commit-meta 2
//! node web-1
//! wal 3f2a9c0e4b5d6a7f8091a2b3c4d5e6f7
//! route domain 2
//! lane 0 9f86d081884c7d65 shard 0 3 1048576
//! lane 1 0123456789abcdef shard 0 2 4096
//! end
//! ```
//! `route <shard_by> <shards>`: how records were spread over the shards when the file was
//! written (`crate::flush::reroute`); absent in files of versions before it.
//! `lane <core> <incarnation> shard <shard> <segment> <offset>`, sorted by lane then shard,
//! each stream at most once. The closing `end` line proves the file is whole (a short file is
//! reported as corrupt, never half-read).
//!
//! Invariants:
//! - the file is replaced atomically: temp file, write, fsync, rename over, fsync the directory
//!   — in this order (`crate::wal::durable::write_atomic`). A reader sees the old or the new
//!   file, never a mix; a torn temp file left by a crash is ignored (and overwritten next time);
//! - a `commit.meta` whose WAL id is not this WAL's is never applied ([`read_commit_meta`]
//!   ignores it with a warning): it was copied in with another WAL's data, or left behind by a
//!   wiped one;
//! - the sink is the truth and this file lags it: it only ever holds cursors the sink had
//!   committed, so compaction may trust it (`crate::compact`).
//!
//! ## Upgrade from the previous version (`psc-commit-meta 1`)
//! A WAL directory of the previous version has `core-N/` segments and a v1 `commit.meta`
//! (`node <id>`, then `core <n> <segment> <offset>` per core) but no `IDENTITY`.
//! [`open_wal_identity`] gives it one whose node is the v1 file's (the v1 default, the bare
//! hostname, becomes the v2 default `<hostname>-<8 hex>` when `ingest.node_id` is empty), and
//! carries each core's cursor into a v2 `commit.meta` for shard 0 of its lane, in this order:
//! `LANE` files, then `commit.meta` v2, then `IDENTITY`. A crash in between is finished at the
//! next start (a v2 `commit.meta` without `IDENTITY` gives its identity back).
//!
//! The upgrade expects the old version to have been **shut down cleanly** (SIGTERM, exit 0):
//! then its `commit.meta` equals what MySQL committed. After a crash it may lag MySQL, and the
//! records between the two cursors are delivered again: the v2 sink's cursors are keyed by the
//! WAL id, which the old rows do not have.

use std::path::{Path, PathBuf};

use crate::failpoint;
use crate::wal::durable::{atomic_points, write_atomic};
use crate::wal::identity::{
    self, expected_node, read_identity, read_small_file, write_identity, IdentityError, LaneId, WalId,
    WalIdentity,
};
use crate::wal::lane::open_lane;
use crate::wal::segment::{core_dir, list_cores, list_segments};
use crate::wal::{Position, WalError};

/// File name inside `wal.dir`.
pub const COMMIT_META_FILE: &str = "commit.meta";
const HEADER_V1: &str = "psc-commit-meta 1";
const HEADER: &str = "psc-commit-meta 2";

/// The committed cursor of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCursor {
    pub lane: LaneId,
    pub shard: u16,
    /// Everything of the lane's records of this shard before it is committed in the sink.
    pub position: Position,
}

/// The cursors of one WAL's streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitMeta {
    pub identity: WalIdentity,
    /// How records were spread over the shards (`route` line, e.g. `domain 2`), if known.
    pub route: Option<String>,
    /// Sorted by (lane, shard), each stream once; [`CommitMeta::set`] keeps it so.
    cursors: Vec<StreamCursor>,
}

/// Why `commit.meta` could not be read, written or upgraded.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("{path} is corrupt at line {line}: {reason}")]
    Corrupt { path: PathBuf, line: usize, reason: &'static str },
}

impl CommitMeta {
    /// No cursor yet.
    pub fn new(identity: WalIdentity) -> CommitMeta {
        CommitMeta { identity, route: None, cursors: Vec::new() }
    }

    /// Every stream's cursor, sorted by lane, then shard.
    pub fn cursors(&self) -> &[StreamCursor] {
        &self.cursors
    }

    /// The cursor of one stream.
    pub fn get(&self, lane: LaneId, shard: u16) -> Option<Position> {
        self.find(lane, shard).ok().map(|i| self.cursors[i].position)
    }

    /// Sets the cursor of one stream.
    pub fn set(&mut self, lane: LaneId, shard: u16, position: Position) {
        let cursor = StreamCursor { lane, shard, position };
        match self.find(lane, shard) {
            Ok(i) => self.cursors[i] = cursor,
            Err(i) => self.cursors.insert(i, cursor),
        }
    }

    /// Drops every cursor of `lane` (a lane drained and removed).
    pub fn remove_lane(&mut self, lane: LaneId) {
        self.cursors.retain(|c| c.lane != lane);
    }

    /// The least cursor over the lane's streams: every record of the lane before it is
    /// committed in every shard. `None` if the file has no cursor for the lane.
    pub fn lane_floor(&self, lane: LaneId) -> Option<Position> {
        self.cursors.iter().filter(|c| c.lane == lane).map(|c| c.position).min()
    }

    fn find(&self, lane: LaneId, shard: u16) -> Result<usize, usize> {
        self.cursors.binary_search_by(|c| (c.lane, c.shard).cmp(&(lane, shard)))
    }

    /// The file's text (format in the module doc).
    pub fn render(&self) -> String {
        let id = &self.identity;
        let mut text = format!("{HEADER}\nnode {}\nwal {}\n", id.node, id.wal);
        if let Some(route) = &self.route {
            text.push_str(&format!("route {route}\n"));
        }
        for c in &self.cursors {
            let (lane, pos) = (c.lane, c.position);
            text.push_str(&format!(
                "lane {} {:016x} shard {} {} {}\n",
                lane.core, lane.incarnation, c.shard, pos.segment, pos.offset
            ));
        }
        text.push_str("end\n");
        text
    }

    /// Inverse of [`CommitMeta::render`]; `Err((line, reason))`.
    pub fn parse(text: &str) -> Result<CommitMeta, (usize, &'static str)> {
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
        if lines.next().map(|(_, l)| l) != Some(HEADER) {
            return Err((1, "missing or unknown header"));
        }
        let node = value_of(lines.next(), "node")?;
        let wal: WalId = value_of(lines.next(), "wal")?.parse().map_err(|_| (3, "bad wal id"))?;
        if !identity::node_is_storable(node) {
            return Err((2, "bad node id"));
        }
        let mut meta = CommitMeta::new(WalIdentity { node: node.to_owned(), wal });
        for (n, line) in lines {
            if let Some(route) = line.strip_prefix("route ") {
                if meta.route.is_some() || !meta.cursors.is_empty() || route_shards(route).is_none() {
                    return Err((n, "bad or misplaced route line"));
                }
                meta.route = Some(route.to_owned());
                continue;
            }
            if line == "end" {
                return if n == text.lines().count() { Ok(meta) } else { Err((n + 1, "lines after end")) };
            }
            let c = parse_cursor_line(line).ok_or((n, "bad lane line"))?;
            if meta.cursors.last().is_some_and(|last| (last.lane, last.shard) >= (c.lane, c.shard)) {
                return Err((n, "lane lines out of order or repeated"));
            }
            meta.cursors.push(c);
        }
        Err((text.lines().count(), "truncated (no end line)"))
    }
}

/// The number of shards of a `route` value (`<shard_by> <shards>`, as `crate::flush::reroute`
/// writes it: a lower-case word, a number); `None` if it is not one.
pub fn route_shards(route: &str) -> Option<u16> {
    let (by, shards) = route.split_once(' ')?;
    let word = !by.is_empty() && by.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    shards.parse::<u16>().ok().filter(|n| word && n.to_string() == shards)
}

/// The value of a `key value` line.
fn value_of<'t>(line: Option<(usize, &'t str)>, key: &str) -> Result<&'t str, (usize, &'static str)> {
    match line {
        Some((n, l)) => l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')).ok_or((n, "unexpected line")),
        None => Err((0, "truncated")),
    }
}

/// `lane <core> <incarnation> shard <shard> <segment> <offset>`, each number in the one
/// spelling `render` writes.
fn parse_cursor_line(line: &str) -> Option<StreamCursor> {
    fn number<T: std::str::FromStr + ToString>(s: &str) -> Option<T> {
        s.parse::<T>().ok().filter(|v| v.to_string() == s)
    }
    let parts: Vec<&str> = line.split(' ').collect();
    let ["lane", core, incarnation, "shard", shard, segment, offset] = parts[..] else {
        return None;
    };
    let incarnation = identity::parse_hex(incarnation, 16).ok()? as u64;
    Some(StreamCursor {
        lane: LaneId { core: number(core)?, incarnation },
        shard: number(shard)?,
        position: Position::new(number(segment)?, number(offset)?),
    })
}

/// Atomically replaces `<wal_dir>/commit.meta`: temp file, write, fsync, rename, fsync dir.
pub fn write_commit_meta(wal_dir: &Path, meta: &CommitMeta) -> Result<(), CursorError> {
    write_atomic(wal_dir, COMMIT_META_FILE, meta.render().as_bytes(), atomic_points!("cursor"))?;
    Ok(())
}

/// What `commit.meta` holds, whatever its version.
enum AnyMeta {
    V1 { node: String, cores: Vec<Position> },
    V2(CommitMeta),
}

fn read_any(wal_dir: &Path) -> Result<Option<AnyMeta>, CursorError> {
    let path = wal_dir.join(COMMIT_META_FILE);
    let Some(text) = read_small_file(&path, "cursor.read")? else {
        return Ok(None);
    };
    let corrupt = |(line, reason)| CursorError::Corrupt { path: path.clone(), line, reason };
    if text.starts_with(HEADER_V1) {
        let (node, cores) = parse_v1(&text).map_err(corrupt)?;
        return Ok(Some(AnyMeta::V1 { node, cores }));
    }
    CommitMeta::parse(&text).map(|m| Some(AnyMeta::V2(m))).map_err(corrupt)
}

/// Reads `<wal_dir>/commit.meta` for the WAL `identity`. `Ok(None)` if there is none, or if it
/// belongs to another WAL id or is a v1 file (both logged as warnings, never applied).
pub fn read_commit_meta(wal_dir: &Path, identity: &WalIdentity) -> Result<Option<CommitMeta>, CursorError> {
    match read_any(wal_dir)? {
        None => Ok(None),
        Some(AnyMeta::V2(meta)) if meta.identity.wal == identity.wal => Ok(Some(meta)),
        Some(AnyMeta::V2(meta)) => {
            tracing::warn!(dir = %wal_dir.display(), found = %meta.identity.wal, wal = %identity.wal,
                "commit.meta belongs to another WAL id; ignored");
            Ok(None)
        }
        Some(AnyMeta::V1 { .. }) => {
            tracing::warn!(dir = %wal_dir.display(), "commit.meta of the previous version next to an IDENTITY; ignored");
            Ok(None)
        }
    }
}

/// The v1 format: `node <id>`, then `core <n> <segment> <offset>` for n = 0, 1, …, then `end`.
fn parse_v1(text: &str) -> Result<(String, Vec<Position>), (usize, &'static str)> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l)).skip(1);
    let node = value_of(lines.next(), "node")?.to_owned();
    let mut cores = Vec::new();
    for (n, line) in lines {
        if line == "end" {
            return Ok((node, cores));
        }
        let parts: Vec<&str> = line.split(' ').collect();
        let position = match parts[..] {
            ["core", core, segment, offset] if core.parse() == Ok(cores.len()) => {
                segment.parse().ok().zip(offset.parse().ok()).map(|(s, o)| Position::new(s, o))
            }
            _ => None,
        };
        cores.push(position.ok_or((n, "bad core line"))?);
    }
    Err((text.lines().count(), "truncated (no end line)"))
}

/// The identity of `wal_dir` for a collector running as `configured_node` (empty = derived)
/// on `hostname`: read and checked, created for a new directory, or made by upgrading a WAL of
/// the previous version (module doc). The one call a start needs before recovery.
pub fn open_wal_identity(
    wal_dir: &Path,
    configured_node: &str,
    hostname: &str,
) -> Result<WalIdentity, CursorError> {
    if read_identity(wal_dir)?.is_none() {
        match read_any(wal_dir)? {
            Some(AnyMeta::V2(meta)) => {
                tracing::warn!(dir = %wal_dir.display(), wal = %meta.identity.wal,
                    "IDENTITY missing: taken from commit.meta (an upgrade interrupted, or the file was removed)");
                write_identity(wal_dir, &meta.identity)?;
            }
            Some(AnyMeta::V1 { node, cores }) => {
                upgrade_v1(wal_dir, configured_node, hostname, &node, &cores)?
            }
            // Segments of the previous version that never committed anything: nothing to carry.
            None if identity::holds_wal_data(wal_dir)? && !identity::holds_lanes(wal_dir)? => {
                identity::create_identity(wal_dir, configured_node, hostname)?;
            }
            None => {}
        }
    }
    Ok(identity::open_identity(wal_dir, configured_node, hostname)?)
}

/// Gives a v1 WAL its identity and carries its cursors (module doc, "Upgrade").
fn upgrade_v1(
    wal_dir: &Path,
    configured_node: &str,
    hostname: &str,
    v1_node: &str,
    v1_cores: &[Position],
) -> Result<(), CursorError> {
    let wal = WalId(identity::random_u128()?);
    let node = if configured_node.is_empty() && v1_node == hostname {
        expected_node("", hostname, wal)
    } else {
        v1_node.to_owned()
    };
    let mut meta = CommitMeta::new(WalIdentity { node, wal });
    let cores =
        failpoint::io("cursor.list").and_then(|()| list_cores(wal_dir)).map_err(WalError::io(wal_dir))?;
    for core in cores {
        let dir = core_dir(wal_dir, core);
        let segments =
            failpoint::io("cursor.list").and_then(|()| list_segments(&dir)).map_err(WalError::io(&dir))?;
        // A lane without segments gets a new incarnation starting at segment 1 (`open_lane`):
        // a cursor carried into it would skip its first records. Recovery opens it.
        if segments.is_empty() {
            continue;
        }
        let lane = open_lane(wal_dir, core)?;
        match v1_cores.get(usize::from(core)) {
            Some(&cursor) if cursor != Position::default() => meta.set(lane, 0, cursor),
            _ => {}
        }
    }
    write_commit_meta(wal_dir, &meta)?;
    write_identity(wal_dir, &meta.identity)?;
    tracing::warn!(dir = %wal_dir.display(), node = %meta.identity.node, wal = %meta.identity.wal,
        v1_node, cursors = meta.cursors.len(), "WAL of the previous version upgraded: identity created, cursors carried over");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::identity::open_identity;
    use crate::wal::lane::read_lane;
    use crate::wal::segment::segment_path;

    fn identity() -> WalIdentity {
        WalIdentity { node: "web-1".into(), wal: WalId(0x5eed) }
    }

    fn lane(core: u16) -> LaneId {
        LaneId { core, incarnation: 0x1000 + u64::from(core) }
    }

    fn meta() -> CommitMeta {
        let mut m = CommitMeta::new(identity());
        m.set(lane(1), 0, Position::new(2, 7));
        m.set(lane(0), 1, Position::new(3, 1_048_576));
        m.set(lane(0), 0, Position::new(3, 10));
        m
    }

    fn write_segments(wal: &Path, core: u16, numbers: &[u32]) {
        let dir = core_dir(wal, core);
        std::fs::create_dir_all(&dir).unwrap();
        for &n in numbers {
            std::fs::write(segment_path(&dir, n), b"").unwrap();
        }
    }

    #[test]
    fn text_pairs_up_and_streams_stay_sorted() {
        let m = meta();
        let text = m.render();
        assert_eq!(
            text,
            format!(
                "psc-commit-meta 2\nnode web-1\nwal {}\nlane 0 0000000000001000 shard 0 3 10\n\
                 lane 0 0000000000001000 shard 1 3 1048576\nlane 1 0000000000001001 shard 0 2 7\nend\n",
                identity().wal
            )
        );
        assert_eq!(CommitMeta::parse(&text), Ok(m.clone()));
        assert_eq!(m.get(lane(0), 1), Some(Position::new(3, 1_048_576)));
        assert_eq!(m.get(lane(2), 0), None);
        assert_eq!(m.lane_floor(lane(0)), Some(Position::new(3, 10)), "least over the shards");
        let mut removed = m.clone();
        removed.remove_lane(lane(0));
        assert_eq!(removed.cursors().len(), 1);
    }

    #[test]
    fn the_route_line_comes_before_the_lanes() {
        let mut m = meta();
        m.route = Some("file_id 3".into());
        let text = m.render();
        assert!(text.contains(&format!("wal {}\nroute file_id 3\nlane 0 ", identity().wal)), "{text}");
        assert_eq!(CommitMeta::parse(&text), Ok(m));
        let late = text.replace("route file_id 3\n", "").replace("end\n", "route file_id 3\nend\n");
        assert_eq!(CommitMeta::parse(&late).unwrap_err().1, "bad or misplaced route line");
        for bad in ["route file_id\n", "route File 2\n", "route domain 02\n", "route domain 70000\n"] {
            let text = meta().render().replacen("lane ", &format!("{bad}lane "), 1);
            assert!(CommitMeta::parse(&text).is_err(), "{bad}");
        }
        assert_eq!(CommitMeta::parse(&meta().render()).map(|m| m.route), Ok(None), "older files have none");
    }

    #[test]
    fn parse_refuses_every_other_spelling() {
        let good = meta().render();
        let swap = good.replace(
            "shard 0 3 10\nlane 0 0000000000001000 shard 1",
            "shard 1 3 10\nlane 0 0000000000001000 shard 0",
        );
        let repeat = good.replace("shard 1 3 1048576", "shard 0 3 1048576");
        for (bad, line) in [
            (swap.as_str(), 5),
            (repeat.as_str(), 5),
            (&good.replace(" 3 10\n", " 3 010\n"), 4),
            (&good.replace(" 2 7\n", " 2 7 9\n"), 6),
            (&good.replace("end\n", ""), 6),
            (&format!("{good}lane 2 0000000000000000 shard 0 1 0\n"), 8),
        ] {
            assert_eq!(CommitMeta::parse(bad).unwrap_err().0, line, "{bad}");
        }
        assert_eq!(CommitMeta::parse("psc-commit-meta 3\n").unwrap_err().0, 1);
    }

    #[test]
    fn round_trip_on_disk_and_a_torn_temp_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_commit_meta(dir.path(), &identity()).unwrap(), None);
        write_commit_meta(dir.path(), &meta()).unwrap();
        std::fs::write(dir.path().join("commit.meta.tmp"), b"psc-commit-meta 2\nnode web-1\nwal").unwrap();
        assert_eq!(read_commit_meta(dir.path(), &identity()).unwrap(), Some(meta()));
        let mut next = meta();
        next.set(lane(1), 0, Position::new(4, 0));
        write_commit_meta(dir.path(), &next).unwrap();
        assert_eq!(read_commit_meta(dir.path(), &identity()).unwrap(), Some(next));
    }

    #[test]
    fn truncated_or_garbage_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let full = meta().render();
        for cut in [0, 10, full.len() - 4] {
            std::fs::write(dir.path().join(COMMIT_META_FILE), &full.as_bytes()[..cut]).unwrap();
            let err = read_commit_meta(dir.path(), &identity()).unwrap_err();
            assert!(matches!(err, CursorError::Corrupt { .. }), "cut {cut}: {err}");
        }
        std::fs::write(dir.path().join(COMMIT_META_FILE), [0xff, 0xfe]).unwrap();
        assert!(read_commit_meta(dir.path(), &identity()).is_err());
    }

    #[test]
    fn another_wal_ids_cursors_are_never_applied() {
        let dir = tempfile::tempdir().unwrap();
        write_commit_meta(dir.path(), &meta()).unwrap();
        let other = WalIdentity { node: "web-1".into(), wal: WalId(0xbad) };
        assert_eq!(read_commit_meta(dir.path(), &other).unwrap(), None);
        std::fs::write(
            dir.path().join(COMMIT_META_FILE),
            "psc-commit-meta 1\nnode web-1\ncore 0 3 10\nend\n",
        )
        .unwrap();
        assert_eq!(read_commit_meta(dir.path(), &identity()).unwrap(), None, "a v1 file is not applied");
    }

    #[test]
    fn a_v1_wal_is_upgraded_with_its_node_and_cursors() {
        let wal = tempfile::tempdir().unwrap();
        write_segments(wal.path(), 0, &[3, 4]);
        write_segments(wal.path(), 1, &[1]);
        write_segments(wal.path(), 2, &[]);
        let v1 = "psc-commit-meta 1\nnode edge-1\ncore 0 3 10\ncore 1 0 0\ncore 2 5 5\nend\n";
        std::fs::write(wal.path().join(COMMIT_META_FILE), v1).unwrap();
        let id = open_wal_identity(wal.path(), "edge-1", "host").unwrap();
        assert_eq!(id.node, "edge-1");
        let lane0 = read_lane(&core_dir(wal.path(), 0)).unwrap().unwrap();
        let lane1 = read_lane(&core_dir(wal.path(), 1)).unwrap().unwrap();
        let meta = read_commit_meta(wal.path(), &id).unwrap().unwrap();
        assert_eq!(meta.cursors(), &[StreamCursor { lane: lane0, shard: 0, position: Position::new(3, 10) }]);
        assert_eq!(meta.lane_floor(lane1), None, "nothing committed on core 1");
        assert_eq!(read_lane(&core_dir(wal.path(), 2)).unwrap(), None, "no segments: no cursor carried");
        assert_eq!(open_wal_identity(wal.path(), "edge-1", "host").unwrap(), id, "upgraded once");
    }

    #[test]
    fn the_v1_default_node_becomes_the_v2_default_and_a_renamed_host_is_refused() {
        let wal = tempfile::tempdir().unwrap();
        write_segments(wal.path(), 0, &[1]);
        std::fs::write(wal.path().join(COMMIT_META_FILE), "psc-commit-meta 1\nnode host\ncore 0 1 0\nend\n")
            .unwrap();
        let id = open_wal_identity(wal.path(), "", "host").unwrap();
        assert_eq!(id.node, format!("host-{}", &id.wal.to_string()[..8]));

        let renamed = tempfile::tempdir().unwrap();
        write_segments(renamed.path(), 0, &[1]);
        std::fs::write(renamed.path().join(COMMIT_META_FILE), "psc-commit-meta 1\nnode old\nend\n").unwrap();
        let err = open_wal_identity(renamed.path(), "", "new").unwrap_err();
        assert!(matches!(err, CursorError::Identity(IdentityError::NodeMismatch { .. })), "{err}");
        assert!(err.to_string().contains("`old`"), "{err}");
    }

    #[test]
    fn an_interrupted_upgrade_and_a_never_committed_v1_wal_are_finished() {
        let wal = tempfile::tempdir().unwrap();
        write_segments(wal.path(), 0, &[1]);
        let mut m = CommitMeta::new(WalIdentity { node: "edge-1".into(), wal: WalId(77) });
        m.set(crate::wal::lane::open_lane(wal.path(), 0).unwrap(), 0, Position::new(1, 5));
        write_commit_meta(wal.path(), &m).unwrap();
        assert_eq!(open_wal_identity(wal.path(), "edge-1", "h").unwrap(), m.identity);

        let fresh = tempfile::tempdir().unwrap();
        write_segments(fresh.path(), 0, &[1, 2]);
        let id = open_wal_identity(fresh.path(), "", "h").unwrap();
        assert_eq!(open_identity(fresh.path(), "", "h").unwrap(), id);
    }

    #[test]
    fn a_v2_wal_that_lost_its_identity_is_refused() {
        let wal = tempfile::tempdir().unwrap();
        crate::wal::lane::open_lane(wal.path(), 0).unwrap();
        write_segments(wal.path(), 0, &[1]);
        let err = open_wal_identity(wal.path(), "", "h").unwrap_err();
        assert!(matches!(err, CursorError::Identity(IdentityError::Missing { .. })), "{err}");
    }
}
