//! The delivery core: a synchronous state machine that does no IO. It takes inputs (queue
//! chunks, WAL read results, sink answers, the time) and returns [`Action`]s for the driver
//! (`super::driver`) to carry out: read the WAL, deliver a batch, read a shard's cursors,
//! write `commit.meta`, compact, remove a drained lane, retire cursor rows.
//!
//! There is one [`Stream`] per lane × shard. Streams never wait for each other: a shard that
//! is down stalls only its own streams, which fall back to reading the WAL once they can take
//! records again; the other shards' streams keep taking chunks.
//!
//! Invariants: a stream delivers only after it has read the shard's cursor for its lane since
//! its last failure (`Sync::Known`), so an answer that was lost is never resent blindly; a
//! lane is compacted only below the lowest committed cursor of its streams, and each of those
//! is durable (read back from `commit.meta` at start, or committed in the sink); a lane that no
//! core writes any more is removed only once every stream of it is settled at its end.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::stream::{CursorChange, Mode, Pending, Refusal, Route, Stream, Sync};
use crate::cursor::CommitMeta;
use crate::queue::WalChunk;
use crate::sink::{Batch, SinkCursor};
use crate::wal::identity::{LaneId, WalIdentity};
use crate::wal::Position;

mod view;

/// How the core cuts and routes batches.
#[derive(Debug, Clone, Copy)]
pub struct CoreConfig {
    pub batch_rows: usize,
    pub interval: Duration,
    pub route: Route,
}

/// A lane as the core starts it.
#[derive(Debug, Clone)]
pub struct LaneInit {
    pub id: LaneId,
    /// A running core writes to it (its written end moves); otherwise `end` is final.
    pub live: bool,
    pub end: Position,
}

struct Lane {
    id: LaneId,
    live: bool,
    end: Position,
    /// Removal was asked for (its streams are settled at `end`).
    removing: bool,
    /// Its directory is gone; its streams stay in place (stream numbers never change), inert.
    gone: bool,
}

/// What the driver must do.
#[derive(Debug)]
pub enum Action {
    /// Read stream `stream`'s lane from the batch's end up to `until`, at most `max` records,
    /// into `batch`, and hand it back with [`Core::on_read`].
    Read {
        stream: usize,
        batch: Batch,
        until: Position,
        max: usize,
    },
    Deliver {
        stream: usize,
        pending: Pending,
    },
    ReadCursors {
        shard: u16,
    },
    WriteMeta(CommitMeta),
    Compact {
        lane: LaneId,
        below: Position,
    },
    RemoveLane {
        lane: LaneId,
    },
    Retire {
        shard: u16,
        lanes: Vec<LaneId>,
    },
}

/// How a delivery ended, as the core needs to know it.
#[derive(Debug)]
pub enum Delivered {
    Committed,
    /// Nothing committed, or unknown whether: read the cursors, then try again.
    Failed,
    Refused {
        code: u32,
        message: String,
        every_row: bool,
    },
}

pub struct Core {
    config: CoreConfig,
    identity: WalIdentity,
    lanes: Vec<Lane>,
    streams: Vec<Stream>,
    shards: u16,
    cursor_reads: Vec<bool>,
    retire: Vec<Vec<LaneId>>,
    retiring: Vec<bool>,
    meta_dirty: bool,
    meta_at: Instant,
    stopping: bool,
    /// Rows committed so far, and rows turned into dead letters.
    pub rows_committed: u64,
    pub rows_rejected: u64,
}

impl Core {
    /// `committed(lane, shard)`: the cursor `commit.meta` holds, if any.
    pub fn new(
        config: CoreConfig,
        identity: WalIdentity,
        lanes: Vec<LaneInit>,
        committed: impl Fn(LaneId, u16) -> Option<Position>,
        now: Instant,
    ) -> Core {
        let shards = config.route.shards.max(1);
        let mut streams = Vec::new();
        for lane in &lanes {
            for shard in 0..shards {
                let at = committed(lane.id, shard).unwrap_or_default();
                streams.push(Stream::new(lane.id, shard, at, now));
            }
        }
        let lanes = lanes
            .into_iter()
            .map(|l| Lane { id: l.id, live: l.live, end: l.end, removing: false, gone: false })
            .collect();
        Core {
            config,
            identity,
            lanes,
            streams,
            shards,
            cursor_reads: vec![false; usize::from(shards)],
            retire: vec![Vec::new(); usize::from(shards)],
            retiring: vec![false; usize::from(shards)],
            meta_dirty: false,
            meta_at: now,
            stopping: false,
            rows_committed: 0,
            rows_rejected: 0,
        }
    }

    fn lane_of(&self, stream: usize) -> usize {
        stream / usize::from(self.shards)
    }

    /// The written end of a live lane moved (published by its core).
    pub fn on_written(&mut self, core: u16, end: Position) {
        if let Some(lane) = self.lanes.iter_mut().find(|l| l.live && l.id.core == core) {
            lane.end = lane.end.max(end);
        }
    }

    /// A queue chunk: each stream of its lane takes it or falls back to the WAL.
    pub fn on_chunk(&mut self, chunk: &WalChunk, now: Instant) {
        let Some(l) = self.lanes.iter().position(|l| l.live && l.id.core == chunk.core) else { return };
        self.lanes[l].end = self.lanes[l].end.max(chunk.end);
        let n = usize::from(self.shards);
        for stream in &mut self.streams[l * n..(l + 1) * n] {
            if stream.mode == Mode::Queue
                && !stream.take_chunk(chunk, self.config.route, self.config.batch_rows, now)
            {
                stream.mode = Mode::CatchUp;
            }
        }
    }

    /// A WAL read came back: the batch holds the records up to `reached` (and `skip`, if
    /// set, is where reading goes on after bad bytes that were saved to quarantine).
    /// `retry_at`: the read failed (an IO error, or bad bytes that could not be saved); the
    /// stream reads again from where it stopped, not before then.
    pub fn on_read(
        &mut self,
        stream: usize,
        batch: Batch,
        reached: Position,
        skip: Option<Position>,
        retry_at: Option<Instant>,
        now: Instant,
    ) {
        let until = self.lanes[self.lane_of(stream)].end;
        let s = &mut self.streams[stream];
        s.on_read(batch, reached, now);
        s.read_after = retry_at;
        if let Some(resume) = skip {
            s.skip_to(resume, now);
        }
        if s.read >= until && skip.is_none() {
            s.mode = Mode::Queue;
        }
    }

    /// A delivery came back.
    pub fn on_delivered(&mut self, stream: usize, pending: Pending, result: Delivered) {
        let s = &mut self.streams[stream];
        match result {
            Delivered::Committed => {
                s.on_committed(&pending);
                match pending.reject {
                    Some(_) => self.rows_rejected += pending.batch.len() as u64,
                    None => self.rows_committed += pending.batch.len() as u64,
                }
                self.meta_dirty = true;
            }
            Delivered::Failed => {
                s.put_back(pending);
                s.sync = Sync::Unknown;
            }
            Delivered::Refused { code, message, every_row } => {
                let lane = s.lane;
                match s.on_refused(pending, code, &message, every_row) {
                    Refusal::Split => {}
                    Refusal::Reject { rows } => {
                        warn!(%lane, code, rows, %message, "rows refused by the sink go to the dead letters")
                    }
                    Refusal::RejectRefused => {
                        warn!(%lane, code, %message, "dead letters refused; retrying");
                        s.sync = Sync::Unknown;
                    }
                }
            }
        }
    }

    /// A delivery of `stream` failed on its connection: it tries again at `until` (after
    /// reading the cursors), and no other stream waits for it.
    pub fn back_off(&mut self, stream: usize, until: Instant) {
        self.streams[stream].deliver_after = Some(until);
    }

    /// The cursors a shard holds for this WAL's lanes (`None`: the read failed).
    pub fn on_cursors(&mut self, shard: u16, cursors: Option<Vec<SinkCursor>>, now: Instant) {
        self.cursor_reads[usize::from(shard)] = false;
        let Some(cursors) = cursors else { return };
        for c in &cursors {
            let known = self.lanes.iter().any(|l| l.id == c.lane && !l.gone);
            if !known && !self.retire[usize::from(shard)].contains(&c.lane) {
                info!(lane = %c.lane, shard, "cursor of a lane this WAL no longer has; retiring it");
                self.retire[usize::from(shard)].push(c.lane);
            }
        }
        for s in self.streams.iter_mut().filter(|s| s.shard == shard) {
            if s.sync == Sync::Known || s.in_flight.is_some() || s.open.is_none() {
                continue;
            }
            let sink = cursors.iter().find(|c| c.lane == s.lane).map(|c| c.position);
            match s.apply_sink_cursor(sink, now) {
                CursorChange::Kept => {}
                CursorChange::Ahead => {
                    info!(lane = %s.lane, shard, at = ?s.committed, "the sink's cursor is ahead; going on from it");
                    self.meta_dirty = true;
                }
                CursorChange::Behind(ours) => {
                    warn!(lane = %s.lane, shard, sink = ?s.committed, ?ours,
                        "the sink's cursor is behind commit.meta (restored?); delivering again from the sink's");
                    self.meta_dirty = true;
                }
            }
        }
    }

    pub fn on_retired(&mut self, shard: u16, lanes: &[LaneId], ok: bool) {
        self.retiring[usize::from(shard)] = false;
        if ok {
            self.retire[usize::from(shard)].retain(|l| !lanes.contains(l));
        }
    }

    /// A drained lane's directory is gone: its cursors go too.
    pub fn on_lane_removed(&mut self, lane: LaneId) {
        let Some(l) = self.lanes.iter_mut().find(|x| x.id == lane) else { return };
        l.gone = true;
        for list in &mut self.retire {
            list.push(lane);
        }
        self.meta_dirty = true;
    }

    /// From now on every batch is cut at once, and no lane is removed.
    pub fn begin_shutdown(&mut self) {
        self.stopping = true;
    }

    /// The actions due now. `shard_ready(shard)`: the shard can take work (connected or worth
    /// a try, lease held).
    pub fn poll(&mut self, now: Instant, shard_ready: impl Fn(u16) -> bool) -> Vec<Action> {
        let mut actions = Vec::new();
        self.poll_streams(now, &shard_ready, &mut actions);
        for shard in 0..self.shards {
            let i = usize::from(shard);
            let unknown = self.streams.iter().any(|s| s.shard == shard && s.sync == Sync::Unknown);
            if unknown && !self.cursor_reads[i] && shard_ready(shard) {
                self.cursor_reads[i] = true;
                actions.push(Action::ReadCursors { shard });
            }
            if !self.retire[i].is_empty() && !self.retiring[i] && shard_ready(shard) {
                self.retiring[i] = true;
                actions.push(Action::Retire { shard, lanes: self.retire[i].clone() });
            }
        }
        self.poll_meta(now, &mut actions);
        actions
    }

    fn poll_streams(&mut self, now: Instant, shard_ready: &impl Fn(u16) -> bool, actions: &mut Vec<Action>) {
        let CoreConfig { batch_rows, interval, .. } = self.config;
        let n = usize::from(self.shards);
        for (i, s) in self.streams.iter_mut().enumerate() {
            if self.lanes[i / n].gone || s.read_after.is_some_and(|t| now < t) {
                continue;
            }
            let until = self.lanes[i / n].end;
            if s.mode == Mode::Queue && s.read < until && now - s.last_progress >= interval {
                s.mode = Mode::CatchUp; // a chunk that never came (queue full, or dropped)
            }
            let room = s.room(batch_rows);
            if s.mode == Mode::CatchUp && room > 0 && s.read < until {
                if let Some(batch) = s.open.take() {
                    actions.push(Action::Read { stream: i, batch, until, max: room });
                }
            } else if s.mode == Mode::CatchUp && s.read >= until && s.open.is_some() {
                s.mode = Mode::Queue;
                s.last_progress = now;
            }
            s.cut(batch_rows, interval, now, self.stopping);
            if shard_ready(s.shard) {
                if let Some(pending) = s.take_front(now) {
                    actions.push(Action::Deliver { stream: i, pending });
                }
            }
        }
    }

    fn poll_meta(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let idle = self.streams.iter().all(|s| s.in_flight.is_none() && s.pending.is_empty());
        let due = now - self.meta_at >= self.config.interval || idle || self.stopping;
        if !self.meta_dirty || !due {
            return;
        }
        self.meta_dirty = false;
        self.meta_at = now;
        actions.push(Action::WriteMeta(self.meta()));
        let n = usize::from(self.shards);
        for (l, lane) in self.lanes.iter_mut().enumerate().filter(|(_, l)| !l.gone) {
            let streams = &self.streams[l * n..(l + 1) * n];
            let floor = streams.iter().map(|s| s.committed).min().unwrap_or_default();
            actions.push(Action::Compact { lane: lane.id, below: floor });
            let drained = streams.iter().all(|s| s.settled() && s.committed >= lane.end);
            if !lane.live && drained && !lane.removing && !self.stopping {
                lane.removing = true;
                actions.push(Action::RemoveLane { lane: lane.id });
            }
        }
    }

    /// The removal of a drained lane failed: try again with the next `commit.meta`.
    pub fn on_remove_failed(&mut self, lane: LaneId) {
        if let Some(l) = self.lanes.iter_mut().find(|l| l.id == lane) {
            l.removing = false;
        }
        self.meta_dirty = true;
    }

    /// `commit.meta` could not be written: write it again next time.
    pub fn on_meta_failed(&mut self) {
        self.meta_dirty = true;
    }
}
