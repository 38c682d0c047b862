//! Bounded hand-off of written WAL chunks from the core threads to the flusher.
//!
//! The queue is an optimisation, never the source of truth: a core offers each chunk it has
//! *written* with a non-blocking send, and when the queue is full the chunk is simply not
//! sent. The flusher detects the gap (a chunk that does not start where the previous one of
//! that core ended, or a core whose published `written_end` is ahead of what it has seen) and
//! reads the missing records from the WAL. So a core never blocks and nothing is dropped.
//!
//! Invariants:
//! - chunks of one core are sent in WAL order and never span two segments;
//! - `written_end` of a core only moves forward, and only after the bytes before it were
//!   written to the segment file;
//! - at most `queue.capacity` events are held in the queue at any time.
//!
//! The flusher hands each consumed chunk's buffer back ([`QueueReceiver::recycle`]); a core
//! swaps it in for the tick buffer it queues ([`QueueSender::spare`]), so a queued tick moves
//! to the flusher without a copy and the next tick fills memory that is already faulted in.
//! At most [`SPARE_BUFFERS`] of at most [`SPARE_BUFFER_MAX_BYTES`] wait there; the rest
//! are freed.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use serde::Deserialize;

use crate::invalid::InvalidKey;
use crate::wal::Position;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Most events held in memory between the cores and the flusher. Past it, events live only
    /// in the WAL until the flusher catches up from there. Default 65536.
    pub capacity: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self { capacity: 65_536 }
    }
}

impl QueueConfig {
    /// Checks the `[queue]` keys.
    pub fn validate(&self) -> Result<(), InvalidKey> {
        if self.capacity == 0 {
            return InvalidKey::err("queue.capacity", "must be at least 1");
        }
        Ok(())
    }
}

/// Records one core wrote with one WAL write, as they are in the segment file.
#[derive(Debug)]
pub struct WalChunk {
    pub core: u16,
    /// Position of the first record.
    pub start: Position,
    /// Position just past the last record; same segment as `start`.
    pub end: Position,
    /// Number of records in `bytes`.
    pub records: u32,
    /// Whole encoded records, exactly the bytes of the segment between `start` and `end`.
    pub bytes: Vec<u8>,
}

/// What happened to an offered chunk. Either way its records are safe in the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// Not sent: the queue holds `queue.capacity` events already. The flusher will read it
    /// from the WAL.
    Full,
    /// Not sent: the flusher is gone (shutdown). The WAL replays it at the next start.
    Closed,
}

/// Most consumed buffers kept for the cores' next ticks.
pub const SPARE_BUFFERS: usize = 8;
/// Largest buffer kept: a bigger one (a tick of a burst, up to `wal.write_buffer_bytes`) is
/// freed, so that the spares hold at most `SPARE_BUFFERS` × this (2 MiB).
pub const SPARE_BUFFER_MAX_BYTES: usize = 256 * 1024;

/// The sending side, one clone per core.
#[derive(Clone)]
pub struct QueueSender {
    tx: Sender<WalChunk>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
    spares: Receiver<Vec<u8>>,
}

/// The receiving side, owned by the flusher.
pub struct QueueReceiver {
    rx: Receiver<WalChunk>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
    spares: Sender<Vec<u8>>,
}

/// A bounded queue holding at most `capacity_events` events.
pub fn bounded(capacity_events: usize) -> (QueueSender, QueueReceiver) {
    // A chunk holds at least one event, so `capacity_events` slots never bind before the
    // event count does.
    let (tx, rx) = crossbeam_channel::bounded(capacity_events);
    let depth = Arc::new(AtomicUsize::new(0));
    let (spares_tx, spares) = crossbeam_channel::bounded(SPARE_BUFFERS);
    (
        QueueSender { tx, depth: depth.clone(), capacity: capacity_events, spares },
        QueueReceiver { rx, depth, capacity: capacity_events, spares: spares_tx },
    )
}

impl QueueSender {
    /// Offers a chunk without blocking.
    pub fn offer(&self, chunk: WalChunk) -> Offer {
        self.offer_with(chunk.records, || chunk)
    }

    /// An empty buffer to take the place of a queued tick's: one the flusher gave back, or a
    /// new one of `capacity` bytes.
    pub fn spare(&self, capacity: usize) -> Vec<u8> {
        match self.spares.try_recv() {
            Ok(mut buffer) => {
                buffer.clear();
                buffer
            }
            Err(_) => Vec::with_capacity(capacity),
        }
    }

    /// Offers a chunk of `records` events without blocking, building it only once room for
    /// them is reserved: a full queue (MySQL down, WAL-only mode) costs no allocation or copy.
    /// Reserving the events first keeps the bound exact under concurrent senders.
    pub fn offer_with(&self, records: u32, build: impl FnOnce() -> WalChunk) -> Offer {
        let n = records as usize;
        debug_assert!(n > 0, "empty chunk");
        let reserved = self.depth.fetch_add(n, Ordering::Relaxed);
        if reserved + n > self.capacity {
            self.depth.fetch_sub(n, Ordering::Relaxed);
            return Offer::Full;
        }
        let chunk = build();
        debug_assert_eq!(chunk.records, records, "reserved for a different number of events");
        match self.tx.try_send(chunk) {
            Ok(()) => Offer::Queued,
            Err(TrySendError::Full(_)) => {
                self.depth.fetch_sub(n, Ordering::Relaxed);
                Offer::Full
            }
            Err(TrySendError::Disconnected(_)) => {
                self.depth.fetch_sub(n, Ordering::Relaxed);
                Offer::Closed
            }
        }
    }
}

impl QueueReceiver {
    /// Takes the next chunk if one is waiting.
    pub fn try_recv(&self) -> Option<WalChunk> {
        self.rx.try_recv().ok().map(|c| self.released(c))
    }

    /// Waits up to `timeout` for the next chunk. `None` on timeout or when all senders left.
    pub fn recv_timeout(&self, timeout: std::time::Duration) -> Option<WalChunk> {
        self.rx.recv_timeout(timeout).ok().map(|c| self.released(c))
    }

    /// Gives a consumed chunk's buffer back to the cores; freed if [`SPARE_BUFFERS`] wait
    /// or it is larger than [`SPARE_BUFFER_MAX_BYTES`].
    pub fn recycle(&self, chunk: WalChunk) {
        if chunk.bytes.capacity() <= SPARE_BUFFER_MAX_BYTES {
            let _ = self.spares.try_send(chunk.bytes);
        }
    }

    fn released(&self, chunk: WalChunk) -> WalChunk {
        self.depth.fetch_sub(chunk.records as usize, Ordering::Relaxed);
        chunk
    }

    /// Events currently held in the queue.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A shared handle on the depth, for metrics.
    pub fn depth_handle(&self) -> Arc<AtomicUsize> {
        self.depth.clone()
    }
}

/// What a core publishes about its WAL for the flusher and the metrics, written by that core
/// only.
#[derive(Debug, Default)]
pub struct CoreProgress {
    /// Packed [`Position`] just past the last record whose write completed.
    written_end: AtomicU64,
}

impl CoreProgress {
    pub fn new(start: Position) -> Self {
        Self { written_end: AtomicU64::new(start.pack()) }
    }

    /// Called by the owning core after a write completed.
    pub fn publish_written(&self, end: Position) {
        debug_assert!(end.pack() >= self.written_end.load(Ordering::Relaxed), "written_end moved back");
        self.written_end.store(end.pack(), Ordering::Release);
    }

    pub fn written_end(&self) -> Position {
        Position::unpack(self.written_end.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(records: u32) -> WalChunk {
        WalChunk {
            core: 0,
            start: Position::new(1, 0),
            end: Position::new(1, 10),
            records,
            bytes: vec![b'x'; 10],
        }
    }

    #[test]
    fn offer_respects_event_capacity() {
        let (tx, rx) = bounded(10);
        assert_eq!(tx.offer(chunk(6)), Offer::Queued);
        assert_eq!(tx.offer(chunk(5)), Offer::Full);
        assert_eq!(rx.depth(), 6);
        assert_eq!(tx.offer(chunk(4)), Offer::Queued);
        assert_eq!(rx.depth(), 10);
        assert!(rx.try_recv().is_some());
        assert_eq!(rx.depth(), 4);
    }

    #[test]
    fn a_full_queue_never_builds_the_chunk() {
        let (tx, _rx) = bounded(4);
        assert_eq!(tx.offer(chunk(4)), Offer::Queued);
        let outcome = tx.offer_with(1, || panic!("built a chunk that cannot be queued"));
        assert_eq!(outcome, Offer::Full);
    }

    #[test]
    fn offer_after_receiver_dropped_is_closed_and_releases_depth() {
        let (tx, rx) = bounded(10);
        let depth = rx.depth_handle();
        drop(rx);
        assert_eq!(tx.offer(chunk(3)), Offer::Closed);
        assert_eq!(depth.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_recycled_buffer_comes_back_empty_with_its_capacity() {
        let (tx, rx) = bounded(1000);
        assert_eq!(tx.spare(7).capacity(), 7, "nothing recycled yet: a new buffer");
        let mut consumed = chunk(1);
        consumed.bytes.reserve(4096);
        let (capacity, address) = (consumed.bytes.capacity(), consumed.bytes.as_ptr());
        rx.recycle(consumed);
        let spare = tx.spare(7);
        assert!(spare.is_empty());
        assert_eq!((spare.capacity(), spare.as_ptr()), (capacity, address));
    }

    #[test]
    fn a_buffer_larger_than_the_bound_is_freed() {
        let (tx, rx) = bounded(1000);
        let mut big = chunk(1);
        big.bytes.reserve(SPARE_BUFFER_MAX_BYTES + 1);
        rx.recycle(big);
        assert_eq!(tx.spare(7).capacity(), 7, "not kept: a new buffer");
    }

    #[test]
    fn at_most_spare_buffers_wait() {
        let (tx, rx) = bounded(1000);
        for _ in 0..SPARE_BUFFERS + 5 {
            rx.recycle(chunk(1));
        }
        let recycled = (0..SPARE_BUFFERS + 5).filter(|_| tx.spare(0).capacity() > 0).count();
        assert_eq!(recycled, SPARE_BUFFERS);
    }

    #[test]
    fn progress_publishes_positions() {
        let p = CoreProgress::new(Position::new(1, 0));
        p.publish_written(Position::new(1, 99));
        assert_eq!(p.written_end(), Position::new(1, 99));
    }
}
