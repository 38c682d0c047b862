//! Domain name → id: a bounded cache and its resolution against MySQL, shared by every
//! connection of the sink.
//!
//! Resolution ([`DomainResolver::resolve`]): cache hits first; the names the cache does not
//! know get one `INSERT IGNORE` and one `SELECT … WHERE name IN`, outside the event
//! transaction. Both are idempotent, so connections inserting the same new name at the same
//! time all end with the one id MySQL kept (the unique key decides; an `INSERT IGNORE` that
//! meets another session's uncommitted insert of the name waits for it). The cache is only
//! borrowed between awaits, never across one (one thread, several connections' futures).
//!
//! Eviction policy: two generations. Lookups hit `young` then `old`; a hit in `old` is
//! promoted to `young`. When `young` reaches half the bound, `old` is dropped and `young`
//! becomes `old`. So the cache never holds more than `capacity` entries, every operation is
//! O(1), and a name used at least once per half-capacity of distinct names stays cached — an
//! approximation of LRU without per-entry bookkeeping.
//!
//! Ids never change once assigned (domains are never deleted), so a cached id is never stale.
//!
//! Each entry counts its hits (lookups answered from the cache) for `/debug/domain-cache`;
//! the count lives and dies with the entry, so an evicted and reloaded name starts at 0.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Serialize;

use super::db::{cell, Db, DbError};
use super::sql::{self, SqlBuffer};
use super::stats::MysqlStats;
use crate::clock::unix_ms;
use crate::sink::Batch;

/// One cached name: its id and how many lookups it answered.
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: u32,
    hits: u64,
}

/// Bounded name → id map (see module doc for the eviction policy).
#[derive(Debug)]
pub struct DomainCache {
    young: HashMap<Box<str>, Entry>,
    old: HashMap<Box<str>, Entry>,
    /// Entries per generation; the whole cache holds at most twice this.
    generation_entries: usize,
}

impl DomainCache {
    /// A cache holding at most `capacity` entries (2 when `capacity` is 1).
    pub fn new(capacity: usize) -> DomainCache {
        let generation_entries = (capacity / 2).max(1);
        DomainCache { young: HashMap::new(), old: HashMap::new(), generation_entries }
    }

    /// Most entries the cache holds.
    pub fn capacity(&self) -> usize {
        self.generation_entries * 2
    }

    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id of `name`, promoting it if it was in the old generation. Counts a hit.
    pub fn get(&mut self, name: &str) -> Option<u32> {
        if let Some(entry) = self.young.get_mut(name) {
            entry.hits += 1;
            return Some(entry.id);
        }
        let (key, mut entry) = self.old.remove_entry(name)?;
        entry.hits += 1;
        self.insert_young(key, entry);
        Some(entry.id)
    }

    pub fn insert(&mut self, name: &str, id: u32) {
        if let Some(slot) = self.young.get_mut(name) {
            slot.id = id;
            return;
        }
        let hits = self.old.remove(name).map_or(0, |e| e.hits);
        self.insert_young(name.into(), Entry { id, hits });
    }

    fn insert_young(&mut self, name: Box<str>, entry: Entry) {
        if self.young.len() >= self.generation_entries {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(name, entry);
    }

    /// The `n` cached names with the most hits, most first (ties by name).
    pub fn top_by_hits(&self, n: usize) -> Vec<DomainHits> {
        let mut all: Vec<(&str, &Entry)> =
            self.young.iter().chain(self.old.iter()).map(|(k, e)| (&**k, e)).collect();
        let by_hits = |a: &(&str, &Entry), b: &(&str, &Entry)| b.1.hits.cmp(&a.1.hits).then(a.0.cmp(b.0));
        if all.len() > n && n > 0 {
            all.select_nth_unstable_by(n - 1, by_hits);
        }
        all.truncate(n);
        all.sort_unstable_by(by_hits);
        all.into_iter()
            .map(|(name, e)| DomainHits { name: name.to_owned(), id: e.id, hits: e.hits })
            .collect()
    }
}

/// A cached name and its hit count, as `/debug/domain-cache` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DomainHits {
    pub name: String,
    pub id: u32,
    pub hits: u64,
}

/// What the sink last published about its cache, read by `/debug/domain-cache`. The cache
/// itself lives on the flusher thread; this copy is refreshed at most once per flush interval.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DomainCacheSnapshot {
    pub size: usize,
    pub capacity: usize,
    /// Unix ms of the last preload from MySQL (0: never loaded).
    pub last_load_unix_ms: u64,
    /// Unix ms of the last time names missing from the cache were fetched from MySQL.
    pub last_refresh_unix_ms: u64,
    /// Unix ms when this snapshot was taken.
    pub published_unix_ms: u64,
    pub top: Vec<DomainHits>,
}

/// The cache and how it is filled; one per sink, shared by its connections (`Rc`).
#[derive(Debug)]
pub struct DomainResolver {
    cache: RefCell<DomainCache>,
    stats: Arc<MysqlStats>,
    /// Shortest time between two published snapshots (`mysql.flush_interval_ms`).
    publish_interval_ms: u64,
}

impl DomainResolver {
    pub fn new(capacity: usize, stats: Arc<MysqlStats>, publish_interval_ms: u64) -> DomainResolver {
        DomainResolver { cache: RefCell::new(DomainCache::new(capacity)), stats, publish_interval_ms }
    }

    /// Loads up to the cache's capacity of the most recently created domains.
    pub async fn preload(&self, db: &mut Db) -> Result<(), DbError> {
        const WHAT: &str = "preload domains";
        let capacity = self.cache.borrow().capacity();
        let mut text = b"SELECT id, name FROM domains ORDER BY id DESC LIMIT ".to_vec();
        text.extend_from_slice(itoa::Buffer::new().format(capacity).as_bytes());
        let rows = db.query(WHAT, &text).await?;
        let decoded: Vec<(u32, String)> = rows
            .iter()
            .map(|r| Ok((cell(WHAT, r, 0)?, cell(WHAT, r, 1)?)))
            .collect::<Result<_, DbError>>()?;
        let mut cache = self.cache.borrow_mut();
        for (id, name) in decoded.iter().rev() {
            cache.insert(name, *id);
        }
        self.stats.domain_cache_loaded_unix_ms.store(unix_ms(), Ordering::Relaxed);
        self.stats.publish_domain_cache(&cache, unix_ms(), 0);
        Ok(())
    }

    /// Fills `ids` with the domain id of each row of `batch`, inserting unknown names.
    pub async fn resolve(
        &self,
        db: &mut Db,
        batch: &Batch,
        max_bytes: usize,
        ids: &mut Vec<u32>,
    ) -> Result<(), DbError> {
        let missing = self.cached_ids(batch, ids);
        if missing.is_empty() {
            return Ok(());
        }
        let mut names: Vec<&str> = missing.iter().map(|&i| batch.domain(&batch.rows()[i])).collect();
        names.sort_unstable();
        names.dedup();
        let found = fetch_ids(db, &names, max_bytes).await?;
        let mut cache = self.cache.borrow_mut();
        for &i in &missing {
            let name = batch.domain(&batch.rows()[i]);
            let id = *found.get(name).ok_or_else(|| DbError::DomainMissing(name.to_owned()))?;
            ids[i] = id;
            cache.insert(name, id);
        }
        self.stats.domain_cache_refreshed_unix_ms.store(unix_ms(), Ordering::Relaxed);
        // New names are rare and change the picture: shown at once, not at the next interval.
        self.stats.publish_domain_cache(&cache, unix_ms(), 0);
        Ok(())
    }

    /// Ids from the cache (0 where it misses); returns the rows it missed.
    fn cached_ids(&self, batch: &Batch, ids: &mut Vec<u32>) -> Vec<usize> {
        ids.clear();
        let mut missing = Vec::new();
        let mut cache = self.cache.borrow_mut();
        for (i, row) in batch.rows().iter().enumerate() {
            let id = cache.get(batch.domain(row));
            ids.push(id.unwrap_or(0));
            if id.is_none() {
                missing.push(i);
            }
        }
        let misses = missing.len() as u64;
        self.stats.domain_cache_hits.fetch_add(batch.len() as u64 - misses, Ordering::Relaxed);
        self.stats.domain_cache_misses.fetch_add(misses, Ordering::Relaxed);
        if missing.is_empty() {
            self.stats.publish_domain_cache(&cache, unix_ms(), self.publish_interval_ms);
        }
        missing
    }
}

/// Inserts `names` (sorted, distinct) and reads their ids back.
async fn fetch_ids(db: &mut Db, names: &[&str], max_bytes: usize) -> Result<HashMap<String, u32>, DbError> {
    const WHAT: &str = "select domains";
    let mut statements = SqlBuffer::default();
    sql::build_domain_inserts(names.iter().copied(), max_bytes, &mut statements)?;
    for statement in statements.statements() {
        db.execute("insert domains", statement).await?;
    }
    statements.clear();
    sql::build_domain_selects(names.iter().copied(), max_bytes, &mut statements)?;
    let mut found = HashMap::with_capacity(names.len());
    for statement in statements.statements() {
        for row in db.query(WHAT, statement).await? {
            found.insert(cell::<String>(WHAT, &row, 1)?, cell::<u32>(WHAT, &row, 0)?);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_bounded_and_keeps_hot_names() {
        let mut c = DomainCache::new(10);
        c.insert("hot", 1);
        for i in 0..100u32 {
            c.insert(&format!("d{i}.org"), i + 2);
            assert_eq!(c.get("hot"), Some(1), "hot name evicted at {i}");
            assert!(c.len() <= c.capacity());
        }
        assert_eq!(c.get("d0.org"), None, "cold name evicted");
        assert_eq!(c.get("d99.org"), Some(101));
    }

    #[test]
    fn top_by_hits_orders_by_hits_and_keeps_counts_on_promotion() {
        let mut c = DomainCache::new(100);
        c.insert("a.org", 1);
        c.insert("b.org", 2);
        c.insert("c.org", 3);
        for _ in 0..3 {
            c.get("b.org");
        }
        c.get("c.org");
        let top = c.top_by_hits(2);
        assert_eq!(top.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["b.org", "c.org"]);
        assert_eq!(top[0].hits, 3);
        assert_eq!(top[0].id, 2);
        assert_eq!(c.top_by_hits(10).len(), 3);
    }

    #[test]
    fn capacity_one_still_works() {
        let mut c = DomainCache::new(1);
        c.insert("a", 1);
        c.insert("b", 2);
        assert!(c.len() <= 2);
        assert_eq!(c.get("b"), Some(2));
    }
}
