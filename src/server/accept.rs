//! The connections of one core: the accept loop (connection cap, back-off when descriptors
//! run out; every connection registered in the core's `http::idle::Registry`) and the
//! connection half of the drain.
//!
//! Invariants:
//! - at most `http.max_connections_per_core` connections are open on a core; one over the cap
//!   is accepted and closed at once (counted as the `connections` limit), never left in the
//!   backlog;
//! - a failed `accept` for want of resources pauses the loop (1 ms doubling to 100 ms), so it
//!   never spins, and is counted as the `fds` limit;
//! - a connection leaves the registry right after it closes, with no await in between, so
//!   the drain and the idle sweep never touch a reused fd.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::net::TcpListener;

use crate::http::conn;
use crate::http::context::ConnContext;
use crate::metrics::{bump, CoreCounters};

/// Local wake-up for the accept loop when the drain starts.
#[derive(Default)]
pub(super) struct DrainSignal {
    started: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl DrainSignal {
    pub(super) fn start(&self) {
        self.started.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    async fn wait(&self) {
        poll_fn(|cx| {
            if self.started.get() {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

pub(super) async fn accept_until_drain(
    listener: &TcpListener,
    ctx: &Rc<ConnContext>,
    drain: &DrainSignal,
    max_conns: usize,
) {
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = monoio::select! {
            accepted = listener.accept() => accepted,
            _ = drain.wait() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff.succeeded();
                accepted
            }
            Err(err) => {
                if let Some(pause) = backoff.failed(&err, ctx.counters()) {
                    monoio::time::sleep(pause).await;
                }
                continue;
            }
        };
        let open = &ctx.counters().connections_open;
        if open.load(Ordering::Relaxed) as usize >= max_conns {
            ctx.counters().count_limit_hit("connections");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        bump(&ctx.counters().connections_accepted, 1);
        bump(open, 1);
        let ctx = ctx.clone();
        let (id, watch) = ctx.registry().register(stream.as_raw_fd());
        monoio::spawn(async move {
            conn::serve(stream, peer, ctx.clone(), watch).await;
            // No await between the close (end of `serve`) and here: the fd cannot be reused
            // by this core before it leaves the registry.
            ctx.registry().remove(id);
            ctx.counters().connections_open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Shortest and longest pause after `accept` failed for want of descriptors.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(1);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(100);

/// What the accept loop does after a failed `accept`. `EMFILE`/`ENFILE` (descriptor limit)
/// and `ENOBUFS`/`ENOMEM` leave the connection in the backlog, so accepting again at once
/// would spin: pause, doubling from [`ACCEPT_BACKOFF_MIN`] to [`ACCEPT_BACKOFF_MAX`] while it
/// lasts, and count it (`fds`). Other errors (the peer gave up, `ECONNABORTED`) concern one
/// connection only: go on at once.
#[derive(Default)]
struct AcceptBackoff {
    /// The pause of the current run of failures; `None` after a success.
    pause: Option<Duration>,
}

impl AcceptBackoff {
    fn succeeded(&mut self) {
        if self.pause.take().is_some() {
            tracing::info!("accept works again");
        }
    }

    fn failed(&mut self, err: &std::io::Error, counters: &CoreCounters) -> Option<Duration> {
        let out_of_resources =
            matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM));
        if !out_of_resources {
            tracing::debug!(%err, "accept failed");
            return None;
        }
        counters.count_limit_hit("fds");
        let pause = match self.pause {
            None => {
                tracing::warn!(%err, "accept failed: out of file descriptors (see RLIMIT_NOFILE at start); backing off");
                ACCEPT_BACKOFF_MIN
            }
            Some(pause) => (pause * 2).min(ACCEPT_BACKOFF_MAX),
        };
        self.pause = Some(pause);
        Some(pause)
    }
}

/// The connection half of the drain, within `budget`: during its first quarter connections
/// finish what they are doing (requests that arrive get their answer with `Connection:
/// close`); then the read side of the rest (idle keep-alives, unfinished requests) is shut so
/// they close at once; what is still open when the budget ends is dropped with the runtime.
pub(super) async fn drain_connections(ctx: &ConnContext, budget: Duration) {
    let start = Instant::now();
    wait_for_connections(ctx, start + budget / 4).await;
    let shut = ctx.registry().shut_reads();
    if shut > 0 {
        tracing::debug!(connections = shut, "drain: closing idle connections");
    }
    wait_for_connections(ctx, start + budget).await;
}

async fn wait_for_connections(ctx: &ConnContext, deadline: Instant) {
    while ctx.counters().connections_open.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_on_descriptor_errors_only_and_resets_on_success() {
        let counters = CoreCounters::default();
        let mut backoff = AcceptBackoff::default();
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        let pauses: Vec<_> = (0..10).map(|_| backoff.failed(&emfile, &counters)).collect();
        assert_eq!(pauses[0], Some(ACCEPT_BACKOFF_MIN));
        assert_eq!(pauses[1], Some(ACCEPT_BACKOFF_MIN * 2));
        assert_eq!(pauses[9], Some(ACCEPT_BACKOFF_MAX), "capped");
        let aborted = std::io::Error::from_raw_os_error(libc::ECONNABORTED);
        assert_eq!(backoff.failed(&aborted, &counters), None, "one connection's error: no pause");
        backoff.succeeded();
        assert_eq!(backoff.failed(&emfile, &counters), Some(ACCEPT_BACKOFF_MIN), "a new run starts short");
        let totals = crate::metrics::sum([&counters]);
        let fds = crate::metrics::LIMITS.iter().position(|&l| l == "fds").expect("fds label");
        assert_eq!(totals.limit_hits[fds], 11, "every descriptor error is counted");
    }
}
