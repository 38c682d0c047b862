//! The open connections of one core and their idle deadlines, swept by the core's
//! housekeeping instead of one timer per read.
//!
//! A connection arms its [`Watch`] with a deadline before each read and disarms it when the
//! read returns. Every `tick` (the housekeeping period, 100 ms) the core advances its coarse
//! clock and shuts the read side of every connection whose armed deadline has passed: its
//! read returns end-of-file, the connection sees [`Watch::expired`] and answers 408 (or just
//! closes, when nothing was buffered). A read therefore costs two `Cell` stores instead of a
//! timer-wheel insert and removal, and no in-flight read is ever dropped (dropping an io_uring
//! op can lose its buffer).
//!
//! Invariants:
//! - a deadline is enforced to within one tick (100 ms) either way: the clock it is set and
//!   checked on advances only at ticks;
//! - a disarmed watch (a connection busy answering, or waiting for its WAL write) is never shut:
//!   only reads time out;
//! - every fd in the registry belongs to a live connection: it is removed right after the
//!   connection closes, with no await in between, so a sweep or the drain never touches a
//!   reused fd.
//!
//! Everything lives on one core thread.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Instant;

/// No deadline: the connection is not reading.
const DISARMED: u64 = u64::MAX;

/// One connection's entry: its socket and the deadline of the read it waits in.
#[derive(Debug)]
pub struct Watch {
    fd: RawFd,
    deadline_ms: Cell<u64>,
    expired: Cell<bool>,
}

impl Watch {
    /// The read about to start must complete by `deadline_ms` (the registry's clock).
    pub fn arm(&self, deadline_ms: u64) {
        self.deadline_ms.set(deadline_ms);
    }

    /// The read returned: no deadline while the connection works.
    pub fn disarm(&self) {
        self.deadline_ms.set(DISARMED);
    }

    /// True once the sweep shut this connection's read side for a passed deadline.
    pub fn expired(&self) -> bool {
        self.expired.get()
    }
}

/// The open connections of one core.
#[derive(Debug)]
pub struct Registry {
    started: Instant,
    /// Milliseconds since `started`, advanced by [`Registry::tick`].
    now_ms: Cell<u64>,
    next_id: Cell<u64>,
    open: RefCell<HashMap<u64, Rc<Watch>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            now_ms: Cell::new(0),
            next_id: Cell::new(0),
            open: RefCell::default(),
        }
    }
}

impl Registry {
    /// The coarse clock deadlines are set on: ms since the core started, as of the last tick.
    pub fn now_ms(&self) -> u64 {
        self.now_ms.get()
    }

    /// Adds a connection; returns its id (for [`Self::remove`]) and its watch.
    pub fn register(&self, fd: RawFd) -> (u64, Rc<Watch>) {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let watch = Rc::new(Watch { fd, deadline_ms: Cell::new(DISARMED), expired: Cell::new(false) });
        self.open.borrow_mut().insert(id, watch.clone());
        (id, watch)
    }

    pub fn remove(&self, id: u64) {
        self.open.borrow_mut().remove(&id);
    }

    pub fn len(&self) -> usize {
        self.open.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.borrow().is_empty()
    }

    /// Advances the clock and shuts the read side of every connection whose deadline passed.
    /// Returns how many it shut.
    pub fn tick(&self) -> usize {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.now_ms.set(now);
        let mut shut = 0;
        for watch in self.open.borrow().values() {
            if watch.deadline_ms.get() <= now && !watch.expired.get() {
                watch.expired.set(true);
                shut_read(watch.fd);
                shut += 1;
            }
        }
        shut
    }

    /// Shuts the read side of every open connection (the drain): one waiting for its next
    /// request reads EOF and closes; answers already being written still go out.
    pub fn shut_reads(&self) -> usize {
        let open = self.open.borrow();
        for watch in open.values() {
            shut_read(watch.fd);
        }
        open.len()
    }
}

fn shut_read(fd: RawFd) {
    // SAFETY: every fd in the registry belongs to a live connection of this core (module doc).
    unsafe { libc::shutdown(fd, libc::SHUT_RD) };
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn only_armed_watches_past_their_deadline_are_shut() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client_a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _client_b = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut a, _) = listener.accept().unwrap();
        let (b, _) = listener.accept().unwrap();
        let registry = Registry::default();
        let (_, wa) = registry.register(a.as_raw_fd());
        let (id_b, wb) = registry.register(b.as_raw_fd());
        wa.arm(registry.now_ms()); // due now
        wb.arm(registry.now_ms() + 60_000);
        assert_eq!(registry.tick(), 1);
        assert!(wa.expired() && !wb.expired());
        let mut buf = [0u8; 8];
        assert_eq!(a.read(&mut buf).unwrap(), 0, "the shut read side reads end-of-file");
        assert_eq!(registry.tick(), 0, "shut once");
        wb.disarm();
        registry.remove(id_b);
        assert_eq!(registry.len(), 1);
        assert_eq!(registry.shut_reads(), 1);
    }
}
