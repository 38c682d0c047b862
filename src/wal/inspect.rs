//! `player-stat-collector wal inspect|verify`: the WAL's "fsck". Reads only (no lock, no
//! repair), so it works on a stopped collector and, with a moving tail, on a running one.
//!
//! It reports the WAL's identity, then per lane the segments with their record counts and
//! damage, the committed cursor the caller read from `commit.meta` (the least over the lane's
//! shards; this module does not read `commit.meta`: `crate::cursor` depends on the WAL, not
//! the other way round), and the backlog (records and bytes after that cursor); then the files in
//! `quarantine/`. `verify` fails on [`DamageKind::Corrupt`] only: a torn tail of the newest
//! segment is an interrupted write that recovery cuts at the next start, never an
//! acknowledged record (and on a running collector it can be a write in progress).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use super::identity::{read_identity, IdentityError, LaneId, WalIdentity};
use super::lane::read_lane;
use super::quarantine::quarantine_dir;
use super::record;
use super::recovery::{verify_core, CoreReport, DamageKind, SegmentReport};
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

/// What is not yet committed to MySQL on one core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub records: u64,
    pub bytes: u64,
    pub segments: u64,
}

/// One core as inspected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreInspection {
    /// `None` for a directory of the previous version (no LANE file yet).
    pub lane: Option<LaneId>,
    pub report: CoreReport,
    /// From `commit.meta`; `Position::default()` if it has none for this lane.
    pub committed: Position,
    pub backlog: Backlog,
}

/// The whole WAL directory as inspected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// `None` if the directory has no IDENTITY (new, or of the previous version).
    pub identity: Option<WalIdentity>,
    pub cores: Vec<CoreInspection>,
    /// (file name, bytes) of every file in `quarantine/`.
    pub quarantined: Vec<(String, u64)>,
}

impl Inspection {
    /// Corrupt segments (not torn tails) across all cores.
    pub fn corrupt_segments(&self) -> usize {
        let damaged = |s: &&SegmentReport| s.damage.is_some_and(|d| d.kind == DamageKind::Corrupt);
        self.cores.iter().map(|c| c.report.segments.iter().filter(damaged).count()).sum()
    }
}

/// Reads `wal_dir` and every segment in it; `committed` is each lane's cursor (least over
/// its shards) as `commit.meta` holds it.
pub fn inspect(wal_dir: &Path, committed: &[(LaneId, Position)]) -> Result<Inspection, InspectError> {
    let identity = read_identity(wal_dir)?;
    let numbers = match list_cores(wal_dir) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(WalError::Io { path: wal_dir.to_owned(), source }.into()),
    };
    let mut cores = Vec::with_capacity(numbers.len());
    for core in numbers {
        let lane = read_lane(&core_dir(wal_dir, core))?;
        let report = verify_core(wal_dir, core)?;
        let committed = committed.iter().find(|(l, _)| Some(*l) == lane).map_or(Position::default(), |c| c.1);
        let backlog = backlog_of(wal_dir, &report, committed)?;
        cores.push(CoreInspection { lane, report, committed, backlog });
    }
    Ok(Inspection { identity, cores, quarantined: list_quarantine(wal_dir) })
}

/// Records and bytes after `committed`: whole segments after its segment, and the part of
/// its segment past its offset (records counted up to the first damage).
fn backlog_of(wal_dir: &Path, report: &CoreReport, committed: Position) -> Result<Backlog, WalError> {
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
    for core in &inspection.cores {
        let (c, b) = (&core.committed, &core.backlog);
        let _ = writeln!(
            out,
            "core {} lane {}: committed {}:{}  backlog {} records, {} bytes in {} segments",
            core.report.core,
            core.lane.map_or("(no LANE)".to_owned(), |l| format!("{:016x}", l.incarnation)),
            c.segment,
            c.offset,
            b.records,
            b.bytes,
            b.segments
        );
        for seg in &core.report.segments {
            render_segment(&mut out, seg);
        }
    }
    for (name, bytes) in &inspection.quarantined {
        let _ = writeln!(out, "quarantine: {name} {bytes} bytes");
    }
    let corrupt = inspection.corrupt_segments();
    let verdict = if corrupt == 0 { "ok".to_owned() } else { format!("CORRUPT ({corrupt} segments)") };
    let _ = writeln!(out, "verdict: {verdict}");
    out
}

fn render_segment(out: &mut String, seg: &SegmentReport) {
    let _ = write!(out, "  segment {:06} {} bytes {} records", seg.number, seg.bytes, seg.records);
    if let Some(d) = seg.damage {
        let kind = match d.kind {
            DamageKind::TornTail => "torn tail",
            DamageKind::Corrupt => "CORRUPT record",
        };
        let _ = write!(out, "  {kind} at offset {} ({})", d.offset, d.reason);
        if let Some(next) = d.next_valid_offset {
            let _ = write!(out, ", next valid record at {next}");
        }
    }
    out.push('\n');
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
    fn reports_segments_cursor_backlog_and_corruption() {
        let wal = tempfile::tempdir().unwrap();
        let id = open_identity(wal.path(), "n1", "h").unwrap();
        let lane = open_lane(wal.path(), 0).unwrap();
        let dir = core_dir(wal.path(), 0);
        let one = records(10, 4);
        fs::write(segment_path(&dir, 1), &one).unwrap();
        let mut two = records(20, 3);
        let first = records(20, 1).len();
        two[first] = b'z'; // second record's CRC is no longer hex
        fs::write(segment_path(&dir, 2), &two).unwrap();
        let mut three = records(30, 2);
        three.extend_from_slice(b"0000");
        fs::write(segment_path(&dir, 3), &three).unwrap();
        let cursor = Position::new(1, records(10, 1).len() as u64);
        let found = inspect(wal.path(), &[(lane, cursor)]).unwrap();
        assert_eq!(found.identity, Some(id));
        let core = &found.cores[0];
        assert_eq!(core.lane, Some(lane));
        assert_eq!(core.committed, cursor);
        let counts: Vec<u64> = core.report.segments.iter().map(|s| s.records).collect();
        assert_eq!(counts, vec![4, 1, 2]);
        let total = (one.len() + two.len() + three.len()) as u64;
        assert_eq!(core.backlog, Backlog { records: 3 + 1 + 2, bytes: total - cursor.offset, segments: 3 });
        assert_eq!(found.corrupt_segments(), 1, "the torn tail of the newest is not corruption");
        let text = render(&found, wal.path());
        assert!(text.contains(&format!("CORRUPT record at offset {first}")), "{text}");
        assert!(text.contains("torn tail"), "{text}");
        assert!(text.contains("verdict: CORRUPT (1 segments)"), "{text}");
    }

    #[test]
    fn an_empty_directory_is_clean() {
        let wal = tempfile::tempdir().unwrap();
        let found = inspect(wal.path(), &[]).unwrap();
        assert!(found.cores.is_empty() && found.identity.is_none());
        assert_eq!(found.corrupt_segments(), 0);
        assert!(render(&found, wal.path()).contains("verdict: ok"));
    }
}
