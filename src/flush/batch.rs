//! The v1 flusher's batch: rows of several cores, delivered in one transaction, and per core
//! the end position of its last row. The rows themselves live in a [`sink::Batch`], so the
//! statements are built by `crate::mysql::sql` like the sink's; the v1 batch only adds the
//! per-core ends. Goes away with the v1 flusher.
//!
//! Invariants: rows of one core are in WAL order (debug-asserted on push); `ends[c]` is the
//! end position of the last row of core `c` in the batch. The inner batch's own positions are
//! a running row count (its cursor fields mean nothing here) and its raw lines are empty
//! (the v1 flusher has no dead letters).

use crate::sink;
use crate::wal::identity::LaneId;
use crate::wal::record::{DecodedContext, Event};
use crate::wal::Position;

/// Rows from several cores plus, per core, the end position of its last row.
#[derive(Debug)]
pub struct Batch {
    rows: sink::Batch,
    ends: Vec<Option<Position>>,
}

impl Batch {
    pub fn new(cores: usize) -> Batch {
        Batch { rows: Self::empty_rows(), ends: vec![None; cores] }
    }

    fn empty_rows() -> sink::Batch {
        sink::Batch::new(LaneId { core: 0, incarnation: 0 }, 0, Position::default())
    }

    /// Appends the record of `core` that ends at `end`, with its client context.
    pub fn push_with_context(
        &mut self,
        core: usize,
        ev: &Event<'_>,
        ctx: &DecodedContext<'_>,
        end: Position,
    ) {
        debug_assert!(self.ends[core].is_none_or(|last| last < end), "rows out of WAL order");
        let running = Position::new(0, self.rows.len() as u64 + 1);
        self.rows.push(ev, ctx, b"", running);
        self.ends[core] = Some(end);
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows, for the statement builders and the domain resolver.
    pub fn rows(&self) -> &sink::Batch {
        &self.rows
    }

    /// Per core, the end position of its last row (`None`: no row of that core).
    pub fn ends(&self) -> &[Option<Position>] {
        &self.ends
    }

    /// Empties the batch, keeping its allocations.
    pub fn clear(&mut self) {
        self.rows.reset(Position::default());
        self.ends.iter_mut().for_each(|e| *e = None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_follow_each_core_and_clear_keeps_nothing() {
        let mut b = Batch::new(2);
        for i in 0..3u64 {
            let ev = Event { ts_ms: i, event: "play", domain: "x.org", file_id: i + 1 };
            b.push_with_context(
                (i % 2) as usize,
                &ev,
                &DecodedContext::default(),
                Position::new(1, 100 * (i + 1)),
            );
        }
        assert_eq!(b.len(), 3);
        assert_eq!(b.ends(), &[Some(Position::new(1, 300)), Some(Position::new(1, 200))]);
        assert_eq!(b.rows().rows()[2].file_id, 3);
        b.clear();
        assert!(b.is_empty());
        assert!(b.ends().iter().all(Option::is_none));
    }
}
