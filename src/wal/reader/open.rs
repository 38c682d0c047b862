//! The open segment of a lane as the reader sees it: `pread`s into a reused buffer, never at
//! or past the `until` the writer published, so the bytes looked at never change again.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::WalReadError;
use crate::failpoint;
use crate::wal::record::MAX_RECORD_BYTES;
use crate::wal::segment::segment_path;
use crate::wal::Position;

/// Most bytes of the open segment read with one `pread`.
pub(super) const OPEN_READ_BYTES_MAX: usize = 256 * 1024;
// A refill at a record's start must always hold the whole record (or prove it too long).
const _: () = assert!(OPEN_READ_BYTES_MAX >= MAX_RECORD_BYTES);

#[derive(Default)]
pub(super) struct OpenSegment {
    /// Segment number and file handle, reopened when the open segment changes.
    file: Option<(u32, File)>,
    /// Bytes of the open segment starting at `buf_offset`, all below a published `until`.
    buf: Vec<u8>,
    buf_offset: u64,
}

impl OpenSegment {
    /// Buffered bytes from `pos` up to at most `limit` (never empty when `pos < limit`),
    /// reading from the file when `pos` is not buffered.
    pub(super) fn window(
        &mut self,
        core_dir: &Path,
        pos: Position,
        limit: u64,
    ) -> Result<&[u8], WalReadError> {
        let buf_end = self.buf_offset + self.buf.len() as u64;
        let same_file = matches!(&self.file, Some((n, _)) if *n == pos.segment);
        if !(same_file && self.buf_offset <= pos.offset && pos.offset < buf_end) {
            self.fill(core_dir, pos, limit)?;
        }
        let from = (pos.offset - self.buf_offset) as usize;
        let to = (limit.min(self.buf_offset + self.buf.len() as u64) - self.buf_offset) as usize;
        Ok(&self.buf[from..to])
    }

    fn fill(&mut self, core_dir: &Path, pos: Position, limit: u64) -> Result<(), WalReadError> {
        let path = || segment_path(core_dir, pos.segment);
        self.buf.clear();
        let file = match &self.file {
            Some((n, file)) if *n == pos.segment => file,
            _ => {
                let opened = failpoint::io("reader.open_segment")
                    .and_then(|()| File::open(path()))
                    .map_err(|source| WalReadError::Io { path: path(), source })?;
                &self.file.insert((pos.segment, opened)).1
            }
        };
        let len = (limit - pos.offset).min(OPEN_READ_BYTES_MAX as u64) as usize;
        self.buf.resize(len, 0);
        self.buf_offset = pos.offset;
        let read = failpoint::io("reader.pread").and_then(|()| file.read_exact_at(&mut self.buf, pos.offset));
        if let Err(source) = read {
            self.buf.clear();
            return Err(match source.kind() {
                io::ErrorKind::UnexpectedEof => WalReadError::OutOfRange {
                    path: path(),
                    segment: pos.segment,
                    offset: limit,
                    file_bytes: file.metadata().map(|m| m.len()).unwrap_or(0),
                },
                _ => WalReadError::Io { path: path(), source },
            });
        }
        Ok(())
    }

    /// Forgets the buffered bytes (keeps the allocation).
    pub(super) fn discard(&mut self) {
        self.buf.clear();
    }
}
