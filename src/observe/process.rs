//! The process as the kernel sees it, read from `/proc/self` at scrape time: resident memory
//! and open descriptors, for `process_resident_memory_bytes` and `process_open_fds`.
//!
//! Invariants: a read never fails a scrape (a value that cannot be read is `None` and its
//! metric is left out), and nothing is cached (two reads of small `/proc` files per scrape).

/// Process metrics from `/proc/self`; `None` where it cannot be read.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessStats {
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
}

impl ProcessStats {
    pub fn read() -> ProcessStats {
        ProcessStats { resident_bytes: resident_bytes(), open_fds: open_fds() }
    }
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (page > 0).then(|| pages * page as u64)
}

fn open_fds() -> Option<u64> {
    // The directory handle itself is one of the entries.
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count().saturating_sub(1) as u64)
}
