//! SIGTERM/SIGINT handling without a handler: the signals are blocked in every thread (the
//! mask is inherited by threads spawned after [`block_shutdown_signals`]) and one thread
//! collects them with `sigwait`, so no async-signal-safety concerns arise anywhere.

/// Blocks SIGTERM and SIGINT in the calling thread and every thread it spawns afterwards.
pub fn block_shutdown_signals() -> std::io::Result<()> {
    let set = shutdown_set();
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits up to `timeout` for a SIGTERM or SIGINT; returns its number, or `None` on timeout.
pub fn wait_for_shutdown_signal(timeout: std::time::Duration) -> Option<i32> {
    let set = shutdown_set();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` and `ts` are initialised; a null siginfo pointer is allowed.
    let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

fn shutdown_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before sigaddset uses it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}
