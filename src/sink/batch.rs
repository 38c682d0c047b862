//! A batch: the records of one lane for one shard, decoded, in WAL order, with what a sink
//! needs to commit them atomically with the lane's cursor.
//!
//! Rows keep their strings in one arena and their raw WAL lines in another, so after warm-up a
//! batch allocates nothing per row; the fixed-size fields (the client's event id, the
//! country) live in the row itself. The raw line is what a dead-letter row stores
//! (`SinkConn::reject`).
//!
//! Invariants (debug-asserted):
//! - `from <= end of row 0 < end of row 1 < … <= to`: rows are in WAL order and the cursor
//!   only moves forward;
//! - `to` may lie past the last row: records of other shards between them were read and
//!   belong to other streams. A batch with no rows only advances the cursor; a sink must
//!   still make that advance durable, or compaction of the lane waits forever.

use std::ops::Range;

use crate::country::Country;
use crate::event_id::EventId;
use crate::wal::identity::LaneId;
use crate::wal::record::{DecodedContext, Event};
use crate::wal::Position;

/// One event of a batch. Its strings live in the batch's arenas; read them through the batch.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub ts_ms: u64,
    pub file_id: u64,
    /// Position just past this record: the lane's cursor once this row is committed.
    pub end: Position,
    /// The client's event id (`eid`): a sink keeps one row per id.
    pub event_id: Option<EventId>,
    /// The client IP's country, looked up at intake (`enrich.geoip_db`).
    pub country: Option<Country>,
    event: Span,
    domain: Span,
    ip: Option<Span>,
    ua: Option<Span>,
    referer_host: Option<Span>,
    extra: Option<Span>,
    raw: Span,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    fn range(self) -> Range<usize> {
        self.start as usize..(self.start + self.len) as usize
    }
}

/// Rows of one stream (lane × shard) and the cursor move that commits them.
#[derive(Debug, Clone)]
pub struct Batch {
    lane: LaneId,
    shard: u16,
    from: Position,
    to: Position,
    rows: Vec<Row>,
    text: String,
    raw: Vec<u8>,
}

impl Batch {
    /// An empty batch of `lane` for `shard`, starting at the stream's committed cursor `from`.
    pub fn new(lane: LaneId, shard: u16, from: Position) -> Batch {
        Batch { lane, shard, from, to: from, rows: Vec::new(), text: String::new(), raw: Vec::new() }
    }

    /// Appends the record `raw` (its whole line, newline included) that ends at `end`.
    pub fn push(&mut self, ev: &Event<'_>, ctx: &DecodedContext<'_>, raw_line: &[u8], end: Position) {
        debug_assert!(end > self.to, "rows out of WAL order");
        let event = self.intern(ev.event);
        let domain = self.intern(ev.domain);
        let ip = ctx.ip.map(|s| self.intern(s));
        let ua = ctx.ua.as_deref().map(|s| self.intern(s));
        let referer_host = ctx.referer_host.map(|s| self.intern(s));
        let extra = ctx.extra.as_deref().map(|s| self.intern(s));
        let raw = Span { start: self.raw.len() as u32, len: raw_line.len() as u32 };
        self.raw.extend_from_slice(raw_line);
        self.rows.push(Row {
            ts_ms: ev.ts_ms,
            file_id: ev.file_id,
            end,
            event_id: ctx.event_id,
            country: ctx.country,
            event,
            domain,
            ip,
            ua,
            referer_host,
            extra,
            raw,
        });
        self.to = end;
    }

    /// Moves the cursor over records that are not this stream's (other shards).
    pub fn advance_to(&mut self, to: Position) {
        debug_assert!(to >= self.to, "cursor moved backwards");
        self.to = to;
    }

    fn intern(&mut self, s: &str) -> Span {
        let start = self.text.len() as u32;
        self.text.push_str(s);
        Span { start, len: s.len() as u32 }
    }

    pub fn lane(&self) -> LaneId {
        self.lane
    }

    pub fn shard(&self) -> u16 {
        self.shard
    }

    /// The stream's committed cursor when the batch started: where the sink's cursor must be.
    pub fn from(&self) -> Position {
        self.from
    }

    /// The lane's cursor once the batch is committed.
    pub fn to(&self) -> Position {
        self.to
    }

    /// End of the last row, or `from` without rows: what a sink that keeps positions in its
    /// rows (ClickHouse) reports as the cursor after this batch.
    pub fn last_row_end(&self) -> Position {
        self.rows.last().map_or(self.from, |r| r.end)
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

    /// Whether some row carries a client event id (then a sink must de-duplicate).
    pub fn has_event_ids(&self) -> bool {
        self.rows.iter().any(|r| r.event_id.is_some())
    }

    pub fn event(&self, row: &Row) -> &str {
        &self.text[row.event.range()]
    }

    pub fn domain(&self, row: &Row) -> &str {
        &self.text[row.domain.range()]
    }

    /// Client IP in canonical text form, if stored.
    pub fn ip(&self, row: &Row) -> Option<&str> {
        row.ip.map(|s| &self.text[s.range()])
    }

    pub fn user_agent(&self, row: &Row) -> Option<&str> {
        row.ua.map(|s| &self.text[s.range()])
    }

    pub fn referer_host(&self, row: &Row) -> Option<&str> {
        row.referer_host.map(|s| &self.text[s.range()])
    }

    /// Kept extra parameters as JSON object text, if any.
    pub fn extra(&self, row: &Row) -> Option<&str> {
        row.extra.map(|s| &self.text[s.range()])
    }

    /// The record's WAL line as it is on disk, newline included.
    pub fn raw(&self, row: &Row) -> &[u8] {
        &self.raw[row.raw.range()]
    }

    /// Splits off the rows from `at` on into a new batch that starts where this one now ends
    /// (bisection of a refused batch). `self.to` becomes the end of row `at - 1`; the tail
    /// keeps the old `to`. `0 < at < len`.
    pub fn split_off(&mut self, at: usize) -> Batch {
        debug_assert!(0 < at && at < self.rows.len(), "split_off({at}) of {} rows", self.rows.len());
        let mid = self.rows[at - 1].end;
        let mut tail = Batch::new(self.lane, self.shard, mid);
        for i in at..self.rows.len() {
            let row = self.rows[i];
            tail.copy_row(self, &row);
        }
        tail.to = self.to;
        self.rows.truncate(at);
        self.to = mid;
        tail
    }

    fn copy_row(&mut self, from: &Batch, row: &Row) {
        let text = |s: Span| &from.text[s.range()];
        let event = self.intern(text(row.event));
        let domain = self.intern(text(row.domain));
        let ip = row.ip.map(|s| self.intern(text(s)));
        let ua = row.ua.map(|s| self.intern(text(s)));
        let referer_host = row.referer_host.map(|s| self.intern(text(s)));
        let extra = row.extra.map(|s| self.intern(text(s)));
        let raw = Span { start: self.raw.len() as u32, len: row.raw.len };
        self.raw.extend_from_slice(from.raw(row));
        self.rows.push(Row { event, domain, ip, ua, referer_host, extra, raw, ..*row });
    }

    /// Drops the rows the sink already holds, those ending at or before `at`, and starts the
    /// batch there (a commit in doubt that took a prefix). Their bytes stay in the arenas
    /// until the next [`Batch::reset`].
    pub fn drop_committed(&mut self, at: Position) {
        debug_assert!(at >= self.from, "cursor moved backwards");
        let done = self.rows.partition_point(|r| r.end <= at);
        self.rows.drain(..done);
        self.from = at;
        self.to = self.to.max(at);
    }

    /// Empties the batch for a new start at `from`, keeping its allocations.
    pub fn reset(&mut self, from: Position) {
        self.rows.clear();
        self.text.clear();
        self.raw.clear();
        self.from = from;
        self.to = from;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane() -> LaneId {
        LaneId { core: 1, incarnation: 7 }
    }

    fn batch_of(n: u64) -> Batch {
        let mut b = Batch::new(lane(), 0, Position::new(2, 10));
        for i in 0..n {
            let ev = Event { ts_ms: i, event: "play", domain: "a.org", file_id: i + 1 };
            let ctx = DecodedContext {
                ip: Some("10.0.0.1"),
                ua: Some("UA".into()),
                event_id: (i == 2).then(|| EventId::from_bytes([7; 16])),
                country: Country::parse("fi"),
                ..Default::default()
            };
            let raw = format!("line {i}\n");
            b.push(&ev, &ctx, raw.as_bytes(), Position::new(2, 100 * (i + 1)));
        }
        b
    }

    #[test]
    fn rows_read_back_through_the_batch() {
        let b = batch_of(3);
        assert_eq!((b.from(), b.to(), b.len()), (Position::new(2, 10), Position::new(2, 300), 3));
        let r = b.rows()[2];
        assert_eq!((b.event(&r), b.domain(&r), r.file_id), ("play", "a.org", 3));
        assert_eq!(
            (b.ip(&r), b.user_agent(&r), b.referer_host(&r), b.extra(&r)),
            (Some("10.0.0.1"), Some("UA"), None, None)
        );
        assert_eq!(b.raw(&r), b"line 2\n");
        assert_eq!((r.event_id, r.country), (Some(EventId::from_bytes([7; 16])), Country::parse("FI")));
        assert!(b.has_event_ids());
        assert_eq!(b.rows()[0].event_id, None);
    }

    #[test]
    fn split_off_hands_the_tail_its_own_cursor_range() {
        let mut head = batch_of(5);
        head.advance_to(Position::new(2, 900));
        let tail = head.split_off(2);
        assert_eq!((head.len(), head.from(), head.to()), (2, Position::new(2, 10), Position::new(2, 200)));
        assert_eq!((tail.len(), tail.from(), tail.to()), (3, Position::new(2, 200), Position::new(2, 900)));
        assert_eq!(tail.last_row_end(), Position::new(2, 500));
        let first = tail.rows()[0];
        assert_eq!((first.file_id, tail.raw(&first), tail.domain(&first)), (3, &b"line 2\n"[..], "a.org"));
        assert_eq!(first.event_id, Some(EventId::from_bytes([7; 16])), "ids travel with their rows");
        assert!(tail.has_event_ids() && !head.has_event_ids());
    }

    #[test]
    fn an_empty_batch_only_moves_the_cursor() {
        let mut b = Batch::new(lane(), 1, Position::new(3, 0));
        assert_eq!(b.last_row_end(), Position::new(3, 0));
        b.advance_to(Position::new(3, 4096));
        assert!(b.is_empty());
        assert_eq!(b.to(), Position::new(3, 4096));
        b.reset(Position::new(4, 0));
        assert_eq!((b.from(), b.to()), (Position::new(4, 0), Position::new(4, 0)));
    }
}
