//! `core-N/LANE`: which incarnation of a lane a core directory holds.
//!
//! ```text
//! psc-lane 1
//! core 3
//! incarnation 9f86d081884c7d65
//! end
//! ```
//!
//! Cursors are keyed by `(WAL id, incarnation)`, so the incarnation must change whenever the
//! segment numbers of a directory start again from 1, or an old cursor could skip new records.
//! [`open_lane`] therefore gives a new incarnation to
//! - a directory that has none (new, or written by the previous version: its segments are
//!   kept and belong to the new incarnation, whose cursor `commit.meta`'s upgrade carries over);
//! - a directory with a `LANE` file but no segment: a lane that `crate::compact::remove_lane`
//!   was removing when the process stopped. Nothing of the old incarnation is left to deliver.
//!
//! Invariant: after [`open_lane`] the directory exists and its `LANE` file is durable
//! (`super::durable::write_atomic`) before any segment is created in it.

use std::path::{Path, PathBuf};

use super::durable::{atomic_points, create_dir, write_atomic};
use super::identity::{parse_fields, random_u64, read_small_file, IdentityError, LaneId};
use super::segment::{core_dir, list_segments};
use super::WalError;
use crate::failpoint;

/// File name inside `core-N/`.
pub const LANE_FILE: &str = "LANE";
const LANE_HEADER: &str = "psc-lane 1";

/// `<core_dir>/LANE`.
pub fn lane_path(core_dir: &Path) -> PathBuf {
    core_dir.join(LANE_FILE)
}

/// The text of a `LANE` file.
pub fn render_lane(lane: LaneId) -> String {
    format!("{LANE_HEADER}\ncore {}\nincarnation {:016x}\nend\n", lane.core, lane.incarnation)
}

/// Inverse of [`render_lane`]; `Err((line, reason))`.
pub fn parse_lane(text: &str) -> Result<LaneId, (usize, &'static str)> {
    let [core, incarnation] = parse_fields(text, LANE_HEADER, ["core", "incarnation"])?;
    let core = core.parse().ok().filter(|c: &u16| c.to_string() == core).ok_or((2, "bad core number"))?;
    let incarnation = super::identity::parse_hex(incarnation, 16).map_err(|_| (3, "bad incarnation"))?;
    Ok(LaneId { core, incarnation: incarnation as u64 })
}

/// Reads `<core_dir>/LANE`; `Ok(None)` if there is none.
pub fn read_lane(core_dir: &Path) -> Result<Option<LaneId>, IdentityError> {
    let path = lane_path(core_dir);
    let Some(text) = read_small_file(&path, "lane.read")? else {
        return Ok(None);
    };
    parse_lane(&text).map(Some).map_err(|(line, reason)| IdentityError::Corrupt { path, line, reason })
}

/// The lane of `<wal_dir>/core-N`, creating the directory and its `LANE` file as needed (see
/// the module doc for when the incarnation is new).
pub fn open_lane(wal_dir: &Path, core: u16) -> Result<LaneId, IdentityError> {
    let dir = core_dir(wal_dir, core);
    create_dir(&dir, "lane.mkdir")?;
    let segments =
        failpoint::io("lane.list").and_then(|()| list_segments(&dir)).map_err(WalError::io(&dir))?;
    match read_lane(&dir)? {
        Some(lane) if lane.core != core => {
            return Err(IdentityError::LaneMismatch {
                path: lane_path(&dir),
                expected: core,
                found: lane.core,
            })
        }
        Some(lane) if !segments.is_empty() => return Ok(lane),
        Some(old) => tracing::info!(lane = %old, "lane without segments (removed half-way): new incarnation"),
        None if !segments.is_empty() => {
            tracing::info!(dir = %dir.display(), "lane of the previous WAL version: LANE file created")
        }
        None => {}
    }
    let lane = LaneId { core, incarnation: random_u64()? };
    write_atomic(&dir, LANE_FILE, render_lane(lane).as_bytes(), atomic_points!("lane"))?;
    Ok(lane)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::segment::segment_path;

    #[test]
    fn lane_text_pairs_up() {
        for lane in [LaneId { core: 0, incarnation: 0 }, LaneId { core: u16::MAX, incarnation: u64::MAX }] {
            assert_eq!(parse_lane(&render_lane(lane)), Ok(lane));
        }
        for bad in [
            "psc-lane 1\ncore 01\nincarnation 0000000000000000\nend\n",
            "psc-lane 1\ncore 1\nincarnation 00\nend\n",
            "psc-lane 1\ncore 1\nincarnation 0000000000000000\n",
        ] {
            assert!(parse_lane(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_lane_keeps_its_incarnation_while_it_has_segments() {
        let wal = tempfile::tempdir().unwrap();
        let lane = open_lane(wal.path(), 2).unwrap();
        assert_eq!(lane.core, 2);
        assert!(lane_path(&core_dir(wal.path(), 2)).is_file(), "created with the directory");
        std::fs::write(segment_path(&core_dir(wal.path(), 2), 1), b"").unwrap();
        assert_eq!(open_lane(wal.path(), 2).unwrap(), lane);
        assert_eq!(read_lane(&core_dir(wal.path(), 2)).unwrap(), Some(lane));
    }

    #[test]
    fn a_lane_without_segments_and_a_previous_version_lane_get_new_incarnations() {
        let wal = tempfile::tempdir().unwrap();
        let first = open_lane(wal.path(), 0).unwrap();
        let second = open_lane(wal.path(), 0).unwrap();
        assert_ne!(first.incarnation, second.incarnation, "no segment: nothing of the old one to keep");

        let old = core_dir(wal.path(), 1);
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(segment_path(&old, 4), b"x").unwrap();
        let lane = open_lane(wal.path(), 1).unwrap();
        assert_eq!(read_lane(&old).unwrap(), Some(lane));
        assert_eq!(std::fs::read(segment_path(&old, 4)).unwrap(), b"x", "segments are kept");
    }

    #[test]
    fn a_renamed_core_directory_is_refused() {
        let wal = tempfile::tempdir().unwrap();
        open_lane(wal.path(), 1).unwrap();
        std::fs::write(segment_path(&core_dir(wal.path(), 1), 1), b"").unwrap();
        std::fs::rename(core_dir(wal.path(), 1), core_dir(wal.path(), 5)).unwrap();
        let err = open_lane(wal.path(), 5).unwrap_err();
        assert!(matches!(err, IdentityError::LaneMismatch { expected: 5, found: 1, .. }), "{err}");
    }
}
