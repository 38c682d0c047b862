//! The WAL's identity as an operator meets it, against the real binary: a start under another
//! node id is refused with an error that names both ids, the WAL id and the command that
//! adopts the WAL; `wal adopt` makes the WAL this node's without changing its WAL id, so the
//! cursors in `commit.meta` still apply; `wal inspect` shows the identity. No server is left
//! running: every child is waited for with a deadline and killed by PID if it overstays.

mod support;

use std::path::Path;
use std::process::{Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use psc::cursor::{read_commit_meta, write_commit_meta, CommitMeta};
use psc::wal::identity::{open_identity, read_identity};
use psc::wal::lane::open_lane;
use psc::wal::Position;
use support::collector_command;

/// Longest a refused start or a WAL tool may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

fn write_config(dir: &Path, wal: &Path, node: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{node}.toml"));
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncores = 1\n[wal]\ndir = \"{}\"\n[ingest]\nnode_id = \"{node}\"\n\
         [mysql]\nurl = \"mysql://psc:x@127.0.0.1:9/psc\"\n",
        wal.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the binary with `args`, killing it (by PID) if it runs longer than [`RUN_TIMEOUT`].
fn run(config: &Path, args: &[&str]) -> Output {
    let mut child = collector_command()
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start player-stat-collector");
    let deadline = Instant::now() + RUN_TIMEOUT;
    while child.try_wait().expect("poll the child").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("player-stat-collector {args:?} did not finish within {RUN_TIMEOUT:?}");
        }
        sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect the output")
}

#[test]
fn another_node_is_refused_until_it_adopts_the_wal_and_its_cursors_carry_over() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    let old = open_identity(&wal, "old-node", "host").unwrap();
    let lane = open_lane(&wal, 0).unwrap();
    let mut meta = CommitMeta::new(old.clone());
    meta.set(lane, 0, Position::new(1, 0));
    write_commit_meta(&wal, &meta).unwrap();

    let new_config = write_config(dir.path(), &wal, "new-node");
    let refused = run(&new_config, &["serve"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a start under another node id is refused:\n{stderr}");
    for needle in ["`old-node`", "`new-node`", &old.wal.to_string(), "wal adopt --config FILE"] {
        assert!(stderr.contains(needle), "`{needle}` missing from:\n{stderr}");
    }

    let adopted = run(&new_config, &["wal", "adopt"]);
    let stdout = String::from_utf8_lossy(&adopted.stdout);
    assert!(adopted.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&adopted.stderr));
    assert!(stdout.contains("node old-node -> new-node"), "{stdout}");
    let now = read_identity(&wal).unwrap().unwrap();
    assert_eq!((now.node.as_str(), now.wal), ("new-node", old.wal), "same WAL id, new node");
    let carried = read_commit_meta(&wal, &now).unwrap().expect("commit.meta still applies");
    assert_eq!(carried.get(lane, 0), Some(Position::new(1, 0)));

    let again = run(&new_config, &["wal", "adopt"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to do"));
    let inspect = run(&new_config, &["wal", "inspect"]);
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.status.success());
    assert!(text.contains(&format!("node new-node  wal id {}", old.wal)), "{text}");
}

#[test]
fn adopt_refuses_a_directory_without_a_wal() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    std::fs::create_dir_all(&wal).unwrap();
    let out = run(&write_config(dir.path(), &wal, "n"), &["wal", "adopt"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to adopt"));
    assert!(read_identity(&wal).unwrap().is_none(), "no identity made up");
}
