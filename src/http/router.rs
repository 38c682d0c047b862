//! Routing of one complete request to what answers it: beacons in every dialect go to the
//! core's intake (`crate::ingest::intake`), the operator endpoints to `crate::observe`
//! (`/debug/geoip` to the core's GeoIP reader, `crate::ingest::geoip`).
//! No IO and no await here: `conn` waits for the tick and renders the [`Reply`].
//!
//! Invariants:
//! - a beacon is refused (503) before validation while the core drains or its WAL refuses, so
//!   a refused event costs little and nothing of it is stored;
//! - a `Reply::Beacon` or `Reply::Dialect` is returned only together with the ticket of the
//!   tick its records went into.

use super::answer::BeaconKind;
use super::context::ConnContext;
use super::cors::Grant;
use super::dialect::{self, DialectScratch, Outcome};
use super::request::{Method, Request};
use crate::ingest::intake::Accepted;
use crate::ingest::QueryScratch;
use crate::metrics::CoreCounters;
use crate::observe::Observer;
use crate::wal::group::Ticket;

/// The answer to one request, rendered once the WAL outcome of its tick is known.
pub(super) enum Reply {
    /// A beacon whose record is in the open tick: 204 if the tick is written, else 503.
    Beacon,
    /// A valid event from a bot, dropped (`ingest.drop_bots`): 204, nothing stored.
    DroppedBot,
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

/// A connection's state for the request being routed.
pub(super) struct Turn<'t> {
    /// The receive time stamped on events (one clock read per batch of pipelined requests).
    pub now_ms: u64,
    pub query: &'t mut QueryScratch,
    /// The request's body, if any, is in `dialect.body`.
    pub dialect: &'t mut DialectScratch,
    /// Set to the open tick's ticket once a request of this batch appended to it.
    pub ticket: &'t mut Option<Ticket>,
}

/// Dispatches one complete request. Beacons go to the intake here.
pub(super) fn route(req: &Request<'_>, ctx: &ConnContext, turn: Turn<'_>) -> Reply {
    match req.path {
        "/log" => match req.method {
            Method::Get => beacon(req, ctx, turn, BeaconKind::NoContent),
            Method::Post => post_beacon(req, ctx, turn),
            Method::Options => {
                dialect_reply(dialect::preflight(req, &ctx.dialects), &ctx.counters, turn.ticket)
            }
            _ => Reply::MethodNotAllowed { allow: "GET, POST, OPTIONS" },
        },
        "/log.gif" | "/pixel.gif" => match req.method {
            Method::Get => beacon(req, ctx, turn, BeaconKind::Gif),
            Method::Options => {
                dialect_reply(dialect::preflight(req, &ctx.dialects), &ctx.counters, turn.ticket)
            }
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
            Method::Get | Method::Head => observe_reply(req, &ctx.observer),
            _ => Reply::MethodNotAllowed { allow: "GET, HEAD" },
        },
        "/debug/geoip" => match req.method {
            Method::Get | Method::Head => geoip_reply(ctx),
            _ => Reply::MethodNotAllowed { allow: "GET, HEAD" },
        },
        _ => Reply::Error { status: 404, reason: "not found" },
    }
}

/// The operator endpoints (see `crate::observe`); they allocate, they are not the hot path.
fn observe_reply(req: &Request<'_>, observer: &Observer) -> Reply {
    use crate::observe::{exposition, report};
    let json = "application/json";
    match req.path {
        "/readyz" => {
            let (status, body) = observer.readiness();
            Reply::Body { status, content_type: json, body }
        }
        "/metrics" => {
            let (content_type, body) = exposition::metrics_reply(observer, req.query, req.accept);
            Reply::Body { status: 200, content_type, body }
        }
        "/stats" => Reply::Body { status: 200, content_type: json, body: report::stats_json(observer) },
        _ => Reply::Body { status: 200, content_type: json, body: report::domain_cache_json(observer) },
    }
}

/// `/debug/geoip`: the loaded database (path, type, build date, load time, size), its reloads
/// and the last reload error; `{"enabled":false}` without `enrich.geoip_db`.
fn geoip_reply(ctx: &ConnContext) -> Reply {
    let body = match ctx.dialects.geoip_status() {
        Some(status) => serde_json::to_vec(&serde_json::json!({ "enabled": true, "database": status })),
        None => serde_json::to_vec(&serde_json::json!({ "enabled": false })),
    };
    // Serialising plain strings and numbers cannot fail; an empty body would say so anyway.
    Reply::Body { status: 200, content_type: "application/json", body: body.unwrap_or_default() }
}

fn beacon(req: &Request<'_>, ctx: &ConnContext, turn: Turn<'_>, kind: BeaconKind) -> Reply {
    if let Some(refusal) = refuse_events(ctx) {
        return refusal;
    }
    let Turn { now_ms, query, dialect, ticket } = turn;
    let accepted = ctx.intake.accept_query(req.query, now_ms, query, req.user_agent, move || {
        dialect::client_context(req, &ctx.dialects, dialect)
    });
    match accepted {
        Ok(Accepted::Bot) => {
            ctx.counters.count_rejection("bot");
            Reply::DroppedBot
        }
        Ok(Accepted::Stored(appended)) => {
            *ticket = Some(appended);
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
    if ctx.is_draining() {
        ctx.counters.count_rejection("shutting_down");
        return Some(Reply::Unavailable { reason: "shutting down, retry on another node" });
    }
    if ctx.intake.is_refusing() {
        ctx.counters.count_rejection("wal_full");
        return Some(Reply::Unavailable { reason: "event not stored: WAL disk budget used up, retry" });
    }
    None
}

fn post_beacon(req: &Request<'_>, ctx: &ConnContext, turn: Turn<'_>) -> Reply {
    if let Some(refusal) = refuse_events(ctx) {
        return refusal;
    }
    let outcome = dialect::post_beacon(req, turn.now_ms, &ctx.intake, &ctx.dialects, turn.dialect);
    dialect_reply(outcome, &ctx.counters, turn.ticket)
}

fn dialect_reply(outcome: Outcome, counters: &CoreCounters, ticket: &mut Option<Ticket>) -> Reply {
    match outcome {
        Outcome::Accepted { kind, events, grant, ticket: appended } => {
            *ticket = Some(appended);
            Reply::Dialect { kind, events, grant }
        }
        Outcome::Preflight(grant) => Reply::Preflight(grant),
        Outcome::DroppedBot => {
            counters.count_rejection("bot");
            Reply::DroppedBot
        }
        Outcome::Rejected { status, mut message, label } => {
            counters.count_rejection(label);
            message.push('\n');
            Reply::Body { status, content_type: "text/plain; charset=utf-8", body: message.into_bytes() }
        }
    }
}
