//! One stream: the records of one lane (a core directory of this WAL) that belong to one shard,
//! on their way into that shard. It owns the stream's read position, the batch being filled,
//! the batches cut and waiting (the first of them possibly in flight), and the committed
//! cursor. It does no IO: the core hands it chunks, read results and sink answers.
//!
//! Positions: `committed <= pending[0].from`, consecutive pending batches touch
//! (`pending[i].to == pending[i + 1].from`), the last pending batch ends where `open` starts,
//! and `open.to() == read` whenever `open` is home (not out for a WAL read). So everything
//! before `read` is committed or held in memory, exactly once.
//!
//! Invariants (debug-asserted in [`Stream::check`]): the positions above; a committed cursor
//! only moves forward unless the sink says it is elsewhere (then the stream restarts from the
//! sink's cursor, which is the truth); a cursor never passes a record the sink has not
//! committed.

use std::collections::VecDeque;
use std::time::Instant;

use crate::sink::shard::{shard_of, ShardBy};
use crate::sink::Batch;
use crate::wal::identity::LaneId;
use crate::wal::record::{decode, DecodedContext, Event};
use crate::wal::Position;

/// Where a stream's next records come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Queue chunks continue exactly at `read`.
    Queue,
    /// Reading the WAL from `read` up to the lane's written end.
    CatchUp,
}

/// Whether the stream knows the sink's cursor (after every failure it must ask again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    Unknown,
    Known,
}

/// A batch cut and waiting for its delivery; `reject` turns it into dead letters.
#[derive(Debug)]
pub struct Pending {
    pub batch: Batch,
    pub reject: Option<(u32, String)>,
}

/// What became of the batch at the front (`Stream::on_refused`).
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Split in two halves, the first one goes next.
    Split,
    /// One row (or a whole batch the sink says it will never take): dead letters next.
    Reject { rows: usize },
    /// The dead letters themselves were refused: retried after a back-off.
    RejectRefused,
}

pub struct Stream {
    pub lane: LaneId,
    pub shard: u16,
    pub mode: Mode,
    pub sync: Sync,
    pub committed: Position,
    pub read: Position,
    /// The batch being filled; `None` while it is out for a WAL read.
    pub open: Option<Batch>,
    pub opened_at: Option<Instant>,
    pub pending: VecDeque<Pending>,
    /// The cursor move (`from`, `to`) of the batch out for delivery; it goes before `pending`.
    pub in_flight: Option<(Position, Position)>,
    /// When `read` last moved, or the stream last had nothing to read.
    pub last_progress: Instant,
    /// After a failed WAL read: not again before then.
    pub read_after: Option<Instant>,
    /// After a failed delivery: not again before then (this stream only; a shard that is
    /// down is found out by its connects and its control connection).
    pub deliver_after: Option<Instant>,
}

impl Stream {
    pub fn new(lane: LaneId, shard: u16, committed: Position, now: Instant) -> Stream {
        Stream {
            lane,
            shard,
            mode: Mode::CatchUp,
            sync: Sync::Unknown,
            committed,
            read: committed,
            open: Some(Batch::new(lane, shard, committed)),
            opened_at: None,
            pending: VecDeque::new(),
            in_flight: None,
            last_progress: now,
            read_after: None,
            deliver_after: None,
        }
    }

    /// Rows held in memory (open and pending batches).
    pub fn rows_held(&self) -> usize {
        self.open.as_ref().map_or(0, Batch::len) + self.pending.iter().map(|p| p.batch.len()).sum::<usize>()
    }

    /// Nothing is held and everything read is committed.
    pub fn settled(&self) -> bool {
        self.in_flight.is_none()
            && self.pending.is_empty()
            && self.open.as_ref().is_some_and(|b| b.to() == self.committed)
    }

    /// Hands the front batch out for delivery.
    pub fn take_front(&mut self, now: Instant) -> Option<Pending> {
        if self.in_flight.is_some() || self.sync != Sync::Known || self.deliver_after.is_some_and(|t| now < t)
        {
            return None;
        }
        let front = self.pending.pop_front()?;
        self.in_flight = Some((front.batch.from(), front.batch.to()));
        Some(front)
    }

    /// The batch out for delivery came back undelivered: it goes first again.
    pub fn put_back(&mut self, front: Pending) {
        debug_assert_eq!(self.in_flight, Some((front.batch.from(), front.batch.to())));
        self.in_flight = None;
        self.pending.push_front(front);
    }

    /// Room left in the open batch (0 while it is away or while two batches wait already).
    pub fn room(&self, batch_rows: usize) -> usize {
        match &self.open {
            Some(b) if self.pending.len() <= 1 => batch_rows.saturating_sub(b.len()),
            _ => 0,
        }
    }

    /// Takes the records of a queue chunk that continue at `read` (module doc of `super`).
    /// Returns false when the stream must read the WAL instead: a gap, no room, a bad record.
    pub fn take_chunk(
        &mut self,
        chunk: &crate::queue::WalChunk,
        route: Route,
        batch_rows: usize,
        now: Instant,
    ) -> bool {
        if chunk.end <= self.read {
            return true;
        }
        if chunk.start > self.read || self.room(batch_rows) < chunk.records as usize {
            return false;
        }
        let Some(open) = self.open.as_mut() else { return false };
        let mut offset = 0usize;
        while offset < chunk.bytes.len() {
            let Ok((ev, ctx, len)) = decode(&chunk.bytes[offset..]) else { return false };
            let raw = &chunk.bytes[offset..offset + len];
            offset += len;
            let end = Position::new(chunk.start.segment, chunk.start.offset + offset as u64);
            if end > self.read {
                route.push(open, self.shard, &ev, &ctx, raw, end);
                self.read = end;
            }
        }
        debug_assert_eq!(self.read, chunk.end, "chunk bytes and positions disagree");
        self.note_read(now);
        true
    }

    /// The open batch is back from a WAL read that took records up to `reached`.
    pub fn on_read(&mut self, batch: Batch, reached: Position, now: Instant) {
        debug_assert!(self.open.is_none(), "a read came back for a stream whose batch is home");
        debug_assert!(batch.to() >= self.read && reached >= batch.to());
        self.open = Some(batch);
        self.skip_to(reached, now);
    }

    /// Moves the read position over bytes that hold no record of ours (other shards, a
    /// segment end, quarantined bad bytes): the cursor will move over them too.
    pub fn skip_to(&mut self, to: Position, now: Instant) {
        if let Some(open) = self.open.as_mut() {
            if to > open.to() {
                open.advance_to(to);
            }
            self.read = self.read.max(open.to());
        }
        self.note_read(now);
    }

    fn note_read(&mut self, now: Instant) {
        self.last_progress = now;
        if self.opened_at.is_none() && self.open.as_ref().is_some_and(|b| b.to() > b.from()) {
            self.opened_at = Some(now);
        }
    }

    /// Cuts the open batch into `pending` when it is full or old enough and nothing else
    /// waits (`force`: at shutdown, whatever its age).
    pub fn cut(&mut self, batch_rows: usize, interval: std::time::Duration, now: Instant, force: bool) {
        let Some(open) = self.open.as_ref() else { return };
        let due = open.len() >= batch_rows || force || self.opened_at.is_some_and(|t| now - t >= interval);
        if open.to() == open.from() || !due || !self.pending.is_empty() {
            return;
        }
        let next = Batch::new(self.lane, self.shard, open.to());
        if let Some(batch) = self.open.replace(next) {
            self.pending.push_back(Pending { batch, reject: None });
        }
        self.opened_at = None;
    }

    /// The batch out for delivery is committed in the sink.
    pub fn on_committed(&mut self, done: &Pending) {
        debug_assert_eq!(self.in_flight, Some((done.batch.from(), done.batch.to())));
        debug_assert!(done.batch.to() >= self.committed, "committed cursor moved backwards");
        self.in_flight = None;
        self.committed = done.batch.to();
        self.check();
    }

    /// The sink refused the batch out for delivery: bisect it, or make it dead letters.
    pub fn on_refused(&mut self, front: Pending, code: u32, message: &str, every_row: bool) -> Refusal {
        self.put_back(front);
        let Some(front) = self.pending.front_mut() else { return Refusal::RejectRefused };
        if front.reject.is_some() {
            return Refusal::RejectRefused;
        }
        if front.batch.len() > 1 && !every_row {
            let tail = front.batch.split_off(front.batch.len() / 2);
            self.pending.insert(1, Pending { batch: tail, reject: None });
            return Refusal::Split;
        }
        front.reject = Some((code, message.to_owned()));
        Refusal::Reject { rows: front.batch.len() }
    }

    /// The sink's cursor for this stream is `sink` (`None`: it holds none, so ours stands).
    /// Everything at or below it is dropped from memory; what lies above is resent from it.
    pub fn apply_sink_cursor(&mut self, sink: Option<Position>, now: Instant) -> CursorChange {
        self.sync = Sync::Known;
        let Some(at) = sink else { return CursorChange::Kept };
        if at == self.committed {
            return CursorChange::Kept;
        }
        let change =
            if at < self.committed { CursorChange::Behind(self.committed) } else { CursorChange::Ahead };
        self.committed = at;
        if at < self.pending.front().map_or(self.read, |p| p.batch.from()) || at >= self.read {
            self.restart_at(at, now);
            return change;
        }
        while self.pending.front().is_some_and(|p| p.batch.to() <= at) {
            self.pending.pop_front();
        }
        match self.pending.front_mut() {
            Some(front) => front.batch.drop_committed(at),
            None => {
                if let Some(open) = self.open.as_mut() {
                    open.drop_committed(at);
                }
            }
        }
        self.check();
        change
    }

    /// Forgets everything held and reads again from `at`.
    pub fn restart_at(&mut self, at: Position, now: Instant) {
        debug_assert!(self.in_flight.is_none(), "restart with a delivery out");
        self.pending.clear();
        self.committed = at;
        self.read = at;
        self.open = Some(Batch::new(self.lane, self.shard, at));
        self.opened_at = None;
        self.mode = Mode::CatchUp;
        self.last_progress = now;
    }

    fn check(&self) {
        if cfg!(debug_assertions) {
            let mut at = self.committed;
            if let Some((from, to)) = self.in_flight {
                debug_assert!(
                    self.committed <= from,
                    "committed {:?} past in flight {from:?}",
                    self.committed
                );
                at = to;
            } else if let Some(p) = self.pending.front() {
                debug_assert!(self.committed <= p.batch.from(), "committed past pending");
                at = p.batch.from();
            }
            for p in &self.pending {
                debug_assert_eq!(p.batch.from(), at, "pending batches do not touch");
                at = p.batch.to();
            }
            if let Some(open) = &self.open {
                debug_assert_eq!(open.from(), at, "open batch does not continue the pending ones");
                debug_assert_eq!(open.to(), self.read, "open batch does not end at read");
            }
        }
    }
}

/// How the sink's cursor compared with ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorChange {
    Kept,
    /// The sink is ahead (a commit whose answer was lost, or `commit.meta` lagged).
    Ahead,
    /// The sink is behind what we held committed (given): it was restored or rewound.
    Behind(Position),
}

/// Which records of a lane belong to which shard.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub by: ShardBy,
    pub shards: u16,
}

impl Route {
    /// `<shard_by> <shards>`, as `commit.meta`'s `route` line spells it (`super::reroute`).
    pub fn label(&self) -> String {
        format!("{} {}", self.by.name(), self.shards)
    }

    /// Appends the record to `batch` if it is `shard`'s, else moves the batch's cursor over it.
    pub fn push(
        self,
        batch: &mut Batch,
        shard: u16,
        ev: &Event<'_>,
        ctx: &DecodedContext<'_>,
        raw: &[u8],
        end: Position,
    ) {
        if shard_of(self.by, ev.domain, ev.file_id, self.shards) == shard {
            batch.push(ev, ctx, raw, end);
        } else {
            batch.advance_to(end);
        }
    }
}
