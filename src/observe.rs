//! What operators see: health now; readiness, metrics and stats build on the same state.
//!
//! The observer only reads: per-core counters (summed at scrape time) and heartbeats. It is
//! shared by all cores through an `Arc` and never touched on the per-request path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::metrics::CoreCounters;

/// A core whose heartbeat is older than this is reported as wedged by /healthz.
pub const HEARTBEAT_STALE_MS: u64 = 5_000;

pub struct Observer {
    pub cores: Vec<Arc<CoreCounters>>,
    pub started: Instant,
    /// Set once the process starts draining for shutdown.
    pub draining: AtomicBool,
}

impl Observer {
    pub fn new(cores: Vec<Arc<CoreCounters>>) -> Self {
        Self { cores, started: Instant::now(), draining: AtomicBool::new(false) }
    }

    /// `/healthz`: 200 unless a core loop stopped heartbeating.
    pub fn health(&self) -> (u16, Vec<u8>) {
        let now = crate::http::conn::unix_ms();
        let wedged = self.cores.iter().position(|c| {
            now.saturating_sub(c.heartbeat_unix_ms.load(Ordering::Relaxed)) > HEARTBEAT_STALE_MS
        });
        match wedged {
            None => (200, b"{\"status\":\"ok\"}\n".to_vec()),
            Some(core) => (503, format!("{{\"status\":\"wedged\",\"core\":{core}}}\n").into_bytes()),
        }
    }
}
