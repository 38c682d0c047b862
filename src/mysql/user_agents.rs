//! `user_agents` rows: each distinct User-Agent text once, with what it says (family, OS,
//! device class, bot flag: `crate::ingest::user_agent::classify`), parsed once per distinct
//! UA by the sink, never on a core.
//!
//! Per delivery (`super::deliver`):
//! 1. before the transaction (autocommit, like the domains): the batch's distinct UA hashes
//!    the sink's [`UserAgents`] cache does not know are asked for, `SELECT hash FROM
//!    user_agents WHERE is_bot IS NOT NULL AND hash IN (…)`; those found (stored and classified
//!    by an earlier run, another node or lane) join the cache unparsed;
//! 2. the rest are classified (~8 µs each) and upserted inside the transaction, `INSERT …
//!    ON DUPLICATE KEY UPDATE` of the four class columns: a row stored before migration 004
//!    gets its class when the UA is next seen, and `ua` is never rewritten (the first text of
//!    a hash wins, in MySQL as here);
//! 3. after `COMMIT`, their hashes join the cache ([`UserAgents::committed`]).
//!
//! Invariants:
//! - a hash is in the cache only once its row, classified, is committed, so `events.ua_hash`
//!   never names a row that is not there;
//! - the cache is bounded (`mysql.user_agent_cache_entries`); when full it is emptied and
//!   refills (a flood of distinct UAs costs one SELECT miss each, never memory);
//! - the upserts are in hash order: parallel lanes take the rows' locks in one order and never
//!   deadlock on them; the cache is borrowed between awaits only.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::db::{cell, Db, DbError};
use super::literal::push_quoted;
use super::sql::{SqlBuffer, TooLarge};
use super::stats::MysqlStats;
use crate::ingest::client::ua_hash;
use crate::ingest::user_agent::{classify, UaClass};
use crate::sink::Batch;

const UPSERT_PREFIX: &str = "INSERT INTO user_agents (hash, ua, family, os, device, is_bot) VALUES ";
const UPSERT_SUFFIX: &str = " ON DUPLICATE KEY UPDATE family = VALUES(family), os = VALUES(os), \
device = VALUES(device), is_bot = VALUES(is_bot)";

/// A User-Agent of a batch: its hash and the first row that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchUa {
    pub hash: u64,
    pub row: usize,
}

/// The batch's distinct User-Agents, in hash order.
pub fn distinct(batch: &Batch) -> Vec<BatchUa> {
    let mut found: Vec<BatchUa> = Vec::new();
    for (row, r) in batch.rows().iter().enumerate() {
        let Some(ua) = batch.user_agent(r) else { continue };
        let hash = ua_hash(ua);
        if let Err(at) = found.binary_search_by_key(&hash, |u| u.hash) {
            found.insert(at, BatchUa { hash, row });
        }
    }
    found
}

/// Classifies each of `uas` and builds their upserts into `sql` (module doc, step 2), in the
/// order given (hash order from [`distinct`]).
pub fn build_upserts(
    batch: &Batch,
    uas: &[BatchUa],
    max_bytes: usize,
    sql: &mut SqlBuffer,
) -> Result<(), TooLarge> {
    build_classified(batch, uas, max_bytes, sql, |_, text| classify(text))
}

/// [`build_upserts`] with the class of each UA from `class_of(hash, text)`.
fn build_classified(
    batch: &Batch,
    uas: &[BatchUa],
    max_bytes: usize,
    sql: &mut SqlBuffer,
    mut class_of: impl FnMut(u64, &str) -> UaClass,
) -> Result<(), TooLarge> {
    let mut num = itoa::Buffer::new();
    for ua in uas {
        let text = batch.user_agent(&batch.rows()[ua.row]).unwrap_or_default();
        let class = class_of(ua.hash, text);
        sql.push_tuple((UPSERT_PREFIX, UPSERT_SUFFIX), max_bytes, ua.row, |out| {
            out.push(b'(');
            out.extend_from_slice(num.format(ua.hash).as_bytes());
            out.push(b',');
            push_quoted(text, out);
            push_class(&class, out);
            out.push(b')');
        })?;
    }
    sql.finish_statement(UPSERT_SUFFIX);
    Ok(())
}

/// `,family,os,device,is_bot`.
fn push_class(class: &UaClass, out: &mut Vec<u8>) {
    for name in [class.family.as_deref(), class.os.as_deref(), class.device.map(|d| d.as_str())] {
        out.push(b',');
        match name {
            Some(name) => push_quoted(name, out),
            None => out.extend_from_slice(b"NULL"),
        }
    }
    out.extend_from_slice(if class.is_bot { b",1" } else { b",0" });
}

/// The hashes known to be stored and classified; one per sink, shared by its connections.
#[derive(Debug)]
pub struct UserAgents {
    known: RefCell<HashSet<u64>>,
    max_entries: usize,
    stats: Arc<MysqlStats>,
}

impl UserAgents {
    pub fn new(max_entries: usize, stats: Arc<MysqlStats>) -> UserAgents {
        let max_entries = max_entries.max(1);
        UserAgents { known: RefCell::new(HashSet::with_capacity(max_entries.min(4096))), max_entries, stats }
    }

    /// The batch's distinct UAs that are not stored with their class yet (module doc, step 1).
    pub async fn unknown(
        &self,
        db: &mut Db,
        batch: &Batch,
        max_bytes: usize,
    ) -> Result<Vec<BatchUa>, DbError> {
        let mut missing = distinct(batch);
        missing.retain(|u| !self.known.borrow().contains(&u.hash));
        if missing.is_empty() {
            return Ok(missing);
        }
        const WHAT: &str = "select user agents";
        let mut sql = SqlBuffer::default();
        let (prefix, suffix) = ("SELECT hash FROM user_agents WHERE is_bot IS NOT NULL AND hash IN (", ")");
        let mut num = itoa::Buffer::new();
        for (i, ua) in missing.iter().enumerate() {
            sql.push_tuple((prefix, suffix), max_bytes, i, |out| {
                out.extend_from_slice(num.format(ua.hash).as_bytes())
            })?;
        }
        sql.finish_statement(suffix);
        let mut stored = Vec::new();
        for statement in sql.statements() {
            for row in db.query(WHAT, statement).await? {
                stored.push(cell::<u64>(WHAT, &row, 0)?);
            }
        }
        self.remember(&stored);
        missing.retain(|u| !stored.contains(&u.hash));
        Ok(missing)
    }

    /// Marks `uas` as stored once the transaction that upserted them committed; counts them
    /// as parsed.
    pub fn committed(&self, uas: &[BatchUa]) {
        if uas.is_empty() {
            return;
        }
        self.stats.user_agents_parsed.fetch_add(uas.len() as u64, Ordering::Relaxed);
        let hashes: Vec<u64> = uas.iter().map(|u| u.hash).collect();
        self.remember(&hashes);
    }

    fn remember(&self, hashes: &[u64]) {
        let mut known = self.known.borrow_mut();
        for &hash in hashes {
            if known.len() >= self.max_entries {
                known.clear();
                self.stats.user_agent_cache_resets.fetch_add(1, Ordering::Relaxed);
            }
            known.insert(hash);
        }
        self.stats.user_agent_cache_entries.store(known.len() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::identity::LaneId;
    use crate::wal::record::{DecodedContext, Event};
    use crate::wal::Position;

    const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

    fn batch_with(uas: &[Option<&str>]) -> Batch {
        let mut b = Batch::new(LaneId { core: 0, incarnation: 1 }, 0, Position::new(1, 0));
        let ev = Event { ts_ms: 0, event: "play", domain: "x.org", file_id: 1 };
        for (i, ua) in uas.iter().enumerate() {
            let ctx = DecodedContext { ua: ua.map(Into::into), ..DecodedContext::default() };
            b.push(&ev, &ctx, b"", Position::new(1, 10 * (i as u64 + 1)));
        }
        b
    }

    #[test]
    fn distinct_in_hash_order_with_the_first_row() {
        let b = batch_with(&[Some("b"), None, Some("a"), Some("b")]);
        let d = distinct(&b);
        let mut want = vec![BatchUa { hash: ua_hash("b"), row: 0 }, BatchUa { hash: ua_hash("a"), row: 2 }];
        want.sort_by_key(|u| u.hash);
        assert_eq!(d, want);
    }

    #[test]
    fn upsert_text_carries_the_class_and_never_rewrites_the_text() {
        let b = batch_with(&[Some("Bot 'q'"), Some(GOOGLEBOT), Some("wrk")]);
        let mut sql = SqlBuffer::default();
        build_upserts(&b, &distinct(&b), 1 << 20, &mut sql).unwrap();
        let text = String::from_utf8(sql.statements().next().unwrap().to_vec()).unwrap();
        assert!(text.starts_with(UPSERT_PREFIX) && text.ends_with(UPSERT_SUFFIX), "{text}");
        let q = ua_hash("Bot 'q'");
        assert!(text.contains(&format!("({q},'Bot \\'q\\'','misc crawler',NULL,'bot',1)")), "{text}");
        let g = ua_hash(GOOGLEBOT);
        assert!(text.contains(&format!("({g},'{GOOGLEBOT}','Googlebot',NULL,'bot',1)")), "{text}");
        assert!(text.contains(&format!("({},'wrk',NULL,NULL,NULL,0)", ua_hash("wrk"))), "{text}");
        assert!(!UPSERT_SUFFIX.contains("ua ="), "the first text of a hash wins");
        assert_eq!(sql.statements_with_rows().next().map(|(_, rows)| rows), Some(3));
    }

    #[test]
    fn the_cache_is_bounded_and_counts_what_it_parsed() {
        let stats = Arc::new(MysqlStats::default());
        let cache = UserAgents::new(2, stats.clone());
        cache.committed(&[BatchUa { hash: 1, row: 0 }, BatchUa { hash: 2, row: 1 }]);
        assert_eq!(stats.user_agents_parsed.load(Ordering::Relaxed), 2);
        assert!(cache.known.borrow().contains(&1));
        cache.committed(&[BatchUa { hash: 3, row: 0 }]);
        assert_eq!(cache.known.borrow().len(), 1, "full: emptied, then refilled");
        assert_eq!(stats.user_agent_cache_resets.load(Ordering::Relaxed), 1);
        assert_eq!(stats.user_agent_cache_entries.load(Ordering::Relaxed), 1);
    }
}
