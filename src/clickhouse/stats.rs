//! What one ClickHouse sink (one shard) counts, for `/metrics` and `/stats`.
//!
//! Written by the flusher thread, read by any thread: independent Relaxed atomics behind
//! methods; [`ClickhouseStats::snapshot`] copies them out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Counters of one sink (all its connections).
#[derive(Debug, Default)]
pub struct ClickhouseStats {
    connects: AtomicU64,
    blocks: AtomicU64,
    rows: AtomicU64,
    rollup_rows: AtomicU64,
    block_bytes: AtomicU64,
    steps: AtomicU64,
    probes: AtomicU64,
    fenced: AtomicU64,
    in_doubt: AtomicU64,
    refused: AtomicU64,
    rejected_rows: AtomicU64,
    schema_errors: AtomicU64,
    /// `version()` of the server at the last connect.
    server_version: Mutex<String>,
}

/// A copy of the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClickhouseSnapshot {
    /// Successful connects (each runs the schema DDL and reads the version).
    pub connects: u64,
    /// `events` blocks committed.
    pub blocks: u64,
    /// `events` rows committed.
    pub rows: u64,
    /// Rollup count rows committed (markers not counted).
    pub rollup_rows: u64,
    /// Bytes of committed `events` blocks (Native encoding).
    pub block_bytes: u64,
    /// `ingest_cursors` rows written.
    pub steps: u64,
    /// Probes of a step's last row (a cursor read that was not already known).
    pub probes: u64,
    /// Deliveries fenced: the lane's cursor in the sink was not the batch's start.
    pub fenced: u64,
    /// Writes whose outcome was unknown.
    pub in_doubt: u64,
    /// `events` blocks refused by the server.
    pub refused: u64,
    /// Rows written to `ingest_rejects`.
    pub rejected_rows: u64,
    /// Failures because a table does not fit our statements; an operator has to look.
    pub schema_errors: u64,
    pub server_version: String,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl ClickhouseStats {
    pub fn connected(&self, version: &str) {
        add(&self.connects, 1);
        let mut v = self.server_version.lock().unwrap_or_else(|p| p.into_inner());
        version.clone_into(&mut v);
    }

    pub fn block_committed(&self, rows: usize, bytes: usize) {
        add(&self.blocks, 1);
        add(&self.rows, rows as u64);
        add(&self.block_bytes, bytes as u64);
    }

    pub fn rollup_committed(&self, rows: usize) {
        add(&self.rollup_rows, rows as u64);
    }

    pub fn steps_written(&self, n: usize) {
        add(&self.steps, n as u64);
    }

    pub fn probed(&self) {
        add(&self.probes, 1);
    }

    pub fn fenced(&self) {
        add(&self.fenced, 1);
    }

    pub fn in_doubt(&self) {
        add(&self.in_doubt, 1);
    }

    pub fn refused(&self) {
        add(&self.refused, 1);
    }

    pub fn rejected(&self, rows: usize) {
        add(&self.rejected_rows, rows as u64);
    }

    pub fn schema_error(&self) {
        add(&self.schema_errors, 1);
    }

    pub fn snapshot(&self) -> ClickhouseSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ClickhouseSnapshot {
            connects: get(&self.connects),
            blocks: get(&self.blocks),
            rows: get(&self.rows),
            rollup_rows: get(&self.rollup_rows),
            block_bytes: get(&self.block_bytes),
            steps: get(&self.steps),
            probes: get(&self.probes),
            fenced: get(&self.fenced),
            in_doubt: get(&self.in_doubt),
            refused: get(&self.refused),
            rejected_rows: get(&self.rejected_rows),
            schema_errors: get(&self.schema_errors),
            server_version: self.server_version.lock().map(|v| v.clone()).unwrap_or_default(),
        }
    }
}
