//! The fail-point suite: every IO call of the WAL, cursor and compaction code fails once, on
//! purpose, on real files in a temp dir, in process (`crate::failpoint`, armed per thread).
//! For each point: the operation returns the injected error (no panic, no partial state that
//! a later start misreads), and the next attempt, as a restart would make it, recovers with
//! nothing acknowledged lost: every written record is read back exactly once, cursors are
//! carried as they were, and no segment at or after a durable cursor is deleted.
//!
//! [`every_fail_point_in_the_source_is_exercised`] keeps the list honest: a new
//! `failpoint::io("…")` (or `durable` point) in those modules without a case here fails it.
//! `crash_after_commit` aborts the process and is exercised by `tests/crash.rs`.
//!
//! Run alone with `make failpoints`; `make test` runs it with every other target.
#![cfg(feature = "failpoints")]

use std::collections::BTreeSet;
use std::fmt::Display;
use std::fs;
use std::path::{Path, PathBuf};

use psc::compact::{compact_lane, remove_lane};
use psc::cursor::{open_wal_identity, read_commit_meta, write_commit_meta, CommitMeta};
use psc::failpoint::{arm, Spec};
use psc::wal::config::SyncPolicy;
use psc::wal::identity::{read_identity, WalId, WalIdentity};
use psc::wal::lane::{open_lane, read_lane};
use psc::wal::quarantine::save_bad_bytes;
use psc::wal::reader::{CoreWalReader, ReadStop};
use psc::wal::record::{encode, Context, Event};
use psc::wal::recovery::recover_lane;
use psc::wal::segment::{core_dir, list_segments, segment_path};
use psc::wal::Position;

const EIO: &str = "os error 5";

/// `n` records with file ids `first..first + n`.
fn records(first: u64, n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for file_id in first..first + n {
        let ev = Event { ts_ms: 1_700_000_000_000, event: "play", domain: "fail.test", file_id };
        encode(&ev, &Context::NONE, &mut out);
    }
    out
}

fn write_segment(wal: &Path, core: u16, n: u32, bytes: &[u8]) {
    let dir = core_dir(wal, core);
    fs::create_dir_all(&dir).unwrap();
    fs::write(segment_path(&dir, n), bytes).unwrap();
}

/// Asserts `result` failed with the injected error, and that `point` was reached.
fn assert_injected<T, E: Display>(point: &str, result: Result<T, E>, hits: u64, errno: &str) {
    match result {
        Ok(_) => panic!("{point}: the operation succeeded although its fail point was armed"),
        Err(e) => assert!(e.to_string().contains(errno), "{point}: unexpected error: {e}"),
    }
    assert!(hits > 0, "{point}: never reached");
}

/// Runs `op` with `point` armed as `spec` (it must fail with `errno`), then once more disarmed,
/// as the next start would; returns what the retry returns.
fn fail_then_retry<T, E: Display>(
    point: &str,
    spec: Spec,
    errno: &str,
    mut op: impl FnMut() -> Result<T, E>,
) -> T {
    let armed = arm(point, spec);
    let failed = op();
    assert_injected(point, failed, armed.hits(), errno);
    drop(armed);
    op().unwrap_or_else(|e| panic!("{point}: the retry failed: {e}"))
}

/// Every file id readable from the lane, resyncing after damage; panics on an IO stop.
fn read_ids(wal: &Path, core: u16, until: Position) -> Vec<u64> {
    let mut reader = CoreWalReader::new(&core_dir(wal, core));
    let (mut ids, mut pos) = (Vec::new(), Position::default());
    loop {
        let out = reader.read(pos, until, 1000, |ev, _, _, _| ids.push(ev.file_id));
        let next = match out.stop {
            None => out.reached,
            Some(ReadStop::Corrupt { resume, .. }) => resume,
            Some(ReadStop::Io(e)) => panic!("{e}"),
        };
        if next == pos {
            return ids;
        }
        pos = next;
    }
}

#[test]
fn a_new_wal_directory_survives_a_failure_at_every_step() {
    for point in [
        "identity.read",
        "cursor.read",
        "identity.list",
        "identity.random",
        "identity.mkdir",
        "identity.create",
        "identity.write",
        "identity.fsync",
        "identity.rename",
        "identity.dir_fsync",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("wal");
        let id = fail_then_retry(point, Spec::errno(libc::EIO), EIO, || open_wal_identity(&wal, "", "host"));
        assert_eq!(read_identity(&wal).unwrap(), Some(id.clone()), "{point}");
        assert_eq!(open_wal_identity(&wal, "", "host").unwrap(), id, "{point}: stable once written");
    }
}

/// A WAL of the previous version: two lanes, a v1 commit.meta with core 0's cursor.
fn v1_wal(wal: &Path) -> (Position, Vec<u8>) {
    let seg2 = records(11, 5);
    write_segment(wal, 0, 1, &records(1, 10));
    write_segment(wal, 0, 2, &seg2);
    write_segment(wal, 1, 1, &records(100, 3));
    let cursor = Position::new(2, records(11, 2).len() as u64);
    let v1 = format!("psc-commit-meta 1\nnode edge-1\ncore 0 2 {}\ncore 1 0 0\nend\n", cursor.offset);
    fs::write(wal.join("commit.meta"), v1).unwrap();
    (cursor, seg2)
}

#[test]
fn the_upgrade_of_a_v1_wal_survives_a_failure_at_every_step() {
    for point in [
        "cursor.read",
        "cursor.list",
        "identity.random",
        "lane.list",
        "lane.read",
        "lane.create",
        "lane.write",
        "lane.fsync",
        "lane.rename",
        "lane.dir_fsync",
        "cursor.create",
        "cursor.write",
        "cursor.fsync",
        "cursor.rename",
        "cursor.dir_fsync",
        "identity.create",
        "identity.write",
        "identity.fsync",
        "identity.rename",
        "identity.dir_fsync",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (cursor, seg2) = v1_wal(dir.path());
        let id = fail_then_retry(point, Spec::errno(libc::EIO), EIO, || {
            open_wal_identity(dir.path(), "edge-1", "host")
        });
        assert_eq!(id.node, "edge-1");
        let meta = read_commit_meta(dir.path(), &id).unwrap().expect("commit.meta v2");
        let lane0 = read_lane(&core_dir(dir.path(), 0)).unwrap().expect("LANE of core 0");
        let lane1 = read_lane(&core_dir(dir.path(), 1)).unwrap().expect("LANE of core 1");
        assert_eq!(meta.get(lane0, 0), Some(cursor), "{point}: the cursor is carried, not lost or moved");
        assert_eq!(meta.lane_floor(lane1), None, "{point}");
        assert_eq!(fs::read(segment_path(&core_dir(dir.path(), 0), 2)).unwrap(), seg2, "{point}");
    }
}

#[test]
fn commit_meta_is_old_or_new_never_torn() {
    let identity = WalIdentity { node: "n".into(), wal: WalId(9) };
    for point in ["cursor.create", "cursor.write", "cursor.fsync", "cursor.rename", "cursor.dir_fsync"] {
        let dir = tempfile::tempdir().unwrap();
        let lane = open_lane(dir.path(), 0).unwrap();
        let mut old = CommitMeta::new(identity.clone());
        old.set(lane, 0, Position::new(1, 10));
        write_commit_meta(dir.path(), &old).unwrap();
        let mut new = old.clone();
        new.set(lane, 0, Position::new(2, 20));
        let armed = arm(point, Spec::errno(libc::EIO));
        assert_injected(point, write_commit_meta(dir.path(), &new), armed.hits(), EIO);
        drop(armed);
        let read = read_commit_meta(dir.path(), &identity).unwrap().expect("a whole commit.meta");
        assert!(read == old || read == new, "{point}: {read:?}");
        write_commit_meta(dir.path(), &new).unwrap();
        assert_eq!(read_commit_meta(dir.path(), &identity).unwrap(), Some(new), "{point}");
    }
    let dir = tempfile::tempdir().unwrap();
    write_commit_meta(dir.path(), &CommitMeta::new(identity.clone())).unwrap();
    let armed = arm("cursor.read", Spec::errno(libc::EIO));
    assert_injected("cursor.read", read_commit_meta(dir.path(), &identity), armed.hits(), EIO);
}

#[test]
fn a_new_lane_survives_a_failure_at_every_step() {
    for point in [
        "lane.mkdir",
        "lane.list",
        "identity.random",
        "lane.create",
        "lane.write",
        "lane.fsync",
        "lane.rename",
        "lane.dir_fsync",
        "recovery.create",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let rec = fail_then_retry(point, Spec::errno(libc::EIO), EIO, || {
            recover_lane(dir.path(), 3, SyncPolicy::None)
        });
        assert_eq!(read_lane(&core_dir(dir.path(), 3)).unwrap(), Some(rec.lane), "{point}");
        assert_eq!(list_segments(&core_dir(dir.path(), 3)).unwrap(), vec![rec.tail.segment], "{point}");
    }
}

/// A lane with a sealed segment and a newest one with a torn tail; returns every id written
/// (acknowledged) and the bytes the newest segment keeps.
fn lane_with_torn_tail(wal: &Path) -> (Vec<u64>, Vec<u8>) {
    open_lane(wal, 0).unwrap();
    write_segment(wal, 0, 1, &records(1, 20));
    let good = records(21, 7);
    let mut newest = good.clone();
    newest.extend_from_slice(&records(99, 1)[..15]);
    write_segment(wal, 0, 2, &newest);
    ((1..=27).collect(), good)
}

#[test]
fn recovery_survives_a_failure_at_every_step_and_keeps_every_record() {
    for point in [
        "lane.list",
        "lane.read",
        "recovery.list",
        "recovery.stat",
        "recovery.read",
        "recovery.open",
        "recovery.truncate",
        "recovery.fsync",
        "recovery.create",
        "recovery.dir_fsync",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (written, good) = lane_with_torn_tail(dir.path());
        let rec = fail_then_retry(point, Spec::errno(libc::EIO), EIO, || {
            recover_lane(dir.path(), 0, SyncPolicy::Always)
        });
        assert_eq!(read_ids(dir.path(), 0, rec.tail), written, "{point}: every record, once");
        assert_eq!(fs::read(segment_path(&core_dir(dir.path(), 0), 2)).unwrap(), good, "{point}");
        assert_eq!(fs::metadata(segment_path(&core_dir(dir.path(), 0), rec.tail.segment)).unwrap().len(), 0);
    }
}

#[test]
fn a_read_error_leaves_the_position_at_the_last_record_handed_over() {
    for (point, after) in [
        ("reader.list", 0),
        ("reader.list", 1),
        ("reader.open", 1),
        ("reader.mmap", 2),
        ("reader.open_segment", 0),
        ("reader.pread", 0),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut ends = Vec::new();
        for (n, first) in [(1, 1), (2, 11), (3, 21), (4, 31)] {
            let bytes = records(first, 10);
            ends.push(bytes.len() as u64);
            write_segment(dir.path(), 0, n, &bytes);
        }
        let until = Position::new(4, ends[3]);
        let mut reader = CoreWalReader::new(&core_dir(dir.path(), 0));
        let mut ids = Vec::new();
        let armed = arm(point, Spec::errno(libc::EMFILE).after(after));
        let out = reader.read(Position::default(), until, 1000, |ev, _, _, _| ids.push(ev.file_id));
        let failed = match out.stop {
            Some(ReadStop::Io(e)) => Err::<(), _>(e),
            other => panic!("{point} after {after}: expected an io stop, got {other:?}"),
        };
        assert_injected(point, failed, armed.hits(), "os error 24");
        drop(armed);
        assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>(), "{point}: a prefix, in order");
        let mut more = Vec::new();
        let again = reader.read(out.reached, until, 1000, |ev, _, _, _| more.push(ev.file_id));
        assert!(again.stop.is_none(), "{point}: {:?}", again.stop);
        ids.extend(more);
        assert_eq!(ids, (1..=40).collect::<Vec<_>>(), "{point} after {after}: each record exactly once");
    }
}

fn lane_with_segments(wal: &Path, numbers: &[u32]) -> PathBuf {
    for &n in numbers {
        write_segment(wal, 0, n, &records(u64::from(n) * 100, 2));
    }
    core_dir(wal, 0)
}

#[test]
fn compaction_never_deletes_at_or_after_the_durable_cursor() {
    let below = Position::new(4, 10);
    for (point, after) in
        [("compact.list", 0), ("compact.stat", 1), ("compact.remove", 1), ("compact.dir_fsync", 0)]
    {
        let dir = tempfile::tempdir().unwrap();
        let lane = lane_with_segments(dir.path(), &[1, 2, 3, 4, 5]);
        let armed = arm(point, Spec::errno(libc::EIO).after(after));
        assert_injected(point, compact_lane(&lane, below), armed.hits(), EIO);
        drop(armed);
        let left = list_segments(&lane).unwrap();
        assert!(left.ends_with(&[4, 5]), "{point}: {left:?}");
        compact_lane(&lane, below).unwrap();
        assert_eq!(list_segments(&lane).unwrap(), vec![4, 5], "{point}");
    }
}

#[test]
fn a_half_removed_lane_never_reuses_its_incarnation_with_new_numbers() {
    for (point, after) in [
        ("remove_lane.list", 0),
        ("compact.stat", 1),
        ("compact.remove", 1),
        ("compact.remove", 0),
        ("remove_lane.dir_fsync", 0),
        ("remove_lane.unlink", 1),
        ("remove_lane.rmdir", 0),
        ("remove_lane.wal_dir_fsync", 0),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let first = open_lane(dir.path(), 0).unwrap();
        lane_with_segments(dir.path(), &[7, 8]);
        let armed = arm(point, Spec::errno(libc::EIO).after(after));
        assert_injected(point, remove_lane(dir.path(), 0), armed.hits(), EIO);
        drop(armed);
        let segments = list_segments(&core_dir(dir.path(), 0)).unwrap_or_default();
        let reopened = open_lane(dir.path(), 0).unwrap();
        if segments.is_empty() {
            assert_ne!(reopened, first, "{point}: numbering restarts, so the incarnation must not");
        } else {
            assert_eq!(reopened, first, "{point}: its segments {segments:?} still belong to it");
        }
        remove_lane(dir.path(), 0).unwrap_or_else(|e| panic!("{point}: {e}"));
        assert!(!core_dir(dir.path(), 0).exists(), "{point}");
    }
}

#[test]
fn bad_bytes_are_saved_whole_or_not_at_all() {
    for point in [
        "quarantine.open",
        "quarantine.read",
        "quarantine.mkdir",
        "quarantine.create",
        "quarantine.write",
        "quarantine.fsync",
        "quarantine.rename",
        "quarantine.dir_fsync",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = records(1, 3);
        let one = records(1, 1).len();
        bytes[one + 3] ^= 0x10;
        write_segment(dir.path(), 0, 1, &bytes);
        let bad = one as u64..2 * one as u64;
        let armed = arm(point, Spec::errno(libc::EIO));
        assert_injected(point, save_bad_bytes(dir.path(), 0, 1, bad.clone()), armed.hits(), EIO);
        drop(armed);
        let path = dir.path().join("quarantine").join(format!("core-0.000001.log.at-{one}"));
        if let Ok(partial) = fs::read(&path) {
            assert_eq!(partial, &bytes[one..2 * one], "{point}: a saved copy is whole");
        }
        assert_eq!(
            fs::read(segment_path(&core_dir(dir.path(), 0), 1)).unwrap(),
            bytes,
            "{point}: segment untouched"
        );
        let saved = save_bad_bytes(dir.path(), 0, 1, bad).unwrap();
        assert_eq!(fs::read(saved.path).unwrap(), &bytes[one..2 * one], "{point}");
    }
}

/// Every fail-point name written in the WAL, cursor and compaction sources (outside their
/// unit tests): literal arguments of `failpoint::io`, of the `durable` helpers and of
/// `read_small_file`, and the five steps of each `atomic_points!` scope.
fn points_in_source() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![root.join("cursor.rs"), root.join("compact.rs")];
    for dir in [root.join("wal"), root.join("wal").join("reader")] {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("tests.rs") {
                files.push(path);
            }
        }
    }
    let calls = ["failpoint::io(", "sync_dir(", "create_dir(", "read_small_file(", "atomic_points!("];
    let mut names = BTreeSet::new();
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for line in
            code.lines().filter(|l| calls.iter().any(|c| l.contains(c)) && !l.trim_start().starts_with("//"))
        {
            for literal in line.split('"').skip(1).step_by(2) {
                if literal.contains('.') {
                    names.insert(literal.to_owned());
                } else if line.contains("atomic_points!(") && !literal.is_empty() {
                    names.extend(
                        ["create", "write", "fsync", "rename", "dir_fsync"].map(|s| format!("{literal}.{s}")),
                    );
                }
            }
        }
    }
    names
}

#[test]
fn every_fail_point_in_the_source_is_exercised() {
    let suite = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file!())).unwrap();
    let found = points_in_source();
    assert!(found.len() > 40, "the scan found too few points: {found:?}");
    let missing: Vec<&String> = found.iter().filter(|p| !suite.contains(&format!("\"{p}\""))).collect();
    assert!(missing.is_empty(), "fail points without a case in this suite: {missing:?}");
}
