//! A start under another routing than the one `commit.meta` was written under: another
//! `sink.shard_by`, or another number of shards.
//!
//! Records are routed to a shard when they are read, so which stream delivers a record
//! depends on the routing. Streams of one lane under two routings would deliver some records
//! twice (still in the WAL below the old shards' cursors, now routed to a new shard) and lose
//! others (past an old shard's cursor, which skipped them as another shard's, now routed to
//! it). So a new routing is taken only at a clean cut:
//!
//! - **Invariant:** every stream of every lane that holds records is at one position, the
//!   lane's end, under the old routing (all shards of it, `route` line of `commit.meta`). A
//!   drained shutdown (SIGTERM, exit 0) leaves exactly that.
//! - Then every stream of the new routing starts at its lane's end, and `commit.meta` is
//!   written under the new routing before anything is served: what was delivered stays where
//!   it is, everything after goes by the new routing.
//! - Otherwise the start is refused, saying which lane is not delivered: start again under the
//!   old routing, let it drain, then change.
//!
//! A `commit.meta` of a version that wrote no `route` line is taken as written under the
//! current routing (nothing can tell otherwise).

use crate::config::Config;
use crate::cursor::CommitMeta;
use crate::wal::identity::LaneId;
use crate::wal::Position;

use super::core::LaneInit;

/// Why a start under a new routing is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the sink's routing changed from `{from}` to `{to}` (sink.shard_by, shards) while lane {lane} \
     is not delivered everywhere ({detail}); start again with the old routing, let it drain \
     (SIGTERM, exit 0), then change it"
)]
pub struct RerouteError {
    pub from: String,
    pub to: String,
    pub lane: LaneId,
    pub detail: String,
}

/// The routing of `config`, as the `route` line of `commit.meta` spells it.
pub fn route_of(config: &Config) -> String {
    let shards = u16::try_from(super::shard_urls(config).len()).unwrap_or(u16::MAX);
    super::stream::Route { by: config.sink.shard_by, shards }.label()
}

/// `meta` to start from under `route`: unchanged if its routing is `route` (or unknown); the
/// streams of every lane at the lane's end under `route` after a clean cut (module doc), to
/// be written before serving; refused otherwise. `at_end(lane, p)`: the lane's WAL holds no
/// record from `p` on (a start opens a new segment, so a drained cursor is at the end of the
/// previous one, short of `lane.end`).
pub fn under(
    meta: Option<CommitMeta>,
    route: &str,
    lanes: &[LaneInit],
    at_end: impl Fn(&LaneInit, Position) -> bool,
) -> Result<Option<CommitMeta>, RerouteError> {
    let Some(meta) = meta else { return Ok(None) };
    let Some(old) = meta.route.clone().filter(|old| old != route) else {
        let mut same = meta;
        same.route = Some(route.to_owned());
        return Ok(Some(same));
    };
    let shards_of = |r: &str| crate::cursor::route_shards(r).unwrap_or(1);
    let (old_shards, new_shards) = (shards_of(&old), shards_of(route));
    let mut cut = CommitMeta::new(meta.identity.clone());
    cut.route = Some(route.to_owned());
    for lane in lanes {
        // A shard without a cursor for the lane has committed nothing of it.
        let committed = |s| meta.get(lane.id, s).unwrap_or_default();
        if let Some(shard) = (0..old_shards).find(|&s| !at_end(lane, committed(s))) {
            let at = meta.get(lane.id, shard).map_or("nothing".to_owned(), |p| format!("{p:?}"));
            let detail = format!("shard {shard} committed {at}, records follow up to {:?}", lane.end);
            return Err(RerouteError { from: old, to: route.to_owned(), lane: lane.id, detail });
        }
        for shard in 0..new_shards {
            cut.set(lane.id, shard, lane.end);
        }
    }
    tracing::info!(from = %old, to = %route, "sink routing changed at a clean cut: every stream starts at its lane's end");
    Ok(Some(cut))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::identity::{WalId, WalIdentity};

    fn lane(core: u16) -> LaneId {
        LaneId { core, incarnation: 9 }
    }

    /// A lane whose records end at (1, `records`); this start opened segment 2.
    fn init(core: u16) -> LaneInit {
        LaneInit { id: lane(core), live: true, end: Position::new(2, 0) }
    }

    /// Records of lane core-N end at (1, 10 * N + 40).
    fn at_end(l: &LaneInit, p: Position) -> bool {
        p >= Position::new(1, 10 * u64::from(l.id.core) + 40)
    }

    fn meta(route: Option<&str>, cursors: &[(u16, u16, u64)]) -> CommitMeta {
        let mut m = CommitMeta::new(WalIdentity { node: "n".into(), wal: WalId(5) });
        m.route = route.map(str::to_owned);
        for &(core, shard, at) in cursors {
            m.set(lane(core), shard, Position::new(1, at));
        }
        m
    }

    #[test]
    fn the_same_or_an_unknown_routing_keeps_the_cursors() {
        let m = meta(Some("domain 2"), &[(0, 0, 10), (0, 1, 20)]);
        let kept = under(Some(m.clone()), "domain 2", &[init(0)], at_end).unwrap().unwrap();
        assert_eq!(kept, m);
        let old = meta(None, &[(0, 0, 10)]);
        let taken = under(Some(old), "domain 2", &[init(0)], at_end).unwrap().unwrap();
        assert_eq!(
            (taken.route.as_deref(), taken.get(lane(0), 0)),
            (Some("domain 2"), Some(Position::new(1, 10)))
        );
        assert_eq!(under(None, "domain 2", &[init(0)], at_end), Ok(None));
    }

    #[test]
    fn a_new_routing_starts_every_stream_at_the_lane_end_after_a_drain() {
        let drained = meta(Some("domain 1"), &[(0, 0, 40), (1, 0, 50)]);
        let cut = under(Some(drained), "file_id 3", &[init(0), init(1)], at_end).unwrap().unwrap();
        assert_eq!(cut.route.as_deref(), Some("file_id 3"));
        assert_eq!(cut.cursors().len(), 6, "three shards of two lanes");
        assert!((0..3).all(|s| cut.get(lane(1), s) == Some(Position::new(2, 0))));
        // A lane nobody wrote to: no cursor anywhere, and nothing in it.
        let empty = meta(Some("domain 1"), &[]);
        let nothing = |_: &LaneInit, _: Position| true;
        assert_eq!(under(Some(empty), "domain 2", &[init(0)], nothing).unwrap().unwrap().cursors().len(), 2);
    }

    #[test]
    fn a_new_routing_is_refused_while_a_shard_is_behind() {
        let behind = meta(Some("domain 2"), &[(0, 0, 40), (0, 1, 30)]);
        let err = under(Some(behind), "domain 3", &[init(0)], at_end).unwrap_err();
        assert_eq!((err.lane, err.from.as_str(), err.to.as_str()), (lane(0), "domain 2", "domain 3"));
        assert!(err.to_string().contains("shard 1 committed"), "{err}");
        // A shard that never committed anything is behind too.
        let missing = meta(Some("domain 2"), &[(0, 0, 40)]);
        let err = under(Some(missing), "domain 1", &[init(0)], at_end).unwrap_err();
        assert!(err.detail.contains("shard 1 committed nothing"), "{err}");
    }
}
