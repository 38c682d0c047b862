//! Finding records in a buffer of segment bytes: [`scan`] walks every record and tells damaged
//! ranges from a torn tail; [`resync`] finds where the next record starts after a bad one.
//! Both decide with [`super::decode`] alone, so a range is good exactly when the decoder
//! accepts it.

use super::{decode, hex_digit, RecordError};

/// Where the next record starts after a bad one ([`resync`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resync {
    /// A record that decodes starts at this offset.
    At(usize),
    /// None up to the end of the buffer.
    None,
    /// The buffer ends inside a candidate that starts at this offset: look again with more
    /// bytes from there (only when the buffer is not `complete`).
    NeedMore(usize),
}

/// The first offset `>= from` in `buf` where a record that [`decode`] accepts starts. Every
/// offset is a candidate, not only those after a `\n`, so a flipped newline costs one record
/// and not two; a candidate must look like a header (8 lowercase hex digits and a space)
/// before it is decoded. `complete`: `buf` runs to the end of the readable bytes, so a
/// candidate cut short by its end is no record.
///
/// A false match needs a CRC32C collision, and a client cannot plant one: every `"` of its text
/// is escaped inside a record, so no tail of a record's line parses as a payload object.
pub fn resync(buf: &[u8], from: usize, complete: bool) -> Resync {
    let mut at = from;
    // A header is 9 bytes: its space is the 9th. Find spaces, then look back 8 bytes.
    while let Some(i) = buf.get(at + 8..).and_then(|rest| memchr::memchr(b' ', rest)) {
        let start = at + i;
        if buf[start..start + 8].iter().all(|&b| hex_digit(b).is_some()) {
            match decode(&buf[start..]) {
                Ok(_) => return Resync::At(start),
                Err(RecordError::Incomplete) if !complete => return Resync::NeedMore(start),
                Err(_) => {}
            }
        }
        at = start + 1;
    }
    if complete {
        return Resync::None;
    }
    // The last 8 bytes hold no space: a header may begin among them if the rest is hex.
    let tail_start = at.max(buf.len().saturating_sub(8));
    match (tail_start..buf.len()).find(|&o| buf[o..].iter().all(|&b| hex_digit(b).is_some())) {
        Some(start) => Resync::NeedMore(start),
        None => Resync::None,
    }
}

/// Bytes of a segment that hold no record: from a record that fails its checks up to the
/// next one that decodes (or the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadRange {
    pub offset: usize,
    pub len: usize,
    /// Why the record at `offset` failed.
    pub reason: RecordError,
}

/// Result of walking the records of a buffer, resyncing after each bad one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// End of the last record that decodes: what is left after cutting the `tail`.
    pub valid_len: usize,
    /// Records that decode, in the whole buffer.
    pub records: u64,
    /// Damaged ranges followed by a record that decodes, in order.
    pub corrupt: Vec<BadRange>,
    /// The damaged end of the buffer, after which nothing decodes: a torn write at the end of
    /// the newest segment.
    pub tail: Option<BadRange>,
}

impl Scan {
    /// Every byte belongs to a record that decodes.
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty() && self.tail.is_none()
    }
}

/// Walks every record of `buf`, skipping damaged ranges with [`resync`].
pub fn scan(buf: &[u8]) -> Scan {
    let mut scan = Scan { valid_len: 0, records: 0, corrupt: Vec::new(), tail: None };
    let mut at = 0;
    while at < buf.len() {
        match decode(&buf[at..]) {
            Ok((_, _, len)) => {
                at += len;
                scan.records += 1;
                scan.valid_len = at;
            }
            Err(reason) => match resync(&buf[at..], 1, true) {
                Resync::At(len) => {
                    scan.corrupt.push(BadRange { offset: at, len, reason });
                    at += len;
                }
                Resync::None | Resync::NeedMore(_) => {
                    scan.tail = Some(BadRange { offset: at, len: buf.len() - at, reason });
                    break;
                }
            },
        }
    }
    debug_assert_eq!(scan.valid_len, buf.len() - scan.tail.map_or(0, |t| t.len));
    scan
}
