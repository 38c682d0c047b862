//! How much WAL there is on disk and how much of it MySQL has not committed yet.
//!
//! The listing (segment numbers and sizes per core) is the only disk IO a scrape does; the
//! observer caches it for [`LISTING_MAX_AGE`]. Backlog bytes are exact given the listing:
//! from the committed position to the written end, across segments. Backlog *events* are an
//! estimate (bytes ÷ the mean record size this process wrote), because counting records would
//! mean reading them.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::wal::{segment, Position};

/// A listing younger than this is reused.
pub const LISTING_MAX_AGE: Duration = Duration::from_secs(1);

/// Mean record size assumed before this process wrote anything (a typical beacon record).
pub const DEFAULT_RECORD_BYTES: u64 = 90;

/// Segments of every core, as found on disk.
#[derive(Debug, Clone)]
pub struct WalUsage {
    /// Per core: (segment number, file size in bytes), ascending.
    pub cores: Vec<Vec<(u32, u64)>>,
    pub taken: Instant,
}

impl WalUsage {
    /// Lists `core-0..core-{cores-1}` under `wal_dir`. A directory that cannot be read counts
    /// as empty (the core creates it; a scrape must not fail for it).
    pub fn scan(wal_dir: &Path, cores: usize) -> WalUsage {
        let cores = (0..cores.min(u16::MAX as usize + 1) as u32)
            .map(|c| list_core(&segment::core_dir(wal_dir, c as u16)))
            .collect();
        WalUsage { cores, taken: Instant::now() }
    }

    pub fn total_bytes(&self) -> u64 {
        self.cores.iter().flatten().map(|&(_, bytes)| bytes).sum()
    }

    pub fn total_segments(&self) -> usize {
        self.cores.iter().map(Vec::len).sum()
    }

    /// Bytes of `core` between `committed` and `written_end`.
    pub fn backlog_bytes(&self, core: usize, committed: Position, written_end: Position) -> u64 {
        backlog_bytes(self.cores.get(core).map_or(&[], Vec::as_slice), committed, written_end)
    }

    /// Segments of `core` holding records not yet committed.
    pub fn uncommitted_segments(&self, core: usize, committed: Position, written_end: Position) -> usize {
        self.cores.get(core).map_or(0, |segs| {
            segs.iter()
                .filter(|&&(n, size)| {
                    n <= written_end.segment && Position::new(n, size) > committed && size > 0
                })
                .count()
        })
    }
}

fn list_core(core_dir: &Path) -> Vec<(u32, u64)> {
    let Ok(numbers) = segment::list_segments(core_dir) else { return Vec::new() };
    numbers
        .into_iter()
        .filter_map(|n| {
            let size = std::fs::metadata(segment::segment_path(core_dir, n)).ok()?.len();
            Some((n, size))
        })
        .collect()
}

/// Bytes from `committed` to `written_end`, using the sizes of the segments in between (a
/// sealed segment's size is where its records end). The written end bounds the last one, so a
/// listing slightly older than the positions never counts unwritten bytes.
pub fn backlog_bytes(segments: &[(u32, u64)], committed: Position, written_end: Position) -> u64 {
    if written_end <= committed {
        return 0;
    }
    if committed.segment == written_end.segment {
        return written_end.offset - committed.offset;
    }
    let mut total = written_end.offset;
    for &(n, size) in segments {
        if n == committed.segment {
            total += size.saturating_sub(committed.offset);
        } else if n > committed.segment && n < written_end.segment {
            total += size;
        }
    }
    total
}

/// Backlog events estimated from bytes and the mean record size seen so far.
pub fn estimate_events(backlog_bytes: u64, bytes_written: u64, events_written: u64) -> u64 {
    let mean = bytes_written.checked_div(events_written).map_or(DEFAULT_RECORD_BYTES, |m| m.max(1));
    backlog_bytes.div_ceil(mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_within_one_segment_and_across_segments() {
        let segs = [(1, 1000), (2, 500), (3, 200)];
        assert_eq!(backlog_bytes(&segs, Position::new(2, 100), Position::new(2, 400)), 300);
        // 900 left in segment 1, all 500 of segment 2, 150 of segment 3.
        assert_eq!(backlog_bytes(&segs, Position::new(1, 100), Position::new(3, 150)), 1550);
        // Nothing committed yet (segment 0 = before all).
        assert_eq!(backlog_bytes(&segs, Position::default(), Position::new(3, 200)), 1700);
        assert_eq!(backlog_bytes(&segs, Position::new(3, 200), Position::new(3, 200)), 0);
    }

    #[test]
    fn scan_lists_segments_and_counts_uncommitted_ones() {
        let dir = tempfile::tempdir().unwrap();
        let core0 = segment::core_dir(dir.path(), 0);
        std::fs::create_dir_all(&core0).unwrap();
        std::fs::write(segment::segment_path(&core0, 1), vec![b'x'; 300]).unwrap();
        std::fs::write(segment::segment_path(&core0, 2), vec![b'x'; 100]).unwrap();
        std::fs::write(core0.join("junk.txt"), b"not a segment").unwrap();
        let usage = WalUsage::scan(dir.path(), 2);
        assert_eq!(usage.total_bytes(), 400);
        assert_eq!(usage.total_segments(), 2);
        assert!(usage.cores[1].is_empty(), "missing core dir counts as empty");
        let (committed, end) = (Position::new(1, 300), Position::new(2, 100));
        assert_eq!(usage.uncommitted_segments(0, committed, end), 1);
        assert_eq!(usage.backlog_bytes(0, committed, end), 100);
    }

    #[test]
    fn event_estimate_uses_mean_record_size() {
        assert_eq!(estimate_events(1000, 10_000, 100), 10);
        assert_eq!(estimate_events(DEFAULT_RECORD_BYTES * 3, 0, 0), 3);
        assert_eq!(estimate_events(0, 0, 0), 0);
    }
}
