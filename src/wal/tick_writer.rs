//! The core's single WAL writer task: takes the open tick of [`GroupCommit`], writes it with
//! one io_uring write ([`SegmentWriter::append`]), tells the core what was written, then
//! completes the tick's ticket, so its requests can be answered.
//!
//! Invariants:
//! - one tick at a time, in the order the ticks were opened: WAL order is acknowledgement order;
//! - a ticket completes `Written` only after its bytes are in the segment (and, with
//!   `wal.sync = "always"`, fdatasynced) and after `on_written` ran, so a position the core
//!   publishes is never behind an acknowledged record;
//! - a failed write completes its ticket `Failed` (503, nothing stored: the writer cut the
//!   partial write back) and raises the core's refusal at once; housekeeping lowers it again
//!   when the disk budget allows;
//! - with `wal.sync = "interval"`, an fdatasync follows the first write after each
//!   `wal.sync_interval_ms`, or runs on its own once the interval passes with nothing to write;
//! - on close, the last open tick is written and the segment fdatasynced whatever the policy.
//!
//! What the core does with a written tick (publish the new WAL end, count it against the disk
//! budget, offer it to the flusher's queue) is its `on_written` hook: this module knows
//! neither the queue nor the flusher, so `wal` imports no stage above it.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::SyncPolicy;
use super::group::{GroupCommit, TickOutcome};
use super::writer::SegmentWriter;
use super::Position;
use crate::metrics::{bump, CoreCounters};

/// Initial capacity of the spare tick buffer; it then keeps whatever size ticks grew it to.
const SPARE_BYTES_INITIAL: usize = 64 * 1024;

/// One tick as it landed in the segment.
#[derive(Debug)]
pub struct Written<'a> {
    /// Where its first record starts.
    pub start: Position,
    /// Where the next record will start (same segment as `start`).
    pub end: Position,
    /// Records in it.
    pub records: u32,
    /// Its bytes: whole records. The hook may take them, leaving an empty buffer of its own
    /// (`QueueSender::spare`); the writer reuses whatever buffer is left here.
    pub bytes: &'a mut Vec<u8>,
}

/// The settings of one core's tick writer.
#[derive(Debug, Clone, Copy)]
pub struct TickPolicy {
    pub core: u16,
    pub sync: SyncPolicy,
    /// Period of the fdatasync with `SyncPolicy::Interval` (at least 1 ms).
    pub sync_interval: Duration,
    /// `wal.write_buffer_bytes`: the soft bound of one tick.
    pub tick_bytes: usize,
}

/// The writer task of one core; run it with [`TickWriter::run`].
pub struct TickWriter<F> {
    policy: TickPolicy,
    group: Rc<GroupCommit>,
    segments: SegmentWriter,
    counters: Arc<CoreCounters>,
    on_written: F,
}

/// Raises or lowers the core's refusal, mirroring a change into `wal_refusing` (for `/readyz`).
pub fn set_refusing(group: &GroupCommit, counters: &CoreCounters, refusing: bool) {
    if group.set_refusing(refusing) {
        counters.wal_refusing.store(refusing, std::sync::atomic::Ordering::Relaxed);
    }
}

impl<F: FnMut(&mut Written<'_>)> TickWriter<F> {
    pub fn new(
        policy: TickPolicy,
        group: Rc<GroupCommit>,
        segments: SegmentWriter,
        counters: Arc<CoreCounters>,
        on_written: F,
    ) -> Self {
        Self { policy, group, segments, counters, on_written }
    }

    /// Writes ticks until the group is closed and drained, then fdatasyncs the segment.
    pub async fn run(mut self) {
        let mut spare = Vec::with_capacity(self.policy.tick_bytes.min(SPARE_BYTES_INITIAL));
        let mut sync = SyncState { last: Instant::now(), pending: false };
        let mut failing = false;
        loop {
            let Some((bytes, tick)) = self.next_tick(std::mem::take(&mut spare), &mut sync).await else {
                break;
            };
            let (result, mut bytes) = self.segments.append(bytes).await;
            match result {
                Ok((start, end)) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!(core = self.policy.core, "WAL writes succeed again");
                    }
                    bump(&self.counters.wal_writes, 1);
                    bump(&self.counters.wal_bytes_written, bytes.len() as u64);
                    (self.on_written)(&mut Written { start, end, records: tick.records, bytes: &mut bytes });
                    tick.complete(TickOutcome::Written);
                    sync.pending = true;
                    if self.policy.sync == SyncPolicy::Interval
                        && sync.last.elapsed() >= self.policy.sync_interval
                    {
                        self.sync_now(&mut sync).await;
                    }
                }
                Err(err) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::error!(core = self.policy.core, %err, "WAL write failed; answering 503 until writes succeed");
                    }
                    bump(&self.counters.wal_write_errors, 1);
                    tick.complete(TickOutcome::Failed);
                    // Refuse at once; housekeeping lifts it within 100 ms if the budget allows.
                    set_refusing(&self.group, &self.counters, true);
                }
            }
            bytes.clear();
            spare = bytes;
        }
        if let Err(err) = self.segments.sync_data().await {
            tracing::error!(core = self.policy.core, %err, "final WAL fdatasync failed");
        }
    }

    /// The next tick to write; under `SyncPolicy::Interval` with unsynced writes, runs the
    /// fdatasync when the interval passes first. `None` once the group is closed and empty.
    async fn next_tick(
        &self,
        spare: Vec<u8>,
        sync: &mut SyncState,
    ) -> Option<(Vec<u8>, super::group::TakenTick)> {
        let mut spare = Some(spare);
        loop {
            let next = self.group.next_tick(spare.take().unwrap_or_default());
            if self.policy.sync != SyncPolicy::Interval || !sync.pending {
                return next.await;
            }
            let due = (sync.last + self.policy.sync_interval).saturating_duration_since(Instant::now());
            match monoio::time::timeout(due, next).await {
                Ok(taken) => return taken,
                Err(_) => self.sync_now(sync).await,
            }
        }
    }

    async fn sync_now(&self, sync: &mut SyncState) {
        if let Err(err) = self.segments.sync_data().await {
            tracing::error!(core = self.policy.core, %err, "WAL fdatasync failed");
        }
        sync.last = Instant::now();
        sync.pending = false;
    }
}

/// When the last fdatasync ran and whether writes happened since.
struct SyncState {
    last: Instant,
    pending: bool,
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::wal::record::{scan, Context, Event};
    use crate::wal::segment::segment_path;

    fn run<F: std::future::Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build().unwrap().block_on(f)
    }

    fn policy(sync: SyncPolicy) -> TickPolicy {
        TickPolicy { core: 0, sync, sync_interval: Duration::from_millis(1), tick_bytes: 1 << 20 }
    }

    fn ev(file_id: u64) -> Event<'static> {
        Event { ts_ms: 1, event: "play", domain: "a.example", file_id }
    }

    #[test]
    fn ticks_are_written_in_order_and_reported_before_their_ticket_completes() {
        let dir = tempfile::tempdir().unwrap();
        let written = Rc::new(RefCell::new(Vec::new()));
        let (outcomes, seen_at_completion) = run(async {
            let segments =
                SegmentWriter::open(dir.path(), Position::new(1, 0), 1 << 20, SyncPolicy::Interval)
                    .await
                    .unwrap();
            let group = Rc::new(GroupCommit::new(1 << 20));
            let counters = Arc::new(CoreCounters::default());
            let log = written.clone();
            let hook = move |w: &mut Written<'_>| log.borrow_mut().push((w.start, w.end, w.records));
            let writer =
                TickWriter::new(policy(SyncPolicy::Interval), group.clone(), segments, counters, hook);
            let task = monoio::spawn(writer.run());
            let first = group.append(&ev(1), &Context::NONE);
            let _ = group.append(&ev(2), &Context::NONE);
            let a = first.wait().await;
            let seen = written.borrow().len();
            let second = group.append(&ev(3), &Context::NONE);
            let b = second.wait().await;
            group.close();
            task.await;
            ((a, b), seen)
        });
        assert_eq!(outcomes, (TickOutcome::Written, TickOutcome::Written));
        assert_eq!(seen_at_completion, 1, "the hook ran before the ticket completed");
        let written = written.borrow();
        assert_eq!(written.len(), 2, "two ticks, two writes");
        assert_eq!((written[0].0, written[0].2), (Position::new(1, 0), 2));
        assert_eq!(
            (written[1].0, written[1].2),
            (written[0].1, 1),
            "the second starts where the first ended"
        );
        let bytes = std::fs::read(segment_path(dir.path(), 1)).unwrap();
        assert_eq!(bytes.len() as u64, written[1].1.offset);
        assert_eq!(scan(&bytes).records, 3);
    }

    #[test]
    fn a_failed_write_fails_its_ticket_and_raises_the_refusal() {
        let dir = tempfile::tempdir().unwrap();
        // Every write to /dev/full fails with ENOSPC.
        std::os::unix::fs::symlink("/dev/full", segment_path(dir.path(), 1)).unwrap();
        let counters = Arc::new(CoreCounters::default());
        let (outcome, refusing) = run(async {
            let segments = SegmentWriter::open(dir.path(), Position::new(1, 0), 1 << 20, SyncPolicy::None)
                .await
                .unwrap();
            let group = Rc::new(GroupCommit::new(1 << 20));
            let hook = |_: &mut Written<'_>| panic!("nothing was written");
            let writer =
                TickWriter::new(policy(SyncPolicy::None), group.clone(), segments, counters.clone(), hook);
            let task = monoio::spawn(writer.run());
            let outcome = group.append(&ev(1), &Context::NONE).wait().await;
            let refusing = group.is_refusing();
            group.close();
            task.await;
            (outcome, refusing)
        });
        assert_eq!(outcome, TickOutcome::Failed);
        assert!(refusing);
        assert!(counters.wal_refusing.load(std::sync::atomic::Ordering::Relaxed));
        assert_eq!(counters.wal_write_errors.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
