//! `LOAD DATA LOCAL INFILE`: a batch's event rows as TSV, built in memory and streamed to the
//! server through mysql_async's per-connection infile handler. No temporary file exists.
//!
//! Format (what [`LOAD_EVENTS`] tells the server): fields end in a tab, lines in `\n`, the
//! escape character is `\`, nothing is enclosed, and `CHARACTER SET binary` (no conversion:
//! our text is UTF-8 already and `client_ip` is raw bytes). Inside a field [`push_field`]
//! escapes exactly the bytes the server would otherwise read as structure or change: `\`
//! `\t` `\n` `\r` NUL and 0x1A (as `\\ \t \n \r \0 \Z`); every other byte, quotes included,
//! goes as is. SQL NULL is `\N`. The word `NULL` unescaped is the string "NULL" (no
//! ENCLOSED BY), so no value is ambiguous.
//!
//! What LOAD DATA does differently from INSERT, and how the sink keeps INSERT's meaning:
//! - with `LOCAL`, the server cannot stop the client mid-file, so strict-mode data errors
//!   become *warnings* and the value is cut or zeroed, and a duplicate key skips its row (IGNORE
//!   semantics, said explicitly in [`LOAD_EVENTS`]). [`load_events`] checks the counts and the
//!   warnings with `super::dedup::check_rows`: a row skipped for a repeated client event id is
//!   a duplicate, anything else is [`RowsError::Refused`] with the first warning's code, so the
//!   caller rolls back and the delivery core bisects as for an INSERT refusal;
//! - a server with `local_infile` off answers 1148, 3948 (MySQL 8) or 4166 (MariaDB):
//!   [`is_load_data_refused`] tells the caller to fall back to INSERT.
//!
//! The stream is cut in chunks of at most the statement limit, each one packet, so no packet
//! is larger than the server's `max_allowed_packet`.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_core::Stream;

use super::db::{Db, DbError};
use super::dedup::{check_rows, RowsError};
use super::sql::{event_columns, ip_octets, push_datetime_ms};
use crate::ingest::client::ua_hash;
use crate::sink::Batch;

/// The statement; the file name is ignored by our handler.
pub const LOAD_EVENTS: &str = concat!(
    "LOAD DATA LOCAL INFILE 'psc-batch' IGNORE INTO TABLE events CHARACTER SET binary \
FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' ",
    event_columns!()
);

/// Server codes for "LOAD DATA LOCAL is not allowed here": 1148 (older servers), 3948
/// (MySQL 8), 4166 (MariaDB 10.5+).
const REFUSED_CODES: [u16; 3] = [1148, 3948, 4166];

/// Appends one TSV line per row of `batch` (columns of [`LOAD_EVENTS`]).
pub fn build_tsv(batch: &Batch, domain_ids: &[u32], out: &mut BytesMut) {
    debug_assert_eq!(domain_ids.len(), batch.len());
    let mut line = Vec::with_capacity(256);
    let mut num = itoa::Buffer::new();
    for (row, &domain_id) in batch.rows().iter().zip(domain_ids) {
        line.clear();
        push_datetime_ms(row.ts_ms, &mut line);
        line.push(b'\t');
        push_field(Some(batch.event(row).as_bytes()), &mut line);
        for n in [u64::from(domain_id), row.file_id] {
            line.push(b'\t');
            line.extend_from_slice(num.format(n).as_bytes());
        }
        line.push(b'\t');
        let ip = ip_octets(batch, row);
        push_field(ip.as_ref().map(|(octets, len)| &octets[..*len]), &mut line);
        line.push(b'\t');
        match batch.user_agent(row) {
            Some(ua) => line.extend_from_slice(num.format(ua_hash(ua)).as_bytes()),
            None => line.extend_from_slice(b"\\N"),
        }
        for text in [batch.referer_host(row), batch.extra(row)] {
            line.push(b'\t');
            push_field(text.map(str::as_bytes), &mut line);
        }
        line.push(b'\t');
        push_field(row.event_id.as_ref().map(|id| &id.bytes()[..]), &mut line);
        line.push(b'\t');
        push_field(row.country.as_ref().map(|c| c.as_str().as_bytes()), &mut line);
        line.push(b'\n');
        out.extend_from_slice(&line);
    }
}

/// Appends `value` escaped for the format of the module doc; `None` is `\N`.
pub fn push_field(value: Option<&[u8]>, out: &mut Vec<u8>) {
    let Some(bytes) = value else {
        out.extend_from_slice(b"\\N");
        return;
    };
    for &b in bytes {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0 => out.extend_from_slice(b"\\0"),
            0x1a => out.extend_from_slice(b"\\Z"),
            _ => out.push(b),
        }
    }
}

/// Streams `tsv` (`rows` lines; `ids`: some carry a client event id) into `events` on `db`,
/// inside the caller's transaction; returns the rows skipped as duplicate event ids.
pub async fn load_events(
    db: &mut Db,
    tsv: Bytes,
    chunk_bytes: usize,
    rows: usize,
    ids: bool,
) -> Result<u64, RowsError> {
    let mut chunks = VecDeque::new();
    let mut at = 0;
    while at < tsv.len() {
        let end = (at + chunk_bytes.max(1)).min(tsv.len());
        chunks.push_back(tsv.slice(at..end));
        at = end;
    }
    // The handler must be `Sync`: it holds the chunks (plain `Bytes`) and boxes them into the
    // driver's stream type only when the server asks for the file.
    db.raw().set_infile_handler(async move { Ok(Box::pin(Chunks(chunks)) as mysql_async::InfileData) });
    let took = db.execute("load data", LOAD_EVENTS.as_bytes()).await?;
    check_rows(db, rows as u64, took, ids).await
}

/// Whether `e` says the server does not allow `LOAD DATA LOCAL` at all.
pub fn is_load_data_refused(e: &DbError) -> bool {
    e.server_code().is_some_and(|c| REFUSED_CODES.contains(&c))
}

/// The infile data: the chunks, one packet each.
struct Chunks(VecDeque<Bytes>);

impl Stream for Chunks {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::country::Country;
    use crate::event_id::EventId;
    use crate::wal::identity::LaneId;
    use crate::wal::record::{DecodedContext, Event};
    use crate::wal::Position;
    use proptest::prelude::*;

    /// MySQL's reading of an escaped field (the server side of `push_field`), for the test.
    fn unescape(field: &[u8]) -> Option<Vec<u8>> {
        if field == b"\\N" {
            return None;
        }
        let mut out = Vec::new();
        let mut it = field.iter();
        while let Some(&b) = it.next() {
            if b != b'\\' {
                out.push(b);
                continue;
            }
            out.push(match it.next() {
                Some(b'0') => 0,
                Some(b'b') => 8,
                Some(b'n') => b'\n',
                Some(b'r') => b'\r',
                Some(b't') => b'\t',
                Some(b'Z') => 0x1a,
                Some(&other) => other,
                None => b'\\',
            });
        }
        Some(out)
    }

    proptest! {
        #[test]
        fn escaped_fields_hold_no_structure_and_read_back_exactly(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut out = Vec::new();
            push_field(Some(&bytes), &mut out);
            prop_assert!(!out.contains(&b'\t') && !out.contains(&b'\n'), "no raw separator");
            prop_assert_eq!(unescape(&out), Some(bytes));
        }
    }

    #[test]
    fn null_and_the_word_null_differ() {
        let (mut null, mut word) = (Vec::new(), Vec::new());
        push_field(None, &mut null);
        push_field(Some(b"NULL"), &mut word);
        assert_eq!((null.as_slice(), word.as_slice()), (&b"\\N"[..], &b"NULL"[..]));
        let mut n = Vec::new();
        push_field(Some(b"\\N"), &mut n);
        assert_eq!(n, b"\\\\N", "a value spelled \\N is not NULL");
    }

    #[test]
    fn one_line_per_row_with_every_column() {
        let mut b = Batch::new(LaneId { core: 0, incarnation: 1 }, 0, Position::new(1, 0));
        let ctx = DecodedContext {
            ip: Some("127.0.0.1"),
            ua: Some("UA".into()),
            referer_host: Some("r\t.org"),
            extra: Some("{\"a\":\"\\n\"}".into()),
            event_id: Some(EventId::from_bytes(*b"\t\n\\abcdefghijklm")),
            country: Country::parse("ch"),
        };
        b.push(
            &Event { ts_ms: 1000, event: "play", domain: "x.org", file_id: 5 },
            &ctx,
            b"",
            Position::new(1, 1),
        );
        b.push(
            &Event { ts_ms: 0, event: "end", domain: "x.org", file_id: 6 },
            &DecodedContext::default(),
            b"",
            Position::new(1, 2),
        );
        let mut out = BytesMut::new();
        build_tsv(&b, &[3, 4], &mut out);
        let hash = ua_hash("UA");
        let want = format!(
            "1970-01-01 00:00:01.000\tplay\t3\t5\t\x7f\\0\\0\x01\t{hash}\tr\\t.org\t{{\"a\":\"\\\\n\"}}\t\\t\\n\\\\abcdefghijklm\tCH\n\
             1970-01-01 00:00:00.000\tend\t4\t6\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\n"
        );
        assert_eq!(String::from_utf8_lossy(&out), want);
    }
}
