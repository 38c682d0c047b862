//! What every connection of one core shares ([`ConnContext`]: the limits, the core's intake,
//! counters and connection registry) and how long one connection may serve ([`Lifetime`]).
//!
//! Invariants:
//! - one context per core, built once at the core's start and never shared across threads
//!   (`Rc`, `Cell`): a request never takes a lock;
//! - once [`ConnContext::start_draining`] is called it stays set: every later answer closes its
//!   connection and beacons are refused with 503;
//! - a connection past `http.max_requests_per_connection` requests or
//!   `http.max_connection_age_ms` of age gets `Connection: close` on its next answer, and the
//!   limit hit is counted once, on that answer.

use std::cell::Cell;
use std::sync::Arc;

use super::dialect::Dialects;
use super::idle::Registry;
use super::request;
use crate::config::Config;
use crate::ingest::intake::Intake;
use crate::metrics::CoreCounters;
use crate::observe::Observer;

/// What every connection of one core shares. Lives on that core only.
pub struct ConnContext {
    limits: request::Limits,
    idle_timeout_ms: u64,
    max_pipelined: usize,
    /// `http.max_requests_per_connection`, 0 = no limit.
    max_requests: u64,
    /// `http.max_connection_age_ms`, 0 = no limit.
    max_age_ms: u64,
    /// Where accepted events go (the core's open WAL tick).
    pub(super) intake: Intake,
    pub(super) counters: Arc<CoreCounters>,
    pub(super) observer: Arc<Observer>,
    /// Set when the core drains for shutdown: answer with `Connection: close`, take no more.
    draining: Cell<bool>,
    /// Pixels, POST bodies, CORS and client context.
    pub(super) dialects: Dialects,
    /// The core's open connections and their read deadlines.
    registry: Registry,
}

impl ConnContext {
    pub fn new(
        config: &Config,
        intake: Intake,
        counters: Arc<CoreCounters>,
        observer: Arc<Observer>,
    ) -> Self {
        Self {
            limits: request::Limits::from(&config.http),
            idle_timeout_ms: config.http.idle_timeout_ms,
            max_pipelined: config.http.max_pipelined_requests,
            max_requests: config.http.max_requests_per_connection,
            max_age_ms: config.http.max_connection_age_ms,
            intake,
            counters,
            observer,
            draining: Cell::new(false),
            dialects: Dialects::from_config(config),
            registry: Registry::default(),
        }
    }

    pub fn counters(&self) -> &CoreCounters {
        &self.counters
    }

    /// The core's open connections: the accept loop registers them, housekeeping sweeps them.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The request size limits (`http.max_*_bytes`, `http.max_headers`).
    pub(super) fn limits(&self) -> &request::Limits {
        &self.limits
    }

    /// `http.idle_timeout_ms`: how long a read may wait, and a partial request may take.
    pub(super) fn idle_timeout_ms(&self) -> u64 {
        self.idle_timeout_ms
    }

    /// `http.max_pipelined_requests`: how many buffered requests one turn answers.
    pub(super) fn max_pipelined(&self) -> usize {
        self.max_pipelined
    }

    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// From now on every answer closes its connection and events are refused with 503.
    pub fn start_draining(&self) {
        self.draining.set(true);
    }
}

/// How long a connection has served, for `http.max_requests_per_connection` and
/// `http.max_connection_age_ms`.
pub(super) struct Lifetime {
    requests: u64,
    /// Unix ms of the accept.
    opened_at_ms: u64,
}

impl Lifetime {
    pub(super) fn new(opened_at_ms: u64) -> Lifetime {
        Lifetime { requests: 0, opened_at_ms }
    }

    /// Counts one more request; false once it reaches a connection limit (its answer then
    /// closes the connection), counting the limit hit.
    pub(super) fn may_continue(&mut self, now_ms: u64, ctx: &ConnContext) -> bool {
        self.requests += 1;
        if ctx.max_requests != 0 && self.requests >= ctx.max_requests {
            ctx.counters.count_limit_hit("connection_requests");
            return false;
        }
        if ctx.max_age_ms != 0 && now_ms.saturating_sub(self.opened_at_ms) >= ctx.max_age_ms {
            ctx.counters.count_limit_hit("connection_age");
            return false;
        }
        true
    }
}
