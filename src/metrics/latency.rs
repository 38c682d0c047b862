//! How long a core takes to answer: from the completion of the read that brought a turn's
//! requests to the completion of the write of their answers (parse, WAL group commit, answer),
//! as a histogram with fixed buckets, one per core like every hot-path counter.
//!
//! Invariants:
//! - one observation per sampled read that produced answers, one read in
//!   [`SAMPLE_EVERY_READS`] of each connection (a read whose bytes need a second turn, past
//!   `http.max_pipelined_requests`, is observed once, when its first turn is answered). Timing
//!   every read cost about 120 user-space instructions per plain beacon under callgrind (two
//!   clock reads), sampled about 20, and an open-loop run of a few seconds still gives
//!   thousands of samples;
//! - the bounds are fixed ([`BOUNDS_US`]), so an observation is one search in eleven constants
//!   and two relaxed increments, and summing cores is adding arrays;
//! - it measures the server's own share of a request's latency: what the kernel and the client
//!   add before the read completes or after the write does is not in it, so an open-loop p99
//!   well above this one's comes from outside the core loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::bump;

/// One read in this many, per connection, is timed.
pub const SAMPLE_EVERY_READS: u32 = 16;

/// Upper bounds of the buckets, in microseconds; one more bucket holds everything above.
pub const BOUNDS_US: [u64; 11] = [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000];

/// One core's histogram.
#[derive(Debug, Default)]
pub struct Latency {
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Latency {
    /// Counts one answer that took `elapsed`.
    #[inline]
    pub fn observe(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        bump(&self.buckets[BOUNDS_US.partition_point(|&bound| bound < us)], 1);
        bump(&self.sum_us, us);
    }

    /// Adds this core's counts to `totals` (at scrape time).
    pub fn add_to(&self, totals: &mut LatencyTotals) {
        for (dst, src) in totals.buckets.iter_mut().zip(&self.buckets) {
            *dst += src.load(Ordering::Relaxed);
        }
        totals.sum_us += self.sum_us.load(Ordering::Relaxed);
    }
}

/// All cores' histograms summed; buckets are not cumulative.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LatencyTotals {
    pub buckets: [u64; BOUNDS_US.len() + 1],
    pub sum_us: u64,
}

impl LatencyTotals {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// `(upper bound in seconds, count)` per bucket, the last one `+Inf`, for the exposition.
    pub fn seconds_buckets(&self) -> Vec<(f64, u64)> {
        let bounds = BOUNDS_US.iter().map(|&us| us as f64 / 1e6).chain([f64::INFINITY]);
        bounds.zip(self.buckets).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_observation_lands_in_the_first_bucket_that_holds_it() {
        let (a, b) = (Latency::default(), Latency::default());
        a.observe(Duration::from_micros(50)); // on a bound: that bucket
        a.observe(Duration::from_micros(51));
        b.observe(Duration::from_millis(3));
        b.observe(Duration::from_secs(5)); // past every bound
        let mut t = LatencyTotals::default();
        a.add_to(&mut t);
        b.add_to(&mut t);
        assert_eq!(t.count(), 4);
        assert_eq!(&t.buckets[..3], &[1, 1, 0]);
        assert_eq!(t.buckets[6], 1, "3 ms is in the 5 ms bucket");
        assert_eq!(t.buckets[BOUNDS_US.len()], 1);
        assert_eq!(t.sum_us, 50 + 51 + 3_000 + 5_000_000);
        let buckets = t.seconds_buckets();
        assert_eq!(buckets.len(), BOUNDS_US.len() + 1);
        assert_eq!(buckets[0], (50e-6, 1));
        assert_eq!(buckets[BOUNDS_US.len()], (f64::INFINITY, 1));
    }
}
