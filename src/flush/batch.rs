//! A batch of decoded rows and its translation into SQL text.
//!
//! Rows keep their strings in one arena owned by the batch, and statements are built into one
//! reused byte buffer, so after warm-up a batch allocates nothing per row.
//!
//! Invariants:
//! - rows of one core are in WAL order (debug-asserted on push);
//! - `ends[c]` is the end position of the last row of core `c` in the batch;
//! - no statement built here exceeds `max_statement_bytes` unless a single row alone does
//!   (impossible with validated events and the ≥ 64 KiB minimum the config enforces).

use std::net::IpAddr;
use std::ops::Range;

use crate::ingest::client::ua_hash;
use crate::wal::record::{DecodedContext, Event};
use crate::wal::Position;

/// One event of a batch; its strings live in the batch arena.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub ts_ms: u64,
    pub file_id: u64,
    event: Span,
    domain: Span,
    /// Client context (each absent in old records or when switched off).
    ip: Option<Span>,
    ua: Option<Span>,
    referer_host: Option<Span>,
    extra: Option<Span>,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    len: u32,
}

/// Rows from several cores plus, per core, the end position of its last row.
#[derive(Debug)]
pub struct Batch {
    rows: Vec<Row>,
    arena: String,
    ends: Vec<Option<Position>>,
}

impl Batch {
    pub fn new(cores: usize, capacity_rows: usize) -> Batch {
        Batch { rows: Vec::with_capacity(capacity_rows), arena: String::new(), ends: vec![None; cores] }
    }

    /// Appends the record of `core` that ends at `end`.
    pub fn push(&mut self, core: usize, ev: &Event<'_>, end: Position) {
        self.push_with_context(core, ev, &DecodedContext::default(), end);
    }

    /// [`Self::push`] with the record's client context.
    pub fn push_with_context(
        &mut self,
        core: usize,
        ev: &Event<'_>,
        ctx: &DecodedContext<'_>,
        end: Position,
    ) {
        debug_assert!(self.ends[core].is_none_or(|last| last < end), "rows out of WAL order");
        let event = self.intern(ev.event);
        let domain = self.intern(ev.domain);
        let ip = ctx.ip.map(|s| self.intern(s));
        let ua = ctx.ua.as_deref().map(|s| self.intern(s));
        let referer_host = ctx.referer_host.map(|s| self.intern(s));
        let extra = ctx.extra.as_deref().map(|s| self.intern(s));
        self.rows.push(Row {
            ts_ms: ev.ts_ms,
            file_id: ev.file_id,
            event,
            domain,
            ip,
            ua,
            referer_host,
            extra,
        });
        self.ends[core] = Some(end);
    }

    fn intern(&mut self, s: &str) -> Span {
        let start = self.arena.len() as u32;
        self.arena.push_str(s);
        Span { start, len: s.len() as u32 }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    pub fn event(&self, row: &Row) -> &str {
        self.span(row.event)
    }

    pub fn domain(&self, row: &Row) -> &str {
        self.span(row.domain)
    }

    /// The row's User-Agent text, if stored.
    pub fn user_agent(&self, row: &Row) -> Option<&str> {
        row.ua.map(|s| self.span(s))
    }

    fn span(&self, s: Span) -> &str {
        &self.arena[s.start as usize..(s.start + s.len) as usize]
    }

    /// Per core, the end position of its last row (`None`: no row of that core).
    pub fn ends(&self) -> &[Option<Position>] {
        &self.ends
    }

    /// Empties the batch, keeping its allocations.
    pub fn clear(&mut self) {
        self.rows.clear();
        self.arena.clear();
        self.ends.iter_mut().for_each(|e| *e = None);
    }
}

/// Builds multi-row statements into one reused buffer; `statements()` gives their ranges.
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
    /// statement first if the tuple would push the current one past `max_bytes`.
    fn push_tuple(
        &mut self,
        prefix: &str,
        suffix: &str,
        max_bytes: usize,
        mut tuple: impl FnMut(&mut Vec<u8>),
    ) {
        let tuple_start = self.buf.len();
        tuple(&mut self.buf);
        let tuple_len = self.buf.len() - tuple_start;
        let separator = usize::from(self.current_rows > 0);
        let projected = tuple_start - self.current_start + separator + tuple_len + suffix.len();
        if self.current_rows == 0 || projected > max_bytes {
            // Close the current statement without the tuple, then put it behind a fresh
            // prefix (one small copy per statement, not per row).
            let tuple_bytes = self.buf.split_off(tuple_start);
            self.finish_statement(suffix);
            self.current_start = self.buf.len();
            self.buf.extend_from_slice(prefix.as_bytes());
            self.buf.extend_from_slice(&tuple_bytes);
        } else {
            self.buf.insert(tuple_start, b',');
        }
        self.current_rows += 1;
    }

    /// Closes the open statement, if any.
    fn finish_statement(&mut self, suffix: &str) {
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
pub fn build_event_inserts(batch: &Batch, domain_ids: &[u32], max_bytes: usize, sql: &mut SqlBuffer) {
    debug_assert_eq!(domain_ids.len(), batch.len());
    let mut num = itoa::Buffer::new();
    for (row, &domain_id) in batch.rows().iter().zip(domain_ids) {
        sql.push_tuple(EVENTS_PREFIX, "", max_bytes, |out| {
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
        });
    }
    sql.finish_statement("");
}

/// `,client_ip,ua_hash,referer_host,extra` of one row; `NULL` for what it lacks. An IP text
/// that does not parse (never written by the collector) is stored as `NULL`.
fn push_context(batch: &Batch, row: &Row, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push(b',');
    match row.ip.and_then(|s| batch.span(s).parse::<IpAddr>().ok()) {
        Some(ip) => {
            let (v4, v6);
            let octets: &[u8] = match ip {
                IpAddr::V4(a) => {
                    v4 = a.octets();
                    &v4
                }
                IpAddr::V6(a) => {
                    v6 = a.octets();
                    &v6
                }
            };
            out.extend_from_slice(b"X'");
            for &b in octets {
                out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
            }
            out.push(b'\'');
        }
        None => out.extend_from_slice(b"NULL"),
    }
    out.push(b',');
    match batch.user_agent(row) {
        Some(ua) => out.extend_from_slice(itoa::Buffer::new().format(ua_hash(ua)).as_bytes()),
        None => out.extend_from_slice(b"NULL"),
    }
    for text in [row.referer_host, row.extra] {
        out.push(b',');
        match text {
            Some(s) => push_quoted(batch.span(s), out),
            None => out.extend_from_slice(b"NULL"),
        }
    }
}

/// Builds `INSERT IGNORE INTO user_agents (hash, ua) VALUES …` for the distinct User-Agents
/// of `batch` (the first text wins for a hash, in MySQL as here).
pub fn build_user_agent_inserts(batch: &Batch, max_bytes: usize, sql: &mut SqlBuffer) {
    let mut seen: Vec<u64> = Vec::new();
    let mut num = itoa::Buffer::new();
    for ua in batch.rows().iter().filter_map(|row| batch.user_agent(row)) {
        let hash = ua_hash(ua);
        if let Err(at) = seen.binary_search(&hash) {
            seen.insert(at, hash);
            sql.push_tuple("INSERT IGNORE INTO user_agents (hash, ua) VALUES ", "", max_bytes, |out| {
                out.push(b'(');
                out.extend_from_slice(num.format(hash).as_bytes());
                out.push(b',');
                push_quoted(ua, out);
                out.push(b')');
            });
        }
    }
    sql.finish_statement("");
}

/// Builds `INSERT IGNORE INTO domains (name) VALUES …` statements for `names`.
pub fn build_domain_inserts<'a>(names: impl Iterator<Item = &'a str>, max_bytes: usize, sql: &mut SqlBuffer) {
    for name in names {
        sql.push_tuple("INSERT IGNORE INTO domains (name) VALUES ", "", max_bytes, |out| {
            out.push(b'(');
            push_quoted(name, out);
            out.push(b')');
        });
    }
    sql.finish_statement("");
}

/// Builds `SELECT id, name FROM domains WHERE name IN (…)` statements for `names`.
pub fn build_domain_selects<'a>(names: impl Iterator<Item = &'a str>, max_bytes: usize, sql: &mut SqlBuffer) {
    for name in names {
        sql.push_tuple("SELECT id, name FROM domains WHERE name IN (", ")", max_bytes, |out| {
            push_quoted(name, out)
        });
    }
    sql.finish_statement(")");
}

/// Builds the upsert of this node's cursors (one statement, a handful of rows).
pub fn build_cursor_upsert(node: &str, ends: &[(usize, Position)], sql: &mut SqlBuffer) {
    const SUFFIX: &str = " ON DUPLICATE KEY UPDATE segment = VALUES(segment), `offset` = VALUES(`offset`)";
    let mut num = itoa::Buffer::new();
    for &(core, pos) in ends {
        sql.push_tuple(
            "INSERT INTO ingest_cursors (node, core, segment, `offset`) VALUES ",
            SUFFIX,
            usize::MAX,
            |out| {
                out.push(b'(');
                push_quoted(node, out);
                for n in [core as u64, u64::from(pos.segment), pos.offset] {
                    out.push(b',');
                    out.extend_from_slice(num.format(n).as_bytes());
                }
                out.push(b')');
            },
        );
    }
    sql.finish_statement(SUFFIX);
}

/// Appends `s` as a single-quoted SQL string literal, escaped for the default `sql_mode`
/// (backslash escapes on; the session sets it so).
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
    }

    fn batch_of(n: usize) -> Batch {
        let mut b = Batch::new(2, n);
        for i in 0..n {
            let ev = Event { ts_ms: 1000 * i as u64, event: "play", domain: "x.org", file_id: i as u64 + 1 };
            b.push(i % 2, &ev, Position::new(1, 100 * (i as u64 + 1)));
        }
        b
    }

    #[test]
    fn event_insert_text() {
        let b = batch_of(2);
        let mut sql = SqlBuffer::default();
        build_event_inserts(&b, &[7, 8], 1 << 20, &mut sql);
        let stmts: Vec<_> = sql.statements().map(|s| String::from_utf8(s.to_vec()).unwrap()).collect();
        assert_eq!(
            stmts,
            vec![format!(
                "{EVENTS_PREFIX}('1970-01-01 00:00:00.000','play',7,1,NULL,NULL,NULL,NULL),\
                 ('1970-01-01 00:00:01.000','play',8,2,NULL,NULL,NULL,NULL)"
            )]
        );
        assert_eq!(b.ends(), &[Some(Position::new(1, 100)), Some(Position::new(1, 200))]);
    }

    #[test]
    fn context_columns_and_user_agents() {
        let mut b = Batch::new(1, 3);
        let ev = Event { ts_ms: 0, event: "play", domain: "x.org", file_id: 1 };
        let ctx = DecodedContext {
            ip: Some("127.0.0.1"),
            ua: Some("Bot 'q'".into()),
            referer_host: Some("r.org"),
            extra: Some(r#"{"q":"1"}"#.into()),
            event_id: None,
        };
        b.push_with_context(0, &ev, &ctx, Position::new(1, 10));
        let v6 = DecodedContext { ip: Some("::1"), ua: Some("Bot 'q'".into()), ..DecodedContext::default() };
        b.push_with_context(0, &ev, &v6, Position::new(1, 20));
        let mut sql = SqlBuffer::default();
        build_event_inserts(&b, &[3, 3], 1 << 20, &mut sql);
        let text = String::from_utf8(sql.statements().next().unwrap().to_vec()).unwrap();
        let hash = ua_hash("Bot 'q'");
        assert!(
            text.ends_with(&format!(
                "1,X'7F000001',{hash},'r.org','{{\"q\":\"1\"}}'),\
                 ('1970-01-01 00:00:00.000','play',3,1,X'00000000000000000000000000000001',{hash},NULL,NULL)"
            )),
            "{text}"
        );
        let mut ua_sql = SqlBuffer::default();
        build_user_agent_inserts(&b, 1 << 20, &mut ua_sql);
        let stmts: Vec<_> = ua_sql.statements().map(|s| String::from_utf8(s.to_vec()).unwrap()).collect();
        assert_eq!(
            stmts,
            vec![format!("INSERT IGNORE INTO user_agents (hash, ua) VALUES ({hash},'Bot \\'q\\'')")]
        );
    }

    #[test]
    fn statements_split_at_max_bytes_and_keep_every_row() {
        let b = batch_of(1000);
        let ids = vec![1; 1000];
        let mut one = SqlBuffer::default();
        build_event_inserts(&b, &ids, usize::MAX, &mut one);
        assert_eq!(one.statement_count(), 1);
        let total_tuples = 1000;
        let max = 4096;
        let mut split = SqlBuffer::default();
        build_event_inserts(&b, &ids, max, &mut split);
        assert!(split.statement_count() > 1);
        let mut tuples = 0;
        for s in split.statements() {
            assert!(s.len() <= max, "statement of {} bytes", s.len());
            assert!(s.starts_with(EVENTS_PREFIX.as_bytes()));
            tuples += s.windows(2).filter(|w| w == b"('").count();
        }
        assert_eq!(tuples, total_tuples);
        // Splitting changes only the boundaries: the tuples concatenate to the same text.
        let strip = |s: &[u8]| s[EVENTS_PREFIX.len()..].to_vec();
        let joined = split.statements().map(strip).collect::<Vec<_>>().join(&b","[..]);
        assert_eq!(joined, strip(one.statements().next().unwrap()));
    }

    #[test]
    fn select_and_cursor_statements() {
        let mut sql = SqlBuffer::default();
        build_domain_selects(["a.org", "b'c"].into_iter(), 1 << 20, &mut sql);
        build_cursor_upsert("n1", &[(0, Position::new(2, 10)), (3, Position::new(1, 5))], &mut sql);
        let stmts: Vec<_> = sql.statements().map(|s| String::from_utf8(s.to_vec()).unwrap()).collect();
        assert_eq!(stmts[0], "SELECT id, name FROM domains WHERE name IN ('a.org','b\\'c')");
        assert_eq!(
            stmts[1],
            "INSERT INTO ingest_cursors (node, core, segment, `offset`) VALUES ('n1',0,2,10),('n1',3,1,5) \
             ON DUPLICATE KEY UPDATE segment = VALUES(segment), `offset` = VALUES(`offset`)"
        );
    }

    #[test]
    fn clear_keeps_nothing() {
        let mut b = batch_of(3);
        b.clear();
        assert!(b.is_empty());
        assert!(b.ends().iter().all(Option::is_none));
    }
}
