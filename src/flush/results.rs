//! What the driver does with each finished step, what it publishes for `/metrics` and
//! `/stats`, and its last words at shutdown.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::core::Delivered;
use super::driver::{Done, Driver};
use super::tasks::{Msg, ReadDone};
use crate::clock::unix_ms;
use crate::cursor::write_commit_meta;
use crate::sink::shard::shard_of;
use crate::sink::{Sink, SinkError};
use crate::wal::reader::{CoreWalReader, ReadStop};
use crate::wal::segment::core_dir;

/// How long a stream waits after a failed WAL read before it reads again.
const READ_RETRY: Duration = Duration::from_millis(100);

/// Progress of the startup replay.
pub struct Replay {
    started: Instant,
    events: u64,
    /// Time spent reading and decoding (not waiting for the sink): `events / reading` is how
    /// fast the WAL itself replays, `events / started.elapsed()` how fast it is delivered.
    reading: Duration,
}

impl Replay {
    pub fn new() -> Replay {
        Replay { started: Instant::now(), events: 0, reading: Duration::ZERO }
    }
}

impl<S: Sink + 'static> Driver<S> {
    pub(super) fn on_msg(&mut self, msg: Msg<S::Conn>) {
        let now = Instant::now();
        match msg {
            Msg::Connected { shard, control, result } => {
                let link = &mut self.links[usize::from(shard)];
                match result {
                    Ok(conn) if control => {
                        link.up();
                        link.control = Some(conn);
                        link.control_busy = false;
                    }
                    Ok(conn) => {
                        link.up();
                        link.idle.push(conn);
                    }
                    Err(e) => {
                        link.down(&e, now);
                        if control {
                            link.control_busy = false;
                        } else {
                            link.open -= 1;
                        }
                    }
                }
            }
            Msg::Lease { shard, conn, result } => {
                let link = &mut self.links[usize::from(shard)];
                match result {
                    Ok(state) => {
                        link.on_lease(state, now);
                        link.control = Some(conn);
                        link.control_busy = false;
                    }
                    Err(e) => {
                        link.control_lost();
                        link.down(&e, now);
                    }
                }
            }
            Msg::Cursors { shard, conn, result } => {
                let ok = self.control_back(shard, conn, result.as_ref().err(), now);
                self.core.on_cursors(shard, result.ok().filter(|_| ok), now);
            }
            Msg::Retired { shard, conn, lanes, result } => {
                let ok = self.control_back(shard, conn, result.as_ref().err(), now);
                self.core.on_retired(shard, &lanes, ok);
            }
            Msg::Delivered { shard, stream, conn, pending, result } => {
                self.on_delivered(shard, stream, conn, pending, result, now)
            }
            Msg::Read(done) => self.on_read(*done, now),
        }
    }

    /// The control connection is back from a step: kept if it succeeded, else dropped.
    fn control_back(&mut self, shard: u16, conn: S::Conn, err: Option<&SinkError>, now: Instant) -> bool {
        let link = &mut self.links[usize::from(shard)];
        match err {
            None => {
                link.up();
                link.control = Some(conn);
                link.control_busy = false;
                true
            }
            Some(e) => {
                link.control_lost();
                link.down(e, now);
                false
            }
        }
    }

    fn on_delivered(
        &mut self,
        shard: u16,
        stream: usize,
        conn: S::Conn,
        pending: super::stream::Pending,
        result: Result<(), SinkError>,
        now: Instant,
    ) {
        let link = &mut self.links[usize::from(shard)];
        let outcome = match result {
            Ok(()) => {
                link.up();
                link.idle.push(conn);
                self.count_commit(&pending);
                Delivered::Committed
            }
            Err(e) => {
                link.open -= 1;
                match e {
                    SinkError::Refused { code, message, every_row } => {
                        Delivered::Refused { code, message, every_row }
                    }
                    SinkError::Fenced { .. } => {
                        info!(shard, error = %e, "delivery fenced; reading the cursors again");
                        Delivered::Failed
                    }
                    SinkError::Unavailable(_) | SinkError::InDoubt(_) => {
                        // This connection failed, not necessarily the server: only this stream
                        // backs off; connects and the control connection tell if it is down.
                        warn!(shard, error = %e, "delivery failed; the stream retries on another connection");
                        self.core.back_off(stream, now + link.delay_min());
                        Delivered::Failed
                    }
                }
            }
        };
        self.core.on_delivered(stream, pending, outcome);
    }

    fn count_commit(&self, pending: &super::stream::Pending) {
        let rows = pending.batch.len() as u64;
        let s = &self.stats;
        if pending.reject.is_none() {
            s.events_flushed.fetch_add(rows, Ordering::Relaxed);
            if let Some(shard) = s.shards.get(usize::from(pending.batch.shard())) {
                shard.rows.fetch_add(rows, Ordering::Relaxed);
            }
        }
        s.batches.fetch_add(1, Ordering::Relaxed);
        s.last_flush_unix_ms.store(unix_ms(), Ordering::Relaxed);
        s.last_flush_rows.store(rows, Ordering::Relaxed);
        s.batch_rows.observe(rows as f64);
    }

    fn on_read(&mut self, done: ReadDone, now: Instant) {
        let ReadDone { stream, reader, batch, outcome, events, took, resume } = done;
        self.readers[stream] = Some(reader);
        let lane = batch.lane();
        if let Some(cut) = outcome.cut_below_cursor {
            warn!(%lane, ?cut, "the WAL was cut below the committed cursor; going on with the next segment");
        }
        let (mut skip, mut retry) = (None, None);
        match (outcome.stop, resume) {
            (Some(ReadStop::Corrupt { at, resume: next, reason }), Some(Ok(_))) => {
                self.stats.corrupt_records.fetch_add(1, Ordering::Relaxed);
                self.stats.corrupt_bytes.fetch_add(next.offset - at.offset, Ordering::Relaxed);
                error!(%lane, ?at, resume = ?next, %reason, "corrupt WAL record skipped; its bytes are kept in quarantine");
                skip = Some(next);
            }
            (Some(ReadStop::Corrupt { at, reason, .. }), Some(Err(e))) => {
                error!(%lane, ?at, %reason, error = %e, "corrupt WAL record whose bytes cannot be saved; retrying before going on");
                retry = Some(now + READ_RETRY);
            }
            (Some(ReadStop::Io(e)), _) => {
                error!(%lane, error = %e, "cannot read the WAL; retrying");
                retry = Some(now + READ_RETRY);
            }
            _ => {}
        }
        self.count_read(events, took);
        self.core.on_read(stream, batch, outcome.reached, skip, retry, now);
        if self.replay.is_some() && self.core.caught_up() {
            self.replay_done();
        }
    }

    fn count_read(&mut self, events: u64, took: Duration) {
        match &mut self.replay {
            Some(replay) => {
                replay.events += events;
                replay.reading += took;
                self.stats.wal_replay_total.fetch_add(events, Ordering::Relaxed);
            }
            None => {
                self.stats.wal_catchup_total.fetch_add(events, Ordering::Relaxed);
            }
        }
    }

    fn replay_done(&mut self) {
        let Some(replay) = self.replay.take() else { return };
        let secs = replay.started.elapsed().as_secs_f64();
        let reading = replay.reading.as_secs_f64();
        let rate = |n: u64, s: f64| if s > 0.0 { (n as f64 / s) as u64 } else { 0 };
        // events_per_sec: read, and delivered or queued for delivery; read_events_per_sec:
        // read and decoded from the WAL (bounded by this process).
        info!(
            events = replay.events,
            seconds = secs,
            events_per_sec = rate(replay.events, secs),
            read_events_per_sec = rate(replay.events, reading),
            "WAL replay done"
        );
        self.stats.replay_done.store(true, Ordering::Relaxed);
    }

    /// Positions and shard health for `/metrics` and `/stats`.
    pub(super) fn publish(&self, now: Instant) {
        let s = &self.stats;
        for core in 0..s.committed.len() {
            if let Some((committed, read)) = self.core.positions(core as u16) {
                s.committed[core].store(committed.pack(), Ordering::Relaxed);
                s.read[core].store(read.pack(), Ordering::Relaxed);
            }
        }
        for (core, shard, committed) in self.core.live_cursors() {
            let slot = s.shards.get(usize::from(shard)).and_then(|sh| sh.committed.get(usize::from(core)));
            if let Some(slot) = slot {
                slot.store(committed.pack(), Ordering::Relaxed);
            }
        }
        for (link, shard) in self.links.iter().zip(&s.shards) {
            shard.up.store(link.is_up(), Ordering::Relaxed);
            shard.ready.store(link.ready(now), Ordering::Relaxed);
        }
        let all_up = self.links.iter().all(|l| l.is_up());
        s.mysql_up.store(all_up, Ordering::Relaxed);
        let since = self.links.iter().map(|l| l.down_since_unix_ms()).max().unwrap_or(0);
        s.mysql_down_since_unix_ms.store(since, Ordering::Relaxed);
        if let Ok(mut holder) = s.lease_held_elsewhere_by.lock() {
            let now_holder = self.links.iter().find_map(|l| l.holder());
            if holder.as_deref() != now_holder {
                *holder = now_holder.map(str::to_owned);
            }
        }
    }

    /// The last `commit.meta`, and what is left for the next start.
    pub(super) async fn finish(mut self) -> Done {
        self.publish(Instant::now());
        if let Err(e) = write_commit_meta(&self.wal_dir, &self.core.meta()) {
            error!(error = %e, "cannot write commit.meta at shutdown; the sink's cursors stand");
        }
        let flushed = self.stats.events_flushed.load(Ordering::Relaxed);
        if self.core.is_drained() {
            info!(flushed, "flusher stopped; every acknowledged event is delivered");
            return Done::Drained;
        }
        let left = self.count_undelivered();
        warn!(
            events_left = left,
            flushed, "shutdown: events not delivered; the WAL replays them at next start"
        );
        Done::RowsLeft
    }

    /// Records not committed yet, counted in the WAL (each stream counts its shard's only).
    fn count_undelivered(&mut self) -> u64 {
        let route = self.core.route();
        let mut left = 0u64;
        for (lane, shard, from, until) in self.core.undelivered() {
            let mut reader = CoreWalReader::new(&core_dir(&self.wal_dir, lane.core));
            let _ = reader.read(from, until, usize::MAX, |ev, _, _, _| {
                left += u64::from(shard_of(route.by, ev.domain, ev.file_id, route.shards) == shard);
            });
        }
        left
    }
}
