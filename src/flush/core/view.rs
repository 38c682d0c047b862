//! What the delivery core shows of itself without changing anything: its streams and route,
//! whether it is drained or caught up, `commit.meta` as it should be, and the positions the
//! driver publishes for `/metrics` and `/stats`.

use super::super::stream::Mode;
use super::{Core, Route, Stream};
use crate::cursor::CommitMeta;
use crate::wal::identity::LaneId;
use crate::wal::Position;

impl Core {
    pub fn streams(&self) -> &[Stream] {
        &self.streams
    }

    pub fn route(&self) -> Route {
        self.config.route
    }

    pub fn shards(&self) -> u16 {
        self.shards
    }

    /// Every stream is settled at its lane's end.
    pub fn is_drained(&self) -> bool {
        self.streams
            .iter()
            .enumerate()
            .all(|(i, s)| s.settled() && s.committed >= self.lanes[self.lane_of(i)].end)
    }

    /// Whether every live lane's streams have caught up with the WAL once (the replay).
    pub fn caught_up(&self) -> bool {
        self.streams
            .iter()
            .enumerate()
            .all(|(i, s)| !self.lanes[self.lane_of(i)].live || s.mode == Mode::Queue)
    }

    /// `commit.meta` as it should be now.
    pub fn meta(&self) -> CommitMeta {
        let mut meta = CommitMeta::new(self.identity.clone());
        meta.route = Some(self.config.route.label());
        let n = usize::from(self.shards);
        let present = |i: usize| !self.lanes[i / n].gone;
        for (_, s) in
            self.streams.iter().enumerate().filter(|(i, s)| present(*i) && s.committed != Position::default())
        {
            meta.set(s.lane, s.shard, s.committed);
        }
        meta
    }

    /// Per stream not settled at its lane's end: lane, shard, committed cursor, lane end.
    pub fn undelivered(&self) -> Vec<(LaneId, u16, Position, Position)> {
        let n = usize::from(self.shards);
        (self.streams.iter().enumerate())
            .filter(|(i, s)| !self.lanes[i / n].gone && s.committed < self.lanes[i / n].end)
            .map(|(i, s)| (s.lane, s.shard, s.committed, self.lanes[i / n].end))
            .collect()
    }

    /// (core, shard, committed cursor) of every stream of a running core's lane.
    pub fn live_cursors(&self) -> impl Iterator<Item = (u16, u16, Position)> + '_ {
        let n = usize::from(self.shards);
        (self.streams.iter().enumerate())
            .filter(move |(i, _)| self.lanes[i / n].live && !self.lanes[i / n].gone)
            .map(|(_, s)| (s.lane.core, s.shard, s.committed))
    }

    /// The committed and read cursors of a running core's lane (the least over its shards).
    pub fn positions(&self, core: u16) -> Option<(Position, Position)> {
        let n = usize::from(self.shards);
        let l = self.lanes.iter().position(|l| l.live && l.id.core == core)?;
        let streams = &self.streams[l * n..(l + 1) * n];
        let committed = streams.iter().map(|s| s.committed).min()?;
        let read = streams.iter().map(|s| s.read).min()?;
        Some((committed, read))
    }
}
