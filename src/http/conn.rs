//! One client connection on one core: read → parse every complete request in the buffer →
//! route → append accepted events to the core's open WAL tick → wait for that tick's write →
//! answer all of them with one socket write.
//!
//! Invariants:
//! - a beacon is answered 2xx only after its tick's WAL write succeeded; if it failed, 503;
//! - responses leave in request order, one `write` per batch of pipelined requests;
//! - the read buffer only grows up to `max_header_bytes + max_body_bytes` and is reused for
//!   the whole connection; once warm, a request allocates nothing;
//! - a framing error (bad bytes, a limit hit) closes this connection and touches nothing else;
//! - a partial request must complete within `idle_timeout_ms` of its first byte (no slowloris).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::answer::{self, BeaconKind};
use super::chunked::{self, Dechunk};
use super::cors::Grant;
use super::dialect::{self, DialectScratch, Dialects, Outcome};
use super::request::{self, Body, Method, Parsed, Request};
use super::response;
use crate::ingest::{self, QueryScratch, Rules};
use crate::metrics::{bump, CoreCounters};
use crate::observe::Observer;
use crate::wal;
use crate::wal::group::{GroupCommit, TickOutcome};

/// Smallest read buffer a connection starts with.
const INITIAL_READ_BYTES: usize = 4096;
/// `Retry-After` sent with 503s, in seconds.
const RETRY_AFTER_S: u32 = 1;

/// What every connection of one core shares. Lives on that core only.
pub struct ConnContext {
    pub limits: request::Limits,
    pub idle_timeout: Duration,
    pub max_pipelined: usize,
    pub rules: Rules,
    pub group: GroupCommit,
    pub counters: Arc<CoreCounters>,
    pub observer: Arc<Observer>,
    /// Set when the process drains for shutdown: answer with `Connection: close`, take no more.
    pub draining: Cell<bool>,
    /// Set while the WAL disk budget is used up (`crate::wal::budget`): `/log` answers 503.
    pub wal_full: Cell<bool>,
    /// Pixels, POST bodies, CORS and client context.
    pub dialects: Dialects,
}

/// The answer to one request, rendered once the WAL outcome of its tick is known.
enum Reply {
    /// A beacon whose record is in the open tick: 204 if the tick is written, else 503.
    Beacon,
    Error {
        status: u16,
        reason: &'static str,
    },
    Unavailable {
        reason: &'static str,
    },
    MethodNotAllowed {
        allow: &'static str,
    },
    Body {
        status: u16,
        content_type: &'static str,
        body: Vec<u8>,
    },
    /// `events` records in the open tick, answered in `kind` with CORS headers for `grant`.
    Dialect {
        kind: BeaconKind,
        events: u32,
        grant: Option<Grant>,
    },
    Preflight(Grant),
}

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
    partial_since: Option<Instant>,
}

/// Serves one accepted connection until it closes.
pub async fn serve(mut stream: TcpStream, peer: std::net::SocketAddr, ctx: Rc<ConnContext>) {
    let mut conn = Connection {
        read_buf: Vec::with_capacity(INITIAL_READ_BYTES),
        write_buf: Vec::with_capacity(1024),
        pending: Vec::with_capacity(16),
        scratch: QueryScratch::default(),
        dialect: DialectScratch::new(peer.ip()),
        partial_since: None,
    };
    loop {
        let close = conn.answer_buffered(&ctx).await;
        if !conn.write_buf.is_empty() && !conn.flush(&mut stream).await {
            return;
        }
        if close {
            return;
        }
        if conn.has_complete_request(&ctx.limits) {
            continue; // more pipelined requests than one turn answers
        }
        if ctx.draining.get() && conn.read_buf.is_empty() {
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
        if ctx.group.is_full() {
            ctx.group.room().await;
        }
        let now_ms = crate::clock::unix_ms(); // the receive time stamped on events
        let mut consumed = 0;
        let mut close = false;
        let mut appended = false;
        self.pending.clear();
        while self.pending.len() < ctx.max_pipelined && consumed < self.read_buf.len() {
            let req = match request::parse(&self.read_buf[consumed..], &ctx.limits) {
                Parsed::Partial => break,
                Parsed::Invalid(err) => {
                    ctx.counters.count_limit_hit(err.label());
                    let reply = Reply::Error { status: err.status(), reason: err.reason() };
                    self.pending.push(Pending { reply, close: true, minor_version: 1 });
                    close = true;
                    consumed = self.read_buf.len();
                    break;
                }
                Parsed::Complete(req) => req,
            };
            let after_head = consumed + req.head_len;
            let body_len = match req.body {
                Body::None => 0,
                Body::Length(n) => {
                    let Some(body) = self.read_buf.get(after_head..after_head + n) else {
                        break; // the body is still on its way
                    };
                    self.dialect.body.clear();
                    self.dialect.body.extend_from_slice(body);
                    n
                }
                Body::Chunked => {
                    let max = ctx.limits.max_body_bytes;
                    match chunked::dechunk(&self.read_buf[after_head..], max, &mut self.dialect.body) {
                        Dechunk::Complete { wire_len } => wire_len,
                        Dechunk::Partial => break,
                        failed @ (Dechunk::TooLarge | Dechunk::Malformed) => {
                            let (status, reason) = chunk_error(&ctx.counters, failed);
                            self.pending.push(Pending {
                                reply: Reply::Error { status, reason },
                                close: true,
                                minor_version: 1,
                            });
                            close = true;
                            consumed = self.read_buf.len();
                            break;
                        }
                    }
                }
            };
            let request_len = req.head_len + body_len;
            let keep_alive = req.keep_alive && !ctx.draining.get();
            let reply = route(&req, now_ms, ctx, &mut self.scratch, &mut self.dialect, &mut appended);
            self.pending.push(Pending { reply, close: !keep_alive, minor_version: req.minor_version });
            consumed += request_len;
            if !keep_alive {
                close = true;
                break;
            }
        }
        self.read_buf.drain(..consumed);
        self.partial_since =
            (!self.read_buf.is_empty()).then(|| self.partial_since.unwrap_or_else(Instant::now));
        let outcome = if appended { ctx.group.ticket().wait().await } else { TickOutcome::Written };
        self.render(outcome, &ctx.counters, &ctx.dialects);
        close
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
        let req = match request::parse(&self.read_buf, limits) {
            _ if self.read_buf.is_empty() => return false,
            Parsed::Partial => return false,
            Parsed::Invalid(_) => return true,
            Parsed::Complete(req) => req,
        };
        let rest = &self.read_buf[req.head_len..];
        match req.body {
            Body::None => true,
            Body::Length(n) => rest.len() >= n,
            Body::Chunked => !matches!(
                chunked::dechunk(rest, limits.max_body_bytes, &mut self.dialect.body),
                Dechunk::Partial
            ),
        }
    }

    async fn flush(&mut self, stream: &mut TcpStream) -> bool {
        let buf = std::mem::take(&mut self.write_buf);
        let (res, mut buf) = stream.write_all(buf).await;
        buf.clear();
        self.write_buf = buf;
        res.is_ok()
    }

    async fn read_more(&mut self, stream: &mut TcpStream, ctx: &ConnContext) -> ReadOutcome {
        let max = ctx.limits.max_header_bytes + ctx.limits.max_body_bytes;
        if self.read_buf.len() == self.read_buf.capacity() {
            let grow = self
                .read_buf
                .capacity()
                .max(INITIAL_READ_BYTES)
                .min(max.saturating_sub(self.read_buf.len()).max(1));
            self.read_buf.reserve(grow);
        }
        let deadline = self.partial_since.unwrap_or_else(Instant::now) + ctx.idle_timeout;
        let Some(wait) = deadline.checked_duration_since(Instant::now()) else {
            return ReadOutcome::TimedOut;
        };
        let buf = std::mem::take(&mut self.read_buf);
        let len = buf.len();
        let cap = buf.capacity();
        let read = stream.read(buf.slice_mut(len..cap));
        let (res, slice) = match monoio::time::timeout(wait, read).await {
            Ok(done) => done,
            // The dropped read is cancelled by the runtime; this connection is closing anyway.
            Err(_) => return ReadOutcome::TimedOut,
        };
        self.read_buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => ReadOutcome::Closed,
            Ok(_) => {
                if self.partial_since.is_none() {
                    self.partial_since = Some(Instant::now());
                }
                ReadOutcome::Data
            }
        }
    }
}

/// Dispatches one complete request (its body, if any, in `dialect.body`). Beacons are
/// appended to the open WAL tick here.
fn route(
    req: &Request<'_>,
    now_ms: u64,
    ctx: &ConnContext,
    scratch: &mut QueryScratch,
    dialect: &mut DialectScratch,
    appended: &mut bool,
) -> Reply {
    match req.path {
        "/log" => match req.method {
            Method::Get => beacon(req, now_ms, ctx, scratch, dialect, appended, BeaconKind::NoContent),
            Method::Post => post_beacon(req, now_ms, ctx, dialect, appended),
            Method::Options => dialect_reply(dialect::preflight(req, &ctx.dialects), &ctx.counters),
            _ => Reply::MethodNotAllowed { allow: "GET, POST, OPTIONS" },
        },
        "/log.gif" | "/pixel.gif" => match req.method {
            Method::Get => beacon(req, now_ms, ctx, scratch, dialect, appended, BeaconKind::Gif),
            Method::Options => dialect_reply(dialect::preflight(req, &ctx.dialects), &ctx.counters),
            _ => Reply::MethodNotAllowed { allow: "GET, OPTIONS" },
        },
        "/healthz" | "/livez" => match req.method {
            Method::Get | Method::Head => {
                let (status, body) = ctx.observer.health();
                Reply::Body { status, content_type: "application/json", body }
            }
            _ => Reply::MethodNotAllowed { allow: "GET, HEAD" },
        },
        "/readyz" | "/metrics" | "/stats" | "/debug/domain-cache" => match req.method {
            Method::Get | Method::Head => observe_reply(req.path, req.query, &ctx.observer),
            _ => Reply::MethodNotAllowed { allow: "GET, HEAD" },
        },
        _ => Reply::Error { status: 404, reason: "not found" },
    }
}

/// The operator endpoints (see `crate::observe`); they allocate, they are not the hot path.
fn observe_reply(path: &str, query: &str, observer: &Observer) -> Reply {
    use crate::observe::{exposition, report};
    let json = "application/json";
    match path {
        "/readyz" => {
            let (status, body) = observer.readiness();
            Reply::Body { status, content_type: json, body }
        }
        "/metrics" => {
            let (content_type, body) = exposition::metrics_reply(observer, query);
            Reply::Body { status: 200, content_type, body }
        }
        "/stats" => Reply::Body { status: 200, content_type: json, body: report::stats_json(observer) },
        _ => Reply::Body { status: 200, content_type: json, body: report::domain_cache_json(observer) },
    }
}

fn beacon(
    req: &Request<'_>,
    now_ms: u64,
    ctx: &ConnContext,
    scratch: &mut QueryScratch,
    dialect: &mut DialectScratch,
    appended: &mut bool,
    kind: BeaconKind,
) -> Reply {
    if let Some(refusal) = refuse_events(ctx) {
        return refusal;
    }
    match ingest::parse_beacon(req.query, now_ms, &ctx.rules, scratch) {
        Ok(ingest::Beacon { event, event_id }) => {
            let context = dialect::client_context(req, &ctx.dialects, dialect);
            let context = wal::record::Context { event_id, ..context };
            ctx.group.append_with_context(&event, &context);
            *appended = true;
            // Fast path: a plain `/log` without `Origin` is the static 204.
            match (kind, req.origin) {
                (BeaconKind::NoContent, None) => Reply::Beacon,
                _ => Reply::Dialect { kind, events: 1, grant: dialect::grant(req, &ctx.dialects) },
            }
        }
        Err(rejection) => {
            ctx.counters.count_rejection(rejection.label());
            Reply::Error { status: 400, reason: rejection.reason() }
        }
    }
}

/// 503 (with `Retry-After`) when this core cannot take events now: draining for shutdown, or
/// the WAL disk budget is used up. Checked before validation, so a refused event costs little.
fn refuse_events(ctx: &ConnContext) -> Option<Reply> {
    if ctx.draining.get() {
        ctx.counters.count_rejection("shutting_down");
        return Some(Reply::Unavailable { reason: "shutting down, retry on another node" });
    }
    if ctx.wal_full.get() {
        ctx.counters.count_rejection("wal_full");
        return Some(Reply::Unavailable { reason: "event not stored: WAL disk budget used up, retry" });
    }
    None
}

fn post_beacon(
    req: &Request<'_>,
    now_ms: u64,
    ctx: &ConnContext,
    dialect: &mut DialectScratch,
    appended: &mut bool,
) -> Reply {
    if let Some(refusal) = refuse_events(ctx) {
        return refusal;
    }
    let outcome = dialect::post_beacon(req, now_ms, &ctx.rules, &ctx.group, &ctx.dialects, dialect);
    if matches!(outcome, Outcome::Accepted { .. }) {
        *appended = true;
    }
    dialect_reply(outcome, &ctx.counters)
}

fn dialect_reply(outcome: Outcome, counters: &CoreCounters) -> Reply {
    match outcome {
        Outcome::Accepted { kind, events, grant } => Reply::Dialect { kind, events, grant },
        Outcome::Preflight(grant) => Reply::Preflight(grant),
        Outcome::Rejected { status, mut message, label } => {
            counters.count_rejection(label);
            message.push('\n');
            Reply::Body { status, content_type: "text/plain; charset=utf-8", body: message.into_bytes() }
        }
    }
}

/// Status and reason for a chunked body that cannot be read, counting the limit hit.
fn chunk_error(counters: &CoreCounters, failed: Dechunk) -> (u16, &'static str) {
    if failed == Dechunk::TooLarge {
        counters.count_limit_hit("body_bytes");
        (413, "chunked body exceeds http.max_body_bytes")
    } else {
        counters.count_limit_hit("malformed");
        (400, "malformed chunked body")
    }
}
