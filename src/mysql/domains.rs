//! The flusher's domain name → id cache.
//!
//! Eviction policy: two generations. Lookups hit `young` then `old`; a hit in `old` is
//! promoted to `young`. When `young` reaches half the bound, `old` is dropped and `young`
//! becomes `old`. So the cache never holds more than `capacity` entries, every operation is
//! O(1), and a name used at least once per half-capacity of distinct names stays cached — an
//! approximation of LRU without per-entry bookkeeping.
//!
//! Ids never change once assigned (domains are never deleted), so a cached id is never stale.

use std::collections::HashMap;

/// Bounded name → id map (see module doc for the eviction policy).
#[derive(Debug)]
pub struct DomainCache {
    young: HashMap<Box<str>, u32>,
    old: HashMap<Box<str>, u32>,
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

    /// The id of `name`, promoting it if it was in the old generation.
    pub fn get(&mut self, name: &str) -> Option<u32> {
        if let Some(&id) = self.young.get(name) {
            return Some(id);
        }
        let (key, id) = self.old.remove_entry(name)?;
        self.insert_young(key, id);
        Some(id)
    }

    pub fn insert(&mut self, name: &str, id: u32) {
        if let Some(slot) = self.young.get_mut(name) {
            *slot = id;
            return;
        }
        self.old.remove(name);
        self.insert_young(name.into(), id);
    }

    fn insert_young(&mut self, name: Box<str>, id: u32) {
        if self.young.len() >= self.generation_entries {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(name, id);
    }
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
    fn capacity_one_still_works() {
        let mut c = DomainCache::new(1);
        c.insert("a", 1);
        c.insert("b", 2);
        assert!(c.len() <= 2);
        assert_eq!(c.get("b"), Some(2));
    }
}
