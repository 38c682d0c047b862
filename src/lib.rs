//! # player-stat-collector
//!
//! A beacon collector: `GET /log?event=play&domain=piratka.biz&file_id=109454` in, one row in
//! MySQL out, exactly once, with every accepted event durable in a write-ahead log before the
//! client sees its `204`.
//!
//! ## Data flow, stage by stage
//! ```text
//!  core thread N (monoio, pinned, own SO_REUSEPORT listener)            flusher thread (tokio)
//!  ┌──────────────────────────────────────────────────────────┐        ┌─────────────────────────┐
//!  │ http::conn  read → http::request (httparse, no IO)        │        │ flush: drain queue,     │
//!  │   → http::router → ingest::intake (validate, append to    │ queue  │  catch up from the WAL  │
//!  │   the open tick: wal::group) → wal::tick_writer (one      │──────▶ │  → mysql (one txn: rows │
//!  │   io_uring write per tick) → ack 2xx once it completed    │ chunks │  + cursors) → cursor    │
//!  └──────────────────────────────────────────────────────────┘        │  (commit.meta) → compact│
//!                                                                       └─────────────────────────┘
//! ```
//!
//! ## Invariants
//! - A request is acknowledged with a 2xx only after its record's WAL write completed.
//! - Nothing invalid reaches the WAL: validation happens before encoding.
//! - The WAL is the source of truth; the queue only saves the flusher a read. A core never
//!   blocks on the queue and never drops: a chunk that does not fit is simply not sent, and
//!   the flusher reads it back from the WAL (it notices the gap in positions).
//! - A cursor never passes a record that MySQL has not committed; a segment is deleted only
//!   when it lies wholly behind a cursor that is durable in `commit.meta`.
pub mod clickhouse;
pub mod clock;
pub mod compact;
pub mod config;
pub mod country;
pub mod cursor;
pub mod event_id;
pub mod failpoint;
pub mod flush;
pub mod http;
pub mod ingest;
pub mod invalid;
pub mod metrics;
pub mod mysql;
pub mod observe;
pub mod queue;
pub mod rollup;
pub mod server;
pub mod sink;
pub mod wal;
