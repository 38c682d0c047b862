//! Validation of a beacon's query string into an [`Event`].
//! Pure functions, no IO; nothing invalid leaves this module.
//!
//! Rules for `/log?event=…&domain=…&file_id=…`:
//! - the query is split on `&`, each pair on its first `=`; empty pairs (`a=1&&b=2`) are
//!   skipped and a pair without `=` has an empty value;
//! - names are percent-decoded (`+` is a space, as in form encoding) and compared exactly
//!   (case-sensitive); a bad escape (`%zz`, `%4`) in any name rejects the query;
//! - `event`, `domain` and `file_id` must each appear exactly once with a non-empty value;
//!   other parameters are ignored, values included (cache busters and the like are never
//!   decoded, so they cannot cause a rejection);
//! - values are percent-decoded the same way; an `event` or `domain` that does not decode to
//!   UTF-8 is `bad_encoding`;
//! - `event`: `[a-z0-9_]{1,32}`, and in `ingest.events` when that list is not empty;
//! - `domain`: ASCII lower-cased, then a hostname: at most 253 bytes, dot-separated labels of
//!   1..=63 bytes of `[a-z0-9-]` not starting or ending with `-`. A trailing dot (`a.com.`)
//!   is rejected rather than stripped, so each site has exactly one spelling in the database.
//!   Non-ASCII names are rejected with a hint to send punycode;
//! - `file_id`: decimal digits only (leading zeros allowed), fits a u64, at least 1. Any
//!   non-digit, including a non-UTF-8 byte, is `bad_file_id`;
//! - `eid` (optional, required with `ingest.require_event_id`): the client's id of the event,
//!   a UUID in text form (`crate::event_id`), at most once; anything else is `bad_event_id`.
//!
//! Decoding writes into a caller-owned [`QueryScratch`] with fixed capacities, so validation
//! allocates nothing; a value that is valid as it arrived is not decoded at all, and the event
//! borrows it from the query. The query is split into pairs by `query`, and each value is
//! checked by `validate`, whose fast path (in place) and general path (decode, then check) give
//! the same result for every input.

pub mod body;
pub mod client;
pub mod config;
pub mod encoding;
pub mod enrich;
pub mod extra;
pub mod geoip;
pub mod intake;
mod percent;
mod query;
mod rejection;
pub mod user_agent;
mod validate;

pub(crate) use self::percent::{needs_decoding, PercentDecode};
use self::query::{find_params, RawParams};
pub use self::rejection::{Param, Rejection};
use self::validate::{validate_domain, validate_event, validate_event_id, validate_file_id};
use crate::event_id::EventId;
use crate::wal::record::Event;

/// Longest event name, bytes.
const EVENT_MAX_BYTES: usize = 32;
/// Longest hostname, bytes (RFC 1035, without the trailing dot).
const DOMAIN_MAX_BYTES: usize = 253;
/// Longest hostname label, bytes.
const LABEL_MAX_BYTES: usize = 63;

/// `[a-z0-9_]{1,32}`.
pub fn is_valid_event_name(name: &str) -> bool {
    (1..=EVENT_MAX_BYTES).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The event names accepted, from `ingest.events`; empty accepts every valid name.
#[derive(Debug, Clone, Default)]
pub struct EventAllowlist {
    /// Sorted and deduplicated, for binary search.
    names: Vec<Box<str>>,
}

impl EventAllowlist {
    pub fn new(names: &[String]) -> Self {
        let mut names: Vec<Box<str>> = names.iter().map(|n| n.as_str().into()).collect();
        names.sort_unstable();
        names.dedup();
        EventAllowlist { names }
    }

    pub fn allows(&self, name: &str) -> bool {
        self.names.is_empty() || self.names.binary_search_by(|n| (**n).cmp(name)).is_ok()
    }
}

/// What a beacon is checked against, from `[ingest]`.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// `ingest.events`.
    pub allow: EventAllowlist,
    /// `ingest.require_event_id`: an event without `eid` / `event_id` is rejected.
    pub require_event_id: bool,
}

/// A validated beacon: the event and the client's id for it, if it sent one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beacon<'s> {
    pub event: Event<'s>,
    pub event_id: Option<EventId>,
}

/// Per-connection buffers for decoded values, sized for the longest valid value so that
/// decoding never grows them.
#[derive(Debug, Clone)]
pub struct QueryScratch {
    /// Decoded `event`, at most `EVENT_MAX_BYTES`.
    event: String,
    /// Decoded and lower-cased `domain`, at most `DOMAIN_MAX_BYTES`.
    domain: String,
}

impl QueryScratch {
    pub fn new() -> Self {
        QueryScratch {
            event: String::with_capacity(EVENT_MAX_BYTES),
            domain: String::with_capacity(DOMAIN_MAX_BYTES),
        }
    }
}

impl Default for QueryScratch {
    fn default() -> Self {
        Self::new()
    }
}

/// Validates the raw query of a `/log` request into a beacon stamped `ts_ms`. The event's
/// strings borrow from `query` where they are as they arrived, else from `scratch`.
pub fn parse_beacon<'s>(
    query: &'s str,
    ts_ms: u64,
    rules: &Rules,
    scratch: &'s mut QueryScratch,
) -> Result<Beacon<'s>, Rejection> {
    validate_params(find_params(query)?, ts_ms, rules, scratch)
}

/// The beacon of a query's parameters, each checked in the order of the module doc.
fn validate_params<'s>(
    raw: RawParams<'s>,
    ts_ms: u64,
    rules: &Rules,
    scratch: &'s mut QueryScratch,
) -> Result<Beacon<'s>, Rejection> {
    let event = raw.event.ok_or(Rejection::Missing(Param::Event))?;
    let domain = raw.domain.ok_or(Rejection::Missing(Param::Domain))?;
    let file_id = raw.file_id.ok_or(Rejection::Missing(Param::FileId))?;
    let event_id = match raw.event_id {
        Some(raw) => Some(validate_event_id(raw)?),
        None => None,
    };
    let QueryScratch { event: event_buf, domain: domain_buf } = scratch;
    let event = Event {
        ts_ms,
        event: validate_event(event, &rules.allow, event_buf)?,
        domain: validate_domain(domain, domain_buf)?,
        file_id: validate_file_id(file_id)?,
    };
    require_id(Beacon { event, event_id }, rules)
}

/// `Missing(EventId)` for a beacon without an id when `ingest.require_event_id` is set.
fn require_id<'s>(beacon: Beacon<'s>, rules: &Rules) -> Result<Beacon<'s>, Rejection> {
    if rules.require_event_id && beacon.event_id.is_none() {
        return Err(Rejection::Missing(Param::EventId));
    }
    Ok(beacon)
}

/// A `file_id` as it arrives in a JSON body: a number or a decimal string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileIdField<'a> {
    Number(u64),
    Text(&'a str),
}

/// The fields of one JSON item, already decoded by the JSON parser; `None` is a missing key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fields<'a> {
    pub event: Option<&'a str>,
    pub domain: Option<&'a str>,
    pub file_id: Option<FileIdField<'a>>,
    pub event_id: Option<&'a str>,
}

/// Validates values that are already decoded (a JSON item) with the rules of
/// [`parse_beacon`]. The caller rejects `%` and `+` in them first, so the percent-decoding
/// the validators apply is the identity here.
pub fn validate_fields<'s>(
    fields: &Fields<'s>,
    ts_ms: u64,
    rules: &Rules,
    scratch: &'s mut QueryScratch,
) -> Result<Beacon<'s>, Rejection> {
    let event = fields.event.ok_or(Rejection::Missing(Param::Event))?;
    let domain = fields.domain.ok_or(Rejection::Missing(Param::Domain))?;
    let file_id = match fields.file_id.ok_or(Rejection::Missing(Param::FileId))? {
        FileIdField::Number(0) => return Err(Rejection::BadFileId),
        FileIdField::Number(n) => n,
        FileIdField::Text(text) => validate_file_id(text)?,
    };
    let event_id = match fields.event_id {
        Some(text) => Some(EventId::parse(text.as_bytes()).map_err(|_| Rejection::BadEventId)?),
        None => None,
    };
    let QueryScratch { event: event_buf, domain: domain_buf } = scratch;
    let event = Event {
        ts_ms,
        event: validate_event(event, &rules.allow, event_buf)?,
        domain: validate_domain(domain, domain_buf)?,
        file_id,
    };
    require_id(Beacon { event, event_id }, rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<(String, String, u64), Rejection> {
        parse_with(query, &EventAllowlist::default())
    }

    fn rules(allow: &EventAllowlist) -> Rules {
        Rules { allow: allow.clone(), require_event_id: false }
    }

    fn parse_with(query: &str, allow: &EventAllowlist) -> Result<(String, String, u64), Rejection> {
        let mut scratch = QueryScratch::new();
        let beacon = parse_beacon(query, 42, &rules(allow), &mut scratch)?;
        assert_eq!(beacon.event_id, None);
        let ev = beacon.event;
        assert_eq!(ev.ts_ms, 42);
        Ok((ev.event.to_owned(), ev.domain.to_owned(), ev.file_id))
    }

    fn ok(query: &str) -> (String, String, u64) {
        parse(query).unwrap_or_else(|r| panic!("{query:?} rejected: {r:?}"))
    }

    fn rejected(query: &str) -> Rejection {
        match parse(query) {
            Ok(ev) => panic!("{query:?} accepted as {ev:?}"),
            Err(r) => r,
        }
    }

    fn beacon(event: &str, domain: &str, file_id: &str) -> String {
        format!("event={event}&domain={domain}&file_id={file_id}")
    }

    #[test]
    fn typical_beacon() {
        let got = ok("event=play&domain=piratka.biz&file_id=109454");
        assert_eq!(got, ("play".into(), "piratka.biz".into(), 109454));
    }

    #[test]
    fn order_and_unknown_params_do_not_matter() {
        let got = ok("_=123&file_id=7&x&domain=a.b&utm=%zz&event=stop&&");
        assert_eq!(got, ("stop".into(), "a.b".into(), 7));
    }

    #[test]
    fn percent_encoded_values_and_names() {
        assert_eq!(ok(&beacon("play", "piratka%2Ebiz", "1")).1, "piratka.biz");
        assert_eq!(ok(&beacon("pl%61y", "a.b", "%31%32")).0, "play");
        assert_eq!(ok(&beacon("play", "a.b", "%31%32")).2, 12);
        assert_eq!(ok("%65vent=play&domain=a.b&file%5fid=3").2, 3);
        assert_eq!(ok("%65vent=play&domain=a.b&file%5Fid=3").0, "play");
    }

    #[test]
    fn bad_percent_escapes() {
        for q in [
            beacon("pl%zzay", "a.b", "1"),
            beacon("play", "a.b%4", "1"),
            beacon("play", "a.b%", "1"),
            beacon("play", "a.b", "1%g1"),
            "ev%zznt=play&domain=a.b&file_id=1".into(),
            "x%=1&event=play&domain=a.b&file_id=1".into(),
        ] {
            assert_eq!(rejected(&q), Rejection::BadPercentEncoding, "{q}");
        }
    }

    #[test]
    fn plus_is_a_space_and_spaces_are_invalid() {
        assert_eq!(rejected(&beacon("pl+ay", "a.b", "1")), Rejection::BadEvent);
        assert_eq!(rejected(&beacon("play", "a+b", "1")), Rejection::BadDomain);
        assert_eq!(rejected(&beacon("play", "a.b", "+1")), Rejection::BadFileId);
        assert_eq!(rejected(&beacon("play", "a.b", "%201")), Rejection::BadFileId);
    }

    #[test]
    fn bad_utf8() {
        assert_eq!(rejected(&beacon("%ff", "a.b", "1")), Rejection::BadUtf8);
        assert_eq!(rejected(&beacon("play", "a%ff.b", "1")), Rejection::BadUtf8);
        assert_eq!(rejected(&beacon("play", "a%c3", "1")), Rejection::BadUtf8);
        assert_eq!(rejected(&beacon("play", "a.b", "%ff")), Rejection::BadFileId);
        assert_eq!(Rejection::BadUtf8.label(), "bad_encoding");
    }

    #[test]
    fn missing_each_param_is_named() {
        assert_eq!(rejected("domain=a.b&file_id=1"), Rejection::Missing(Param::Event));
        assert_eq!(rejected("event=play&file_id=1"), Rejection::Missing(Param::Domain));
        assert_eq!(rejected("event=play&domain=a.b"), Rejection::Missing(Param::FileId));
        assert_eq!(rejected(""), Rejection::Missing(Param::Event));
        assert_eq!(rejected("Event=play&domain=a.b&file_id=1"), Rejection::Missing(Param::Event));
        assert_eq!(Rejection::Missing(Param::Domain).reason(), "missing parameter: domain");
    }

    #[test]
    fn duplicates_are_rejected_even_when_equal() {
        let q = "event=play&event=play&domain=a.b&file_id=1";
        assert_eq!(rejected(q), Rejection::Duplicate(Param::Event));
        let q = "event=play&domain=a.b&domain=c.d&file_id=1";
        assert_eq!(rejected(q), Rejection::Duplicate(Param::Domain));
        let q = "event=play&domain=a.b&file_id=1&file_%69d=2";
        assert_eq!(rejected(q), Rejection::Duplicate(Param::FileId));
        assert_eq!(Rejection::Duplicate(Param::Event).reason(), "duplicated parameter: event");
    }

    #[test]
    fn empty_values_are_rejected() {
        assert_eq!(rejected(&beacon("", "a.b", "1")), Rejection::Empty(Param::Event));
        assert_eq!(rejected(&beacon("play", "", "1")), Rejection::Empty(Param::Domain));
        assert_eq!(rejected(&beacon("play", "a.b", "")), Rejection::Empty(Param::FileId));
        let q = "event&domain=a.b&file_id=1";
        assert_eq!(rejected(q), Rejection::Empty(Param::Event));
    }

    #[test]
    fn event_rules_and_boundaries() {
        let e32 = "a".repeat(32);
        assert_eq!(ok(&beacon(&e32, "a.b", "1")).0, e32);
        assert_eq!(rejected(&beacon(&"a".repeat(33), "a.b", "1")), Rejection::BadEvent);
        assert_eq!(ok(&beacon("video_start_2", "a.b", "1")).0, "video_start_2");
        for bad in ["Play", "play-x", "play.x", "pl%C3%A4y", "pl%00ay"] {
            assert_eq!(rejected(&beacon(bad, "a.b", "1")), Rejection::BadEvent, "{bad}");
        }
    }

    #[test]
    fn allowlist() {
        let allow = EventAllowlist::new(&["stop".into(), "play".into(), "play".into()]);
        assert!(allow.allows("play") && allow.allows("stop") && !allow.allows("pause"));
        assert!(parse_with(&beacon("play", "a.b", "1"), &allow).is_ok());
        let err = parse_with(&beacon("pause", "a.b", "1"), &allow).unwrap_err();
        assert_eq!(err, Rejection::EventNotAllowed);
        assert_eq!(err.label(), "event_not_allowed");
        let err = parse_with(&beacon("Pause", "a.b", "1"), &allow).unwrap_err();
        assert_eq!(err, Rejection::BadEvent);
        assert!(EventAllowlist::new(&[]).allows("anything_valid"));
    }

    #[test]
    fn domain_is_lowercased() {
        assert_eq!(ok(&beacon("play", "PiRaTkA.BIZ", "1")).1, "piratka.biz");
        assert_eq!(ok(&beacon("play", "%50IRATKA.biz", "1")).1, "piratka.biz");
    }

    #[test]
    fn domain_label_rules() {
        for good in ["localhost", "a.b", "xn--80ak6aa92e.com", "a-b.c-d.e", "1.2.3.4", "0a.9z"] {
            assert_eq!(ok(&beacon("play", good, "1")).1, good);
        }
        for bad in [
            "a..b", ".a.b", "a.b.", ".", "-a.b", "a-.b", "a.-b", "a.b-", "a_b.c", "a b.c", "a%2Fb", "a:80",
            "a@b",
        ] {
            assert_eq!(rejected(&beacon("play", bad, "1")), Rejection::BadDomain, "{bad}");
        }
    }

    #[test]
    fn domain_label_and_total_length_boundaries() {
        let label63 = "a".repeat(63);
        assert_eq!(ok(&beacon("play", &format!("{label63}.com"), "1")).1.len(), 67);
        let label64 = "a".repeat(64);
        let q = beacon("play", &format!("{label64}.com"), "1");
        assert_eq!(rejected(&q), Rejection::BadDomain);
        // 63+1+63+1+63+1+61 = 253 bytes.
        let d253 = format!("{label63}.{label63}.{label63}.{}", "b".repeat(61));
        assert_eq!(d253.len(), 253);
        assert_eq!(ok(&beacon("play", &d253, "1")).1, d253);
        let d254 = format!("{label63}.{label63}.{label63}.{}", "b".repeat(62));
        assert_eq!(rejected(&beacon("play", &d254, "1")), Rejection::BadDomain);
        // The same boundary through the percent-decoding path.
        assert_eq!(ok(&beacon("play", &d253.replace('.', "%2E"), "1")).1, d253);
        let q = beacon("play", &d254.replace('.', "%2e"), "1");
        assert_eq!(rejected(&q), Rejection::BadDomain);
        let huge = "a.".repeat(5000) + "b";
        assert_eq!(rejected(&beacon("play", &huge, "1")), Rejection::BadDomain);
    }

    #[test]
    fn non_ascii_domain_asks_for_punycode() {
        let r = rejected(&beacon("play", "%D0%BF%D1%80%D0%B8%D0%BC%D0%B5%D1%80.%D1%80%D1%84", "1"));
        assert_eq!(r, Rejection::NonAsciiDomain);
        assert_eq!(r.label(), "bad_domain");
        assert!(r.reason().contains("punycode"));
    }

    #[test]
    fn file_id_rules() {
        assert_eq!(ok(&beacon("play", "a.b", "1")).2, 1);
        assert_eq!(ok(&beacon("play", "a.b", "007")).2, 7);
        assert_eq!(ok(&beacon("play", "a.b", "18446744073709551615")).2, u64::MAX);
        for bad in ["0", "000", "-1", "%2B1", "%201", "1%20", "1.0", "1e3", "0x1", "18446744073709551616"] {
            assert_eq!(rejected(&beacon("play", "a.b", bad)), Rejection::BadFileId, "{bad}");
        }
        assert_eq!(Rejection::BadFileId.reason(), "file_id must be an integer >= 1");
    }

    #[test]
    fn reasons_are_single_lines_and_all_400() {
        let all = [
            Rejection::Missing(Param::Event),
            Rejection::Missing(Param::Domain),
            Rejection::Missing(Param::FileId),
            Rejection::Duplicate(Param::Event),
            Rejection::Duplicate(Param::Domain),
            Rejection::Duplicate(Param::FileId),
            Rejection::Empty(Param::Event),
            Rejection::Empty(Param::Domain),
            Rejection::Empty(Param::FileId),
            Rejection::BadEvent,
            Rejection::EventNotAllowed,
            Rejection::BadDomain,
            Rejection::NonAsciiDomain,
            Rejection::BadFileId,
            Rejection::BadPercentEncoding,
            Rejection::BadUtf8,
            Rejection::BadEventId,
            Rejection::Missing(Param::EventId),
            Rejection::Duplicate(Param::EventId),
            Rejection::Empty(Param::EventId),
        ];
        for r in all {
            assert_eq!(r.status(), 400);
            assert!(!r.reason().is_empty() && !r.reason().contains(['\r', '\n']), "{r:?}");
            assert!(r.label().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{r:?}");
        }
        for p in [Param::Event, Param::Domain, Param::FileId] {
            assert_eq!(Rejection::Missing(p).label(), "missing_param");
            assert!(Rejection::Missing(p).reason().ends_with(p.name()));
            assert!(Rejection::Duplicate(p).reason().ends_with(p.name()));
            assert!(Rejection::Empty(p).reason().ends_with(p.name()));
        }
    }

    #[test]
    fn scratch_is_reused_without_growing() {
        let mut scratch = QueryScratch::new();
        let caps = (scratch.event.capacity(), scratch.domain.capacity());
        let allow = Rules::default();
        let a63 = "a".repeat(63);
        let domain253 = format!("{a63}.{a63}.{a63}.{}", "b".repeat(61));
        let longest = beacon(&"e".repeat(32), &domain253, "1");
        let junk = "x".repeat(10_000);
        for q in [longest.as_str(), "event=a&domain=b&file_id=1", junk.as_str()] {
            let _ = parse_beacon(q, 0, &allow, &mut scratch);
        }
        let ev = parse_beacon(&longest, 0, &allow, &mut scratch).expect("longest valid beacon").event;
        assert_eq!((ev.event.len(), ev.domain.len()), (32, 253));
        assert_eq!((scratch.event.capacity(), scratch.domain.capacity()), caps);
    }

    const UUID: &str = "3f2b8c1e-9d4a-4c6b-8e21-7a5f0d9c1b2e";

    fn event_id_of(query: &str, rules: &Rules) -> Result<Option<String>, Rejection> {
        let mut scratch = QueryScratch::new();
        parse_beacon(query, 1, rules, &mut scratch).map(|b| b.event_id.map(|id| id.to_string()))
    }

    #[test]
    fn event_ids_in_the_query() {
        let optional = Rules::default();
        let q = |eid: &str| format!("event=play&domain=a.b&file_id=1&eid={eid}");
        assert_eq!(event_id_of(&q(UUID), &optional), Ok(Some(UUID.into())));
        assert_eq!(event_id_of(&q(&UUID.to_uppercase()), &optional), Ok(Some(UUID.into())));
        assert_eq!(event_id_of(&q(&UUID.replace('-', "%2D")), &optional), Ok(Some(UUID.into())));
        assert_eq!(event_id_of(&q(&UUID.replace('-', "")), &optional), Ok(Some(UUID.into())));
        assert_eq!(event_id_of("event=play&domain=a.b&file_id=1", &optional), Ok(None));
        for bad in [
            "x",
            "00000000-0000-0000-0000-000000000000",
            &format!("{UUID}0"),
            "%zz",
            &UUID.replace('-', "%2D%2D"),
        ] {
            let want = if bad == "%zz" { Rejection::BadPercentEncoding } else { Rejection::BadEventId };
            assert_eq!(event_id_of(&q(bad), &optional), Err(want), "{bad}");
        }
        assert_eq!(event_id_of(&q(""), &optional), Err(Rejection::Empty(Param::EventId)));
        let twice = format!("{}&eid={UUID}", q(UUID));
        assert_eq!(event_id_of(&twice, &optional), Err(Rejection::Duplicate(Param::EventId)));
        assert_eq!(Rejection::BadEventId.label(), "bad_event_id");
    }

    #[test]
    fn required_event_ids() {
        let required = Rules { require_event_id: true, ..Rules::default() };
        let q = "event=play&domain=a.b&file_id=1";
        assert_eq!(event_id_of(q, &required), Err(Rejection::Missing(Param::EventId)));
        assert_eq!(Rejection::Missing(Param::EventId).label(), "bad_event_id");
        assert!(Rejection::Missing(Param::EventId).reason().contains("ingest.require_event_id"));
        assert_eq!(event_id_of(&format!("{q}&eid={UUID}"), &required), Ok(Some(UUID.into())));
        // Other missing parameters are named first.
        assert_eq!(event_id_of("event=play&domain=a.b", &required), Err(Rejection::Missing(Param::FileId)));
        let mut scratch = QueryScratch::new();
        let fields = Fields {
            event: Some("play"),
            domain: Some("a.b"),
            file_id: Some(FileIdField::Number(3)),
            event_id: None,
        };
        assert_eq!(
            validate_fields(&fields, 1, &required, &mut scratch).err(),
            Some(Rejection::Missing(Param::EventId))
        );
        let fields = Fields { event_id: Some(UUID), ..fields };
        let beacon = validate_fields(&fields, 1, &required, &mut scratch).unwrap();
        assert_eq!(beacon.event_id.map(|id| id.to_string()).as_deref(), Some(UUID));
        let fields = Fields { event_id: Some("nope"), ..fields };
        assert_eq!(validate_fields(&fields, 1, &required, &mut scratch).err(), Some(Rejection::BadEventId));
    }

    /// Independent restatement of the rules, for the property tests.
    fn satisfies_rules(ev: &Event<'_>) -> bool {
        let event_ok = ev.event.len() <= 32
            && !ev.event.is_empty()
            && ev.event.chars().all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'));
        let domain_ok = ev.domain.len() <= 253
            && ev.domain.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-'))
            });
        event_ok && domain_ok && ev.file_id >= 1
    }

    /// Percent-encodes every byte whose `mask` bit is set, upper-cases ASCII letters where
    /// `upper` is set, so one value has many spellings.
    fn spell(value: &str, mask: u64, upper: u64) -> String {
        value
            .bytes()
            .enumerate()
            .map(|(i, b)| {
                let bit = 1u64 << (i % 64);
                if mask & bit != 0 {
                    format!("%{b:02X}")
                } else if upper & bit != 0 {
                    (b.to_ascii_uppercase() as char).to_string()
                } else {
                    (b as char).to_string()
                }
            })
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_queries_never_panic_and_accepted_ones_obey_the_rules(
            query in "(event=|&domain=|&file_id=|event|domain|file_id|[a-z0-9_.=&%+-]|%[0-9a-fA-F]{2}|%[^0-9a-fA-F]|\\PC){0,60}"
        ) {
            let mut scratch = QueryScratch::new();
            if let Ok(beacon) = parse_beacon(&query, 1, &Rules::default(), &mut scratch) {
                proptest::prop_assert!(satisfies_rules(&beacon.event), "{query:?} -> {beacon:?}");
            }
        }

        #[test]
        fn valid_beacons_in_any_spelling_are_accepted(
            event in "[a-z0-9_]{1,32}",
            domain in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?){0,4}",
            file_id in 1u64..,
            mask in proptest::num::u64::ANY,
            upper in proptest::num::u64::ANY,
            junk in "x[a-z]{0,4}=[^&]{0,10}",
        ) {
            let query = format!(
                "{junk}&file_id={file_id}&domain={}&event={}",
                spell(&domain, mask, upper),
                spell(&event, mask.rotate_left(7), 0),
            );
            let mut scratch = QueryScratch::new();
            let ev = parse_beacon(&query, 9, &Rules::default(), &mut scratch).map(|b| b.event);
            proptest::prop_assert_eq!(
                ev,
                Ok(Event { ts_ms: 9, event: event.as_str(), domain: domain.as_str(), file_id })
            );
        }
    }
}
