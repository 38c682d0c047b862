//! Startup recovery of one core's WAL, and a full verification for tools.
//!
//! Recovery runs before the core threads start (plain blocking IO). Only the newest segment
//! can have been cut short by a crash, so only it is scanned: sealed segments were fdatasynced
//! (or at least fully written) before the writer rolled, and scanning gigabytes at every start
//! would be too slow; corruption there is reported by the reader when the flusher gets to it.
//!
//! Tail policy ([`repair_torn_tail`]): the newest segment is cut back to its last whole valid
//! record. Those bytes were never acknowledged if they are a torn write. If decodable records
//! follow the damage (mid-file corruption, not a torn write), the cut-off bytes are first
//! copied to `<wal.dir>/quarantine/` so nothing is destroyed, and the event is logged as an
//! error.
//!
//! Invariant after [`recover_core`]: the newest segment file ends exactly at `tail`, on a
//! record boundary, so the writer can append there.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use super::quarantine::quarantine_dir;
use super::record::{self, RecordError};
use super::segment::{core_dir, list_segments, segment_file_name, segment_path};
use super::{Position, WalError};

/// One segment file as found at startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub number: u32,
    /// File size after recovery.
    pub bytes: u64,
}

/// What [`recover_core`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredCore {
    pub core: u16,
    /// All segments, ascending.
    pub segments: Vec<SegmentInfo>,
    /// Where the writer continues: end of the newest segment, or (1, 0) for an empty WAL.
    pub tail: Position,
    /// Bytes cut from the end of the newest segment (0 after a clean shutdown).
    pub truncated_bytes: u64,
    /// Valid records in the newest segment.
    pub tail_records: u64,
}

/// Makes `<wal_dir>/core-N` ready for the writer; see the module doc.
pub fn recover_core(wal_dir: &Path, core: u16) -> Result<RecoveredCore, WalError> {
    let dir = core_dir(wal_dir, core);
    fs::create_dir_all(&dir).map_err(WalError::io(&dir))?;
    let numbers = list_segments(&dir).map_err(WalError::io(&dir))?;
    let Some((&newest, sealed)) = numbers.split_last() else {
        let tail = Position::new(1, 0);
        return Ok(RecoveredCore { core, segments: Vec::new(), tail, truncated_bytes: 0, tail_records: 0 });
    };
    let mut segments = Vec::with_capacity(numbers.len());
    for &number in sealed {
        let path = segment_path(&dir, number);
        let bytes = fs::metadata(&path).map_err(WalError::io(&path))?.len();
        segments.push(SegmentInfo { number, bytes });
    }
    let newest_path = segment_path(&dir, newest);
    let bytes = fs::read(&newest_path).map_err(WalError::io(&newest_path))?;
    let scan = record::scan(&bytes);
    let truncated_bytes = (bytes.len() - scan.valid_len) as u64;
    if let Some(reason) = scan.stop {
        let tail = TornTail { path: &newest_path, bytes: &bytes, valid_len: scan.valid_len, reason };
        repair_torn_tail(wal_dir, core, newest, &tail)?;
    }
    let valid_len = scan.valid_len as u64;
    segments.push(SegmentInfo { number: newest, bytes: valid_len });
    Ok(RecoveredCore {
        core,
        segments,
        tail: Position::new(newest, valid_len),
        truncated_bytes,
        tail_records: scan.records,
    })
}

/// The invalid end of the newest segment, as found by the scan.
struct TornTail<'a> {
    path: &'a Path,
    /// The whole segment file.
    bytes: &'a [u8],
    valid_len: usize,
    reason: RecordError,
}

/// The tail policy: truncate to the last valid record (quarantining the cut bytes first if
/// they hold decodable records) and make the new length durable.
fn repair_torn_tail(wal_dir: &Path, core: u16, segment: u32, tail: &TornTail<'_>) -> Result<(), WalError> {
    let cut = &tail.bytes[tail.valid_len..];
    let cut_len = cut.len();
    match next_valid_record(cut) {
        None => tracing::warn!(
            path = %tail.path.display(), offset = tail.valid_len, cut_bytes = cut_len,
            reason = %tail.reason, "wal: truncating torn tail of the newest segment"
        ),
        Some(_) => {
            let saved = quarantine_tail(wal_dir, core, segment, tail.valid_len, cut)?;
            tracing::error!(
                path = %tail.path.display(), offset = tail.valid_len, cut_bytes = cut_len,
                reason = %tail.reason, saved = %saved.display(),
                "wal: corrupt record followed by valid ones in the newest segment; \
                 truncating and keeping the cut bytes in quarantine"
            );
        }
    }
    let file = OpenOptions::new().write(true).open(tail.path).map_err(WalError::io(tail.path))?;
    file.set_len(tail.valid_len as u64).map_err(WalError::io(tail.path))?;
    file.sync_data().map_err(WalError::io(tail.path))
}

/// Writes `cut` to `<wal_dir>/quarantine/core-N.NNNNNN.log.at-OFFSET` and fsyncs it.
fn quarantine_tail(
    wal_dir: &Path,
    core: u16,
    segment: u32,
    offset: usize,
    cut: &[u8],
) -> Result<PathBuf, WalError> {
    let dir = quarantine_dir(wal_dir);
    fs::create_dir_all(&dir).map_err(WalError::io(&dir))?;
    let path = dir.join(format!("core-{core}.{}.at-{offset}", segment_file_name(segment)));
    fs::write(&path, cut).map_err(WalError::io(&path))?;
    let file = fs::File::open(&path).map_err(WalError::io(&path))?;
    file.sync_all().map_err(WalError::io(&path))?;
    Ok(path)
}

/// Offset in `buf` of the first decodable record that starts after a newline, if any.
/// Distinguishes a torn write (nothing valid follows) from mid-file corruption.
fn next_valid_record(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(nl) = buf[from..].iter().position(|&b| b == b'\n') {
        let start = from + nl + 1;
        if record::decode(&buf[start..]).is_ok() {
            return Some(start);
        }
        from = start;
    }
    None
}

/// How a segment is damaged, for `wal verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// Invalid bytes at the end of the newest segment with no valid record after them: an
    /// interrupted write, which recovery cuts off.
    TornTail,
    /// A sealed segment with an invalid record, or the newest one with valid records after
    /// the invalid one.
    Corrupt,
}

/// The first invalid record of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub reason: RecordError,
    pub kind: DamageKind,
    /// Offset of the next decodable record after the damage, if one exists.
    pub next_valid_offset: Option<u64>,
}

/// One segment as checked by [`verify_core`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentReport {
    pub number: u32,
    pub bytes: u64,
    /// Valid records before the damage (all of them if none).
    pub records: u64,
    pub damage: Option<Damage>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreReport {
    pub core: u16,
    /// Ascending by segment number.
    pub segments: Vec<SegmentReport>,
}

/// Scans every segment of a core without changing anything.
pub fn verify_core(wal_dir: &Path, core: u16) -> Result<CoreReport, WalError> {
    let dir = core_dir(wal_dir, core);
    let numbers = list_segments(&dir).map_err(WalError::io(&dir))?;
    let mut segments = Vec::with_capacity(numbers.len());
    for (i, &number) in numbers.iter().enumerate() {
        let path = segment_path(&dir, number);
        let bytes = fs::read(&path).map_err(WalError::io(&path))?;
        let is_newest = i + 1 == numbers.len();
        segments.push(verify_segment(number, &bytes, is_newest));
    }
    Ok(CoreReport { core, segments })
}

fn verify_segment(number: u32, bytes: &[u8], is_newest: bool) -> SegmentReport {
    let scan = record::scan(bytes);
    let damage = scan.stop.map(|reason| {
        let next = next_valid_record(&bytes[scan.valid_len..]);
        let kind = match (is_newest, next) {
            (true, None) => DamageKind::TornTail,
            _ => DamageKind::Corrupt,
        };
        Damage {
            offset: scan.valid_len as u64,
            reason,
            kind,
            next_valid_offset: next.map(|n| (scan.valid_len + n) as u64),
        }
    });
    SegmentReport { number, bytes: bytes.len() as u64, records: scan.records, damage }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::{encode, Context, Event};

    fn records(n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for file_id in 1..=n {
            let ev = Event { ts_ms: 1000 + file_id, event: "play", domain: "x.org", file_id };
            encode(&ev, &Context::NONE, &mut out);
        }
        out
    }

    fn write_segment(wal: &Path, core: u16, n: u32, bytes: &[u8]) -> PathBuf {
        let dir = core_dir(wal, core);
        fs::create_dir_all(&dir).unwrap();
        let path = segment_path(&dir, n);
        fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn empty_wal_starts_at_segment_one() {
        let wal = tempfile::tempdir().unwrap();
        let rec = recover_core(wal.path(), 2).unwrap();
        assert_eq!(rec.tail, Position::new(1, 0));
        assert!(rec.segments.is_empty());
        assert!(core_dir(wal.path(), 2).is_dir());
    }

    #[test]
    fn clean_newest_segment_is_left_alone() {
        let wal = tempfile::tempdir().unwrap();
        write_segment(wal.path(), 0, 1, &records(3));
        let clean = records(5);
        write_segment(wal.path(), 0, 2, &clean);
        let rec = recover_core(wal.path(), 0).unwrap();
        assert_eq!(rec.tail, Position::new(2, clean.len() as u64));
        assert_eq!(rec.truncated_bytes, 0);
        assert_eq!(rec.tail_records, 5);
        let numbers: Vec<u32> = rec.segments.iter().map(|s| s.number).collect();
        assert_eq!(numbers, vec![1, 2]);
        assert_eq!(rec.segments[0].bytes, records(3).len() as u64);
    }

    #[test]
    fn torn_and_zero_filled_tails_are_truncated() {
        let wal = tempfile::tempdir().unwrap();
        let good = records(4);
        let mut damaged = good.clone();
        damaged.extend_from_slice(&records(1)[..20]);
        damaged.extend_from_slice(&[0u8; 4096]);
        let path = write_segment(wal.path(), 1, 7, &damaged);
        let rec = recover_core(wal.path(), 1).unwrap();
        assert_eq!(rec.tail, Position::new(7, good.len() as u64));
        assert_eq!(rec.truncated_bytes, (damaged.len() - good.len()) as u64);
        assert_eq!(rec.tail_records, 4);
        assert_eq!(fs::read(&path).unwrap(), good);
        assert!(!quarantine_dir(wal.path()).exists(), "a torn tail is not quarantined");
        assert_eq!(recover_core(wal.path(), 1).unwrap().truncated_bytes, 0, "idempotent");
    }

    #[test]
    fn mid_file_corruption_is_cut_but_kept_in_quarantine() {
        let wal = tempfile::tempdir().unwrap();
        let mut bytes = records(6);
        let second = records(1).len();
        bytes[second + 15] ^= 0x20;
        let path = write_segment(wal.path(), 0, 1, &bytes);
        let rec = recover_core(wal.path(), 0).unwrap();
        assert_eq!(rec.tail, Position::new(1, second as u64));
        assert_eq!(fs::read(&path).unwrap(), &bytes[..second]);
        let saved = fs::read_dir(quarantine_dir(wal.path())).unwrap().next().unwrap();
        assert_eq!(fs::read(saved.unwrap().path()).unwrap(), &bytes[second..]);
    }

    #[test]
    fn verify_tells_torn_tail_from_corruption() {
        let wal = tempfile::tempdir().unwrap();
        let mut sealed = records(3);
        let one = records(1).len();
        sealed[one + 12] = b'#';
        write_segment(wal.path(), 0, 1, &sealed);
        let mut newest = records(2);
        newest.extend_from_slice(&[0u8; 10]);
        write_segment(wal.path(), 0, 2, &newest);

        let report = verify_core(wal.path(), 0).unwrap();
        assert_eq!(report.segments.len(), 2);
        let s1 = report.segments[0];
        assert_eq!((s1.number, s1.records, s1.bytes), (1, 1, sealed.len() as u64));
        let d1 = s1.damage.unwrap();
        assert_eq!((d1.offset, d1.kind), (one as u64, DamageKind::Corrupt));
        assert_eq!(d1.reason, RecordError::BadChecksum);
        assert_eq!(d1.next_valid_offset, Some(2 * one as u64));

        let d2 = report.segments[1].damage.unwrap();
        assert_eq!(report.segments[1].records, 2);
        assert_eq!((d2.offset, d2.kind), (2 * one as u64, DamageKind::TornTail));
        assert_eq!(d2.reason, RecordError::BadHeader);
        assert_eq!(fs::read(segment_path(&core_dir(wal.path(), 0), 2)).unwrap(), newest);
    }
}
