//! SQL text of the event rows and domains, built from a [`Batch`]; the user-agent rows are
//! `super::user_agents`', the literals `super::literal`'s.
//!
//! Statements are built into one reused byte buffer ([`SqlBuffer`]), so after warm-up a batch
//! allocates nothing per row.
//!
//! Invariants:
//! - no statement built here is longer than the `max_bytes` it was built for; a single tuple
//!   that cannot fit even alone is [`TooLarge`], and nothing of it is kept in the buffer;
//! - splitting only moves statement boundaries: the tuples, concatenated, are the same text
//!   whatever `max_bytes` is, and the buffer knows how many tuples each statement holds (what
//!   `super::dedup` compares the server's count with);
//! - the event rows of a batch in which some row carries a client event id are inserted with
//!   `INSERT IGNORE` (the unique key on `events.event_id` keeps one row per id); a batch without
//!   ids uses a plain `INSERT`, exactly as before ids existed;
//! - literals are escaped for a session with backslash escapes on (see `super::db`).

use std::net::IpAddr;
use std::ops::Range;

pub use super::literal::{push_datetime_ms, push_hex_literal, push_quoted};
use crate::ingest::client::ua_hash;
use crate::sink::{Batch, Row};

/// One tuple does not fit in a statement of `max` bytes even alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a statement with one row would be {bytes} bytes, the limit is {max}")]
pub struct TooLarge {
    /// Index of the row in its batch.
    pub row: usize,
    pub bytes: usize,
    pub max: usize,
}

/// Builds multi-row statements into one reused buffer; `statements()` gives them.
#[derive(Debug, Default)]
pub struct SqlBuffer {
    buf: Vec<u8>,
    /// Each finished statement's bytes in `buf` and its number of tuples.
    statements: Vec<(Range<usize>, usize)>,
    current_start: usize,
    current_rows: usize,
}

impl SqlBuffer {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.statements.clear();
        self.current_start = 0;
        self.current_rows = 0;
    }

    /// The statements built since the last `clear`.
    pub fn statements(&self) -> impl Iterator<Item = &[u8]> {
        self.statements.iter().map(|(r, _)| &self.buf[r.clone()])
    }

    /// The statements with the number of tuples (rows) each holds.
    pub fn statements_with_rows(&self) -> impl Iterator<Item = (&[u8], usize)> {
        self.statements.iter().map(|(r, rows)| (&self.buf[r.clone()], *rows))
    }

    pub fn statement_count(&self) -> usize {
        self.statements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.statements.is_empty() && self.current_rows == 0
    }

    /// Appends one `(…)` tuple to the statement beginning with `prefix`, starting a new
    /// statement first if the tuple would push the current one past `max_bytes`. `row` only
    /// names the tuple in a [`TooLarge`].
    pub fn push_tuple(
        &mut self,
        (prefix, suffix): (&str, &str),
        max_bytes: usize,
        row: usize,
        tuple: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), TooLarge> {
        let tuple_start = self.buf.len();
        tuple(&mut self.buf);
        let tuple_len = self.buf.len() - tuple_start;
        let projected = tuple_start - self.current_start + 1 + tuple_len + suffix.len();
        if self.current_rows > 0 && projected <= max_bytes {
            self.buf.insert(tuple_start, b',');
            self.current_rows += 1;
            return Ok(());
        }
        let alone = prefix.len() + tuple_len + suffix.len();
        if alone > max_bytes {
            self.buf.truncate(tuple_start);
            return Err(TooLarge { row, bytes: alone, max: max_bytes });
        }
        // Close the current statement without the tuple, then put it behind a fresh prefix
        // (one small copy per statement, not per row).
        let tuple_bytes = self.buf.split_off(tuple_start);
        self.finish_statement(suffix);
        self.current_start = self.buf.len();
        self.buf.extend_from_slice(prefix.as_bytes());
        self.buf.extend_from_slice(&tuple_bytes);
        self.current_rows = 1;
        Ok(())
    }

    /// Closes the open statement, if any.
    pub fn finish_statement(&mut self, suffix: &str) {
        if self.current_rows > 0 {
            self.buf.extend_from_slice(suffix.as_bytes());
            self.statements.push((self.current_start..self.buf.len(), self.current_rows));
            self.current_rows = 0;
        }
    }
}

/// The columns of an event row, in the order of every tuple and TSV line
/// (`super::load_data` uses the same list).
macro_rules! event_columns {
    () => {
        "(received_at, event, domain_id, file_id, client_ip, ua_hash, referer_host, extra, event_id, country)"
    };
}
pub(super) use event_columns;

/// Statement prefix of the event rows of a batch without client event ids.
pub const EVENTS_PREFIX: &str = concat!("INSERT INTO events ", event_columns!(), " VALUES ");
/// Statement prefix of the event rows of a batch with client event ids: a row whose id is
/// stored already is skipped (warning 1062), see `super::dedup`.
pub const EVENTS_IGNORE_PREFIX: &str = concat!("INSERT IGNORE INTO events ", event_columns!(), " VALUES ");

/// Builds `INSERT [IGNORE] INTO events … VALUES (…),(…)` statements for `batch` into `sql`,
/// each at most `max_bytes` long (IGNORE when some row has an event id: module doc).
/// `domain_ids[i]` is the id of the domain of row `i`.
pub fn build_event_inserts(
    batch: &Batch,
    domain_ids: &[u32],
    max_bytes: usize,
    sql: &mut SqlBuffer,
) -> Result<(), TooLarge> {
    debug_assert_eq!(domain_ids.len(), batch.len());
    let prefix = if batch.has_event_ids() { EVENTS_IGNORE_PREFIX } else { EVENTS_PREFIX };
    let mut num = itoa::Buffer::new();
    for (i, (row, &domain_id)) in batch.rows().iter().zip(domain_ids).enumerate() {
        sql.push_tuple((prefix, ""), max_bytes, i, |out| {
            out.extend_from_slice(b"('");
            push_datetime_ms(row.ts_ms, out);
            out.extend_from_slice(b"',");
            push_quoted(batch.event(row), out);
            out.push(b',');
            out.extend_from_slice(num.format(domain_id).as_bytes());
            out.push(b',');
            out.extend_from_slice(num.format(row.file_id).as_bytes());
            push_context(batch, row, out);
            out.push(b')');
        })?;
    }
    sql.finish_statement("");
    Ok(())
}

/// The client IP of a row as its 4 or 16 network-order bytes; an IP text that does not
/// parse (never written by the collector) counts as absent.
pub fn ip_octets(batch: &Batch, row: &Row) -> Option<([u8; 16], usize)> {
    let mut out = [0u8; 16];
    match batch.ip(row)?.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) => {
            out[..4].copy_from_slice(&a.octets());
            Some((out, 4))
        }
        IpAddr::V6(a) => Some((a.octets(), 16)),
    }
}

/// `,client_ip,ua_hash,referer_host,extra,event_id,country` of one row; `NULL` for what it
/// lacks.
fn push_context(batch: &Batch, row: &Row, out: &mut Vec<u8>) {
    const NULL: &[u8] = b"NULL";
    out.push(b',');
    match ip_octets(batch, row) {
        Some((octets, len)) => push_hex_literal(&octets[..len], out),
        None => out.extend_from_slice(NULL),
    }
    out.push(b',');
    match batch.user_agent(row) {
        Some(ua) => out.extend_from_slice(itoa::Buffer::new().format(ua_hash(ua)).as_bytes()),
        None => out.extend_from_slice(NULL),
    }
    for text in [batch.referer_host(row), batch.extra(row)] {
        out.push(b',');
        match text {
            Some(s) => push_quoted(s, out),
            None => out.extend_from_slice(NULL),
        }
    }
    out.push(b',');
    match row.event_id {
        Some(id) => push_hex_literal(id.bytes(), out),
        None => out.extend_from_slice(NULL),
    }
    out.push(b',');
    match row.country {
        Some(country) => push_quoted(country.as_str(), out),
        None => out.extend_from_slice(NULL),
    }
}

/// Builds `INSERT IGNORE INTO domains (name) VALUES …` statements for `names`.
pub fn build_domain_inserts<'a>(
    names: impl Iterator<Item = &'a str>,
    max_bytes: usize,
    sql: &mut SqlBuffer,
) -> Result<(), TooLarge> {
    for (i, name) in names.enumerate() {
        sql.push_tuple(("INSERT IGNORE INTO domains (name) VALUES ", ""), max_bytes, i, |out| {
            out.push(b'(');
            push_quoted(name, out);
            out.push(b')');
        })?;
    }
    sql.finish_statement("");
    Ok(())
}

/// Builds `SELECT id, name FROM domains WHERE name IN (…)` statements for `names`.
pub fn build_domain_selects<'a>(
    names: impl Iterator<Item = &'a str>,
    max_bytes: usize,
    sql: &mut SqlBuffer,
) -> Result<(), TooLarge> {
    for (i, name) in names.enumerate() {
        sql.push_tuple(("SELECT id, name FROM domains WHERE name IN (", ")"), max_bytes, i, |out| {
            push_quoted(name, out)
        })?;
    }
    sql.finish_statement(")");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::country::Country;
    use crate::event_id::EventId;
    use crate::wal::identity::LaneId;
    use crate::wal::record::{DecodedContext, Event};
    use crate::wal::Position;

    pub(crate) fn batch_of(n: usize) -> Batch {
        let mut b = Batch::new(LaneId { core: 0, incarnation: 1 }, 0, Position::new(1, 0));
        for i in 0..n {
            let ev = Event { ts_ms: 1000 * i as u64, event: "play", domain: "x.org", file_id: i as u64 + 1 };
            b.push(&ev, &DecodedContext::default(), b"raw\n", Position::new(1, 100 * (i as u64 + 1)));
        }
        b
    }

    fn texts(sql: &SqlBuffer) -> Vec<String> {
        sql.statements().map(|s| String::from_utf8(s.to_vec()).unwrap()).collect()
    }

    #[test]
    fn event_insert_text() {
        let b = batch_of(2);
        let mut sql = SqlBuffer::default();
        build_event_inserts(&b, &[7, 8], 1 << 20, &mut sql).unwrap();
        assert_eq!(
            texts(&sql),
            vec![format!(
                "{EVENTS_PREFIX}('1970-01-01 00:00:00.000','play',7,1,NULL,NULL,NULL,NULL,NULL,NULL),\
                 ('1970-01-01 00:00:01.000','play',8,2,NULL,NULL,NULL,NULL,NULL,NULL)"
            )]
        );
    }

    #[test]
    fn context_columns_event_ids_and_countries() {
        let mut b = Batch::new(LaneId { core: 0, incarnation: 1 }, 0, Position::new(1, 0));
        let ev = Event { ts_ms: 0, event: "play", domain: "x.org", file_id: 1 };
        let ctx = DecodedContext {
            ip: Some("127.0.0.1"),
            ua: Some("Bot 'q'".into()),
            referer_host: Some("r.org"),
            extra: Some(r#"{"q":"1"}"#.into()),
            event_id: Some(EventId::from_bytes([0xab; 16])),
            country: Country::parse("br"),
        };
        b.push(&ev, &ctx, b"", Position::new(1, 10));
        let v6 = DecodedContext { ip: Some("::1"), ua: Some("Bot 'q'".into()), ..DecodedContext::default() };
        b.push(&ev, &v6, b"", Position::new(1, 20));
        let mut sql = SqlBuffer::default();
        build_event_inserts(&b, &[3, 3], 1 << 20, &mut sql).unwrap();
        let text = texts(&sql).remove(0);
        let hash = ua_hash("Bot 'q'");
        let id = "AB".repeat(16);
        assert!(text.starts_with(EVENTS_IGNORE_PREFIX), "a batch with ids: {text}");
        assert!(
            text.ends_with(&format!(
                "1,X'7F000001',{hash},'r.org','{{\"q\":\"1\"}}',X'{id}','BR'),\
                 ('1970-01-01 00:00:00.000','play',3,1,X'00000000000000000000000000000001',{hash},NULL,NULL,NULL,NULL)"
            )),
            "{text}"
        );
        assert_eq!(sql.statements_with_rows().map(|(_, rows)| rows).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn statements_split_at_max_bytes_and_keep_every_row() {
        let b = batch_of(1000);
        let ids = vec![1; 1000];
        let mut one = SqlBuffer::default();
        build_event_inserts(&b, &ids, usize::MAX, &mut one).unwrap();
        assert_eq!(one.statement_count(), 1);
        let max = 4096;
        let mut split = SqlBuffer::default();
        build_event_inserts(&b, &ids, max, &mut split).unwrap();
        assert!(split.statement_count() > 1);
        let mut tuples = 0;
        for s in split.statements() {
            assert!(s.len() <= max, "statement of {} bytes", s.len());
            assert!(s.starts_with(EVENTS_PREFIX.as_bytes()));
            tuples += s.windows(2).filter(|w| w == b"('").count();
        }
        assert_eq!(tuples, 1000);
        assert_eq!(split.statements_with_rows().map(|(_, rows)| rows).sum::<usize>(), 1000);
        // Splitting changes only the boundaries: the tuples concatenate to the same text.
        let strip = |s: &[u8]| s[EVENTS_PREFIX.len()..].to_vec();
        let joined = split.statements().map(strip).collect::<Vec<_>>().join(&b","[..]);
        assert_eq!(joined, strip(one.statements().next().unwrap()));
    }

    #[test]
    fn a_row_too_large_alone_is_refused_and_leaves_nothing_behind() {
        let b = batch_of(3);
        let mut sql = SqlBuffer::default();
        let one_row = EVENTS_PREFIX.len()
            + "('1970-01-01 00:00:00.000','play',1,1,NULL,NULL,NULL,NULL,NULL,NULL)".len();
        assert_eq!(
            build_event_inserts(&b, &[1, 1, 1], one_row - 1, &mut sql),
            Err(TooLarge { row: 0, bytes: one_row, max: one_row - 1 })
        );
        assert_eq!(sql.statement_count(), 0);
        sql.clear();
        build_event_inserts(&b, &[1, 1, 1], one_row, &mut sql).unwrap();
        assert_eq!(sql.statement_count(), 3, "exactly one row fits each statement");
        assert!(sql.statements_with_rows().all(|(_, rows)| rows == 1));
    }

    #[test]
    fn domain_statements() {
        let mut sql = SqlBuffer::default();
        build_domain_selects(["a.org", "b'c"].into_iter(), 1 << 20, &mut sql).unwrap();
        build_domain_inserts(["a.org"].into_iter(), 1 << 20, &mut sql).unwrap();
        assert_eq!(
            texts(&sql),
            [
                "SELECT id, name FROM domains WHERE name IN ('a.org','b\\'c')",
                "INSERT IGNORE INTO domains (name) VALUES ('a.org')"
            ]
        );
    }
}
