//! What the driver knows about each shard's database: its connections, its back-off, and the
//! node's delivery lease on it.
//!
//! Each shard has one *control* connection, which holds the lease (MySQL `GET_LOCK`, checked
//! again every [`LEASE_CHECK_EVERY`]) and reads and retires cursors, and a pool of delivery
//! connections, at most `connections`. A shard takes deliveries only while its lease is held
//! (or the sink has none) and it is not backing off after a failure.
//!
//! Invariant: `open` counts every delivery connection that exists or is being opened, so the
//! pool never exceeds its cap; a connection that failed is dropped, never reused.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::stream::Pending;
use crate::clock::unix_ms;
use crate::sink::{LeaseState, SinkError};
use crate::wal::identity::LaneId;

/// How often a held lease is confirmed on the control connection.
pub const LEASE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Work for a shard that waits for a connection.
pub enum Job {
    Deliver { stream: usize, pending: Pending },
}

/// Work for the control connection.
#[derive(Debug)]
pub enum Control {
    Cursors,
    Retire(Vec<LaneId>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    Unknown,
    Held { checked: Instant },
    Elsewhere { holder: String },
    Unsupported,
}

/// Up or down, for logging the changes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Unknown,
    Up,
    Down { since: Instant },
}

pub struct Link<C> {
    pub shard: u16,
    /// For the log: "MySQL", "ClickHouse", and the shard when there are several.
    pub name: String,
    pub idle: Vec<C>,
    pub open: usize,
    pub max: usize,
    pub jobs: VecDeque<Job>,
    pub control: Option<C>,
    pub control_busy: bool,
    pub control_jobs: VecDeque<Control>,
    pub lease: Lease,
    retry_at: Instant,
    delay: Duration,
    delay_min: Duration,
    delay_max: Duration,
    health: Health,
}

impl<C> Link<C> {
    pub fn new(
        shard: u16,
        name: String,
        max: usize,
        delay_min: Duration,
        delay_max: Duration,
        now: Instant,
    ) -> Self {
        Link {
            shard,
            name,
            idle: Vec::new(),
            open: 0,
            max: max.max(1),
            jobs: VecDeque::new(),
            control: None,
            control_busy: false,
            control_jobs: VecDeque::new(),
            lease: Lease::Unknown,
            retry_at: now,
            delay: delay_min,
            delay_min,
            delay_max,
            health: Health::Unknown,
        }
    }

    /// The shortest back-off: how long a stream waits after one failed delivery.
    pub fn delay_min(&self) -> Duration {
        self.delay_min
    }

    /// The shard may take deliveries and control work.
    pub fn ready(&self, now: Instant) -> bool {
        now >= self.retry_at && matches!(self.lease, Lease::Held { .. } | Lease::Unsupported)
    }

    /// Worth trying to connect now.
    pub fn may_connect(&self, now: Instant) -> bool {
        now >= self.retry_at
    }

    pub fn is_up(&self) -> bool {
        self.health == Health::Up
    }

    /// A step succeeded: the back-off starts over.
    pub fn up(&mut self) {
        self.delay = self.delay_min;
        match self.health {
            Health::Down { since } => {
                info!(
                    shard = self.shard,
                    down_for_ms = since.elapsed().as_millis() as u64,
                    "{} reachable again",
                    self.name
                )
            }
            Health::Unknown => info!(shard = self.shard, "{} reachable", self.name),
            Health::Up => return,
        }
        self.health = Health::Up;
    }

    /// A step failed for a reason that may pass: back off before the next try.
    pub fn down(&mut self, e: &SinkError, now: Instant) {
        self.retry_at = now + self.delay;
        self.delay = (self.delay * 2).min(self.delay_max);
        if !matches!(self.health, Health::Down { .. }) {
            error!(shard = self.shard, error = %e, "{} unavailable; retrying with back-off", self.name);
            self.health = Health::Down { since: now };
        }
    }

    /// Unix ms since the shard is down; 0 while it is up.
    pub fn down_since_unix_ms(&self) -> u64 {
        match self.health {
            Health::Down { since } => unix_ms().saturating_sub(since.elapsed().as_millis() as u64),
            _ => 0,
        }
    }

    /// The lease check came back.
    pub fn on_lease(&mut self, state: LeaseState, now: Instant) {
        self.lease = match state {
            LeaseState::Held => {
                if !matches!(self.lease, Lease::Held { .. }) {
                    info!(shard = self.shard, "delivery lease held");
                }
                Lease::Held { checked: now }
            }
            LeaseState::Unsupported => Lease::Unsupported,
            LeaseState::HeldElsewhere { holder } => {
                if !matches!(&self.lease, Lease::Elsewhere { holder: h } if *h == holder) {
                    warn!(shard = self.shard, %holder,
                        "another live process holds this node's delivery lease; not delivering until it is released");
                }
                // Ask again after a check period.
                self.retry_at = now + LEASE_CHECK_EVERY;
                Lease::Elsewhere { holder }
            }
        };
    }

    /// The control connection is gone: so is a lease held on it.
    pub fn control_lost(&mut self) {
        self.control = None;
        self.control_busy = false;
        if matches!(self.lease, Lease::Held { .. }) {
            self.lease = Lease::Unknown;
        }
    }

    /// The lease is due for its check (or was never taken).
    pub fn lease_due(&self, now: Instant) -> bool {
        match self.lease {
            Lease::Unknown => true,
            Lease::Held { checked } => now - checked >= LEASE_CHECK_EVERY,
            Lease::Elsewhere { .. } => now >= self.retry_at,
            Lease::Unsupported => false,
        }
    }

    /// Who holds the lease instead of us, if anyone.
    pub fn holder(&self) -> Option<&str> {
        match &self.lease {
            Lease::Elsewhere { holder } => Some(holder),
            _ => None,
        }
    }
}
