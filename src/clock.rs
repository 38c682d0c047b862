//! Wall-clock time in the one unit the collector stores and reports: milliseconds since the
//! Unix epoch. (Durations and deadlines use `Instant`, never this.)

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 if the clock is set before 1970.
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
