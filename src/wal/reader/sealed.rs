//! A sealed segment as the reader sees it: memory-mapped once (it never changes again), with
//! pages far behind the read position handed back to the kernel.

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use super::WalReadError;
use crate::failpoint;
use crate::wal::segment::segment_path;

/// Mapped pages of a sealed segment count towards the process's RSS once touched. Pages more
/// than this far behind the read position are released (`MADV_DONTNEED`; the page cache
/// keeps them), so a catch-up over a 64 MiB segment costs at most this much RSS.
const MAPPED_BYTES_MAX: u64 = 4 * 1024 * 1024;

pub(super) struct SealedSegment {
    number: u32,
    pub(super) map: Mmap,
    /// Bytes below this were handed back to the kernel ([`MAPPED_BYTES_MAX`]).
    released: u64,
}

impl SealedSegment {
    /// Releases whole pages more than [`MAPPED_BYTES_MAX`] behind `offset`.
    pub(super) fn release_behind(&mut self, offset: u64) {
        const PAGE: u64 = 4096;
        let upto = offset.saturating_sub(MAPPED_BYTES_MAX) / PAGE * PAGE;
        if upto <= self.released {
            return;
        }
        // SAFETY: the mapping is shared and read-only; MADV_DONTNEED only drops this process's
        // page-table entries, and a later access re-reads the pages from the page cache.
        let dropped = unsafe {
            self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                self.released as usize,
                (upto - self.released) as usize,
            )
        };
        if dropped.is_ok() {
            self.released = upto;
        }
    }
}

/// The mapping of sealed segment `number`, mapping it (and dropping the previous one) if needed.
pub(super) fn map_sealed<'s>(
    slot: &'s mut Option<SealedSegment>,
    core_dir: &Path,
    number: u32,
) -> Result<&'s mut SealedSegment, WalReadError> {
    let seg = match slot.take() {
        Some(seg) if seg.number == number => seg,
        _ => {
            let path = segment_path(core_dir, number);
            let io_err = |source| WalReadError::Io { path: path.clone(), source };
            let file = failpoint::io("reader.open").and_then(|()| File::open(&path)).map_err(io_err)?;
            // SAFETY: a sealed segment is never written or truncated again; compaction only
            // unlinks whole files, which leaves an existing mapping valid.
            let map =
                failpoint::io("reader.mmap").and_then(|()| unsafe { Mmap::map(&file) }).map_err(io_err)?;
            // Catch-up reads a segment front to back: ask for aggressive read-ahead.
            let _ = map.advise(memmap2::Advice::Sequential);
            SealedSegment { number, map, released: 0 }
        }
    };
    Ok(slot.insert(seg))
}
