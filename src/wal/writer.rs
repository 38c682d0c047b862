//! The per-core appender, used by a monoio core thread: one write per tick buffer, an
//! io_uring write or an inline `pwrite` (`wal.write_mode`, see [`WriteMode`]).
//!
//! Invariants:
//! - the file of the current segment ends exactly at `offset` (recovery guarantees it at
//!   open; a failed append truncates back to it), so `position()` is always a record boundary;
//! - a write never spans two segments: the writer rolls first when a non-empty segment would
//!   grow past `segment_bytes` (a buffer larger than `segment_bytes` still goes, alone, into an
//!   empty segment);
//! - fsync order on roll (`sync` != none): fdatasync the sealed segment, create the next one,
//!   fsync the directory, and only then write to it.
//!
//! Rolling and repair use blocking std calls (open, ftruncate, directory fsync): they are rare
//! (once per `segment_bytes`, or on an IO error) and keep this file simple.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use super::config::{SyncPolicy, WriteMode};

use super::segment::segment_path;
use super::{Position, WalError, MAX_SEGMENT};

/// Appends whole records to the segments of one core.
pub struct SegmentWriter {
    /// `<wal.dir>/core-N`, where new segments are created.
    core_dir: PathBuf,
    /// The current segment, written with io_uring.
    file: monoio::fs::File,
    /// A second handle on the same file: inline writes (`WriteMode::Inline`) and `set_len`
    /// when a failed write is repaired.
    repair: std::fs::File,
    /// Number of the current segment.
    segment: u32,
    /// End of the last whole record written: where the next append starts.
    offset: u64,
    /// Roll threshold (`wal.segment_bytes`).
    segment_bytes: u64,
    sync: SyncPolicy,
    mode: WriteMode,
}

impl SegmentWriter {
    /// Continues the WAL at `tail` (from recovery). The segment file must end exactly at
    /// `tail.offset`; it is created if missing and `tail.offset` is 0. Segment 0
    /// (`Position::default()`) means segment 1.
    pub async fn open(
        core_dir: &Path,
        tail: Position,
        segment_bytes: u64,
        sync: SyncPolicy,
    ) -> Result<Self, WalError> {
        let segment = tail.segment.max(1);
        let (file, repair) = open_segment(core_dir, segment, sync)?;
        let path = segment_path(core_dir, segment);
        let file_bytes = repair.metadata().map_err(WalError::io(&path))?.len();
        if file_bytes != tail.offset {
            return Err(WalError::TailMismatch { path, tail_offset: tail.offset, file_bytes });
        }
        Ok(Self {
            core_dir: core_dir.to_owned(),
            file,
            repair,
            segment,
            offset: tail.offset,
            segment_bytes,
            sync,
            mode: WriteMode::Uring,
        })
    }

    /// How ticks are written from now on (`wal.write_mode`; `Uring` until set).
    pub fn with_mode(mut self, mode: WriteMode) -> Self {
        self.mode = mode;
        self
    }

    /// Where the next record will be written.
    pub fn position(&self) -> Position {
        Position::new(self.segment, self.offset)
    }

    /// Writes `buf` (whole encoded records) with ONE write at the end of the current segment
    /// (an io_uring `write_all_at`, or a `pwrite` from this thread with `WriteMode::Inline`), first rolling to a new segment if the current one is non-empty and
    /// offset + buf.len() > segment_bytes. With SyncPolicy::Always, fdatasyncs before returning.
    /// Returns the written range (start, end) – same segment – and gives the buffer back.
    /// On a write error (ENOSPC, EIO, short write) the segment is truncated back to the offset it
    /// had before the call (repair), the position is unchanged, and the error is returned.
    pub async fn append(&mut self, buf: Vec<u8>) -> (Result<(Position, Position), WalError>, Vec<u8>) {
        if buf.is_empty() {
            return (Ok((self.position(), self.position())), buf);
        }
        if self.offset > 0 && self.offset + buf.len() as u64 > self.segment_bytes {
            if let Err(e) = self.roll().await {
                return (Err(e), buf);
            }
        }
        let start = self.position();
        let (written, buf) = match self.mode {
            WriteMode::Inline => {
                use std::os::unix::fs::FileExt;
                (self.repair.write_all_at(&buf, self.offset), buf)
            }
            WriteMode::Uring => self.file.write_all_at(buf, self.offset).await,
        };
        let durable = match written {
            Ok(()) if self.sync == SyncPolicy::Always => self.file.sync_data().await,
            other => other,
        };
        if let Err(source) = durable {
            self.repair_after_failed_write();
            let path = segment_path(&self.core_dir, self.segment);
            return (Err(WalError::Io { path, source }), buf);
        }
        self.offset += buf.len() as u64;
        (Ok((start, self.position())), buf)
    }

    /// fdatasyncs the current segment (for `SyncPolicy::Interval` timers and shutdown).
    pub async fn sync_data(&self) -> Result<(), WalError> {
        let path = segment_path(&self.core_dir, self.segment);
        self.file.sync_data().await.map_err(WalError::io(&path))
    }

    /// Seals the current segment and continues in the next one.
    async fn roll(&mut self) -> Result<(), WalError> {
        let next = self.segment + 1;
        if next > MAX_SEGMENT {
            return Err(WalError::SegmentsExhausted { core_dir: self.core_dir.clone() });
        }
        if self.sync != SyncPolicy::None {
            self.sync_data().await?;
        }
        let (file, repair) = open_segment(&self.core_dir, next, self.sync)?;
        self.file = file;
        self.repair = repair;
        self.segment = next;
        self.offset = 0;
        Ok(())
    }

    /// Cuts whatever part of a failed write reached the file, so the segment ends on a record
    /// boundary again. If even that fails, the garbage lies past `offset`: the next append
    /// overwrites it, and recovery cuts it as a torn tail after a crash.
    fn repair_after_failed_write(&self) {
        let cut = self.repair.set_len(self.offset).and_then(|()| self.repair.sync_data());
        if let Err(e) = cut {
            let path = segment_path(&self.core_dir, self.segment);
            tracing::error!(path = %path.display(), offset = self.offset, error = %e,
                "wal: could not truncate a failed write");
        }
    }
}

/// Opens (creating if needed) segment `n` for writing; a new file's directory entry is made
/// durable unless `sync` is none. Returns the io_uring handle and a std handle on the same file.
fn open_segment(
    core_dir: &Path,
    n: u32,
    sync: SyncPolicy,
) -> Result<(monoio::fs::File, std::fs::File), WalError> {
    let path = segment_path(core_dir, n);
    let existed = path.exists();
    let std_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(WalError::io(&path))?;
    if !existed && sync != SyncPolicy::None {
        sync_dir(core_dir)?;
    }
    let repair = std_file.try_clone().map_err(WalError::io(&path))?;
    let file = monoio::fs::File::from_std(std_file).map_err(WalError::io(&path))?;
    Ok((file, repair))
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(WalError::io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::{encode, scan, Context, Event};
    use crate::wal::segment::list_segments;

    fn run<F: std::future::Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build().unwrap().block_on(f)
    }

    /// Records with ids `first_id..first_id + n` (same length while the digit count is).
    fn tick(first_id: u64, n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for file_id in first_id..first_id + n {
            encode(
                &Event { ts_ms: 7, event: "play", domain: "a.example", file_id },
                &Context::NONE,
                &mut out,
            );
        }
        out
    }

    #[test]
    fn appends_roll_and_decode_back() {
        let dir = tempfile::tempdir().unwrap();
        let one_tick = tick(100, 4).len() as u64;
        // Room for two ticks per segment.
        let segment_bytes = 2 * one_tick + 1;
        let ranges = run(async {
            let mut w =
                SegmentWriter::open(dir.path(), Position::new(1, 0), segment_bytes, SyncPolicy::Always)
                    .await
                    .unwrap();
            let mut ranges = Vec::new();
            let mut buf = Vec::new();
            for t in 0..5 {
                buf.clear();
                buf.extend_from_slice(&tick(100 + 4 * t, 4));
                let (res, back) = w.append(buf).await;
                buf = back;
                ranges.push(res.unwrap());
            }
            w.sync_data().await.unwrap();
            assert_eq!(w.position(), ranges[4].1);
            ranges
        });
        let expected = [
            (Position::new(1, 0), Position::new(1, one_tick)),
            (Position::new(1, one_tick), Position::new(1, 2 * one_tick)),
            (Position::new(2, 0), Position::new(2, one_tick)),
            (Position::new(2, one_tick), Position::new(2, 2 * one_tick)),
            (Position::new(3, 0), Position::new(3, one_tick)),
        ];
        assert_eq!(ranges, expected);
        assert_eq!(list_segments(dir.path()).unwrap(), vec![1, 2, 3]);
        let mut file_ids = Vec::new();
        for n in 1..=3 {
            let bytes = std::fs::read(segment_path(dir.path(), n)).unwrap();
            let s = scan(&bytes);
            assert!(s.is_clean() && s.valid_len == bytes.len());
            let mut at = 0;
            while at < bytes.len() {
                let (ev, _, len) = crate::wal::record::decode(&bytes[at..]).unwrap();
                file_ids.push(ev.file_id);
                at += len;
            }
        }
        assert_eq!(file_ids, (100..120).collect::<Vec<_>>());
    }

    #[test]
    fn reopen_continues_at_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let first = tick(1, 3);
        let end = run(async {
            let mut w = SegmentWriter::open(dir.path(), Position::default(), 1 << 20, SyncPolicy::None)
                .await
                .unwrap();
            w.append(first.clone()).await.0.unwrap().1
        });
        let second = tick(4, 2);
        let range = run(async {
            let mut w = SegmentWriter::open(dir.path(), end, 1 << 20, SyncPolicy::Interval).await.unwrap();
            w.append(second.clone()).await.0.unwrap()
        });
        assert_eq!(range, (end, Position::new(1, (first.len() + second.len()) as u64)));
        let bytes = std::fs::read(segment_path(dir.path(), 1)).unwrap();
        assert_eq!(bytes, [first, second].concat());
    }

    #[test]
    fn open_refuses_a_tail_that_is_not_the_file_end() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(segment_path(dir.path(), 1), tick(1, 2)).unwrap();
        let err = run(SegmentWriter::open(dir.path(), Position::new(1, 5), 1 << 20, SyncPolicy::None));
        assert!(matches!(err, Err(WalError::TailMismatch { tail_offset: 5, .. })));
    }

    #[test]
    fn oversized_buffer_goes_alone_into_an_empty_segment() {
        let dir = tempfile::tempdir().unwrap();
        let big = tick(1, 10);
        let ranges = run(async {
            let mut w =
                SegmentWriter::open(dir.path(), Position::new(1, 0), 100, SyncPolicy::None).await.unwrap();
            let a = w.append(big.clone()).await.0.unwrap();
            let b = w.append(tick(11, 1)).await.0.unwrap();
            (a, b)
        });
        assert_eq!(ranges.0, (Position::new(1, 0), Position::new(1, big.len() as u64)));
        assert_eq!(ranges.1 .0, Position::new(2, 0));
    }

    #[test]
    fn inline_writes_roll_repair_and_read_back_like_uring_writes() {
        let dir = tempfile::tempdir().unwrap();
        let one_tick = tick(100, 4).len() as u64;
        let ranges = run(async {
            let mut w =
                SegmentWriter::open(dir.path(), Position::new(1, 0), 2 * one_tick, SyncPolicy::Always)
                    .await
                    .unwrap()
                    .with_mode(WriteMode::Inline);
            let mut ranges = Vec::new();
            for t in 0..3 {
                ranges.push(w.append(tick(100 + 4 * t, 4)).await.0.unwrap());
            }
            ranges
        });
        assert_eq!(ranges[2], (Position::new(2, 0), Position::new(2, one_tick)), "rolled");
        let first = std::fs::read(segment_path(dir.path(), 1)).unwrap();
        assert_eq!(first, [tick(100, 4), tick(104, 4)].concat());

        let full = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/full", segment_path(full.path(), 1)).unwrap();
        let (res, position) = run(async {
            let mut w = SegmentWriter::open(full.path(), Position::new(1, 0), 1 << 20, SyncPolicy::None)
                .await
                .unwrap()
                .with_mode(WriteMode::Inline);
            let (res, _) = w.append(tick(1, 3)).await;
            (res, w.position())
        });
        assert!(
            matches!(res, Err(WalError::Io { ref source, .. }) if source.raw_os_error() == Some(libc::ENOSPC))
        );
        assert_eq!(position, Position::new(1, 0));
    }

    #[test]
    fn failed_write_leaves_the_position_and_returns_the_buffer() {
        let dir = tempfile::tempdir().unwrap();
        // Every write to /dev/full fails with ENOSPC.
        std::os::unix::fs::symlink("/dev/full", segment_path(dir.path(), 1)).unwrap();
        let records = tick(1, 3);
        let (res, back, position) = run(async {
            let mut w = SegmentWriter::open(dir.path(), Position::new(1, 0), 1 << 20, SyncPolicy::None)
                .await
                .unwrap();
            let (res, back) = w.append(records.clone()).await;
            (res, back, w.position())
        });
        match res {
            Err(WalError::Io { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::ENOSPC))
            }
            other => panic!("expected an io error, got {other:?}"),
        }
        assert_eq!(back, records, "the caller gets its buffer back");
        assert_eq!(position, Position::new(1, 0));
    }
}
