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
//!   caller answers 503 and appends nothing.
//!
//! Lives on one core thread (`Rc`), like the tick it feeds.

use std::rc::Rc;

use super::{parse_beacon, Beacon, QueryScratch, Rejection, Rules};
use crate::wal::group::{GroupCommit, Ticket};
use crate::wal::record::Context;

/// One core's door into its WAL.
pub struct Intake {
    /// `ingest.events` and `ingest.require_event_id`.
    rules: Rules,
    /// The core's open tick, shared with its tick writer (`crate::wal::tick_writer`).
    group: Rc<GroupCommit>,
}

impl Intake {
    pub fn new(rules: Rules, group: Rc<GroupCommit>) -> Self {
        Self { rules, group }
    }

    /// The validation rules, for body parsers that validate a batch whole first.
    pub fn rules(&self) -> &Rules {
        &self.rules
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
    /// context that `context` builds (called only for a valid event), to the open tick.
    pub fn accept_query<'c>(
        &self,
        query: &str,
        now_ms: u64,
        scratch: &mut QueryScratch,
        context: impl FnOnce() -> Context<'c>,
    ) -> Result<Ticket, Rejection> {
        let Beacon { event, event_id } = parse_beacon(query, now_ms, &self.rules, scratch)?;
        Ok(self.group.append(&event, &Context { event_id, ..context() }))
    }

    /// Appends beacons already validated whole, each with `context` and its own event id, to
    /// the open tick. Returns how many, and the ticket if there was at least one.
    pub fn accept_batch<'e>(
        &self,
        beacons: impl Iterator<Item = Beacon<'e>>,
        context: &Context<'_>,
    ) -> (u32, Option<Ticket>) {
        let mut ticket = None;
        let mut n = 0;
        for Beacon { event, event_id } in beacons {
            ticket = Some(self.group.append(&event, &Context { event_id, ..*context }));
            n += 1;
        }
        (n, ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::group::TickOutcome;
    use crate::wal::record::{decode_with_context, scan};

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
        let intake = Intake::new(rules, group.clone());
        let mut scratch = QueryScratch::new();
        let ctx = Context { ip: Some("192.0.2.1"), ..Context::NONE };
        let built = std::cell::Cell::new(0);
        let refused = intake.accept_query("event=stop&domain=a.org&file_id=1", 5, &mut scratch, || {
            built.set(built.get() + 1);
            ctx
        });
        assert_eq!(refused.err(), Some(Rejection::EventNotAllowed));
        assert_eq!(built.get(), 0, "no context is built for an invalid event");
        let ticket = intake.accept_query("event=play&domain=A.org&file_id=7", 5, &mut scratch, || ctx);
        assert!(ticket.is_ok());
        let bytes = take_tick(&group);
        assert_eq!(scan(&bytes).records, 1, "only the valid event is in the tick");
        let (event, context, _) = decode_with_context(&bytes).expect("a record");
        assert_eq!((event.domain, event.file_id, context.ip), ("a.org", 7, Some("192.0.2.1")));
    }

    #[test]
    fn a_batch_lands_in_one_tick_and_an_empty_one_gets_no_ticket() {
        let group = Rc::new(GroupCommit::new(1 << 20));
        let intake = Intake::new(Rules::default(), group.clone());
        let id = crate::event_id::EventId::parse(&[b'7'; 32]).ok();
        let events = (1..=3).map(|file_id| Beacon {
            event: crate::wal::record::Event { ts_ms: 1, event: "play", domain: "a.org", file_id },
            event_id: id.filter(|_| file_id == 2),
        });
        let (n, ticket) = intake.accept_batch(events, &Context::NONE);
        assert_eq!(n, 3);
        assert!(ticket.is_some());
        let bytes = take_tick(&group);
        assert_eq!(scan(&bytes).records, 3);
        let second = &bytes[decode_with_context(&bytes).expect("first").2..];
        assert_eq!(decode_with_context(second).expect("second").1.event_id, id, "each beacon its own id");
        let (n, ticket) = intake.accept_batch(std::iter::empty(), &Context::NONE);
        assert_eq!((n, ticket.is_none()), (0, true));
    }

    #[test]
    fn refusal_follows_the_wal() {
        let group = Rc::new(GroupCommit::new(1 << 20));
        let intake = Intake::new(Rules::default(), group.clone());
        assert!(!intake.is_refusing());
        group.set_refusing(true);
        assert!(intake.is_refusing());
    }
}
