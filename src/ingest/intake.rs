//! The hand-off from `http` to the WAL, one per core: validated events go into the core's
//! open WAL tick ([`GroupCommit`]), and the caller gets the tick's [`Ticket`] back to wait on
//! before it answers. `http` parses requests and renders answers; what an event is, and where
//! it goes, is decided here. The flow is one way: http → ingest → wal.
//!
//! Invariants:
//! - nothing reaches the tick unless it passed validation (`parse_beacon`, or a body already
//!   validated whole by `ingest::body`);
//! - events accepted with no await in between share one tick and so one WAL write; a batch is
//!   appended in one call, so it is never split across writes;
//! - a ticket is handed out only for a tick that holds at least one record (a ticket of an empty
//!   tick would never complete);
//! - while the WAL refuses ([`Intake::is_refusing`]: disk budget used up, writes failing) the
//!   caller answers 503 and appends nothing;
//! - with `ingest.drop_bots`, a valid event from a bot User-Agent is answered like a stored one
//!   ([`Accepted::Bot`], 204) but appends nothing; the verdict is the core's [`BotCache`], so
//!   each distinct UA is parsed once per core, and without `drop_bots` never;
//! - a compressed body is decoded here ([`Intake::decode_body`]) with the core's one decoder,
//!   within `http.max_body_bytes` and `http.max_decompression_ratio`, before it is parsed.
//!
//! Lives on one core thread (`Rc`), like the tick it feeds.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use super::encoding::{BodyDecoder, Coding, DecodeError, DecodeLimits};
use super::user_agent::BotCache;
use super::{parse_beacon, Beacon, EventAllowlist, QueryScratch, Rejection, Rules};
use crate::config::Config;
use crate::metrics::CoreCounters;
use crate::wal::group::{GroupCommit, Ticket};
use crate::wal::record::Context;

/// What a core's intake applies, from the config.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `ingest.events` and `ingest.require_event_id`.
    pub rules: Rules,
    /// `http.max_body_bytes` and `http.max_decompression_ratio`.
    pub decode: DecodeLimits,
    /// `ingest.bot_cache_entries` when `ingest.drop_bots` is on; `None`: bots are stored.
    pub drop_bots: Option<usize>,
}

impl Policy {
    pub fn from_config(cfg: &Config) -> Policy {
        Policy {
            rules: Rules {
                allow: EventAllowlist::new(&cfg.ingest.events),
                require_event_id: cfg.ingest.require_event_id,
            },
            decode: DecodeLimits {
                max_bytes: cfg.http.max_body_bytes,
                max_ratio: cfg.http.max_decompression_ratio,
            },
            drop_bots: cfg.ingest.drop_bots.then_some(cfg.ingest.bot_cache_entries),
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::from_config(&Config::default())
    }
}

/// What became of a valid event.
#[derive(Debug)]
#[must_use]
pub enum Accepted {
    /// In the open tick: answer once the ticket completes.
    Stored(Ticket),
    /// From a bot, with `ingest.drop_bots`: answer 204, store nothing.
    Bot,
}

/// One core's door into its WAL.
pub struct Intake {
    policy: Policy,
    /// The core's open tick, shared with its tick writer (`crate::wal::tick_writer`).
    group: Rc<GroupCommit>,
    /// The core's body decoder: one for all its connections (decoding never awaits).
    bodies: RefCell<BodyDecoder>,
    /// Verdicts by UA hash, with `ingest.drop_bots`.
    bots: Option<RefCell<BotCache>>,
    /// The core's counters (body codings, bombs, bot-cache resets).
    counters: Arc<CoreCounters>,
}

impl Intake {
    pub fn new(policy: Policy, group: Rc<GroupCommit>, counters: Arc<CoreCounters>) -> Self {
        let bots = policy.drop_bots.map(|entries| RefCell::new(BotCache::new(entries)));
        Self { policy, group, bodies: RefCell::default(), bots, counters }
    }

    /// The validation rules, for body parsers that validate a batch whole first.
    pub fn rules(&self) -> &Rules {
        &self.policy.rules
    }

    /// True while the core's WAL takes no events (answer 503 `wal_full`).
    pub fn is_refusing(&self) -> bool {
        self.group.is_refusing()
    }

    /// True when the open tick is past its soft bound: wait with [`Self::room`] before
    /// accepting more.
    pub fn is_full(&self) -> bool {
        self.group.is_full()
    }

    /// Waits until the WAL write in flight has finished.
    pub async fn room(&self) {
        self.group.room().await
    }

    /// Validates a beacon's query string (stamped `now_ms`) and appends it, with the client
    /// context that `context` builds (called only for a valid event), to the open tick, unless
    /// `user_agent` (the raw header) is a bot to drop.
    pub fn accept_query<'c>(
        &self,
        query: &str,
        now_ms: u64,
        scratch: &mut QueryScratch,
        user_agent: Option<&[u8]>,
        context: impl FnOnce() -> Context<'c>,
    ) -> Result<Accepted, Rejection> {
        let Beacon { event, event_id } = parse_beacon(query, now_ms, &self.policy.rules, scratch)?;
        if self.is_dropped_bot(user_agent) {
            return Ok(Accepted::Bot);
        }
        Ok(Accepted::Stored(self.group.append(&event, &Context { event_id, ..context() })))
    }

    /// Whether `ingest.drop_bots` is on and `user_agent` is a bot (`crate::ingest::user_agent`).
    fn is_dropped_bot(&self, user_agent: Option<&[u8]>) -> bool {
        // The header is read (UTF-8 checked, trimmed) only when bots are dropped at all.
        let Some(bots) = &self.bots else {
            return false;
        };
        let Some(ua) = user_agent.and_then(super::client::user_agent) else {
            return false;
        };
        let mut bots = bots.borrow_mut();
        let resets = bots.resets();
        let verdict = bots.is_bot(ua);
        if bots.resets() != resets {
            self.counters.count_limit_hit("bot_cache_entries");
        }
        verdict
    }

    /// Replaces `body`, encoded with `coding`, by its decoded bytes (identity: unchanged),
    /// counting the coding, the bytes and any bomb refused.
    pub fn decode_body(&self, coding: Coding, body: &mut Vec<u8>) -> Result<(), DecodeError> {
        let codings = &self.counters.codings;
        if coding == Coding::Identity {
            codings.count_body(coding, body.len(), body.len());
            return Ok(());
        }
        let mut decoder = self.bodies.borrow_mut();
        match decoder.decode(coding, body, self.policy.decode) {
            Ok(decoded) => {
                codings.count_body(coding, body.len(), decoded.len());
                body.clear();
                body.extend_from_slice(decoded);
                Ok(())
            }
            Err(e) => {
                if e.is_bomb() {
                    codings.count_bomb();
                    let limit =
                        if e == DecodeError::TooLarge { "decompressed_bytes" } else { "decompression_ratio" };
                    self.counters.count_limit_hit(limit);
                }
                Err(e)
            }
        }
    }

    /// Appends beacons already validated whole, each with `context` and its own event id, to
    /// the open tick, unless `user_agent` is a bot to drop. Returns how many, and what became
    /// of them if there was at least one.
    pub fn accept_batch<'e>(
        &self,
        beacons: impl ExactSizeIterator<Item = Beacon<'e>>,
        user_agent: Option<&[u8]>,
        context: &Context<'_>,
    ) -> (u32, Option<Accepted>) {
        let n = u32::try_from(beacons.len()).unwrap_or(u32::MAX);
        if n > 0 && self.is_dropped_bot(user_agent) {
            return (n, Some(Accepted::Bot));
        }
        let mut ticket = None;
        for Beacon { event, event_id } in beacons {
            ticket = Some(self.group.append(&event, &Context { event_id, ..*context }));
        }
        (n, ticket.map(Accepted::Stored))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::group::TickOutcome;
    use crate::wal::record::{decode, scan};

    fn intake_with(policy: Policy, group: &Rc<GroupCommit>) -> (Intake, Arc<CoreCounters>) {
        let counters = Arc::new(CoreCounters::default());
        (Intake::new(policy, group.clone(), counters.clone()), counters)
    }

    fn take_tick(group: &GroupCommit) -> Vec<u8> {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().build().expect("runtime");
        let (bytes, tick) = rt.block_on(group.next_tick(Vec::new())).expect("a tick");
        tick.complete(TickOutcome::Written);
        bytes
    }

    #[test]
    fn a_valid_query_is_appended_with_its_context_and_an_invalid_one_is_not() {
        let group = Rc::new(GroupCommit::new(1 << 20));
        let rules =
            Rules { allow: crate::ingest::EventAllowlist::new(&["play".into()]), require_event_id: false };
        let (intake, _) = intake_with(Policy { rules, ..Policy::default() }, &group);
        let mut scratch = QueryScratch::new();
        let ctx = Context { ip: Some("192.0.2.1"), ..Context::NONE };
        let built = std::cell::Cell::new(0);
        let refused = intake.accept_query("event=stop&domain=a.org&file_id=1", 5, &mut scratch, None, || {
            built.set(built.get() + 1);
            ctx
        });
        assert_eq!(refused.err(), Some(Rejection::EventNotAllowed));
        assert_eq!(built.get(), 0, "no context is built for an invalid event");
        let stored = intake.accept_query(
            "event=play&domain=A.org&file_id=7",
            5,
            &mut scratch,
            Some(b"curl/8"),
            || ctx,
        );
        assert!(matches!(stored, Ok(Accepted::Stored(_))), "bots are stored by default");
        let bytes = take_tick(&group);
        assert_eq!(scan(&bytes).records, 1, "only the valid event is in the tick");
        let (event, context, _) = decode(&bytes).expect("a record");
        assert_eq!((event.domain, event.file_id, context.ip), ("a.org", 7, Some("192.0.2.1")));
    }

    #[test]
    fn a_batch_lands_in_one_tick_and_an_empty_one_gets_no_ticket() {
        let group = Rc::new(GroupCommit::new(1 << 20));
        let (intake, _) = intake_with(Policy::default(), &group);
        let id = crate::event_id::EventId::parse(&[b'7'; 32]).ok();
        let events = (1..=3).map(|file_id| Beacon {
            event: crate::wal::record::Event { ts_ms: 1, event: "play", domain: "a.org", file_id },
            event_id: id.filter(|_| file_id == 2),
        });
        let (n, accepted) = intake.accept_batch(events.collect::<Vec<_>>().into_iter(), None, &Context::NONE);
        assert_eq!(n, 3);
        assert!(matches!(accepted, Some(Accepted::Stored(_))));
        let bytes = take_tick(&group);
        assert_eq!(scan(&bytes).records, 3);
        let second = &bytes[decode(&bytes).expect("first").2..];
        assert_eq!(decode(second).expect("second").1.event_id, id, "each beacon its own id");
        let (n, accepted) = intake.accept_batch(std::iter::empty(), None, &Context::NONE);
        assert_eq!((n, accepted.is_none()), (0, true));
    }

    #[test]
    fn bots_are_dropped_only_with_drop_bots() {
        let group = Rc::new(GroupCommit::new(1 << 20));
        let (intake, counters) = intake_with(Policy { drop_bots: Some(1), ..Policy::default() }, &group);
        let mut scratch = QueryScratch::new();
        let googlebot = b"Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
        let q = "event=play&domain=a.org&file_id=1";
        let bot = intake.accept_query(q, 1, &mut scratch, Some(googlebot), || Context::NONE);
        assert!(matches!(bot, Ok(Accepted::Bot)));
        let bad = intake.accept_query("event=play", 1, &mut scratch, Some(googlebot), || Context::NONE);
        assert!(bad.is_err(), "invalid input is a 400 even from a bot");
        let batch = [Beacon {
            event: crate::wal::record::Event { ts_ms: 1, event: "play", domain: "a.org", file_id: 2 },
            event_id: None,
        }];
        assert!(matches!(
            intake.accept_batch(batch.into_iter(), Some(googlebot), &Context::NONE),
            (1, Some(Accepted::Bot))
        ));
        let human = intake.accept_query(
            q,
            1,
            &mut scratch,
            Some(b"Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"),
            || Context::NONE,
        );
        assert!(matches!(human, Ok(Accepted::Stored(_))));
        assert!(matches!(
            intake.accept_query(q, 1, &mut scratch, None, || Context::NONE),
            Ok(Accepted::Stored(_))
        ));
        assert_eq!(scan(&take_tick(&group)).records, 2, "nothing of the bots");
        let t = crate::metrics::sum([&*counters]);
        let slot = crate::metrics::LIMITS.iter().position(|&l| l == "bot_cache_entries").unwrap();
        assert_eq!(t.limit_hits[slot], 1, "a one-entry cache started over once");
    }

    #[test]
    fn bodies_are_decoded_counted_and_bombs_refused() {
        use std::io::Write;
        let group = Rc::new(GroupCommit::new(1 << 20));
        let decode = DecodeLimits { max_bytes: 1000, max_ratio: 100 };
        let (intake, counters) = intake_with(Policy { decode, ..Policy::default() }, &group);
        let plain = b"event=play&domain=a.org&file_id=1".to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain).unwrap();
        let mut body = gz.finish().unwrap();
        let encoded_len = body.len();
        intake.decode_body(Coding::Gzip, &mut body).unwrap();
        assert_eq!(body, plain);
        let mut same = plain.clone();
        intake.decode_body(Coding::Identity, &mut same).unwrap();
        assert_eq!(same, plain);
        let mut zeros = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        zeros.write_all(&[0u8; 5000]).unwrap();
        let mut bomb = zeros.finish().unwrap();
        assert_eq!(intake.decode_body(Coding::Gzip, &mut bomb), Err(DecodeError::TooLarge));
        let t = crate::metrics::sum([&*counters]).codings;
        assert_eq!((t.bodies, t.bombs), ([1, 1, 0], 1));
        assert_eq!((t.bytes_in[1], t.bytes_out[1]), (encoded_len as u64, plain.len() as u64));
    }

    #[test]
    fn refusal_follows_the_wal() {
        let group = Rc::new(GroupCommit::new(1 << 20));
        let (intake, _) = intake_with(Policy::default(), &group);
        assert!(!intake.is_refusing());
        group.set_refusing(true);
        assert!(intake.is_refusing());
    }
}
