//! Dead letters: the `INSERT INTO ingest_rejects` statements for the rows of a refused batch.
//!
//! Invariants:
//! - every statement fits the statement limit, whatever the row: the error message is cut
//!   (at a character boundary) and then the raw line (flagged `raw_truncated`, with its whole
//!   length in `raw_bytes`) until the tuple fits alone. Only a limit too small for a tuple
//!   with an empty message and an empty raw line is [`TooLarge`];
//! - the raw line is stored byte for byte (`X'…'`), whatever it holds;
//! - `offset` is where the record *starts*: the row's end minus its line length.

use super::sql::{push_hex_literal, push_quoted, SqlBuffer, TooLarge};
use crate::sink::{Batch, Row};
use crate::wal::identity::WalIdentity;

/// Longest error message stored (the column is `VARCHAR(512)`), bytes.
pub const MESSAGE_BYTES_MAX: usize = 512;

const PREFIX: &str = "INSERT INTO ingest_rejects (node, wal_id, core, incarnation, segment, `offset`, \
raw_line, raw_bytes, raw_truncated, error_code, error_message) VALUES ";

/// Builds the dead-letter inserts of every row of `batch` into `sql`.
pub fn build_reject_inserts(
    wal: &WalIdentity,
    batch: &Batch,
    (code, message): (u32, &str),
    max_bytes: usize,
    sql: &mut SqlBuffer,
) -> Result<(), TooLarge> {
    let message = cut(message, MESSAGE_BYTES_MAX);
    for (i, row) in batch.rows().iter().enumerate() {
        let fitted = fit(wal, batch, row, (code, message), max_bytes).ok_or(TooLarge {
            row: i,
            bytes: PREFIX.len() + tuple(wal, batch, row, (code, ""), 0).len(),
            max: max_bytes,
        })?;
        sql.push_tuple((PREFIX, ""), max_bytes, i, |out| out.extend_from_slice(&fitted))?;
    }
    sql.finish_statement("");
    Ok(())
}

/// The row's tuple, with the message and then the raw line cut until it fits alone.
fn fit(
    wal: &WalIdentity,
    batch: &Batch,
    row: &Row,
    (code, message): (u32, &str),
    max: usize,
) -> Option<Vec<u8>> {
    let room = max.checked_sub(PREFIX.len())?;
    let raw_len = batch.raw(row).len();
    let mut message = message;
    loop {
        let whole = tuple(wal, batch, row, (code, message), raw_len);
        if whole.len() <= room {
            return Some(whole);
        }
        // Each raw byte costs two hex digits: what is left over for them decides the cut.
        let without_raw = tuple(wal, batch, row, (code, message), 0).len();
        if without_raw <= room {
            return Some(tuple(wal, batch, row, (code, message), (room - without_raw) / 2));
        }
        if message.is_empty() {
            return None;
        }
        message = cut(message, message.len() / 2);
    }
}

/// `(node, wal, core, incarnation, segment, offset, raw[..keep], raw_bytes, truncated, code,
/// message)` of one row.
fn tuple(wal: &WalIdentity, batch: &Batch, row: &Row, (code, message): (u32, &str), keep: usize) -> Vec<u8> {
    let raw = batch.raw(row);
    let keep = keep.min(raw.len());
    let start = row.end.offset.saturating_sub(raw.len() as u64);
    let lane = batch.lane();
    let mut num = itoa::Buffer::new();
    let mut out = Vec::with_capacity(160 + message.len() + 2 * keep);
    out.push(b'(');
    push_quoted(&wal.node, &mut out);
    out.extend_from_slice(b",'");
    out.extend_from_slice(wal.wal.to_string().as_bytes());
    out.extend_from_slice(b"',");
    out.extend_from_slice(num.format(lane.core).as_bytes());
    out.extend_from_slice(format!(",'{:016x}',", lane.incarnation).as_bytes());
    out.extend_from_slice(num.format(row.end.segment).as_bytes());
    out.push(b',');
    out.extend_from_slice(num.format(start).as_bytes());
    out.push(b',');
    push_hex_literal(&raw[..keep], &mut out);
    out.push(b',');
    out.extend_from_slice(num.format(raw.len()).as_bytes());
    out.extend_from_slice(if keep < raw.len() { b",1," } else { b",0," });
    out.extend_from_slice(num.format(code).as_bytes());
    out.push(b',');
    push_quoted(message, &mut out);
    out.push(b')');
    out
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::identity::{LaneId, WalId};
    use crate::wal::record::{DecodedContext, Event};
    use crate::wal::Position;

    fn wal() -> WalIdentity {
        WalIdentity { node: "n1".into(), wal: WalId(1) }
    }

    fn batch(raw: &[u8]) -> Batch {
        let mut b = Batch::new(LaneId { core: 2, incarnation: 0xab }, 0, Position::new(4, 100));
        let ev = Event { ts_ms: 0, event: "play", domain: "x.org", file_id: 1 };
        b.push(&ev, &DecodedContext::default(), raw, Position::new(4, 100 + raw.len() as u64));
        b
    }

    fn text(sql: &SqlBuffer) -> String {
        String::from_utf8(sql.statements().next().unwrap().to_vec()).unwrap()
    }

    #[test]
    fn a_row_that_fits_is_stored_whole_with_its_start_offset() {
        let b = batch(b"ab\n");
        let mut sql = SqlBuffer::default();
        build_reject_inserts(&wal(), &b, (1406, "Data too long"), 1 << 20, &mut sql).unwrap();
        assert_eq!(
            text(&sql),
            format!(
                "{PREFIX}('n1','{}1',2,'00000000000000ab',4,100,X'61620A',3,0,1406,'Data too long')",
                "0".repeat(31)
            )
        );
    }

    #[test]
    fn raw_line_then_message_are_cut_to_fit_the_limit() {
        let raw = vec![b'x'; 5000];
        let b = batch(&raw);
        let message = "é".repeat(300);
        for max in [700, 1000, 4096] {
            let mut sql = SqlBuffer::default();
            build_reject_inserts(&wal(), &b, (1153, &message), max, &mut sql).unwrap();
            let t = text(&sql);
            assert!(t.len() <= max, "{} > {max}", t.len());
            assert!(t.contains(",5000,1,1153,'"), "{t}");
        }
        let mut sql = SqlBuffer::default();
        let err = build_reject_inserts(&wal(), &b, (1153, &message), 200, &mut sql).unwrap_err();
        assert_eq!((err.row, err.max), (0, 200));
    }

    #[test]
    fn cut_keeps_characters_whole() {
        assert_eq!(cut("aé", 2), "a");
        assert_eq!(cut("aé", 3), "aé");
        assert_eq!(cut("", 0), "");
    }
}
