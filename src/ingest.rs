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
//!   non-digit, including a non-UTF-8 byte, is `bad_file_id`.
//!
//! Decoding writes into a caller-owned [`QueryScratch`] with fixed capacities, so validation
//! allocates nothing.

pub mod body;
pub mod client;
pub mod config;
pub mod extra;
pub mod intake;

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

/// The parameters a beacon must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    Event,
    Domain,
    FileId,
}

impl Param {
    pub fn name(self) -> &'static str {
        match self {
            Param::Event => "event",
            Param::Domain => "domain",
            Param::FileId => "file_id",
        }
    }
}

/// Why a beacon is rejected (always a 400). Allocation-free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Missing(Param),
    Duplicate(Param),
    Empty(Param),
    BadEvent,
    EventNotAllowed,
    BadDomain,
    NonAsciiDomain,
    BadFileId,
    BadPercentEncoding,
    BadUtf8,
}

impl Rejection {
    /// One line, no newline, for the response body.
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::Missing(Param::Event) => "missing parameter: event",
            Rejection::Missing(Param::Domain) => "missing parameter: domain",
            Rejection::Missing(Param::FileId) => "missing parameter: file_id",
            Rejection::Duplicate(Param::Event) => "duplicated parameter: event",
            Rejection::Duplicate(Param::Domain) => "duplicated parameter: domain",
            Rejection::Duplicate(Param::FileId) => "duplicated parameter: file_id",
            Rejection::Empty(Param::Event) => "empty parameter: event",
            Rejection::Empty(Param::Domain) => "empty parameter: domain",
            Rejection::Empty(Param::FileId) => "empty parameter: file_id",
            Rejection::BadEvent => "event must match [a-z0-9_]{1,32}",
            Rejection::EventNotAllowed => "event not in ingest.events allowlist",
            Rejection::BadDomain => "domain is not a valid hostname",
            Rejection::NonAsciiDomain => {
                "domain must be ASCII; send internationalised names as punycode (xn--...)"
            }
            Rejection::BadFileId => "file_id must be an integer >= 1",
            Rejection::BadPercentEncoding => "invalid percent-encoding",
            Rejection::BadUtf8 => "parameter is not valid UTF-8",
        }
    }

    /// Label for `ingest_events_rejected_total{reason=...}`.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::Missing(_) => "missing_param",
            Rejection::Duplicate(_) => "duplicate_param",
            Rejection::Empty(_) => "empty_param",
            Rejection::BadEvent => "bad_event",
            Rejection::EventNotAllowed => "event_not_allowed",
            Rejection::BadDomain | Rejection::NonAsciiDomain => "bad_domain",
            Rejection::BadFileId => "bad_file_id",
            Rejection::BadPercentEncoding | Rejection::BadUtf8 => "bad_encoding",
        }
    }

    /// HTTP status of the answer.
    pub fn status(self) -> u16 {
        400
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for Rejection {}

/// Validates the raw query of a `/log` request into an event stamped `ts_ms`. The event's
/// strings live in `scratch`.
pub fn parse_beacon<'s>(
    query: &str,
    ts_ms: u64,
    allow: &EventAllowlist,
    scratch: &'s mut QueryScratch,
) -> Result<Event<'s>, Rejection> {
    let raw = find_params(query)?;
    let event = raw.event.ok_or(Rejection::Missing(Param::Event))?;
    let domain = raw.domain.ok_or(Rejection::Missing(Param::Domain))?;
    let file_id = raw.file_id.ok_or(Rejection::Missing(Param::FileId))?;
    let QueryScratch { event: event_buf, domain: domain_buf } = scratch;
    Ok(Event {
        ts_ms,
        event: validate_event(event, allow, event_buf)?,
        domain: validate_domain(domain, domain_buf)?,
        file_id: validate_file_id(file_id)?,
    })
}

/// A `file_id` as it arrives in a JSON body: a number or a decimal string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileIdField<'a> {
    Number(u64),
    Text(&'a str),
}

/// Validates values that are already decoded (a JSON item) with the rules of
/// [`parse_beacon`]. The caller rejects `%` and `+` in them first, so the percent-decoding
/// the validators apply is the identity here. `None` is a missing parameter.
pub fn validate_fields<'s>(
    event: Option<&str>,
    domain: Option<&str>,
    file_id: Option<FileIdField<'_>>,
    ts_ms: u64,
    allow: &EventAllowlist,
    scratch: &'s mut QueryScratch,
) -> Result<Event<'s>, Rejection> {
    let event = event.ok_or(Rejection::Missing(Param::Event))?;
    let domain = domain.ok_or(Rejection::Missing(Param::Domain))?;
    let file_id = match file_id.ok_or(Rejection::Missing(Param::FileId))? {
        FileIdField::Number(0) => return Err(Rejection::BadFileId),
        FileIdField::Number(n) => n,
        FileIdField::Text(text) => validate_file_id(text)?,
    };
    let QueryScratch { event: event_buf, domain: domain_buf } = scratch;
    Ok(Event {
        ts_ms,
        event: validate_event(event, allow, event_buf)?,
        domain: validate_domain(domain, domain_buf)?,
        file_id,
    })
}

/// Still-encoded values of the parameters we use, each seen at most once.
#[derive(Default)]
struct RawParams<'q> {
    event: Option<&'q str>,
    domain: Option<&'q str>,
    file_id: Option<&'q str>,
}

fn find_params(query: &str) -> Result<RawParams<'_>, Rejection> {
    let mut raw = RawParams::default();
    let mut rest = Some(query);
    while let Some(remaining) = rest {
        let (pair, after) = match split_once_byte(remaining, b'&') {
            Some((pair, after)) => (pair, Some(after)),
            None => (remaining, None),
        };
        rest = after;
        if pair.is_empty() {
            continue;
        }
        let (name, value) = split_once_byte(pair, b'=').unwrap_or((pair, ""));
        let Some(param) = known_param(name)? else {
            continue;
        };
        let slot = match param {
            Param::Event => &mut raw.event,
            Param::Domain => &mut raw.domain,
            Param::FileId => &mut raw.file_id,
        };
        if slot.replace(value).is_some() {
            return Err(Rejection::Duplicate(param));
        }
    }
    Ok(raw)
}

/// `str::split_once` for an ASCII separator, without the UTF-8 char searcher (hot path).
pub(crate) fn split_once_byte(s: &str, sep: u8) -> Option<(&str, &str)> {
    debug_assert!(sep.is_ascii());
    let at = s.bytes().position(|b| b == sep)?;
    Some((s.get(..at)?, s.get(at + 1..)?))
}

/// Which of our parameters the encoded `name` decodes to, if any.
fn known_param(name: &str) -> Result<Option<Param>, Rejection> {
    if !needs_decoding(name) {
        return Ok(param_named(name.as_bytes()));
    }
    const LONGEST: usize = 7; // "file_id"
    let mut decoded = [0u8; LONGEST];
    let mut len = 0;
    for byte in PercentDecode::new(name) {
        let byte = byte?;
        if let Some(slot) = decoded.get_mut(len) {
            *slot = byte;
        }
        len += 1;
    }
    Ok(decoded.get(..len).and_then(param_named))
}

fn param_named(decoded: &[u8]) -> Option<Param> {
    // Byte patterns rather than string literals: they compile to inline compares, not memcmp.
    match decoded {
        [b'e', b'v', b'e', b'n', b't'] => Some(Param::Event),
        [b'd', b'o', b'm', b'a', b'i', b'n'] => Some(Param::Domain),
        [b'f', b'i', b'l', b'e', b'_', b'i', b'd'] => Some(Param::FileId),
        _ => None,
    }
}

/// Whether `raw` differs from its decoding; most beacons need no decoding at all.
fn needs_decoding(raw: &str) -> bool {
    raw.bytes().any(|b| b == b'%' || b == b'+')
}

fn validate_event<'s>(raw: &str, allow: &EventAllowlist, buf: &'s mut String) -> Result<&'s str, Rejection> {
    if raw.is_empty() {
        return Err(Rejection::Empty(Param::Event));
    }
    decode_value(raw, EVENT_MAX_BYTES, Rejection::BadEvent, buf)?;
    let event: &'s str = buf;
    if !is_valid_event_name(event) {
        return Err(Rejection::BadEvent);
    }
    if !allow.allows(event) {
        return Err(Rejection::EventNotAllowed);
    }
    Ok(event)
}

fn validate_domain<'s>(raw: &str, buf: &'s mut String) -> Result<&'s str, Rejection> {
    if raw.is_empty() {
        return Err(Rejection::Empty(Param::Domain));
    }
    decode_value(raw, DOMAIN_MAX_BYTES, Rejection::BadDomain, buf)?;
    buf.make_ascii_lowercase();
    let domain: &'s str = buf;
    if !domain.is_ascii() {
        return Err(Rejection::NonAsciiDomain);
    }
    if !is_valid_hostname(domain.as_bytes()) {
        return Err(Rejection::BadDomain);
    }
    Ok(domain)
}

/// Lower-case hostname rules from the module doc (the caller has lower-cased).
fn is_valid_hostname(domain: &[u8]) -> bool {
    domain.len() <= DOMAIN_MAX_BYTES && domain.split(|&b| b == b'.').all(is_valid_label)
}

fn is_valid_label(label: &[u8]) -> bool {
    (1..=LABEL_MAX_BYTES).contains(&label.len())
        && label.first() != Some(&b'-')
        && label.last() != Some(&b'-')
        && label.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn validate_file_id(raw: &str) -> Result<u64, Rejection> {
    if raw.is_empty() {
        return Err(Rejection::Empty(Param::FileId));
    }
    let mut id: u64 = 0;
    for byte in PercentDecode::new(raw) {
        let byte = byte?;
        if !byte.is_ascii_digit() {
            return Err(Rejection::BadFileId);
        }
        id = id
            .checked_mul(10)
            .and_then(|id| id.checked_add(u64::from(byte - b'0')))
            .ok_or(Rejection::BadFileId)?;
    }
    if id == 0 {
        return Err(Rejection::BadFileId);
    }
    Ok(id)
}

/// Longest value ever decoded, bytes: the longest of the limits below.
const DECODE_MAX_BYTES: usize = DOMAIN_MAX_BYTES;
const _: () = assert!(EVENT_MAX_BYTES <= DECODE_MAX_BYTES);

/// Replaces `buf` with the decoded `raw`; `too_long` past `max_bytes`, `BadUtf8` if the
/// decoded bytes are not UTF-8. Values without escapes are copied as they are.
fn decode_value(raw: &str, max_bytes: usize, too_long: Rejection, buf: &mut String) -> Result<(), Rejection> {
    debug_assert!(max_bytes <= DECODE_MAX_BYTES);
    buf.clear();
    if !needs_decoding(raw) {
        if raw.len() > max_bytes {
            return Err(too_long);
        }
        buf.push_str(raw);
        return Ok(());
    }
    let mut decoded = [0u8; DECODE_MAX_BYTES];
    let mut len = 0;
    for byte in PercentDecode::new(raw) {
        let byte = byte?;
        match decoded.get_mut(len) {
            Some(slot) if len < max_bytes => *slot = byte,
            _ => return Err(too_long),
        }
        len += 1;
    }
    let text = std::str::from_utf8(&decoded[..len]).map_err(|_| Rejection::BadUtf8)?;
    buf.push_str(text);
    Ok(())
}

/// Form-encoding decoder: `%XX` is a byte, `+` a space, anything else itself.
pub(crate) struct PercentDecode<'a> {
    rest: &'a [u8],
}

impl<'a> PercentDecode<'a> {
    pub(crate) fn new(raw: &'a str) -> Self {
        PercentDecode { rest: raw.as_bytes() }
    }
}

impl Iterator for PercentDecode<'_> {
    type Item = Result<u8, Rejection>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(match first {
            b'+' => Ok(b' '),
            b'%' => self.escape(),
            other => Ok(other),
        })
    }
}

impl PercentDecode<'_> {
    /// The two hex digits after a `%`.
    fn escape(&mut self) -> Result<u8, Rejection> {
        let Some((&[hi, lo], rest)) = self.rest.split_first_chunk::<2>() else {
            self.rest = &[];
            return Err(Rejection::BadPercentEncoding);
        };
        self.rest = rest;
        match (hex_value(hi), hex_value(lo)) {
            (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
            _ => Err(Rejection::BadPercentEncoding),
        }
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<(String, String, u64), Rejection> {
        parse_with(query, &EventAllowlist::default())
    }

    fn parse_with(query: &str, allow: &EventAllowlist) -> Result<(String, String, u64), Rejection> {
        let mut scratch = QueryScratch::new();
        let ev = parse_beacon(query, 42, allow, &mut scratch)?;
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
        ];
        for r in all {
            assert_eq!(r.status(), 400);
            assert!(!r.reason().is_empty() && !r.reason().contains(['\r', '\n']), "{r:?}");
            assert!(r.label().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{r:?}");
        }
        for p in [Param::Event, Param::Domain, Param::FileId] {
            assert!(Rejection::Missing(p).reason().ends_with(p.name()));
            assert!(Rejection::Duplicate(p).reason().ends_with(p.name()));
            assert!(Rejection::Empty(p).reason().ends_with(p.name()));
        }
    }

    #[test]
    fn scratch_is_reused_without_growing() {
        let mut scratch = QueryScratch::new();
        let caps = (scratch.event.capacity(), scratch.domain.capacity());
        let allow = EventAllowlist::default();
        let a63 = "a".repeat(63);
        let domain253 = format!("{a63}.{a63}.{a63}.{}", "b".repeat(61));
        let longest = beacon(&"e".repeat(32), &domain253, "1");
        let junk = "x".repeat(10_000);
        for q in [longest.as_str(), "event=a&domain=b&file_id=1", junk.as_str()] {
            let _ = parse_beacon(q, 0, &allow, &mut scratch);
        }
        let ev = parse_beacon(&longest, 0, &allow, &mut scratch).expect("longest valid beacon");
        assert_eq!((ev.event.len(), ev.domain.len()), (32, 253));
        assert_eq!((scratch.event.capacity(), scratch.domain.capacity()), caps);
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
            if let Ok(ev) = parse_beacon(&query, 1, &EventAllowlist::default(), &mut scratch) {
                proptest::prop_assert!(satisfies_rules(&ev), "{query:?} -> {ev:?}");
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
            let ev = parse_beacon(&query, 9, &EventAllowlist::default(), &mut scratch);
            proptest::prop_assert_eq!(
                ev,
                Ok(Event { ts_ms: 9, event: event.as_str(), domain: domain.as_str(), file_id })
            );
        }
    }
}
