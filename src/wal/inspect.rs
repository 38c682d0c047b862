//! `player-stat-collector wal inspect|verify`: the WAL's "fsck". Reads only (no lock, no
//! repair), so it works on a stopped collector and, with a moving tail, on a running one.
//!
//! Per core it reports the segments with their record counts and damage, the committed cursor
//! from `commit.meta`, and the backlog (records and bytes after that cursor); then the files in
//! `quarantine/`. `verify` fails on [`DamageKind::Corrupt`] only: a torn tail of the newest
//! segment is an interrupted write that recovery cuts at the next start, never an
//! acknowledged record (and on a running collector it can be a write in progress).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use super::quarantine::quarantine_dir;
use super::record;
use super::recovery::{verify_core, CoreReport, DamageKind, SegmentReport};
use super::segment::{core_dir, list_cores, segment_path};
use super::{Position, WalError};
use crate::cursor::{read_commit_meta, CursorError};

/// Why the WAL could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Cursor(#[from] CursorError),
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
    pub report: CoreReport,
    /// From `commit.meta`; `Position::default()` if it has none for this core.
    pub committed: Position,
    pub backlog: Backlog,
}

/// The whole WAL directory as inspected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    pub node: Option<String>,
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

/// Reads `wal_dir` and every segment in it.
pub fn inspect(wal_dir: &Path) -> Result<Inspection, InspectError> {
    let meta = read_commit_meta(wal_dir)?;
    let cursors = meta.as_ref().map(|m| m.cores.clone()).unwrap_or_default();
    let mut numbers = match list_cores(wal_dir) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(WalError::Io { path: wal_dir.to_owned(), source }.into()),
    };
    numbers.extend((0..cursors.len()).filter_map(|c| u16::try_from(c).ok()));
    numbers.sort_unstable();
    numbers.dedup();
    let mut cores = Vec::with_capacity(numbers.len());
    for core in numbers {
        let report = match fs::metadata(core_dir(wal_dir, core)) {
            Ok(_) => verify_core(wal_dir, core)?,
            Err(_) => CoreReport { core, segments: Vec::new() },
        };
        let committed = cursors.get(usize::from(core)).copied().unwrap_or_default();
        let backlog = backlog_of(wal_dir, &report, committed)?;
        cores.push(CoreInspection { report, committed, backlog });
    }
    Ok(Inspection { node: meta.map(|m| m.node), cores, quarantined: list_quarantine(wal_dir) })
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
    let node = inspection.node.as_deref().unwrap_or("(no commit.meta)");
    let _ = writeln!(out, "wal {}  node {node}", wal_dir.display());
    for core in &inspection.cores {
        let (c, b) = (&core.committed, &core.backlog);
        let _ = writeln!(
            out,
            "core {}: committed {}:{}  backlog {} records, {} bytes in {} segments",
            core.report.core, c.segment, c.offset, b.records, b.bytes, b.segments
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
    use crate::cursor::{write_commit_meta, CommitMeta};
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
        let dir = core_dir(wal.path(), 0);
        fs::create_dir_all(&dir).unwrap();
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
        write_commit_meta(wal.path(), &CommitMeta { node: "n1".into(), cores: vec![cursor] }).unwrap();

        let found = inspect(wal.path()).unwrap();
        assert_eq!(found.node.as_deref(), Some("n1"));
        let core = &found.cores[0];
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
        let found = inspect(wal.path()).unwrap();
        assert!(found.cores.is_empty() && found.node.is_none());
        assert_eq!(found.corrupt_segments(), 0);
        assert!(render(&found, wal.path()).contains("verdict: ok"));
    }
}
