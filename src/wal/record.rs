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

const HEADER_BYTES: usize = 9; // 8 hex digits + space

/// Appends one record line for `ev` to `out`. Allocates only if `out` must grow.
///
/// The caller guarantees `event` and `domain` need no JSON escaping (the validator only lets
/// through `[a-z0-9_]` and hostname characters); debug builds assert it.
pub fn encode(ev: &Event<'_>, out: &mut Vec<u8>) {
    debug_assert!(ev.event.bytes().all(is_plain_json_byte) && ev.domain.bytes().all(is_plain_json_byte));
    let start = out.len();
    out.extend_from_slice(b"00000000 {\"ts\":");
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(num.format(ev.ts_ms).as_bytes());
    out.extend_from_slice(b",\"event\":\"");
    out.extend_from_slice(ev.event.as_bytes());
    out.extend_from_slice(b"\",\"domain\":\"");
    out.extend_from_slice(ev.domain.as_bytes());
    out.extend_from_slice(b"\",\"file_id\":");
    out.extend_from_slice(num.format(ev.file_id).as_bytes());
    out.push(b'}');
    let crc = crc32c::crc32c(&out[start + HEADER_BYTES..]);
    out.push(b'\n');
    write_hex_u32(crc, &mut out[start..start + 8]);
    debug_assert!(out.len() - start <= MAX_RECORD_BYTES);
}

fn is_plain_json_byte(b: u8) -> bool {
    b.is_ascii_graphic() && b != b'"' && b != b'\\'
}

fn write_hex_u32(v: u32, dst: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, d) in dst.iter_mut().enumerate().take(8) {
        *d = HEX[((v >> (28 - 4 * i)) & 0xf) as usize];
    }
}
