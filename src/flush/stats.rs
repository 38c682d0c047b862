//! Counters the flusher shares with the metrics module. Plain data, no logic: the flusher
//! writes them (Relaxed is enough, each value is independent), the scraper reads them.
//!
//! Positions are stored packed ([`Position::pack`]) so each fits one `AtomicU64`.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Mutex;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::wal::Position;

/// What the flusher has done so far, shared read-only with the metrics.
#[derive(Debug)]
pub struct FlushStats {
    /// Rows committed to MySQL.
    pub events_flushed: AtomicU64,
    /// Transactions committed.
    pub batches: AtomicU64,
    /// Whether the last MySQL operation succeeded.
    pub mysql_up: AtomicBool,
    /// Unix ms when MySQL went down; 0 while it is up.
    pub mysql_down_since_unix_ms: AtomicU64,
    /// Unix ms of the last commit.
    pub last_flush_unix_ms: AtomicU64,
    /// Rows in the last commit.
    pub last_flush_rows: AtomicU64,
    /// Wall time of the last transaction, µs.
    pub last_flush_duration_us: AtomicU64,
    /// Events read from the WAL during the startup replay (`ingest_wal_replay_total`).
    pub wal_replay_total: AtomicU64,
    /// Set once the startup replay caught up with every core.
    pub replay_done: AtomicBool,
    /// Events read back from the WAL after the replay (queue was full or idle gap).
    pub wal_catchup_total: AtomicU64,
    /// Corrupt records found while delivering (`ingest_wal_corrupt_records_total`).
    pub corrupt_records: AtomicU64,
    /// Bytes of corrupt records copied to `<wal.dir>/quarantine/` and skipped.
    pub corrupt_bytes: AtomicU64,
    /// Gauge: bytes of WAL segments on disk, all cores. Core writers add what they write,
    /// compaction and quarantine subtract what they remove (see `crate::wal::budget`).
    pub wal_disk_bytes: AtomicU64,
    /// Per core: packed position durable in MySQL.
    pub committed: Vec<AtomicU64>,
    /// Per core: packed position up to which records are in the batch or committed.
    pub read: Vec<AtomicU64>,
    /// Seconds per transaction (domains + inserts + cursors + commit).
    pub flush_duration_seconds: Histogram,
    /// Rows per committed batch.
    pub batch_rows: Histogram,
    /// Per shard of the sink.
    pub shards: Vec<ShardStats>,
    /// Who holds this node's delivery lease instead of us (`/readyz`, `/stats`).
    pub lease_held_elsewhere_by: Mutex<Option<String>>,
}

/// One shard of the sink, as `/metrics` and `/stats` show it.
#[derive(Debug)]
pub struct ShardStats {
    /// The last step on this shard succeeded.
    pub up: AtomicBool,
    /// It takes deliveries (up, lease held, not backing off).
    pub ready: AtomicBool,
    /// Rows committed into it.
    pub rows: AtomicU64,
    /// Per running core: packed position committed into this shard (its lag is the WAL
    /// written past it).
    pub committed: Vec<AtomicU64>,
}

impl FlushStats {
    pub fn new(cores: usize, shards: usize) -> FlushStats {
        let positions = || (0..cores).map(|_| AtomicU64::new(Position::default().pack())).collect();
        FlushStats {
            events_flushed: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            mysql_up: AtomicBool::new(false),
            mysql_down_since_unix_ms: AtomicU64::new(0),
            last_flush_unix_ms: AtomicU64::new(0),
            last_flush_rows: AtomicU64::new(0),
            last_flush_duration_us: AtomicU64::new(0),
            wal_replay_total: AtomicU64::new(0),
            replay_done: AtomicBool::new(false),
            wal_catchup_total: AtomicU64::new(0),
            corrupt_records: AtomicU64::new(0),
            corrupt_bytes: AtomicU64::new(0),
            wal_disk_bytes: AtomicU64::new(0),
            committed: positions(),
            read: positions(),
            flush_duration_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            batch_rows: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            shards: (0..shards.max(1))
                .map(|_| ShardStats {
                    up: AtomicBool::new(false),
                    ready: AtomicBool::new(false),
                    rows: AtomicU64::new(0),
                    committed: positions(),
                })
                .collect(),
            lease_held_elsewhere_by: Mutex::new(None),
        }
    }
}
