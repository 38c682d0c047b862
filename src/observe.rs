//! What operators see: `/healthz`, `/readyz`, `/metrics`, `/stats` and `/debug/domain-cache`.
//!
//! The observer only reads: per-core counters and progress (each written by its own core),
//! the flusher's [`FlushStats`], the MySQL sink's [`MysqlStats`], the queue depth and a cached listing of the WAL directory.
//! It is shared by all cores through an `Arc` and never touched on the per-request path; a
//! scrape is answered on whichever core received it, so everything here is cheap and bounded:
//! the only IO is the WAL listing, at most once per [`wal_usage::LISTING_MAX_AGE`], plus
//! `/proc/self` reads for the process metrics.
//!
//! - [`health`](Observer::health): 200 unless a core stopped heartbeating (a wedged loop).
//! - [`readiness`](Observer::readiness): 200 while events can be accepted; stays 200 while
//!   MySQL is down (the WAL takes the traffic), 503 while draining or a core's WAL refuses.
//! - [`exposition`]: the Prometheus/OpenMetrics text; [`report`]: the JSON documents.

mod clickhouse_metrics;
mod encode;
pub mod exposition;
mod mysql_metrics;
pub mod negotiate;
mod process;
pub mod report;
pub mod wal_usage;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::clickhouse::ClickhouseStats;
use crate::flush::stats::FlushStats;
use crate::metrics::CoreCounters;
use crate::mysql::MysqlStats;
use crate::queue::CoreProgress;

/// A core whose heartbeat is older than this is reported as wedged by /healthz.
pub const HEARTBEAT_STALE_MS: u64 = 5_000;

/// Everything the observer reads, handed over by the server at start.
pub struct ObserverInputs {
    pub cores: Vec<Arc<CoreCounters>>,
    /// Per core: end of the last completed WAL write.
    pub progress: Vec<Arc<CoreProgress>>,
    pub flush: Arc<FlushStats>,
    /// The MySQL sink's domain cache, statement limit and dead letters.
    pub mysql: Arc<MysqlStats>,
    /// The ClickHouse sink's counters (all shards), when `sink.kind = "clickhouse"`.
    pub clickhouse: Option<Arc<ClickhouseStats>>,
    /// Events in the core → flusher queue right now.
    pub queue_depth: Arc<AtomicUsize>,
    pub queue_capacity: usize,
    pub wal_dir: PathBuf,
    pub node_id: String,
}

/// The inputs (reached through `Deref`) and what the observer keeps of its own.
pub struct Observer {
    inputs: ObserverInputs,
    pub started: Instant,
    /// Set once the process starts draining for shutdown.
    pub draining: AtomicBool,
    /// Last WAL directory listing, reused while fresh so scrapes stay cheap.
    wal_usage: Mutex<Option<wal_usage::WalUsage>>,
    /// Flushed-row count at the previous drain-rate sample, for `/stats`.
    drain_sample: Mutex<report::DrainSample>,
}

/// Why `/readyz` says no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    Draining,
    CoreWedged {
        core: usize,
    },
    WalRefusing {
        core: usize,
    },
    /// Another live process with this node id holds the delivery lease: events are taken
    /// into the WAL but not delivered until it is released.
    LeaseHeldElsewhere {
        holder: String,
    },
}

impl std::ops::Deref for Observer {
    type Target = ObserverInputs;

    fn deref(&self) -> &ObserverInputs {
        &self.inputs
    }
}

impl Observer {
    pub fn new(inputs: ObserverInputs) -> Self {
        Self {
            inputs,
            started: Instant::now(),
            draining: AtomicBool::new(false),
            wal_usage: Mutex::new(None),
            drain_sample: Mutex::new(report::DrainSample::default()),
        }
    }

    /// `/healthz`: 200 unless a core loop stopped heartbeating.
    pub fn health(&self) -> (u16, Vec<u8>) {
        match self.wedged_core() {
            None => (200, b"{\"status\":\"ok\"}\n".to_vec()),
            Some(core) => (503, format!("{{\"status\":\"wedged\",\"core\":{core}}}\n").into_bytes()),
        }
    }

    fn wedged_core(&self) -> Option<usize> {
        let now = crate::clock::unix_ms();
        self.cores.iter().position(|c| {
            now.saturating_sub(c.heartbeat_unix_ms.load(Ordering::Relaxed)) > HEARTBEAT_STALE_MS
        })
    }

    /// Whether new events can be accepted, and if not, why. MySQL is deliberately not
    /// consulted: while it is down the WAL takes the traffic.
    pub fn not_ready(&self) -> Option<NotReady> {
        if self.draining.load(Ordering::Acquire) {
            return Some(NotReady::Draining);
        }
        if let Some(core) = self.cores.iter().position(|c| c.wal_refusing.load(Ordering::Relaxed)) {
            return Some(NotReady::WalRefusing { core });
        }
        if let Some(core) = self.wedged_core() {
            return Some(NotReady::CoreWedged { core });
        }
        let holder = self.flush.lease_held_elsewhere_by.lock().ok().and_then(|h| h.clone());
        holder.map(|holder| NotReady::LeaseHeldElsewhere { holder })
    }

    /// `/readyz`: one line of JSON saying why.
    pub fn readiness(&self) -> (u16, Vec<u8>) {
        let mysql_up = self.flush.mysql_up.load(Ordering::Relaxed);
        let body = match self.not_ready() {
            None => serde_json::json!({"status": "ready", "mysql_up": mysql_up}),
            Some(NotReady::Draining) => {
                serde_json::json!({"status": "not_ready", "reason": "draining"})
            }
            Some(NotReady::WalRefusing { core }) => {
                serde_json::json!({"status": "not_ready", "reason": "wal_refusing", "core": core})
            }
            Some(NotReady::CoreWedged { core }) => {
                serde_json::json!({"status": "not_ready", "reason": "core_wedged", "core": core})
            }
            Some(NotReady::LeaseHeldElsewhere { holder }) => {
                serde_json::json!({"status": "not_ready", "reason": "lease_held_elsewhere", "holder": holder})
            }
        };
        let status = if body["status"] == "ready" { 200 } else { 503 };
        (status, json_line(&body))
    }

    /// The WAL listing, re-read when older than [`wal_usage::LISTING_MAX_AGE`].
    pub fn wal_usage(&self) -> wal_usage::WalUsage {
        let mut cached = match self.wal_usage.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match cached.as_ref() {
            Some(usage) if usage.taken.elapsed() < wal_usage::LISTING_MAX_AGE => usage.clone(),
            _ => {
                let fresh = wal_usage::WalUsage::scan(&self.wal_dir, self.cores.len());
                *cached = Some(fresh.clone());
                fresh
            }
        }
    }
}

/// Serialises `value` as one line ending in `\n`.
pub(crate) fn json_line(value: &serde_json::Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    out.push(b'\n');
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An observer over `cores` fresh cores and an empty WAL directory.
    pub(crate) fn observer(cores: usize, wal_dir: PathBuf) -> Observer {
        let counters: Vec<Arc<CoreCounters>> = (0..cores).map(|_| Arc::default()).collect();
        let now = crate::clock::unix_ms();
        for c in &counters {
            c.heartbeat_unix_ms.store(now, Ordering::Relaxed);
        }
        Observer::new(ObserverInputs {
            cores: counters,
            progress: (0..cores).map(|_| Arc::default()).collect(),
            flush: Arc::new(FlushStats::new(cores, 1)),
            mysql: Arc::default(),
            clickhouse: None,
            queue_depth: Arc::default(),
            queue_capacity: 100,
            wal_dir,
            node_id: "test-node".into(),
        })
    }

    #[test]
    fn ready_while_mysql_down_not_ready_when_draining_or_wal_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let obs = observer(2, dir.path().to_owned());
        obs.flush.mysql_up.store(false, Ordering::Relaxed);
        let (status, body) = obs.readiness();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert!(body.ends_with(b"}\n"));

        obs.cores[1].wal_refusing.store(true, Ordering::Relaxed);
        let (status, body) = obs.readiness();
        assert_eq!(status, 503);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["reason"], "wal_refusing");
        assert_eq!(v["core"], 1);

        obs.draining.store(true, Ordering::Release);
        assert_eq!(obs.not_ready(), Some(NotReady::Draining));
    }

    #[test]
    fn stale_heartbeat_fails_health_and_readiness() {
        let dir = tempfile::tempdir().unwrap();
        let obs = observer(1, dir.path().to_owned());
        assert_eq!(obs.health().0, 200);
        obs.cores[0].heartbeat_unix_ms.store(1, Ordering::Relaxed);
        assert_eq!(obs.health().0, 503);
        assert_eq!(obs.not_ready(), Some(NotReady::CoreWedged { core: 0 }));
    }
}
