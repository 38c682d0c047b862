//! Group commit for one core: the records of one loop tick go to the segment with one write.
//!
//! Connections of a core encode their validated events into the *open tick* and hold a
//! [`Ticket`] for it. The core's single writer task swaps the open tick out, writes it with one
//! io_uring write, publishes the new end of the WAL, offers the bytes to the queue and then
//! completes the ticket. While a write is in flight the next tick fills up, so under load every
//! write carries the records of many requests.
//!
//! Invariants:
//! - a ticket completes `Written` only after the write of its tick returned success (and, with
//!   `wal.sync = "always"`, after the fdatasync): only then may its requests be acknowledged;
//! - ticks are written in the order they were opened, so WAL order is acknowledgement order;
//! - the open tick holds whole records only.
//!
//! Everything here lives on one core thread: `Rc`/`Cell`, no locks, no atomics.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::task::{Poll, Waker};

use super::record::{self, Context, Event};

/// How a tick's write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickOutcome {
    /// In the segment (and synced if the policy says so): acknowledge.
    Written,
    /// Not written (disk full, IO error, shutdown before write): answer 503, store nothing.
    Failed,
}

/// Completion cell shared by the requests of one tick.
#[derive(Default)]
struct TickState {
    outcome: Cell<Option<TickOutcome>>,
    waiters: RefCell<Vec<Waker>>,
}

impl TickState {
    fn complete(&self, outcome: TickOutcome) {
        debug_assert!(self.outcome.get().is_none(), "tick completed twice");
        self.outcome.set(Some(outcome));
        for waker in self.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }
}

/// A request's claim on the write of the tick its records went into.
#[derive(Clone)]
pub struct Ticket(Rc<TickState>);

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Ticket").field(&self.0.outcome.get()).finish()
    }
}

impl Ticket {
    /// Resolves once the tick's write finished.
    pub fn wait(&self) -> impl Future<Output = TickOutcome> + '_ {
        poll_fn(move |cx| match self.0.outcome.get() {
            Some(outcome) => Poll::Ready(outcome),
            None => {
                let mut waiters = self.0.waiters.borrow_mut();
                if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    waiters.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
    }
}

/// The open tick plus what the writer needs to find it.
pub struct GroupCommit {
    open: RefCell<Vec<u8>>,
    open_records: Cell<u32>,
    open_state: RefCell<Rc<TickState>>,
    /// The tick being written, if any: connections wait on it when the open tick is full.
    in_flight: RefCell<Option<Rc<TickState>>>,
    writer_waker: RefCell<Option<Waker>>,
    closing: Cell<bool>,
    /// Set while this core's WAL takes no records: the disk budget is used up or writes fail
    /// (set by the tick writer and the core's housekeeping, read before each append).
    refusing: Cell<bool>,
    /// Soft bound of one tick; past it new requests wait for the write in flight.
    tick_bytes_max: usize,
}

/// The writer's handle on the tick it took: complete it once the write has ended.
pub struct TakenTick {
    pub records: u32,
    state: Rc<TickState>,
}

impl TakenTick {
    pub fn complete(self, outcome: TickOutcome) {
        self.state.complete(outcome);
    }
}

impl GroupCommit {
    pub fn new(tick_bytes_max: usize) -> Self {
        Self {
            open: RefCell::new(Vec::with_capacity(tick_bytes_max.min(64 * 1024))),
            open_records: Cell::new(0),
            open_state: RefCell::new(Rc::default()),
            in_flight: RefCell::new(None),
            writer_waker: RefCell::new(None),
            closing: Cell::new(false),
            refusing: Cell::new(false),
            tick_bytes_max,
        }
    }

    /// True when the open tick is past its soft bound: wait with [`Self::room`] first.
    pub fn is_full(&self) -> bool {
        self.open.borrow().len() >= self.tick_bytes_max
    }

    /// True while the WAL takes no records: answer 503 instead of appending.
    pub fn is_refusing(&self) -> bool {
        self.refusing.get()
    }

    /// Raises or lowers the refusal; returns true if that changed it.
    pub fn set_refusing(&self, refusing: bool) -> bool {
        self.refusing.replace(refusing) != refusing
    }

    /// Waits until the write in flight (if any) has finished, freeing room in the next tick.
    pub async fn room(&self) {
        let in_flight = self.in_flight.borrow().clone();
        if let Some(state) = in_flight {
            Ticket(state).wait().await;
        }
    }

    /// Encodes `event` with its client context into the open tick and returns the ticket of
    /// that tick. Records appended with no await in between share one tick, so one write.
    #[must_use = "wait on the ticket before acknowledging the event"]
    pub fn append(&self, event: &Event<'_>, context: &Context<'_>) -> Ticket {
        debug_assert!(!self.closing.get(), "append after close");
        record::encode(event, context, &mut self.open.borrow_mut());
        self.open_records.set(self.open_records.get() + 1);
        if let Some(waker) = self.writer_waker.borrow_mut().take() {
            waker.wake();
        }
        self.ticket()
    }

    /// The ticket of the open tick: every record appended since the last write.
    fn ticket(&self) -> Ticket {
        Ticket(self.open_state.borrow().clone())
    }

    /// Writer side: waits until the open tick holds records, then swaps in `spare` (cleared) as
    /// the next open tick and returns the full one. `None` once closed and empty.
    pub async fn next_tick(&self, spare: Vec<u8>) -> Option<(Vec<u8>, TakenTick)> {
        let mut spare = Some(spare);
        poll_fn(|cx| {
            if self.open_records.get() > 0 {
                let fresh = spare.take().unwrap_or_default();
                return Poll::Ready(Some(self.take_open(fresh)));
            }
            if self.closing.get() {
                return Poll::Ready(None);
            }
            *self.writer_waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn take_open(&self, mut fresh: Vec<u8>) -> (Vec<u8>, TakenTick) {
        fresh.clear();
        let bytes = std::mem::replace(&mut *self.open.borrow_mut(), fresh);
        let records = self.open_records.replace(0);
        let state = std::mem::take(&mut *self.open_state.borrow_mut());
        *self.in_flight.borrow_mut() = Some(state.clone());
        debug_assert!(bytes.last() == Some(&b'\n'), "tick must hold whole records");
        (bytes, TakenTick { records, state })
    }

    /// No more appends: the writer drains what is open and then `next_tick` returns `None`.
    pub fn close(&self) {
        self.closing.set(true);
        if let Some(waker) = self.writer_waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(file_id: u64) -> Event<'static> {
        Event { ts_ms: 1, event: "play", domain: "a.b", file_id }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().build().expect("runtime");
        rt.block_on(f)
    }

    #[test]
    fn records_of_one_tick_share_one_write_and_ticket() {
        block_on(async {
            let group = Rc::new(GroupCommit::new(1 << 20));
            let t1 = group.append(&ev(1), &Context::NONE);
            let t2 = group.append(&ev(2), &Context::NONE);
            let (bytes, taken) = group.next_tick(Vec::new()).await.expect("tick");
            assert_eq!(taken.records, 2);
            let (scan_records, _) = count_lines(&bytes);
            assert_eq!(scan_records, 2);
            // the next tick is empty and has a new ticket
            let t3 = group.append(&ev(3), &Context::NONE);
            taken.complete(TickOutcome::Written);
            assert_eq!(t1.wait().await, TickOutcome::Written);
            assert_eq!(t2.wait().await, TickOutcome::Written);
            let (_, taken) = group.next_tick(Vec::new()).await.expect("tick");
            assert_eq!(taken.records, 1);
            taken.complete(TickOutcome::Failed);
            assert_eq!(t3.wait().await, TickOutcome::Failed);
        });
    }

    #[test]
    fn close_drains_then_ends() {
        block_on(async {
            let group = GroupCommit::new(1 << 20);
            let _ = group.append(&ev(1), &Context::NONE);
            group.close();
            let (_, taken) = group.next_tick(Vec::new()).await.expect("open records are drained");
            taken.complete(TickOutcome::Written);
            assert!(group.next_tick(Vec::new()).await.is_none());
        });
    }

    #[test]
    fn full_tick_reports_full() {
        let group = GroupCommit::new(100);
        assert!(!group.is_full());
        let _ = group.append(&ev(1), &Context::NONE);
        let _ = group.append(&ev(2), &Context::NONE);
        assert!(group.is_full());
    }

    fn count_lines(bytes: &[u8]) -> (usize, usize) {
        (bytes.iter().filter(|&&b| b == b'\n').count(), bytes.len())
    }
}
