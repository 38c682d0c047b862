//! Encoding and decoding of one WAL record (format in the module doc of `crate::wal`).
//! The encoder is on the hot path: it appends to a reused buffer and allocates nothing.

/// Longest record line accepted, newline included.
pub const MAX_RECORD_BYTES: usize = 16 * 1024;

/// One validated event as stored in the WAL. Strings borrow from the request or from the
/// segment bytes being decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// Server receive time, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// `[a-z0-9_]{1,32}`.
    pub event: &'a str,
    /// Lower-case hostname, at most 253 bytes.
    pub domain: &'a str,
    /// ≥ 1.
    pub file_id: u64,
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// No `\n` yet: a torn tail if at the end of the newest segment.
    #[error("incomplete record (no newline)")]
    Incomplete,
    #[error("record longer than {MAX_RECORD_BYTES} bytes")]
    TooLong,
    #[error("bad record header")]
    BadHeader,
    #[error("checksum mismatch")]
    BadChecksum,
    #[error("payload is not a valid event")]
    BadPayload,
}
