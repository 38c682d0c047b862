//! Fail points: named places in the WAL, cursor and compaction code where a test makes an IO
//! call fail, or the process abort, to prove that every failure leaves the files recoverable.
//!
//! Each IO call of those modules is preceded by `failpoint::io("scope.step")?`. Without the
//! cargo feature `failpoints` (every production build) [`io`] is an empty inline function that
//! returns `Ok(())` and [`crash`] does nothing: the points cost nothing.
//!
//! With the feature, a point is armed
//! - **for the calling thread** with [`arm`], which returns a guard that disarms on drop. In
//!   process tests run in parallel threads, so a point armed by one test never fires in another;
//!   the WAL, cursor and compaction functions do their IO on the thread that calls them.
//! - **for the whole process** by the environment, for black-box tests of the binary:
//!   ```text
//!   PSC_FAILPOINT=name[:after=N][:times=N][:errno=E|:abort][,name…]
//!   ```
//!   `after=N`: the first N hits pass (default 0); `times=N`: it fires at most N times (default:
//!   every later hit); `errno=E`: the error [`io`] returns (default `EIO` = 5); `abort`: the
//!   process aborts at the point instead, after printing `failpoint NAME: aborting at hit K`.
//!   A malformed value aborts at the first hit of any point, naming the problem.
//!
//! [`crash`] marks a place that is not an IO call (`crash_after_commit`, between a sink's
//! COMMIT and `commit.meta`): when armed it aborts, whatever the action says.
//!
//! Invariant: with the feature, hits are counted per armed point, so `after` and `times` mean
//! the same in a thread and across a process.

use std::io;

/// What an armed point does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// [`io`] returns `io::Error::from_raw_os_error(errno)`.
    Fail { errno: i32 },
    /// The process aborts (a crash at exactly this place).
    Abort,
}

/// When and how an armed point fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// Hits that pass before the point fires.
    pub after: u64,
    /// Most times it fires; `u64::MAX` = every hit after `after`.
    pub times: u64,
    pub action: Action,
}

impl Spec {
    /// Fails every hit with `errno`.
    pub const fn errno(errno: i32) -> Spec {
        Spec { after: 0, times: u64::MAX, action: Action::Fail { errno } }
    }

    /// The first `after` hits pass.
    pub const fn after(self, after: u64) -> Spec {
        Spec { after, ..self }
    }

    /// Fires at most `times` times.
    pub const fn times(self, times: u64) -> Spec {
        Spec { times, ..self }
    }
}

/// Parses the value of `PSC_FAILPOINT` (syntax in the module doc).
pub fn parse_specs(text: &str) -> Result<Vec<(String, Spec)>, String> {
    let mut points = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let mut parts = item.split(':');
        let name = parts.next().unwrap_or_default();
        if name.is_empty() {
            return Err(format!("`{item}`: no fail point name"));
        }
        let mut spec = Spec::errno(libc::EIO);
        for part in parts {
            let number = |key: &str| {
                part.strip_prefix(key)
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| format!("`{item}`: `{part}` is not {key}<number>"))
            };
            match part.split('=').next() {
                Some("after") => spec.after = number("after=")?,
                Some("times") => spec.times = number("times=")?,
                Some("errno") => {
                    let errno =
                        i32::try_from(number("errno=")?).map_err(|_| format!("`{item}`: errno too large"))?;
                    spec.action = Action::Fail { errno };
                }
                Some("abort") if part == "abort" => spec.action = Action::Abort,
                _ => {
                    return Err(format!("`{item}`: unknown option `{part}` (after=, times=, errno=, abort)"))
                }
            }
        }
        points.push((name.to_owned(), spec));
    }
    Ok(points)
}

/// Returns the injected error if the point `name` is armed and fires now.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn io(_name: &str) -> io::Result<()> {
    Ok(())
}

/// Aborts the process if the point `name` is armed and fires now.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn crash(_name: &str) {}

/// Returns the injected error if the point `name` is armed and fires now.
#[cfg(feature = "failpoints")]
pub fn io(name: &str) -> io::Result<()> {
    match armed::fire(name) {
        None => Ok(()),
        Some((_, Action::Fail { errno })) => Err(io::Error::from_raw_os_error(errno)),
        Some((hit, Action::Abort)) => armed::abort(name, hit),
    }
}

/// Aborts the process if the point `name` is armed and fires now.
#[cfg(feature = "failpoints")]
pub fn crash(name: &str) {
    if let Some((hit, _)) = armed::fire(name) {
        armed::abort(name, hit);
    }
}

#[cfg(feature = "failpoints")]
pub use armed::{arm, Armed};

#[cfg(feature = "failpoints")]
mod armed {
    use std::cell::RefCell;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    use super::{parse_specs, Action, Spec};

    const ENV: &str = "PSC_FAILPOINT";

    struct Point {
        name: String,
        spec: Spec,
        hits: AtomicU64,
        fired: AtomicU64,
    }

    impl Point {
        fn new(name: String, spec: Spec) -> Point {
            Point { name, spec, hits: AtomicU64::new(0), fired: AtomicU64::new(0) }
        }

        /// Counts a hit; `Some((hit number, action))` if the point fires on it.
        fn hit(&self) -> Option<(u64, Action)> {
            let hit = self.hits.fetch_add(1, Ordering::Relaxed) + 1;
            if hit <= self.spec.after || self.fired.fetch_add(1, Ordering::Relaxed) >= self.spec.times {
                return None;
            }
            Some((hit, self.spec.action))
        }
    }

    thread_local! {
        static LOCAL: RefCell<Vec<Point>> = const { RefCell::new(Vec::new()) };
    }

    /// The points armed by `PSC_FAILPOINT`, parsed once; `Err` if the value is malformed.
    fn from_env() -> &'static Result<Vec<Point>, String> {
        static POINTS: OnceLock<Result<Vec<Point>, String>> = OnceLock::new();
        POINTS.get_or_init(|| {
            let text = std::env::var(ENV).unwrap_or_default();
            parse_specs(&text).map(|specs| specs.into_iter().map(|(n, s)| Point::new(n, s)).collect())
        })
    }

    pub(super) fn fire(name: &str) -> Option<(u64, Action)> {
        let local = LOCAL.with(|points| points.borrow().iter().find(|p| p.name == name).map(Point::hit));
        if let Some(fired) = local {
            return fired;
        }
        match from_env() {
            Ok(points) => points.iter().find(|p| p.name == name).and_then(Point::hit),
            Err(problem) => {
                eprintln!("{ENV} is malformed: {problem}");
                std::process::abort();
            }
        }
    }

    pub(super) fn abort(name: &str, hit: u64) -> ! {
        eprintln!("failpoint {name}: aborting at hit {hit}");
        std::process::abort();
    }

    /// Arms `name` for the calling thread until the guard is dropped (re-arming replaces).
    pub fn arm(name: &str, spec: Spec) -> Armed {
        LOCAL.with(|points| {
            let mut points = points.borrow_mut();
            points.retain(|p| p.name != name);
            points.push(Point::new(name.to_owned(), spec));
        });
        Armed { name: name.to_owned() }
    }

    /// Disarms its point (on this thread) when dropped.
    #[must_use = "the point is disarmed when the guard is dropped"]
    pub struct Armed {
        name: String,
    }

    impl Armed {
        /// How often the point was reached since it was armed.
        pub fn hits(&self) -> u64 {
            LOCAL.with(|points| {
                points
                    .borrow()
                    .iter()
                    .find(|p| p.name == self.name)
                    .map_or(0, |p| p.hits.load(Ordering::Relaxed))
            })
        }
    }

    impl Drop for Armed {
        fn drop(&mut self) {
            LOCAL.with(|points| points.borrow_mut().retain(|p| p.name != self.name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_syntax_parses_every_option() {
        let specs =
            parse_specs("cursor.rename, reader.pread:after=3:times=1:errno=24,crash_after_commit:abort")
                .unwrap();
        assert_eq!(specs.len(), 3);
        assert_eq!(specs[0], ("cursor.rename".to_owned(), Spec::errno(libc::EIO)));
        assert_eq!(specs[1].1, Spec::errno(libc::EMFILE).after(3).times(1));
        assert_eq!(specs[2].1.action, Action::Abort);
        assert_eq!(parse_specs("").unwrap(), Vec::new());
    }

    #[test]
    fn malformed_env_values_name_the_problem() {
        for (text, needle) in [
            ("a:after=x", "after="),
            (":after=1", "no fail point name"),
            ("a:sometimes", "unknown option"),
            ("a:errno=99999999999", "errno"),
            ("a:abortx", "unknown option"),
        ] {
            let err = parse_specs(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[cfg(feature = "failpoints")]
    #[test]
    fn armed_points_fire_after_and_times_and_only_on_their_thread() {
        let armed = arm("test.point", Spec::errno(libc::ENOSPC).after(1).times(2));
        assert!(io("test.point").is_ok(), "the first hit passes");
        assert_eq!(io("test.point").unwrap_err().raw_os_error(), Some(libc::ENOSPC));
        assert!(io("test.point").is_err());
        assert!(io("test.point").is_ok(), "fired its two times");
        assert!(io("test.other").is_ok());
        assert_eq!(armed.hits(), 4);
        std::thread::spawn(|| assert!(io("test.point").is_ok(), "other threads are not armed"))
            .join()
            .unwrap();
        drop(armed);
        assert!(io("test.point").is_ok(), "disarmed with its guard");
    }
}
