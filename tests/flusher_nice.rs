//! `server.flusher_nice`: the flusher thread runs at that nice value, the core threads keep
//! theirs (read from /proc, as an operator would with `ps -L -o nice`).

mod support;

use support::{free_closed_port, Collector};

/// The nice value (field 19 of /proc/PID/task/TID/stat) of each thread of `pid`, by name.
fn thread_nices(pid: u32) -> Vec<(String, i64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("read the collector's tasks");
    tasks
        .filter_map(|task| {
            let path = task.ok()?.path();
            let comm = std::fs::read_to_string(path.join("comm")).ok()?.trim().to_owned();
            let stat = std::fs::read_to_string(path.join("stat")).ok()?;
            // Fields after the parenthesised comm, which may itself hold spaces.
            let after_comm = stat.rsplit_once(") ")?.1;
            let nice = after_comm.split(' ').nth(16)?.parse().ok()?;
            Some((comm, nice))
        })
        .collect()
}

#[test]
fn the_flusher_runs_at_its_nice_and_the_cores_at_theirs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("mysql://psc:x@127.0.0.1:{}/psc", free_closed_port());
    let mut collector = Collector::start(dir.path(), &url, "[server]\ncores = 1\nflusher_nice = 7\n");
    let nices = thread_nices(collector.child.id());
    assert!(collector.sigterm_and_wait(std::time::Duration::from_secs(30)).is_some(), "stops on SIGTERM");
    let nice_of = |name: &str| nices.iter().find(|(comm, _)| comm == name).map(|&(_, n)| n);
    assert_eq!(nice_of("flusher"), Some(7), "{nices:?}");
    assert_eq!(nice_of("core-0"), Some(0), "{nices:?}");
    assert!(collector.log().contains("flusher thread reniced"), "{}", collector.log());
}

#[test]
fn a_nice_out_of_range_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    let url = format!("mysql://psc:x@127.0.0.1:{}/psc", free_closed_port());
    let text = support::collector_config(&dir.path().join("wal"), &url, "[server]\nflusher_nice = 20\n");
    std::fs::write(&config, text).expect("write the config");
    let (status, stderr) = support::run_bounded(&config, &["serve"], dir.path());
    assert!(!status.success());
    assert!(stderr.contains("server.flusher_nice") && stderr.contains("-20..=19"), "{stderr}");
}
