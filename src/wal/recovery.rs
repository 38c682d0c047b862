//! Startup recovery of every lane of the WAL, and a full verification for tools.
//!
//! Recovery runs before the core threads and the flusher start (plain blocking IO), for every
//! `core-N` directory found and every core this start runs ([`recover_all`]), so a lane that no
//! core writes any more (the core count went down) is still recovered and can be drained.
//! Per lane ([`recover_lane`]):
//! 1. `super::lane::open_lane`: the directory and its `LANE` file exist before any segment.
//! 2. **Tail policy.** Only the newest segment can have been cut short by a crash, so only it
//!    is scanned (sealed segments were fdatasynced before the writer rolled, and scanning
//!    gigabytes at every start would be too slow; the reader copes with damage there). Only a
//!    *torn tail* is cut: damaged bytes at the end after which no record decodes
//!    (`record::scan`'s `tail`). The resync of the scan checks every offset, so the cut never
//!    holds a record that decodes, and nothing acknowledged is lost by it. Damage followed by
//!    records that decode is left in place: the reader skips it and reports it, so it costs
//!    that record only. The cut is fdatasynced.
//! 3. **A fresh segment per start.** A new, empty segment `(newest + 1, 0)` is created (its
//!    directory fsynced unless `wal.sync = none`) and returned as the tail. The writer never
//!    appends to a segment of an earlier run, so a cursor taken in an earlier run can never
//!    point into bytes written by this one: if the WAL was cut below a durable cursor, the
//!    cursor lies past the end of a sealed segment and the reader says so, instead of
//!    skipping new records as "already read".
//!
//! Invariant after [`recover_lane`]: the lane's newest segment is empty, was created by this
//! start, and `tail == (newest, 0)`; every older segment ends where its last record that
//! decodes ends, or with damage that the reader resyncs over.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;

use super::config::SyncPolicy;
use super::durable::sync_dir;
use super::identity::{IdentityError, LaneId};
use super::lane::open_lane;
use super::record::{self, BadRange};
use super::segment::{core_dir, list_cores, list_segments, segment_path};
use super::{Position, WalError, MAX_SEGMENT};
use crate::failpoint;

/// Why a lane could not be recovered.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Lane(#[from] IdentityError),
}

/// One segment file as found at startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub number: u32,
    /// File size after recovery.
    pub bytes: u64,
}

/// What [`recover_lane`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredLane {
    pub lane: LaneId,
    /// All segments, ascending; the last is the fresh one (0 bytes).
    pub segments: Vec<SegmentInfo>,
    /// Where the writer continues: the start of the fresh segment.
    pub tail: Position,
    /// Bytes cut from the end of the previous newest segment (0 after a clean shutdown).
    pub truncated_bytes: u64,
    /// Records that decode in the previous newest segment.
    pub newest_records: u64,
    /// Damaged ranges left in the previous newest segment for the reader to skip.
    pub corrupt_ranges: usize,
}

/// Recovers every `core-N` directory of `wal_dir` and cores `0..cores`, ascending by core.
pub fn recover_all(
    wal_dir: &Path,
    cores: u16,
    sync: SyncPolicy,
) -> Result<Vec<RecoveredLane>, RecoveryError> {
    let mut numbers = match failpoint::io("recovery.list").and_then(|()| list_cores(wal_dir)) {
        Ok(found) => found,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(WalError::Io { path: wal_dir.to_owned(), source }.into()),
    };
    numbers.extend(0..cores);
    numbers.sort_unstable();
    numbers.dedup();
    numbers.into_iter().map(|core| recover_lane(wal_dir, core, sync)).collect()
}

/// Makes `<wal_dir>/core-N` ready for its writer and reader; see the module doc.
pub fn recover_lane(wal_dir: &Path, core: u16, sync: SyncPolicy) -> Result<RecoveredLane, RecoveryError> {
    let lane = open_lane(wal_dir, core)?;
    let dir = core_dir(wal_dir, core);
    let numbers =
        failpoint::io("recovery.list").and_then(|()| list_segments(&dir)).map_err(WalError::io(&dir))?;
    let mut recovered = RecoveredLane {
        lane,
        segments: Vec::with_capacity(numbers.len() + 1),
        tail: Position::default(),
        truncated_bytes: 0,
        newest_records: 0,
        corrupt_ranges: 0,
    };
    let fresh = match numbers.split_last() {
        Some((&newest, sealed)) => {
            for &number in sealed {
                let path = segment_path(&dir, number);
                let bytes = failpoint::io("recovery.stat")
                    .and_then(|()| fs::metadata(&path))
                    .map_err(WalError::io(&path))?
                    .len();
                recovered.segments.push(SegmentInfo { number, bytes });
            }
            let bytes = repair_newest(&dir, newest, &mut recovered)?;
            recovered.segments.push(SegmentInfo { number: newest, bytes });
            newest.checked_add(1).filter(|&n| n <= MAX_SEGMENT)
        }
        None => Some(1),
    };
    let fresh = fresh.ok_or_else(|| WalError::SegmentsExhausted { core_dir: dir.clone() })?;
    create_fresh_segment(&dir, fresh, sync)?;
    recovered.segments.push(SegmentInfo { number: fresh, bytes: 0 });
    recovered.tail = Position::new(fresh, 0);
    Ok(recovered)
}

/// Scans the newest segment and applies the tail policy; returns its size afterwards.
fn repair_newest(dir: &Path, newest: u32, recovered: &mut RecoveredLane) -> Result<u64, WalError> {
    let path = segment_path(dir, newest);
    let bytes = failpoint::io("recovery.read").and_then(|()| fs::read(&path)).map_err(WalError::io(&path))?;
    let scan = record::scan(&bytes);
    recovered.newest_records = scan.records;
    recovered.corrupt_ranges = scan.corrupt.len();
    for bad in &scan.corrupt {
        tracing::error!(lane = %recovered.lane, segment = newest, offset = bad.offset, bad_bytes = bad.len,
            reason = %bad.reason, "wal: corrupt record in the newest segment; left for the reader to skip");
    }
    if let Some(tail) = scan.tail {
        cut_torn_tail(&path, tail)?;
        recovered.truncated_bytes = tail.len as u64;
    }
    Ok(scan.valid_len as u64)
}

/// The tail policy: truncates the torn tail and makes the new length durable.
fn cut_torn_tail(path: &Path, tail: BadRange) -> Result<(), WalError> {
    tracing::warn!(path = %path.display(), offset = tail.offset, cut_bytes = tail.len, reason = %tail.reason,
        "wal: cutting the torn tail of the newest segment");
    let file = failpoint::io("recovery.open")
        .and_then(|()| OpenOptions::new().write(true).open(path))
        .map_err(WalError::io(path))?;
    failpoint::io("recovery.truncate")
        .and_then(|()| file.set_len(tail.offset as u64))
        .map_err(WalError::io(path))?;
    failpoint::io("recovery.fsync").and_then(|()| file.sync_data()).map_err(WalError::io(path))
}

/// Creates the empty segment `number` (it must not exist) and makes its entry durable.
fn create_fresh_segment(dir: &Path, number: u32, sync: SyncPolicy) -> Result<(), WalError> {
    let path = segment_path(dir, number);
    failpoint::io("recovery.create")
        .and_then(|()| OpenOptions::new().write(true).create_new(true).open(&path))
        .map_err(WalError::io(&path))?;
    if sync != SyncPolicy::None {
        sync_dir(dir, "recovery.dir_fsync")?;
    }
    Ok(())
}

/// How a range of a segment is damaged, for `wal verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// Invalid bytes at the end of the newest segment with nothing that decodes after them: an
    /// interrupted write (or one in progress), which recovery cuts; never an acknowledged record.
    TornTail,
    /// Records that fail their checks anywhere else: lost, the reader skips them.
    Corrupt,
}

/// One damaged range of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    /// Bytes up to the next record that decodes (or the end of the segment).
    pub len: u64,
    pub reason: record::RecordError,
    pub kind: DamageKind,
}

/// One segment as checked by [`verify_lane`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentReport {
    pub number: u32,
    pub bytes: u64,
    /// Records that decode.
    pub records: u64,
    /// Damaged ranges, in order.
    pub damage: Vec<Damage>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneReport {
    pub core: u16,
    /// Ascending by segment number.
    pub segments: Vec<SegmentReport>,
}

/// Scans every segment of a lane without changing anything.
pub fn verify_lane(wal_dir: &Path, core: u16) -> Result<LaneReport, WalError> {
    let dir = core_dir(wal_dir, core);
    let numbers = list_segments(&dir).map_err(WalError::io(&dir))?;
    let mut segments = Vec::with_capacity(numbers.len());
    for (i, &number) in numbers.iter().enumerate() {
        let path = segment_path(&dir, number);
        let bytes = fs::read(&path).map_err(WalError::io(&path))?;
        segments.push(verify_segment(number, &bytes, i + 1 == numbers.len()));
    }
    Ok(LaneReport { core, segments })
}

fn verify_segment(number: u32, bytes: &[u8], is_newest: bool) -> SegmentReport {
    let scan = record::scan(bytes);
    let damage_of = |bad: &BadRange, kind| Damage {
        offset: bad.offset as u64,
        len: bad.len as u64,
        reason: bad.reason,
        kind,
    };
    let mut damage: Vec<Damage> =
        scan.corrupt.iter().map(|bad| damage_of(bad, DamageKind::Corrupt)).collect();
    if let Some(tail) = &scan.tail {
        damage.push(damage_of(tail, if is_newest { DamageKind::TornTail } else { DamageKind::Corrupt }));
    }
    SegmentReport { number, bytes: bytes.len() as u64, records: scan.records, damage }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::lane::read_lane;
    use crate::wal::record::{encode, Context, Event, RecordError};
    use std::path::PathBuf;

    fn records(first: u64, n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for file_id in first..first + n {
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

    fn numbers(rec: &RecoveredLane) -> Vec<u32> {
        rec.segments.iter().map(|s| s.number).collect()
    }

    #[test]
    fn an_empty_lane_gets_its_lane_file_and_segment_one() {
        let wal = tempfile::tempdir().unwrap();
        let rec = recover_lane(wal.path(), 2, SyncPolicy::Always).unwrap();
        assert_eq!(rec.tail, Position::new(1, 0));
        assert_eq!(numbers(&rec), vec![1]);
        assert_eq!(read_lane(&core_dir(wal.path(), 2)).unwrap(), Some(rec.lane));
        assert_eq!(fs::metadata(segment_path(&core_dir(wal.path(), 2), 1)).unwrap().len(), 0);
    }

    #[test]
    fn every_start_opens_a_fresh_segment_and_keeps_the_lane() {
        let wal = tempfile::tempdir().unwrap();
        write_segment(wal.path(), 0, 1, &records(1, 3));
        let clean = records(4, 5);
        write_segment(wal.path(), 0, 2, &clean);
        let rec = recover_lane(wal.path(), 0, SyncPolicy::None).unwrap();
        assert_eq!(rec.tail, Position::new(3, 0));
        assert_eq!((rec.truncated_bytes, rec.newest_records, rec.corrupt_ranges), (0, 5, 0));
        assert_eq!(numbers(&rec), vec![1, 2, 3]);
        assert_eq!(rec.segments[1].bytes, clean.len() as u64);
        let again = recover_lane(wal.path(), 0, SyncPolicy::None).unwrap();
        assert_eq!((again.lane, again.tail), (rec.lane, Position::new(4, 0)));
    }

    #[test]
    fn torn_and_zero_filled_tails_are_cut() {
        let wal = tempfile::tempdir().unwrap();
        let good = records(1, 4);
        let mut damaged = good.clone();
        damaged.extend_from_slice(&records(9, 1)[..20]);
        damaged.extend_from_slice(&[0u8; 4096]);
        let path = write_segment(wal.path(), 1, 7, &damaged);
        let rec = recover_lane(wal.path(), 1, SyncPolicy::Interval).unwrap();
        assert_eq!(rec.tail, Position::new(8, 0));
        assert_eq!(rec.truncated_bytes, (damaged.len() - good.len()) as u64);
        assert_eq!(rec.newest_records, 4);
        assert_eq!(fs::read(&path).unwrap(), good);
    }

    #[test]
    fn mid_file_corruption_is_left_for_the_reader() {
        let wal = tempfile::tempdir().unwrap();
        let mut bytes = records(1, 6);
        let one = records(1, 1).len();
        bytes[one + 15] ^= 0x20;
        let path = write_segment(wal.path(), 0, 1, &bytes);
        let rec = recover_lane(wal.path(), 0, SyncPolicy::None).unwrap();
        assert_eq!((rec.truncated_bytes, rec.newest_records, rec.corrupt_ranges), (0, 5, 1));
        assert_eq!(fs::read(&path).unwrap(), bytes, "nothing cut, nothing moved");
        assert!(!wal.path().join("quarantine").exists());
    }

    #[test]
    fn every_core_directory_found_is_recovered() {
        let wal = tempfile::tempdir().unwrap();
        write_segment(wal.path(), 5, 3, &records(1, 2));
        let lanes = recover_all(wal.path(), 2, SyncPolicy::None).unwrap();
        let cores: Vec<u16> = lanes.iter().map(|l| l.lane.core).collect();
        assert_eq!(cores, vec![0, 1, 5], "core 5 is no longer run but still recovered");
        assert_eq!(lanes[2].tail, Position::new(4, 0));
    }

    #[test]
    fn verify_reports_every_damaged_range_and_tells_a_torn_tail_apart() {
        let wal = tempfile::tempdir().unwrap();
        let mut sealed = records(1, 3);
        let one = records(1, 1).len();
        sealed[one + 12] = b'#';
        write_segment(wal.path(), 0, 1, &sealed);
        let mut newest = records(10, 2);
        newest.extend_from_slice(&[0u8; 10]);
        write_segment(wal.path(), 0, 2, &newest);

        let report = verify_lane(wal.path(), 0).unwrap();
        let s1 = &report.segments[0];
        assert_eq!((s1.number, s1.records, s1.bytes), (1, 2, sealed.len() as u64));
        let corrupt = Damage {
            offset: one as u64,
            len: one as u64,
            reason: RecordError::BadChecksum,
            kind: DamageKind::Corrupt,
        };
        assert_eq!(s1.damage, vec![corrupt]);
        let s2 = &report.segments[1];
        assert_eq!(s2.records, 2);
        assert_eq!(s2.damage.len(), 1);
        assert_eq!((s2.damage[0].kind, s2.damage[0].len), (DamageKind::TornTail, 10));
        assert_eq!(fs::read(segment_path(&core_dir(wal.path(), 0), 2)).unwrap(), newest, "read only");
    }
}
