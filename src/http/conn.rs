//! One client connection on one core: read → parse every complete request in the buffer →
//! route → hand accepted events to the core's intake (which appends them to the open WAL
//! tick and returns its ticket) → wait for that tick's write → answer all of them with one
//! socket write.
//!
//! Invariants:
//! - a beacon is answered 2xx only after its tick's WAL write succeeded; if it failed, 503;
//! - responses leave in request order, one `write` per batch of pipelined requests;
//! - the read buffer only grows up to `max_header_bytes + max_body_bytes` and is reused for
//!   the whole connection; once warm, a request allocates nothing;
//! - a framing error (bad bytes, a limit hit) closes this connection and touches nothing else;
//! - a partial request must complete within `idle_timeout_ms` of its first byte (no slowloris),
//!   and an idle keep-alive connection closes after `idle_timeout_ms`: each read arms the
//!   connection's [`Watch`] in the core's registry, whose sweep shuts overdue reads
//!   (`super::idle`), so no read carries a timer of its own;
//! - a request with `Expect: 100-continue` whose body is not buffered yet gets one
//!   `100 Continue` before the next read; any other expectation is 417 and closes;
//! - past `max_requests_per_connection` requests or `max_connection_age_ms` of age, the next
//!   answer carries `Connection: close` and the connection ends (L4 balancers rebalance);
//! - the time from a read's completion to the write of its answers is observed for one read in
//!   [`SAMPLE_EVERY_READS`] (`crate::metrics::latency`): two clock reads per sampled read.

use std::rc::Rc;
use std::time::Instant;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::answer::{self, BeaconKind};
use super::context::{ConnContext, Lifetime};
use super::dialect::{DialectScratch, Dialects};
use super::framing::{self, frame_body, Framing};
use super::idle::Watch;
use super::request::{self, Expect, Parsed};
use super::response;
use super::router::{route, Reply, Turn};
use crate::ingest::QueryScratch;
use crate::metrics::latency::SAMPLE_EVERY_READS;
use crate::metrics::{bump, CoreCounters};
use crate::wal::group::TickOutcome;

/// Smallest read buffer a connection starts with.
const INITIAL_READ_BYTES: usize = 4096;
/// `Retry-After` sent with 503s, in seconds.
const RETRY_AFTER_S: u32 = 1;

struct Pending {
    reply: Reply,
    close: bool,
    minor_version: u8,
}

/// Per-connection state, reused for every request on it.
struct Connection {
    read_buf: Vec<u8>,
    write_buf: Vec<u8>,
    pending: Vec<Pending>,
    scratch: QueryScratch,
    dialect: DialectScratch,
    /// When the first byte of the request now buffered arrived.
    partial_since_ms: Option<u64>,
    /// This connection's entry in the core's registry.
    watch: Rc<Watch>,
    /// Requests and age, against the connection limits.
    life: Lifetime,
    /// The buffered request waits for its body and asked for `100 Continue`; not sent yet.
    continue_owed: bool,
    /// `100 Continue` was sent for the buffered request.
    continue_sent: bool,
    /// When the last sampled read completed, until its answers are written (`answer_latency`).
    read_done: Option<Instant>,
    /// Reads so far, for sampling one in [`SAMPLE_EVERY_READS`].
    reads: u32,
}

/// Serves one accepted connection until it closes.
pub async fn serve(
    mut stream: TcpStream,
    peer: std::net::SocketAddr,
    ctx: Rc<ConnContext>,
    watch: Rc<Watch>,
) {
    let mut conn = Connection {
        read_buf: Vec::with_capacity(INITIAL_READ_BYTES),
        write_buf: Vec::with_capacity(1024),
        pending: Vec::with_capacity(16),
        scratch: QueryScratch::default(),
        dialect: DialectScratch::new(peer.ip()),
        partial_since_ms: None,
        watch,
        life: Lifetime::new(crate::clock::unix_ms()),
        continue_owed: false,
        continue_sent: false,
        read_done: None,
        reads: 0,
    };
    loop {
        let close = conn.answer_buffered(&ctx).await;
        if !conn.write_buf.is_empty() {
            if !conn.flush(&mut stream).await {
                return;
            }
            if let Some(read_done) = conn.read_done.take() {
                ctx.counters.answer_latency.observe(read_done.elapsed());
            }
        }
        if close {
            return;
        }
        if conn.has_complete_request(ctx.limits()) {
            continue; // more pipelined requests than one turn answers
        }
        if ctx.is_draining() && conn.read_buf.is_empty() {
            return;
        }
        if conn.continue_owed && !conn.send_continue(&mut stream, &ctx.counters).await {
            return;
        }
        match conn.read_more(&mut stream, &ctx).await {
            ReadOutcome::Data => {}
            ReadOutcome::Closed => return,
            ReadOutcome::TimedOut => {
                ctx.counters.count_limit_hit("idle_timeout");
                if !conn.read_buf.is_empty() {
                    conn.write_buf.clear();
                    response::write_error(&mut conn.write_buf, 408, "request not completed in time", true);
                    ctx.counters.count_response(408);
                    conn.flush(&mut stream).await;
                }
                return;
            }
        }
    }
}

enum ReadOutcome {
    Data,
    Closed,
    TimedOut,
}

impl Connection {
    /// Parses and answers up to `max_pipelined` complete requests from the read buffer.
    /// Returns true when the connection must close after the answers are written.
    async fn answer_buffered(&mut self, ctx: &ConnContext) -> bool {
        if ctx.intake.is_full() {
            ctx.intake.room().await;
        }
        let now_ms = crate::clock::unix_ms(); // the receive time stamped on events
        let mut consumed = 0;
        let mut close = false;
        // The open tick's ticket once a request appended to it (all of this turn's appends
        // share that tick: there is no await in the loop).
        let mut ticket = None;
        self.pending.clear();
        while self.pending.len() < ctx.max_pipelined() && consumed < self.read_buf.len() {
            let req = match request::parse(&self.read_buf[consumed..], ctx.limits()) {
                Parsed::Partial => break,
                Parsed::Invalid(err) => {
                    ctx.counters.count_limit_hit(err.label());
                    (close, consumed) = (true, self.refuse(err.status(), err.reason()));
                    break;
                }
                Parsed::Complete(req) => req,
            };
            let rest = &self.read_buf[consumed + req.head_len..];
            let framing = frame_body(&req, rest, &mut self.dialect.body, ctx.limits(), &ctx.counters);
            if matches!(framing, Framing::Wait) && req.expect == Expect::Continue && !self.continue_sent {
                self.continue_owed = true;
            }
            let body_len = match framing {
                Framing::Ready(body_len) => body_len,
                Framing::Wait => break,
                Framing::Refused { status, reason } => {
                    (close, consumed) = (true, self.refuse(status, reason));
                    break;
                }
            };
            let request_len = req.head_len + body_len;
            let keep_alive = req.keep_alive && !ctx.is_draining() && self.life.may_continue(now_ms, ctx);
            let turn =
                Turn { now_ms, query: &mut self.scratch, dialect: &mut self.dialect, ticket: &mut ticket };
            let reply = route(&req, ctx, turn);
            self.pending.push(Pending { reply, close: !keep_alive, minor_version: req.minor_version });
            consumed += request_len;
            if !keep_alive {
                close = true;
                break;
            }
        }
        self.drop_consumed(consumed, ctx);
        let outcome = match ticket {
            Some(ticket) => ticket.wait().await,
            None => TickOutcome::Written,
        };
        self.render(outcome, &ctx.counters, &ctx.dialects);
        close
    }

    /// Answers a request that cannot be parsed or framed, with `Connection: close`: nothing
    /// after it in the buffer is read. Returns how much of the buffer that consumes (all).
    fn refuse(&mut self, status: u16, reason: &'static str) -> usize {
        self.pending.push(Pending { reply: Reply::Error { status, reason }, close: true, minor_version: 1 });
        self.read_buf.len()
    }

    /// Forgets the `consumed` bytes of requests answered this turn; what is left is the start
    /// of a request whose age the idle sweep watches.
    fn drop_consumed(&mut self, consumed: usize, ctx: &ConnContext) {
        if consumed > 0 {
            self.continue_owed = false;
            self.continue_sent = false;
        }
        self.read_buf.drain(..consumed);
        let now_ms = ctx.registry().now_ms();
        self.partial_since_ms = (!self.read_buf.is_empty()).then(|| self.partial_since_ms.unwrap_or(now_ms));
    }

    /// Writes the interim `100 Continue` the buffered request asked for.
    async fn send_continue(&mut self, stream: &mut TcpStream, counters: &CoreCounters) -> bool {
        self.continue_owed = false;
        self.continue_sent = true;
        counters.count_response(100);
        self.write_buf.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        self.flush(stream).await
    }

    fn render(&mut self, outcome: TickOutcome, counters: &CoreCounters, dialects: &Dialects) {
        for p in self.pending.drain(..) {
            let out = &mut self.write_buf;
            let status = match p.reply {
                Reply::Beacon if outcome == TickOutcome::Written => {
                    bump(&counters.events_accepted, 1);
                    out.extend_from_slice(response::no_content(p.minor_version, !p.close));
                    204
                }
                Reply::DroppedBot => {
                    out.extend_from_slice(response::no_content(p.minor_version, !p.close));
                    204
                }
                Reply::Unavailable { reason } => {
                    response::write_503_retry(out, RETRY_AFTER_S, reason, p.close);
                    503
                }
                Reply::Error { status, reason } => {
                    response::write_error(out, status, reason, p.close);
                    status
                }
                Reply::MethodNotAllowed { allow } => {
                    response::write_405(out, allow, p.close);
                    405
                }
                Reply::Body { status, content_type, body } => {
                    response::write_body(out, status, content_type, &body, p.close);
                    status
                }
                Reply::Dialect { kind, events, grant } if outcome == TickOutcome::Written => {
                    bump(&counters.events_accepted, u64::from(events));
                    let cors = grant.map(|g| (&dialects.cors, g));
                    answer::write_beacon(out, kind, p.minor_version, !p.close, cors);
                    if kind == BeaconKind::Gif {
                        200
                    } else {
                        204
                    }
                }
                // The tick's WAL write failed: nothing of it is stored.
                Reply::Beacon | Reply::Dialect { .. } => {
                    counters.count_rejection("wal_error");
                    response::write_503_retry(
                        out,
                        RETRY_AFTER_S,
                        "event not stored: WAL write failed, retry",
                        p.close,
                    );
                    503
                }
                Reply::Preflight(grant) => {
                    dialects.cors.write_preflight(grant, p.close, out);
                    204
                }
            };
            counters.count_response(status);
        }
    }

    /// Whether the buffer starts with a whole request, body included (or a framing error).
    fn has_complete_request(&mut self, limits: &request::Limits) -> bool {
        if self.read_buf.is_empty() {
            return false; // the common case after a turn: no request parsed at all
        }
        let req = match request::parse(&self.read_buf, limits) {
            Parsed::Partial => return false,
            Parsed::Invalid(_) => return true,
            Parsed::Complete(req) => req,
        };
        framing::is_complete(&req, &self.read_buf[req.head_len..], &mut self.dialect.body, limits)
    }

    async fn flush(&mut self, stream: &mut TcpStream) -> bool {
        let buf = std::mem::take(&mut self.write_buf);
        let (res, mut buf) = stream.write_all(buf).await;
        buf.clear();
        self.write_buf = buf;
        res.is_ok()
    }

    async fn read_more(&mut self, stream: &mut TcpStream, ctx: &ConnContext) -> ReadOutcome {
        let max = ctx.limits().max_header_bytes + ctx.limits().max_body_bytes;
        if self.read_buf.len() == self.read_buf.capacity() {
            let grow = self
                .read_buf
                .capacity()
                .max(INITIAL_READ_BYTES)
                .min(max.saturating_sub(self.read_buf.len()).max(1));
            self.read_buf.reserve(grow);
        }
        let now_ms = ctx.registry().now_ms();
        let deadline_ms = self.partial_since_ms.unwrap_or(now_ms).saturating_add(ctx.idle_timeout_ms());
        if deadline_ms <= now_ms || self.watch.expired() {
            return ReadOutcome::TimedOut;
        }
        let buf = std::mem::take(&mut self.read_buf);
        let len = buf.len();
        let cap = buf.capacity();
        self.watch.arm(deadline_ms);
        let (res, slice) = stream.read(buf.slice_mut(len..cap)).await;
        self.watch.disarm();
        self.read_buf = slice.into_inner();
        match res {
            // The sweep shut the read side: the deadline passed (bytes that raced it are
            // dropped with the connection).
            _ if self.watch.expired() => ReadOutcome::TimedOut,
            Ok(0) | Err(_) => ReadOutcome::Closed,
            Ok(_) => {
                self.reads = self.reads.wrapping_add(1);
                if self.reads.is_multiple_of(SAMPLE_EVERY_READS) {
                    self.read_done = Some(Instant::now());
                }
                if self.partial_since_ms.is_none() {
                    self.partial_since_ms = Some(ctx.registry().now_ms());
                }
                ReadOutcome::Data
            }
        }
    }
}
