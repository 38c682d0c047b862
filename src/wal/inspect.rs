//! `player-stat-collector wal inspect|verify`: the WAL's "fsck". Reads only (no lock, no
//! repair), so it works on a stopped collector and, with a moving tail, on a running one.
//!
//! It reports the WAL's identity, then per lane its incarnation, its segments with their
//! record counts and every damaged range (the reader skips each one, so a corrupt record
//! costs that record only), the committed cursor the caller read from `commit.meta` (the
//! least over the lane's shards; this module does not read `commit.meta`, because
//! `crate::cursor` depends on the WAL and not the other way round), and the backlog (records
//! and bytes after that cursor); then the files in `quarantine/`. `verify` fails on
//! [`DamageKind::Corrupt`] only: a torn tail of the newest segment is an interrupted write
//! that recovery cuts at the next start, never an acknowledged record (and on a running
//! collector it can be a write in progress).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use super::identity::{read_identity, IdentityError, LaneId, WalIdentity};
use super::lane::read_lane;
use super::quarantine::quarantine_dir;
use super::record;
use super::recovery::{verify_lane, DamageKind, LaneReport, SegmentReport};
use super::segment::{core_dir, list_cores, segment_path};
use super::{Position, WalError};

/// Why the WAL could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// What is not yet committed on one lane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub records: u64,
    pub bytes: u64,
    pub segments: u64,
}

/// One lane as inspected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneInspection {
    /// `None` for a directory of the previous version (no LANE file yet).
    pub lane: Option<LaneId>,
    pub report: LaneReport,
    /// From `commit.meta`; `Position::default()` if it has none for this lane.
    pub committed: Position,
    pub backlog: Backlog,
}

/// The whole WAL directory as inspected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// `None` if the directory has no IDENTITY (new, or of the previous version).
    pub identity: Option<WalIdentity>,
    pub lanes: Vec<LaneInspection>,
    /// (file name, bytes) of every file in `quarantine/`.
    pub quarantined: Vec<(String, u64)>,
}

impl Inspection {
    /// Damaged ranges that are corruption (not torn tails), over all lanes.
    pub fn corrupt_ranges(&self) -> usize {
        let corrupt = |s: &SegmentReport| s.damage.iter().filter(|d| d.kind == DamageKind::Corrupt).count();
        self.lanes.iter().flat_map(|l| &l.report.segments).map(corrupt).sum()
    }
}

/// Reads `wal_dir` and every segment in it; `committed` is each lane's cursor (least over
/// its shards) as `commit.meta` holds it.
pub fn inspect(wal_dir: &Path, committed: &[(LaneId, Position)]) -> Result<Inspection, InspectError> {
    let identity = read_identity(wal_dir)?;
    let cores = match list_cores(wal_dir) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(WalError::Io { path: wal_dir.to_owned(), source }.into()),
    };
    let mut lanes = Vec::with_capacity(cores.len());
    for core in cores {
        let lane = read_lane(&core_dir(wal_dir, core))?;
        let report = verify_lane(wal_dir, core)?;
        let committed = committed.iter().find(|(l, _)| Some(*l) == lane).map_or(Position::default(), |c| c.1);
        let backlog = backlog_of(wal_dir, &report, committed)?;
        lanes.push(LaneInspection { lane, report, committed, backlog });
    }
    Ok(Inspection { identity, lanes, quarantined: list_quarantine(wal_dir) })
}

/// Records and bytes after `committed`: whole segments after its segment, and the part of
/// its segment past its offset.
fn backlog_of(wal_dir: &Path, report: &LaneReport, committed: Position) -> Result<Backlog, WalError> {
    let mut backlog = Backlog::default();
    for seg in &report.segments {
        if seg.number > committed.segment {
            backlog.records += seg.records;
            backlog.bytes += seg.bytes;
            backlog.segments += 1;
        } else if seg.number == committed.segment && seg.bytes > committed.offset {
            let path = segment_path(&core_dir(wal_dir, report.core), seg.number);
            let bytes = fs::read(&path).map_err(WalError::io(&path))?;
            let from = (committed.offset as usize).min(bytes.len());
            backlog.records += record::scan(&bytes[from..]).records;
            backlog.bytes += seg.bytes - committed.offset;
            backlog.segments += 1;
        }
    }
    Ok(backlog)
}

fn list_quarantine(wal_dir: &Path) -> Vec<(String, u64)> {
    let Ok(entries) = fs::read_dir(quarantine_dir(wal_dir)) else {
        return Vec::new();
    };
    let mut files: Vec<(String, u64)> = entries
        .filter_map(Result::ok)
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().map_or(0, |m| m.len())))
        .collect();
    files.sort();
    files
}

/// The human-readable report printed by `wal inspect` and `wal verify`.
pub fn render(inspection: &Inspection, wal_dir: &Path) -> String {
    let mut out = String::new();
    let _ = match &inspection.identity {
        Some(id) => writeln!(out, "wal {}  node {}  wal id {}", wal_dir.display(), id.node, id.wal),
        None => writeln!(out, "wal {}  (no IDENTITY)", wal_dir.display()),
    };
    for lane in &inspection.lanes {
        let (c, b) = (&lane.committed, &lane.backlog);
        let incarnation = lane.lane.map_or("(no LANE)".to_owned(), |l| format!("{:016x}", l.incarnation));
        let _ = writeln!(
            out,
            "core {} lane {incarnation}: committed {}:{}  backlog {} records, {} bytes in {} segments",
            lane.report.core, c.segment, c.offset, b.records, b.bytes, b.segments
        );
        for seg in &lane.report.segments {
            render_segment(&mut out, seg);
        }
    }
    for (name, bytes) in &inspection.quarantined {
        let _ = writeln!(out, "quarantine: {name} {bytes} bytes");
    }
    let corrupt = inspection.corrupt_ranges();
    let verdict = if corrupt == 0 { "ok".to_owned() } else { format!("CORRUPT ({corrupt} damaged ranges)") };
    let _ = writeln!(out, "verdict: {verdict}");
    out
}

fn render_segment(out: &mut String, seg: &SegmentReport) {
    let _ = writeln!(out, "  segment {:06} {} bytes {} records", seg.number, seg.bytes, seg.records);
    for d in &seg.damage {
        let (kind, next) = match d.kind {
            DamageKind::TornTail => ("torn tail", "cut at the next start"),
            DamageKind::Corrupt => ("CORRUPT record", "skipped by the reader"),
        };
        let resume = d.offset + d.len;
        let _ = writeln!(
            out,
            "    {kind} at offset {} ({}), {} bytes to {resume}, {next}",
            d.offset, d.reason, d.len
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::identity::open_identity;
    use crate::wal::lane::open_lane;
    use crate::wal::record::{encode, Context, Event};

    fn records(first: u64, n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for file_id in first..first + n {
            encode(&Event { ts_ms: 1, event: "play", domain: "x.org", file_id }, &Context::NONE, &mut out);
        }
        out
    }

    #[test]
    fn reports_identity_lanes_cursor_backlog_and_every_damaged_range() {
        let wal = tempfile::tempdir().unwrap();
        let id = open_identity(wal.path(), "n1", "h").unwrap();
        let lane = open_lane(wal.path(), 0).unwrap();
        let dir = core_dir(wal.path(), 0);
        let one = records(10, 4);
        fs::write(segment_path(&dir, 1), &one).unwrap();
        let mut two = records(20, 4);
        let first = records(20, 1).len();
        two[first] = b'z'; // record 2's CRC is no longer hex
        two[3 * first + 12] ^= 1; // record 4's payload is flipped
        fs::write(segment_path(&dir, 2), &two).unwrap();
        let mut three = records(30, 2);
        three.extend_from_slice(b"0000");
        fs::write(segment_path(&dir, 3), &three).unwrap();
        let cursor = Position::new(1, records(10, 1).len() as u64);

        let found = inspect(wal.path(), &[(lane, cursor)]).unwrap();
        assert_eq!(found.identity, Some(id.clone()));
        let l = &found.lanes[0];
        assert_eq!((l.lane, l.committed), (Some(lane), cursor));
        let counts: Vec<u64> = l.report.segments.iter().map(|s| s.records).collect();
        assert_eq!(counts, vec![4, 2, 2], "records after a bad one still count");
        let total = (one.len() + two.len() + three.len()) as u64;
        assert_eq!(l.backlog, Backlog { records: 3 + 2 + 2, bytes: total - cursor.offset, segments: 3 });
        assert_eq!(found.corrupt_ranges(), 2, "the torn tail of the newest is not corruption");
        let text = render(&found, wal.path());
        assert!(text.contains(&format!("node n1  wal id {}", id.wal)), "{text}");
        assert!(text.contains(&format!("lane {:016x}", lane.incarnation)), "{text}");
        assert!(text.contains(&format!("CORRUPT record at offset {first}")), "{text}");
        assert!(text.contains(&format!("CORRUPT record at offset {}", 3 * first)), "{text}");
        assert!(text.contains("torn tail"), "{text}");
        assert!(text.contains("verdict: CORRUPT (2 damaged ranges)"), "{text}");
    }

    #[test]
    fn an_empty_directory_is_clean() {
        let wal = tempfile::tempdir().unwrap();
        let found = inspect(wal.path(), &[]).unwrap();
        assert!(found.lanes.is_empty() && found.identity.is_none());
        assert_eq!(found.corrupt_ranges(), 0);
        assert!(render(&found, wal.path()).contains("verdict: ok"));
    }
}
