//! `POST /log` bodies into a validated batch of events. Pure: no IO.
//!
//! Bodies browsers actually send:
//! - `application/x-www-form-urlencoded`: `event=…&domain=…&file_id=…`, one event, the same
//!   rules as a GET query (it *is* [`super::parse_beacon`]);
//! - `application/json`: one object or an array of objects with `event`, `domain`,
//!   `file_id` (a number or a decimal string) and optionally `event_id` (a UUID string); other
//!   keys are ignored;
//! - `text/plain` (what `navigator.sendBeacon(url, string)` sends) and no content type: the
//!   body is sniffed, JSON if its first non-blank byte is `{` or `[`, else form-encoded.
//!
//! Invariants:
//! - a batch is all-or-nothing: the first invalid item rejects the whole body with its
//!   index and reason, and [`BatchScratch`] then holds no events;
//! - at most `max_events` events per body (413 past it), and never an empty batch;
//! - JSON strings are taken as they are (no percent-decoding): a `%` or `+` in `event`,
//!   `domain` or `file_id` is invalid, as neither can appear in a valid value;
//! - events are stamped with the server's receive time, never a client clock.

use std::fmt;
use std::ops::Range;

use super::{Beacon, QueryScratch, Rejection, Rules};
use crate::event_id::EventId;
use crate::wal::record::Event;

mod json;

/// Which JSON parser reads JSON bodies. simd-json is the production choice (see
/// `benches/post_batch.rs`); serde_json stays for the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonParser {
    Simd,
    Serde,
}

/// How a body is encoded, from its `Content-Type` and, for `text/plain`, its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Form,
    Json,
}

/// Why a body is refused. Maps to a status and a one-line message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// A content type we do not read (415).
    UnsupportedType,
    /// Not UTF-8, not JSON, or JSON of the wrong shape (400).
    Malformed(&'static str),
    /// An empty body or an empty array (400).
    Empty,
    /// More than `ingest.max_batch_events` events (413).
    TooManyEvents { max: usize },
    /// Item `index` (0-based; 0 for a single object or a form body) is invalid (400).
    Item { index: usize, rejection: Rejection },
}

impl BodyError {
    pub fn status(self) -> u16 {
        match self {
            BodyError::UnsupportedType => 415,
            BodyError::TooManyEvents { .. } => 413,
            BodyError::Malformed(_) | BodyError::Empty | BodyError::Item { .. } => 400,
        }
    }

    /// Label for the rejected-events metric.
    pub fn label(self) -> &'static str {
        match self {
            BodyError::UnsupportedType => "content_type",
            BodyError::Malformed(_) => "bad_body",
            BodyError::Empty => "empty_body",
            BodyError::TooManyEvents { .. } => "batch_events",
            BodyError::Item { rejection, .. } => rejection.label(),
        }
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::UnsupportedType => f.write_str(
                "Content-Type must be application/json, application/x-www-form-urlencoded or text/plain",
            ),
            BodyError::Malformed(what) => write!(f, "malformed body: {what}"),
            BodyError::Empty => f.write_str("body holds no event"),
            BodyError::TooManyEvents { max } => {
                write!(f, "batch exceeds ingest.max_batch_events ({max} events)")
            }
            BodyError::Item { index, rejection } => write!(f, "item {index}: {}", rejection.reason()),
        }
    }
}

/// Decides how to read a body with `content_type` (the raw header value, if any).
pub fn body_kind(content_type: Option<&[u8]>, body: &[u8]) -> Result<BodyKind, BodyError> {
    let essence = content_type.map(|ct| {
        let end = ct.iter().position(|&b| b == b';').unwrap_or(ct.len());
        ct[..end].trim_ascii()
    });
    match essence {
        Some(t) if t.eq_ignore_ascii_case(b"application/json") => Ok(BodyKind::Json),
        Some(t) if t.eq_ignore_ascii_case(b"application/x-www-form-urlencoded") => Ok(BodyKind::Form),
        Some(t) if t.eq_ignore_ascii_case(b"text/plain") => Ok(sniff(body)),
        None => Ok(sniff(body)),
        Some(_) => Err(BodyError::UnsupportedType),
    }
}

fn sniff(body: &[u8]) -> BodyKind {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{' | b'[') => BodyKind::Json,
        _ => BodyKind::Form,
    }
}

/// A validated batch: the events' strings in one reused arena.
#[derive(Default)]
pub struct BatchScratch {
    text: String,
    items: Vec<Item>,
    query: QueryScratch,
    /// simd-json's parse buffers, kept between bodies.
    json_buffers: Option<Box<simd_json::Buffers>>,
}

impl fmt::Debug for BatchScratch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchScratch").field("events", &self.items.len()).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
struct Item {
    file_id: u64,
    event: Range<usize>,
    domain: Range<usize>,
    event_id: Option<EventId>,
}

impl BatchScratch {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The beacons of the batch, in body order, stamped `ts_ms`.
    pub fn beacons(&self, ts_ms: u64) -> impl ExactSizeIterator<Item = Beacon<'_>> + '_ {
        self.items.iter().map(move |item| Beacon {
            event: Event {
                ts_ms,
                event: &self.text[item.event.clone()],
                domain: &self.text[item.domain.clone()],
                file_id: item.file_id,
            },
            event_id: item.event_id,
        })
    }

    fn clear(&mut self) {
        self.text.clear();
        self.items.clear();
    }

    fn push(&mut self, beacon: &Beacon<'_>) {
        let Beacon { event, event_id } = beacon;
        let start = self.text.len();
        self.text.push_str(event.event);
        let mid = self.text.len();
        self.text.push_str(event.domain);
        let (domain, file_id, event_id) = (mid..self.text.len(), event.file_id, *event_id);
        self.items.push(Item { file_id, event: start..mid, domain, event_id });
    }
}

/// The rules a body is checked against.
#[derive(Debug, Clone, Copy)]
pub struct BodyRules<'a> {
    /// `ingest.events` and `ingest.require_event_id`.
    pub rules: &'a Rules,
    /// `ingest.max_batch_events`.
    pub max_events: usize,
    pub parser: JsonParser,
}

/// Parses and validates `body` (modified in place by simd-json) into `out`. On error `out`
/// is empty: nothing of an invalid batch can be stored.
pub fn parse_body(
    kind: BodyKind,
    body: &mut [u8],
    rules: &BodyRules<'_>,
    out: &mut BatchScratch,
) -> Result<(), BodyError> {
    out.clear();
    let result = match kind {
        BodyKind::Form => parse_form(body, rules, out),
        BodyKind::Json => json::parse_json(body, rules, out),
    };
    if result.is_err() {
        out.clear();
    }
    result
}

fn parse_form(body: &[u8], rules: &BodyRules<'_>, out: &mut BatchScratch) -> Result<(), BodyError> {
    let text = std::str::from_utf8(body).map_err(|_| BodyError::Malformed("form body is not UTF-8"))?;
    let text = text.trim_ascii();
    if text.is_empty() {
        return Err(BodyError::Empty);
    }
    let mut query = std::mem::take(&mut out.query);
    let parsed = super::parse_beacon(text, 0, rules.rules, &mut query)
        .map(|beacon| out.push(&beacon))
        .map_err(|rejection| BodyError::Item { index: 0, rejection });
    out.query = query;
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::Param;

    const PARSERS: [JsonParser; 2] = [JsonParser::Simd, JsonParser::Serde];

    fn run(
        ct: Option<&str>,
        body: &str,
        max_events: usize,
        parser: JsonParser,
    ) -> Result<Vec<(String, String, u64)>, BodyError> {
        let base = Rules::default();
        let rules = BodyRules { rules: &base, max_events, parser };
        let mut out = BatchScratch::default();
        let mut bytes = body.as_bytes().to_vec();
        let kind = body_kind(ct.map(str::as_bytes), &bytes)?;
        let result = parse_body(kind, &mut bytes, &rules, &mut out);
        let events: Vec<_> = out
            .beacons(7)
            .map(|b| (b.event.event.to_owned(), b.event.domain.to_owned(), b.event.file_id))
            .collect();
        assert_eq!(events.len(), out.len());
        match result {
            Ok(()) => Ok(events),
            Err(e) => {
                assert!(events.is_empty(), "a rejected batch keeps no events");
                Err(e)
            }
        }
    }

    fn ok(ct: Option<&str>, body: &str) -> Vec<(String, String, u64)> {
        let simd = run(ct, body, 100, JsonParser::Simd).expect(body);
        assert_eq!(run(ct, body, 100, JsonParser::Serde).expect(body), simd, "parsers agree");
        simd
    }

    fn err(ct: Option<&str>, body: &str) -> BodyError {
        let simd = run(ct, body, 100, JsonParser::Simd).unwrap_err();
        assert_eq!(run(ct, body, 100, JsonParser::Serde).unwrap_err(), simd, "parsers agree");
        simd
    }

    #[test]
    fn a_key_repeated_in_a_json_object_is_refused_by_both_parsers() {
        // Found by `make fuzz` (target body): simd-json took the first `domain`, serde_json
        // the last. Other keys may repeat; nested values are not looked at.
        let json = Some("application/json");
        let twice = r#"{"event":"play","domain":"a.org","domain":"b.org","file_id":5}"#;
        assert_eq!(
            err(json, twice),
            BodyError::Malformed("a key repeats in a JSON object, or it has over 32 keys")
        );
        for width in [31, 32, 33, 40] {
            let pad: String = (0..width - 4).map(|i| format!(",\"k{i}\":{i}")).collect();
            let wide = format!(r#"{{"event":"play","domain":"a.org","domain":"b.org","file_id":5{pad}}}"#);
            assert!(matches!(err(json, &wide), BodyError::Malformed(_)), "{width} keys, domain twice");
            let pad: String = (0..width - 3).map(|i| format!(",\"k{i}\":{i}")).collect();
            let once = format!(r#"{{"event":"play","domain":"a.org","file_id":5{pad}}}"#);
            match width {
                ..=32 => assert_eq!(ok(json, &once), vec![ev("play", "a.org", 5)], "{width} keys"),
                _ => assert!(matches!(err(json, &once), BodyError::Malformed(_)), "{width} keys"),
            }
        }
        let in_batch = r#"[{"event":"play","domain":"a.org","file_id":1},{"event":"a","event":"b","domain":"a.org","file_id":2}]"#;
        assert!(matches!(err(json, in_batch), BodyError::Malformed(_)));
        let other = r#"{"event":"play","domain":"a.org","file_id":5,"x":1,"x":[1,{"domain":2}]}"#;
        assert_eq!(ok(json, other), vec![ev("play", "a.org", 5)]);
    }

    #[test]
    fn an_integer_past_u64_reads_the_same_in_both_parsers() {
        // Found by `make fuzz` (target body): simd-json refused the number (400), serde_json
        // read it as a float and counted the items (413).
        let json = Some("application/json");
        let many = format!("[{}]", ["4444444444444444444444444446"; 16].join(","));
        for parser in PARSERS {
            assert_eq!(run(json, &many, 10, parser).unwrap_err(), BodyError::TooManyEvents { max: 10 });
        }
        let big = r#"{"event":"play","domain":"a.org","file_id":4444444444444444444444444446}"#;
        assert!(matches!(err(json, big), BodyError::Item { .. }), "{:?}", err(json, big));
    }

    fn ev(event: &str, domain: &str, file_id: u64) -> (String, String, u64) {
        (event.into(), domain.into(), file_id)
    }

    #[test]
    fn content_types_and_sniffing() {
        assert_eq!(body_kind(Some(b"application/json; charset=UTF-8"), b"x"), Ok(BodyKind::Json));
        assert_eq!(body_kind(Some(b"Application/X-WWW-Form-Urlencoded"), b"{"), Ok(BodyKind::Form));
        assert_eq!(body_kind(Some(b"text/plain;charset=UTF-8"), b" \n[{}]"), Ok(BodyKind::Json));
        assert_eq!(body_kind(Some(b"text/plain"), b"{}"), Ok(BodyKind::Json));
        assert_eq!(body_kind(Some(b"text/plain"), b"event=play"), Ok(BodyKind::Form));
        assert_eq!(body_kind(None, b"[1]"), Ok(BodyKind::Json));
        assert_eq!(
            body_kind(Some(b"multipart/form-data; boundary=x"), b"x"),
            Err(BodyError::UnsupportedType)
        );
        assert_eq!(BodyError::UnsupportedType.status(), 415);
    }

    #[test]
    fn form_and_text_bodies() {
        let want = vec![ev("play", "piratka.biz", 109_454)];
        let body = "event=play&domain=Piratka.biz&file_id=109454";
        assert_eq!(ok(Some("application/x-www-form-urlencoded"), body), want);
        assert_eq!(ok(Some("text/plain;charset=UTF-8"), body), want);
        assert_eq!(ok(None, &format!("{body}\n")), want);
        assert_eq!(
            err(None, "event=play&file_id=1"),
            BodyError::Item { index: 0, rejection: Rejection::Missing(Param::Domain) }
        );
        assert_eq!(err(None, "  "), BodyError::Empty);
        assert!(matches!(
            run(None, "event=\u{0}", 100, JsonParser::Simd),
            Err(BodyError::Item { index: 0, .. })
        ));
    }

    #[test]
    fn json_object_and_array() {
        let ct = Some("application/json");
        assert_eq!(
            ok(ct, r#"{"event":"play","domain":"a.org","file_id":5,"quality":"720p"}"#),
            vec![ev("play", "a.org", 5)]
        );
        assert_eq!(
            ok(
                ct,
                r#"[{"event":"play","domain":"a.org","file_id":"5"},{"event":"pause","domain":"B.org","file_id":6}]"#
            ),
            vec![ev("play", "a.org", 5), ev("pause", "b.org", 6)]
        );
        // Escaped JSON strings decode before validation.
        assert_eq!(
            ok(ct, r#"{"event":"pl\u0061y","domain":"a.org","file_id":1}"#),
            vec![ev("play", "a.org", 1)]
        );
    }

    #[test]
    fn one_bad_item_rejects_the_batch_and_names_it() {
        let ct = Some("application/json");
        let body = r#"[{"event":"play","domain":"a.org","file_id":1},{"event":"play","domain":"a.org","file_id":1},
            {"event":"play","domain":"a..org","file_id":1}]"#;
        let e = err(ct, body);
        assert_eq!(e, BodyError::Item { index: 2, rejection: Rejection::BadDomain });
        assert_eq!(e.to_string(), "item 2: domain is not a valid hostname");
        assert_eq!(e.status(), 400);
        let cases = [
            (r#"[{"domain":"a.org","file_id":1}]"#, Rejection::Missing(Param::Event)),
            (r#"[{"event":"play","domain":"a.org","file_id":0}]"#, Rejection::BadFileId),
            (r#"[{"event":"play","domain":"a.org","file_id":-3}]"#, Rejection::BadFileId),
            (r#"[{"event":"play","domain":"a.org","file_id":1.5}]"#, Rejection::BadFileId),
            (r#"[{"event":"play","domain":"a.org","file_id":"1%30"}]"#, Rejection::BadFileId),
            (r#"[{"event":"Play","domain":"a.org","file_id":1}]"#, Rejection::BadEvent),
            (r#"[{"event":7,"domain":"a.org","file_id":1}]"#, Rejection::BadEvent),
            (r#"[{"event":"play","domain":"a%2eorg","file_id":1}]"#, Rejection::BadDomain),
            (r#"[{"event":"play","domain":null,"file_id":1}]"#, Rejection::BadDomain),
            (r#"[{"event":"play","domain":"a.org","file_id":""}]"#, Rejection::Empty(Param::FileId)),
        ];
        for (body, rejection) in cases {
            assert_eq!(err(ct, body), BodyError::Item { index: 0, rejection }, "{body}");
        }
    }

    #[test]
    fn malformed_and_empty_json() {
        let ct = Some("application/json");
        assert_eq!(err(ct, "[]"), BodyError::Empty);
        assert_eq!(err(ct, r#"{"event":"play""#), BodyError::Malformed("invalid JSON"));
        assert_eq!(err(ct, "[1,2]"), BodyError::Malformed("items must be JSON objects"));
        assert_eq!(err(ct, "\"x\""), BodyError::Malformed("items must be JSON objects"));
        assert_eq!(err(ct, "event=play"), BodyError::Malformed("invalid JSON"));
    }

    #[test]
    fn batch_size_cap_exact_and_one_past() {
        let item = r#"{"event":"play","domain":"a.org","file_id":1}"#;
        let body = |n: usize| format!("[{}]", vec![item; n].join(","));
        for parser in PARSERS {
            assert_eq!(run(Some("application/json"), &body(3), 3, parser).map(|v| v.len()), Ok(3));
            let e = run(Some("application/json"), &body(4), 3, parser).unwrap_err();
            assert_eq!(e, BodyError::TooManyEvents { max: 3 });
            assert_eq!(e.status(), 413);
        }
    }

    #[test]
    fn labels_are_metric_reasons() {
        let errors = [
            BodyError::UnsupportedType,
            BodyError::Malformed("x"),
            BodyError::Empty,
            BodyError::TooManyEvents { max: 1 },
            BodyError::Item { index: 0, rejection: Rejection::BadDomain },
        ];
        for e in errors {
            assert!(crate::metrics::REJECT_REASONS.contains(&e.label()), "{}", e.label());
            assert!(crate::metrics::STATUS_CODES.contains(&e.status()), "{}", e.status());
        }
    }

    #[test]
    fn json_event_ids_per_item() {
        const ID: &str = "3f2b8c1e-9d4a-4c6b-8e21-7a5f0d9c1b2e";
        for parser in PARSERS {
            let required = Rules { require_event_id: true, ..Rules::default() };
            let rules = BodyRules { rules: &required, max_events: 10, parser };
            let mut out = BatchScratch::default();
            let mut body = format!(
                r#"[{{"event":"a","domain":"a.org","file_id":1,"event_id":"{ID}"}},
                   {{"event":"b","domain":"a.org","file_id":2,"event_id":"{}"}}]"#,
                ID.to_uppercase()
            )
            .into_bytes();
            parse_body(BodyKind::Json, &mut body, &rules, &mut out).unwrap();
            let ids: Vec<_> = out.beacons(1).map(|b| b.event_id.map(|id| id.to_string())).collect();
            assert_eq!(ids, [Some(ID.to_string()), Some(ID.to_string())], "{parser:?}");
            let cases = [
                (
                    r#"{"event":"a","domain":"a.org","file_id":1}"#,
                    Rejection::Missing(crate::ingest::Param::EventId),
                ),
                (r#"{"event":"a","domain":"a.org","file_id":1,"event_id":"x"}"#, Rejection::BadEventId),
                (r#"{"event":"a","domain":"a.org","file_id":1,"event_id":7}"#, Rejection::BadEventId),
                (
                    r#"{"event":"a","domain":"a.org","file_id":1,"event_id":"3f2b8c1e%2D9d4a"}"#,
                    Rejection::BadEventId,
                ),
            ];
            for (body, rejection) in cases {
                let mut body = body.as_bytes().to_vec();
                let got = parse_body(BodyKind::Json, &mut body, &rules, &mut out);
                assert_eq!(got, Err(BodyError::Item { index: 0, rejection }), "{parser:?}");
            }
        }
        let form = format!("event=a&domain=a.org&file_id=1&eid={ID}");
        let mut out = BatchScratch::default();
        let base = Rules::default();
        let rules = BodyRules { rules: &base, max_events: 10, parser: JsonParser::Simd };
        parse_body(BodyKind::Form, &mut form.into_bytes(), &rules, &mut out).unwrap();
        assert_eq!(
            out.beacons(1).next().and_then(|b| b.event_id).map(|id| id.to_string()).as_deref(),
            Some(ID)
        );
    }

    #[test]
    fn scratch_is_reused_and_cleared() {
        let base = Rules::default();
        let rules = BodyRules { rules: &base, max_events: 10, parser: JsonParser::Simd };
        let mut out = BatchScratch::default();
        let mut good =
            br#"[{"event":"a","domain":"a.org","file_id":1},{"event":"b","domain":"b.org","file_id":2}]"#
                .to_vec();
        parse_body(BodyKind::Json, &mut good, &rules, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        let mut bad = br#"[{"event":"a","domain":"a.org","file_id":1},{"event":"b"}]"#.to_vec();
        assert!(parse_body(BodyKind::Json, &mut bad, &rules, &mut out).is_err());
        assert!(out.is_empty());
    }
}
