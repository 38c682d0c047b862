//! File descriptors: every client connection holds one, so `http.max_connections_per_core`
//! is only real if the process may open that many.
//!
//! At start, [`raise_nofile`] lifts the soft `RLIMIT_NOFILE` to the hard limit (an
//! unprivileged process may, and the default soft limit of 1024 would cap a core at ~1000
//! clients). [`plan`] then checks `connections per core × cores + fixed needs` against it.
//! What does not fit is said at start, with the numbers and what to change, and the
//! per-core connection cap is lowered to what fits: a connection over the cap is accepted and
//! closed at once (counted as the `connections` limit), which a client sees, whereas `EMFILE`
//! would leave it hanging in the listen backlog.
//!
//! The fixed needs, per core: its listener, its io_uring and eventfd, the open WAL segment
//! (two handles) and the next one while rolling (two more), one spare: [`PER_CORE_FDS`]. For
//! the process: stdio, the WAL lock, the flusher's WAL readers and sink connections, `/proc`
//! reads for `/metrics`, log files: [`PROCESS_FDS`]. Both are generous on purpose; the point
//! is to stay clear of `EMFILE`, which `accept` still handles (back-off, counted as the `fds`
//! limit) should something else use descriptors up.

use std::io;

/// Descriptors one core needs besides its client connections.
pub const PER_CORE_FDS: u64 = 8;
/// Descriptors the process needs besides its cores.
pub const PROCESS_FDS: u64 = 64;

/// The soft and hard `RLIMIT_NOFILE` after [`raise_nofile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the limits now in force.
pub fn raise_nofile() -> io::Result<NofileLimit> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit for the kernel to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: a valid rlimit; raising the soft limit up to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        } else {
            tracing::warn!(err = %io::Error::last_os_error(), soft = lim.rlim_cur, hard = lim.rlim_max,
                "cannot raise RLIMIT_NOFILE to its hard limit");
        }
    }
    Ok(NofileLimit { soft: lim.rlim_cur, hard: lim.rlim_max })
}

/// How the connection cap fits the descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdPlan {
    /// Descriptors the configured cap needs.
    pub needed: u64,
    /// The cap to serve with: the configured one, or less if it does not fit.
    pub connections_per_core: usize,
}

impl FdPlan {
    pub fn fits(&self, configured: usize) -> bool {
        self.connections_per_core >= configured
    }
}

/// Fits `connections_per_core` on `cores` cores into `limit` descriptors (at least one
/// connection per core is always planned: a core that takes none serves nothing).
pub fn plan(limit: u64, cores: usize, connections_per_core: usize) -> FdPlan {
    let cores = cores.max(1) as u64;
    let fixed = PROCESS_FDS + PER_CORE_FDS * cores;
    let needed = fixed.saturating_add((connections_per_core as u64).saturating_mul(cores));
    let room = limit.saturating_sub(fixed) / cores;
    let fitting = usize::try_from(room).unwrap_or(usize::MAX).clamp(1, connections_per_core.max(1));
    FdPlan { needed, connections_per_core: fitting }
}

/// Raises the limit, checks the plan and says what does not fit; returns the per-core
/// connection cap to serve with.
pub fn apply(cores: usize, configured: usize) -> usize {
    let limit = match raise_nofile() {
        Ok(limit) => limit,
        Err(err) => {
            tracing::warn!(%err, "cannot read RLIMIT_NOFILE; connection cap left as configured");
            return configured;
        }
    };
    let planned = plan(limit.soft, cores, configured);
    if planned.fits(configured) {
        tracing::info!(
            soft = limit.soft,
            hard = limit.hard,
            needed = planned.needed,
            "file descriptor limit"
        );
    } else {
        tracing::warn!(
            "RLIMIT_NOFILE is {} (hard limit {}), but http.max_connections_per_core = {configured} \
             on {cores} cores plus {} for listeners, WAL and sink need {}: serving at most {} \
             connections per core. Raise the hard limit (LimitNOFILE= in the systemd unit, \
             `ulimit -Hn` as root) or lower http.max_connections_per_core.",
            limit.soft,
            limit.hard,
            PROCESS_FDS + PER_CORE_FDS * cores as u64,
            planned.needed,
            planned.connections_per_core,
        );
    }
    planned.connections_per_core
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_that_fits_is_kept() {
        let p = plan(1 << 20, 2, 10_000);
        assert_eq!(p.needed, 20_000 + 2 * PER_CORE_FDS + PROCESS_FDS);
        assert_eq!(p.connections_per_core, 10_000);
        assert!(p.fits(10_000));
    }

    #[test]
    fn a_cap_that_does_not_fit_is_lowered_to_what_does() {
        let p = plan(1024, 2, 10_000);
        assert!(!p.fits(10_000));
        let fixed = PROCESS_FDS + 2 * PER_CORE_FDS;
        assert_eq!(p.connections_per_core as u64, (1024 - fixed) / 2);
        assert!(p.connections_per_core as u64 * 2 + fixed <= 1024);
        assert_eq!(plan(10, 4, 100).connections_per_core, 1, "never below one per core");
    }

    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_one() {
        let limit = raise_nofile().expect("getrlimit");
        assert_eq!(limit.soft, limit.hard);
    }
}
