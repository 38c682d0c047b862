//! Reading one core's WAL from a position, for the flusher's catch-up and replay.
//! (Interface fixed; implementation in progress.)

use std::path::{Path, PathBuf};

use super::record::Event;
use super::Position;

/// Why the WAL could not be read further.
#[derive(Debug, thiserror::Error)]
pub enum WalReadError {
    #[error("io error reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A record that is not the torn tail of the newest segment failed to decode.
    #[error("corrupt record in {path} at offset {offset}: {reason}")]
    Corrupt { path: PathBuf, segment: u32, offset: u64, reason: super::record::RecordError },
}

/// Reads records of one core (`<wal.dir>/core-N`). Keeps the current segment open (mmap for
/// sealed segments, buffered reads for the open one) between calls.
pub struct CoreWalReader {
    core_dir: PathBuf,
}

impl CoreWalReader {
    pub fn new(core_dir: &Path) -> Self {
        Self { core_dir: core_dir.to_owned() }
    }

    /// Calls `on_record(&event, end_of_record)` for whole records from `from` onwards, never
    /// reading at or past `until` (a position the writer published as written), at most
    /// `max_records` of them. When `from` is at the end of a segment older than
    /// `until.segment`, continues at the start of the next segment. Returns the position after
    /// the last record delivered (== `from` if none).
    pub fn read(
        &mut self,
        from: Position,
        until: Position,
        max_records: usize,
        on_record: impl FnMut(&Event<'_>, Position),
    ) -> Result<Position, WalReadError> {
        let _ = (&self.core_dir, from, until, max_records, on_record);
        todo!("implemented by the WAL work")
    }
}
