//! SQL text of the event rows, user agents and domains, built from a [`Batch`].
//!
//! Statements are built into one reused byte buffer ([`SqlBuffer`]), so after warm-up a batch
//! allocates nothing per row.
//!
//! Invariants:
//! - no statement built here is longer than the `max_bytes` it was built for; a single tuple
//!   that cannot fit even alone is [`TooLarge`], and nothing of it is kept in the buffer;
//! - splitting only moves statement boundaries: the tuples, concatenated, are the same text
//!   whatever `max_bytes` is;
//! - literals are escaped for a session with backslash escapes on (see `super::db`).

use std::net::IpAddr;
use std::ops::Range;

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
    statements: Vec<Range<usize>>,
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
        self.statements.iter().map(|r| &self.buf[r.clone()])
    }

    pub fn statement_count(&self) -> usize {
        self.statements.len()
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
            self.statements.push(self.current_start..self.buf.len());
            self.current_rows = 0;
        }
    }
}

/// Statement prefix of the event rows.
pub const EVENTS_PREFIX: &str = "INSERT INTO events \
(received_at, event, domain_id, file_id, client_ip, ua_hash, referer_host, extra) VALUES ";

/// Builds `INSERT INTO events … VALUES (…),(…)` statements for `batch` into `sql`, each at
/// most `max_bytes` long. `domain_ids[i]` is the id of the domain of row `i`.
pub fn build_event_inserts(
    batch: &Batch,
    domain_ids: &[u32],
    max_bytes: usize,
    sql: &mut SqlBuffer,
) -> Result<(), TooLarge> {
    debug_assert_eq!(domain_ids.len(), batch.len());
    let mut num = itoa::Buffer::new();
    for (i, (row, &domain_id)) in batch.rows().iter().zip(domain_ids).enumerate() {
        sql.push_tuple((EVENTS_PREFIX, ""), max_bytes, i, |out| {
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

/// `,client_ip,ua_hash,referer_host,extra` of one row; `NULL` for what it lacks.
fn push_context(batch: &Batch, row: &Row, out: &mut Vec<u8>) {
    out.push(b',');
    match ip_octets(batch, row) {
        Some((octets, len)) => push_hex_literal(&octets[..len], out),
        None => out.extend_from_slice(b"NULL"),
    }
    out.push(b',');
    match batch.user_agent(row) {
        Some(ua) => out.extend_from_slice(itoa::Buffer::new().format(ua_hash(ua)).as_bytes()),
        None => out.extend_from_slice(b"NULL"),
    }
    for text in [batch.referer_host(row), batch.extra(row)] {
        out.push(b',');
        match text {
            Some(s) => push_quoted(s, out),
            None => out.extend_from_slice(b"NULL"),
        }
    }
}

/// Builds `INSERT IGNORE INTO user_agents (hash, ua) VALUES …` for the distinct User-Agents
/// of `batch` (the first text wins for a hash, in MySQL as here), in hash order: every
/// connection takes the rows' locks in the same order, so parallel lanes never deadlock here.
pub fn build_user_agent_inserts(
    batch: &Batch,
    max_bytes: usize,
    sql: &mut SqlBuffer,
) -> Result<(), TooLarge> {
    const PREFIX: &str = "INSERT IGNORE INTO user_agents (hash, ua) VALUES ";
    let mut distinct: Vec<(u64, usize, &str)> = Vec::new();
    for (i, row) in batch.rows().iter().enumerate() {
        let Some(ua) = batch.user_agent(row) else { continue };
        let hash = ua_hash(ua);
        if let Err(at) = distinct.binary_search_by_key(&hash, |&(h, _, _)| h) {
            distinct.insert(at, (hash, i, ua));
        }
    }
    let mut num = itoa::Buffer::new();
    for (hash, i, ua) in distinct {
        sql.push_tuple((PREFIX, ""), max_bytes, i, |out| {
            out.push(b'(');
            out.extend_from_slice(num.format(hash).as_bytes());
            out.push(b',');
            push_quoted(ua, out);
            out.push(b')');
        })?;
    }
    sql.finish_statement("");
    Ok(())
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

/// Appends `s` as a single-quoted SQL string literal, escaped for a session with backslash
/// escapes on.
pub fn push_quoted(s: &str, out: &mut Vec<u8>) {
    out.push(b'\'');
    for &b in s.as_bytes() {
        match b {
            b'\'' => out.extend_from_slice(b"\\'"),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\0' => out.extend_from_slice(b"\\0"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0x1a => out.extend_from_slice(b"\\Z"),
            _ => out.push(b),
        }
    }
    out.push(b'\'');
}

/// Appends `X'…'`: any bytes, exactly, whatever the connection's character set.
pub fn push_hex_literal(bytes: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(b"X'");
    for &b in bytes {
        out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
    }
    out.push(b'\'');
}

/// Appends `YYYY-MM-DD HH:MM:SS.mmm` (UTC) for `ms` since the Unix epoch.
pub fn push_datetime_ms(ms: u64, out: &mut Vec<u8>) {
    let secs = ms / 1000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let second_of_day = secs % 86_400;
    push_digits(year as u64, 4, out);
    out.push(b'-');
    push_digits(u64::from(month), 2, out);
    out.push(b'-');
    push_digits(u64::from(day), 2, out);
    out.push(b' ');
    push_digits(second_of_day / 3600, 2, out);
    out.push(b':');
    push_digits(second_of_day / 60 % 60, 2, out);
    out.push(b':');
    push_digits(second_of_day % 60, 2, out);
    out.push(b'.');
    push_digits(ms % 1000, 3, out);
}

fn push_digits(mut v: u64, width: usize, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + width, b'0');
    for slot in out[start..].iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::identity::LaneId;
    use crate::wal::record::{DecodedContext, Event};
    use crate::wal::Position;

    fn datetime(ms: u64) -> String {
        let mut out = Vec::new();
        push_datetime_ms(ms, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn datetime_formatting() {
        assert_eq!(datetime(0), "1970-01-01 00:00:00.000");
        assert_eq!(datetime(1_763_923_170_123), "2025-11-23 18:39:30.123");
        // Leap day of a leap year divisible by 400, and of a regular leap year.
        assert_eq!(datetime(951_782_400_000), "2000-02-29 00:00:00.000");
        assert_eq!(datetime(1_709_251_199_999), "2024-02-29 23:59:59.999");
        assert_eq!(datetime(1_709_251_200_000), "2024-03-01 00:00:00.000");
        // 2100 is not a leap year.
        assert_eq!(datetime(4_107_542_400_000), "2100-03-01 00:00:00.000");
        assert_eq!(datetime(1_735_689_599_001), "2024-12-31 23:59:59.001");
    }

    #[test]
    fn quoting_escapes_specials() {
        let mut out = Vec::new();
        push_quoted("a'b\\c\0d\ne\rf\x1ag", &mut out);
        assert_eq!(out, b"'a\\'b\\\\c\\0d\\ne\\rf\\Zg'");
        out.clear();
        push_hex_literal(&[0, 0xab, 0x7f], &mut out);
        assert_eq!(out, b"X'00AB7F'");
    }

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
                "{EVENTS_PREFIX}('1970-01-01 00:00:00.000','play',7,1,NULL,NULL,NULL,NULL),\
                 ('1970-01-01 00:00:01.000','play',8,2,NULL,NULL,NULL,NULL)"
            )]
        );
    }

    #[test]
    fn context_columns_and_user_agents() {
        let mut b = Batch::new(LaneId { core: 0, incarnation: 1 }, 0, Position::new(1, 0));
        let ev = Event { ts_ms: 0, event: "play", domain: "x.org", file_id: 1 };
        let ctx = DecodedContext {
            ip: Some("127.0.0.1"),
            ua: Some("Bot 'q'".into()),
            referer_host: Some("r.org"),
            extra: Some(r#"{"q":"1"}"#.into()),
            event_id: None,
        };
        b.push(&ev, &ctx, b"", Position::new(1, 10));
        let v6 = DecodedContext { ip: Some("::1"), ua: Some("Bot 'q'".into()), ..DecodedContext::default() };
        b.push(&ev, &v6, b"", Position::new(1, 20));
        let mut sql = SqlBuffer::default();
        build_event_inserts(&b, &[3, 3], 1 << 20, &mut sql).unwrap();
        let text = texts(&sql).remove(0);
        let hash = ua_hash("Bot 'q'");
        assert!(
            text.ends_with(&format!(
                "1,X'7F000001',{hash},'r.org','{{\"q\":\"1\"}}'),\
                 ('1970-01-01 00:00:00.000','play',3,1,X'00000000000000000000000000000001',{hash},NULL,NULL)"
            )),
            "{text}"
        );
        let mut ua_sql = SqlBuffer::default();
        build_user_agent_inserts(&b, 1 << 20, &mut ua_sql).unwrap();
        assert_eq!(
            texts(&ua_sql),
            vec![format!("INSERT IGNORE INTO user_agents (hash, ua) VALUES ({hash},'Bot \\'q\\'')")]
        );
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
        // Splitting changes only the boundaries: the tuples concatenate to the same text.
        let strip = |s: &[u8]| s[EVENTS_PREFIX.len()..].to_vec();
        let joined = split.statements().map(strip).collect::<Vec<_>>().join(&b","[..]);
        assert_eq!(joined, strip(one.statements().next().unwrap()));
    }

    #[test]
    fn a_row_too_large_alone_is_refused_and_leaves_nothing_behind() {
        let b = batch_of(3);
        let mut sql = SqlBuffer::default();
        let one_row =
            EVENTS_PREFIX.len() + "('1970-01-01 00:00:00.000','play',1,1,NULL,NULL,NULL,NULL)".len();
        assert_eq!(
            build_event_inserts(&b, &[1, 1, 1], one_row - 1, &mut sql),
            Err(TooLarge { row: 0, bytes: one_row, max: one_row - 1 })
        );
        assert_eq!(sql.statement_count(), 0);
        sql.clear();
        build_event_inserts(&b, &[1, 1, 1], one_row, &mut sql).unwrap();
        assert_eq!(sql.statement_count(), 3, "exactly one row fits each statement");
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
