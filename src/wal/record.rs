//! Encoding and decoding of one WAL record (format in the module doc of `crate::wal`).
//! The encoder is on the hot path: it appends to a reused buffer and allocates nothing.
//! The decoder is its pair: it checks every property the encoder guarantees (header, length,
//! CRC, payload shape) and borrows the strings from the input, so it allocates nothing either.
//!
//! Client context (IP, User-Agent, Referer host, kept extra parameters), the client's event
//! id and the GeoIP country ride in optional payload keys `ip`, `ua`, `ref`, `extra`, `eid` and
//! `cc`, written only when present: a plain event's record is byte for byte what it was before
//! they existed, and old records decode with an empty [`Context`]. `ua` and `extra` are
//! client-controlled text and are JSON-escaped; `eid` is 32 lower-case hex digits and `cc` two
//! upper-case letters (any other spelling is `BadPayload`). The country is looked up on the
//! core at intake and stored here, so a replay writes the country the event was accepted with,
//! whatever GeoIP database is loaded by then.

mod crc;
mod exact;
mod scan;

pub use self::scan::{resync, scan, BadRange, Resync, Scan};

use std::borrow::Cow;

use crate::country::Country;
use crate::event_id::EventId;

/// Longest record line accepted, newline included.
pub const MAX_RECORD_BYTES: usize = 16 * 1024;

/// One validated event as stored in the WAL. Strings borrow from the request or from the
/// segment bytes being decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// Server receive time, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// `[a-z0-9_]{1,32}`.
    pub event: &'a str,
    /// Lower-case hostname, at most 253 bytes.
    pub domain: &'a str,
    /// ≥ 1.
    pub file_id: u64,
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// No `\n` yet: a torn tail if at the end of the newest segment.
    #[error("incomplete record (no newline)")]
    Incomplete,
    #[error("record longer than {MAX_RECORD_BYTES} bytes")]
    TooLong,
    #[error("bad record header")]
    BadHeader,
    #[error("checksum mismatch")]
    BadChecksum,
    #[error("payload is not a valid event")]
    BadPayload,
}

/// Optional client context stored with an event; `None` keys are not written at all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Context<'a> {
    /// Client IP in canonical text form (no escaping needed).
    pub ip: Option<&'a str>,
    /// User-Agent text, any UTF-8 (escaped when encoded).
    pub ua: Option<&'a str>,
    /// Lower-case Referer host (hostname or IP-literal characters only).
    pub referer_host: Option<&'a str>,
    /// Kept extra parameters as a JSON object text (escaped as a JSON string when encoded).
    pub extra: Option<&'a str>,
    /// The client's id of this event (`eid` / `event_id`), for de-duplication in the sink.
    pub event_id: Option<EventId>,
    /// The client IP's country (`enrich.geoip_db`), looked up at intake.
    pub country: Option<Country>,
}

impl Context<'_> {
    /// No client context: the record holds the event only.
    pub const NONE: Context<'static> =
        Context { ip: None, ua: None, referer_host: None, extra: None, event_id: None, country: None };

    pub fn is_empty(&self) -> bool {
        self.ip.is_none()
            && self.ua.is_none()
            && self.referer_host.is_none()
            && self.extra.is_none()
            && self.event_id.is_none()
            && self.country.is_none()
    }
}

/// [`Context`] as decoded: escaped strings come back owned, the rest borrowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodedContext<'a> {
    pub ip: Option<&'a str>,
    pub ua: Option<Cow<'a, str>>,
    pub referer_host: Option<&'a str>,
    pub extra: Option<Cow<'a, str>>,
    pub event_id: Option<EventId>,
    pub country: Option<Country>,
}

const HEADER_BYTES: usize = 9; // 8 hex digits + space

/// Appends one record line for `ev` and its client context to `out`. Allocates only if
/// `out` must grow. With an empty `ctx` ([`Context::NONE`]) no context key is written, so the
/// line is byte for byte the format from before client context existed.
///
/// The caller guarantees `event`, `domain`, `ip` and `referer_host` need no JSON escaping (the
/// validators only let through `[a-z0-9_]`, hostname and IP characters); debug builds assert
/// it. `ua` and `extra` are escaped.
pub fn encode(ev: &Event<'_>, ctx: &Context<'_>, out: &mut Vec<u8>) {
    debug_assert!(ev.event.bytes().all(is_plain_json_byte) && ev.domain.bytes().all(is_plain_json_byte));
    debug_assert!(ctx.ip.is_none_or(|s| s.bytes().all(is_plain_json_byte)));
    debug_assert!(ctx.referer_host.is_none_or(|s| s.bytes().all(is_plain_json_byte)));
    let start = out.len();
    out.extend_from_slice(b"00000000 {\"ts\":");
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(num.format(ev.ts_ms).as_bytes());
    out.extend_from_slice(b",\"event\":\"");
    out.extend_from_slice(ev.event.as_bytes());
    out.extend_from_slice(b"\",\"domain\":\"");
    out.extend_from_slice(ev.domain.as_bytes());
    out.extend_from_slice(b"\",\"file_id\":");
    out.extend_from_slice(num.format(ev.file_id).as_bytes());
    if !ctx.is_empty() {
        push_context(ctx, out);
    }
    out.push(b'}');
    let crc = crc::crc32c(&out[start + HEADER_BYTES..]);
    out.push(b'\n');
    out[start..start + 8].copy_from_slice(&hex_u32(crc));
    debug_assert!(out.len() - start <= MAX_RECORD_BYTES);
}

/// The context keys that are present, in the order of [`Context`]'s fields.
fn push_context(ctx: &Context<'_>, out: &mut Vec<u8>) {
    // `ip` and `ref` need no escaping (see `encode`): written as they are, without a scan.
    if let Some(ip) = ctx.ip {
        push_plain_field(b",\"ip\":\"", ip.as_bytes(), out);
    }
    if let Some(ua) = ctx.ua {
        out.extend_from_slice(b",\"ua\":");
        push_json_string(ua, out);
    }
    if let Some(host) = ctx.referer_host {
        push_plain_field(b",\"ref\":\"", host.as_bytes(), out);
    }
    if let Some(extra) = ctx.extra {
        out.extend_from_slice(b",\"extra\":");
        push_json_string(extra, out);
    }
    if let Some(id) = ctx.event_id {
        out.extend_from_slice(b",\"eid\":\"");
        id.write_hex(out);
        out.push(b'"');
    }
    if let Some(country) = ctx.country {
        push_plain_field(b",\"cc\":\"", &country.bytes(), out);
    }
}

/// `key_quote` (the key, its colon and the opening quote), `value` unescaped, the closing quote.
fn push_plain_field(key_quote: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(key_quote);
    out.extend_from_slice(value);
    out.push(b'"');
}

/// Appends `s` as a JSON string literal (see [`json_string`]).
fn push_json_string(s: &str, out: &mut Vec<u8>) {
    out.reserve(s.len() + 2);
    json_string(s, |piece| out.extend_from_slice(piece.as_bytes()));
}

/// `\u0000` … `\u001f`: how a control byte is written inside a JSON string.
const CONTROL_ESCAPES: [&str; 32] = [
    "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007", "\\u0008",
    "\\u0009", "\\u000a", "\\u000b", "\\u000c", "\\u000d", "\\u000e", "\\u000f", "\\u0010", "\\u0011",
    "\\u0012", "\\u0013", "\\u0014", "\\u0015", "\\u0016", "\\u0017", "\\u0018", "\\u0019", "\\u001a",
    "\\u001b", "\\u001c", "\\u001d", "\\u001e", "\\u001f",
];

/// Hands `put` the JSON string literal of `s` in pieces, quotes included: `"` and `\\`
/// escaped, control bytes as `\u00XX`, and each run of bytes between them (a whole
/// User-Agent, as a rule) as one piece, so that a caller copies runs rather than bytes.
pub(crate) fn json_string(s: &str, mut put: impl FnMut(&str)) {
    put("\"");
    // Nearly every string needs no escape: one pass without an early exit (so it vectorises)
    // finds that, and the string goes in one piece.
    if !s.bytes().fold(false, |seen, b| seen | needs_escape(b)) {
        put(s);
        put("\"");
        return;
    }
    let mut copied = 0;
    for (at, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0..=0x1f => CONTROL_ESCAPES[usize::from(b)],
            _ => continue,
        };
        // `at` and `copied` sit at or just past an ASCII byte: both are char boundaries.
        put(&s[copied..at]);
        put(escaped);
        copied = at + 1;
    }
    put(&s[copied..]);
    put("\"");
}

/// A byte that [`json_string`] escapes: `"`, `\\` and the control bytes.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

fn is_plain_json_byte(b: u8) -> bool {
    b.is_ascii_graphic() && b != b'"' && b != b'\\'
}

/// `v` as 8 lower-case hex digits, most significant first, computed in one `u64` (a digit per
/// byte) rather than looked up nibble by nibble.
fn hex_u32(v: u32) -> [u8; 8] {
    let x = u64::from(v);
    // Spread the nibbles: nibble i (from the least significant) ends up alone in byte i.
    let x = ((x & 0xffff_0000) << 16) | (x & 0xffff);
    let x = ((x & 0x0000_ff00_0000_ff00) << 8) | (x & 0x0000_00ff_0000_00ff);
    let x = ((x & 0x00f0_00f0_00f0_00f0) << 4) | (x & 0x000f_000f_000f_000f);
    // 1 in each byte whose nibble is 10 or more: those become letters.
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    let digits = x + 0x3030_3030_3030_3030 + letters * u64::from(b'a' - b'0' - 10);
    digits.to_be_bytes()
}

/// The event object inside a record. Unknown keys are ignored (forward compatibility);
/// strings are borrowed, so an escaped string (never written by `encode`) is `BadPayload`.
/// Records in the encoder's own shape are read by [`exact`] instead, to the same result.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct Payload<'a> {
    ts: u64,
    #[serde(borrow)]
    event: &'a str,
    #[serde(borrow)]
    domain: &'a str,
    file_id: u64,
    #[serde(default, borrow)]
    ip: Option<&'a str>,
    #[serde(default, borrow)]
    ua: Option<Cow<'a, str>>,
    #[serde(default, borrow, rename = "ref")]
    referer_host: Option<&'a str>,
    #[serde(default, borrow)]
    extra: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    eid: Option<&'a str>,
    #[serde(default, borrow)]
    cc: Option<&'a str>,
}

/// Decodes the record at the start of `buf`: its event, its client context (empty for records
/// written before context existed) and the bytes it occupies, newline included.
pub fn decode(buf: &[u8]) -> Result<(Event<'_>, DecodedContext<'_>, usize), RecordError> {
    let crc = parse_header(buf)?;
    let line_len = find_line_len(buf)?;
    let payload = &buf[HEADER_BYTES..line_len - 1];
    if crc::crc32c(payload) != crc {
        return Err(RecordError::BadChecksum);
    }
    let (event, context) = parse_payload(payload)?;
    Ok((event, context, line_len))
}

/// Checks the 8 hex digits and the space; bytes not yet present make the record `Incomplete`
/// unless a present one is already wrong.
fn parse_header(buf: &[u8]) -> Result<u32, RecordError> {
    let mut crc = 0u32;
    for &b in buf.iter().take(8) {
        crc = (crc << 4) | u32::from(hex_digit(b).ok_or(RecordError::BadHeader)?);
    }
    match buf.get(8) {
        None => Err(RecordError::Incomplete),
        Some(b' ') => Ok(crc),
        Some(_) => Err(RecordError::BadHeader),
    }
}

/// Only lowercase: `encode` writes lowercase, and one spelling per CRC keeps the format exact.
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Length of the line including its `\n`, which must come within `MAX_RECORD_BYTES`.
fn find_line_len(buf: &[u8]) -> Result<usize, RecordError> {
    let window = &buf[..buf.len().min(MAX_RECORD_BYTES)];
    match memchr::memchr(b'\n', window) {
        Some(i) => Ok(i + 1),
        None if buf.len() < MAX_RECORD_BYTES => Err(RecordError::Incomplete),
        None => Err(RecordError::TooLong),
    }
}

fn parse_payload(payload: &[u8]) -> Result<(Event<'_>, DecodedContext<'_>), RecordError> {
    // One UTF-8 check of the whole payload, then a `str` parse that does not check each string
    // again (fewer instructions per record than `from_slice`; see the wal_replay bench).
    let text = std::str::from_utf8(payload).map_err(|_| RecordError::BadPayload)?;
    let p: Payload<'_> = match exact::parse(text) {
        Some(p) => p,
        None => serde_json::from_str(text).map_err(|_| RecordError::BadPayload)?,
    };
    if p.event.is_empty() || p.domain.is_empty() {
        return Err(RecordError::BadPayload);
    }
    let event = Event { ts_ms: p.ts, event: p.event, domain: p.domain, file_id: p.file_id };
    let event_id = match p.eid {
        None => None,
        Some(hex) => Some(EventId::from_hex(hex.as_bytes()).ok_or(RecordError::BadPayload)?),
    };
    let country = match p.cc {
        None => None,
        Some(code) => Some(Country::from_wal(code.as_bytes()).ok_or(RecordError::BadPayload)?),
    };
    let context = DecodedContext {
        ip: p.ip,
        ua: p.ua,
        referer_host: p.referer_host,
        extra: p.extra,
        event_id,
        country,
    };
    Ok((event, context))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(file_id: u64) -> Event<'static> {
        Event { ts_ms: 1_763_923_170_123, event: "play", domain: "piratka.biz", file_id }
    }

    fn encoded(events: &[Event<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for ev in events {
            encode(ev, &Context::NONE, &mut out);
        }
        out
    }

    /// Builds a record line with a correct CRC around an arbitrary payload.
    fn line_with_payload(payload: &str) -> Vec<u8> {
        let mut out = hex_u32(crc32c::crc32c(payload.as_bytes())).to_vec();
        out.push(b' ');
        out.extend_from_slice(payload.as_bytes());
        out.push(b'\n');
        out
    }

    #[test]
    fn hex_digits_are_those_of_format() {
        let mut values = vec![0, 1, 9, 10, 15, 16, 0x9a, 0xdead_beef, 0x0123_4567, 0x89ab_cdef, u32::MAX];
        values.extend((0..32).map(|i| 1u32 << i).chain((0..8).map(|i| 0xau32 << (4 * i))));
        for v in values {
            assert_eq!(&hex_u32(v)[..], format!("{v:08x}").as_bytes(), "{v:#x}");
        }
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let ev = sample(109_454);
        let buf = encoded(&[ev]);
        let (back, ctx, used) = decode(&buf).unwrap();
        assert_eq!(ctx, DecodedContext::default());
        assert_eq!(back, ev);
        assert_eq!(used, buf.len());
        assert_eq!(&buf[8..10], b" {");
        assert!(buf[..8].iter().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn decode_consumes_only_the_first_record() {
        let buf = encoded(&[sample(1), sample(2)]);
        let (first, _, used) = decode(&buf).unwrap();
        assert_eq!(first.file_id, 1);
        let (second, _, used2) = decode(&buf[used..]).unwrap();
        assert_eq!(second.file_id, 2);
        assert_eq!(used + used2, buf.len());
    }

    #[test]
    fn unknown_payload_keys_are_ignored() {
        let line =
            line_with_payload(r#"{"ts":5,"event":"play","domain":"a.b","file_id":7,"future":{"x":[1,2]}}"#);
        let (ev, _, used) = decode(&line).unwrap();
        assert_eq!(ev, Event { ts_ms: 5, event: "play", domain: "a.b", file_id: 7 });
        assert_eq!(used, line.len());
    }

    proptest::proptest! {
        #[test]
        fn hex_of_any_value(v in proptest::prelude::any::<u32>()) {
            let want = format!("{v:08x}");
            proptest::prop_assert_eq!(&hex_u32(v)[..], want.as_bytes());
        }

        #[test]
        fn any_user_agent_round_trips(ua in "\\PC*|[\"\\\\\x00-\x1f a-z]{0,40}") {
            let ctx = Context { ua: Some(&ua), ..Context::default() };
            let mut buf = Vec::new();
            encode(&sample(1), &ctx, &mut buf);
            let (_, decoded, used) = decode(&buf).expect("decodes");
            proptest::prop_assert_eq!(used, buf.len());
            proptest::prop_assert_eq!(decoded.ua.as_deref(), Some(ua.as_str()));
        }
    }

    #[test]
    fn context_round_trips_with_escapes() {
        let ev = sample(9);
        let ctx = Context {
            ip: Some("2001:db8::1"),
            ua: Some("Mozilla/5.0 \"quoted\" back\\slash\u{1}ctl é"),
            referer_host: Some("piratka.biz"),
            extra: Some(r#"{"quality":"720p"}"#),
            event_id: EventId::parse(b"3f2b8c1e-9d4a-4c6b-8e21-7a5f0d9c1b2e").ok(),
            country: Country::parse("nl"),
        };
        let mut buf = Vec::new();
        encode(&ev, &ctx, &mut buf);
        assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        let (back, decoded, used) = decode(&buf).unwrap();
        assert_eq!((back, used), (ev, buf.len()));
        assert_eq!(decoded.ip, ctx.ip);
        assert_eq!(decoded.ua.as_deref(), ctx.ua);
        assert_eq!(decoded.referer_host, ctx.referer_host);
        assert_eq!(decoded.extra.as_deref(), ctx.extra);
        assert_eq!(decoded.event_id, ctx.event_id);
        assert_eq!(decoded.country, ctx.country);
        assert!(buf.windows(40).any(|w| w == b"\"eid\":\"3f2b8c1e9d4a4c6b8e217a5f0d9c1b2e\""));
        assert!(buf.windows(11).any(|w| w == b",\"cc\":\"NL\"}"), "cc is written last");
        assert_eq!(scan(&buf).records, 1);
    }

    #[test]
    fn empty_context_encodes_the_plain_format() {
        let mut plain = Vec::new();
        encode(&sample(4), &Context::NONE, &mut plain);
        let payload = br#"{"ts":1763923170123,"event":"play","domain":"piratka.biz","file_id":4}"#;
        assert_eq!(&plain[HEADER_BYTES..plain.len() - 1], payload, "no context key is written");
        let (_, ctx, _) = decode(&plain).unwrap();
        assert_eq!(ctx, DecodedContext::default(), "old records have no context");
        let partial = Context { ua: Some("wrk"), ..Context::default() };
        let mut buf = Vec::new();
        encode(&sample(4), &partial, &mut buf);
        assert!(!buf.windows(5).any(|w| w == b"\"ip\":"), "absent keys are not written");
        assert_eq!(decode(&buf).unwrap().1.ua.as_deref(), Some("wrk"));
    }

    #[test]
    fn empty_or_missing_fields_are_bad_payload() {
        for payload in [
            r#"{"ts":5,"event":"","domain":"a.b","file_id":7}"#,
            r#"{"ts":5,"event":"play","domain":"","file_id":7}"#,
            r#"{"ts":5,"event":"play","file_id":7}"#,
            r#"{"ts":-1,"event":"play","domain":"a.b","file_id":7}"#,
            r#"[1,2,3]"#,
            r#"{"ts":5,"event":"play","domain":"a.b","file_id":7} trailing"#,
        ] {
            assert_eq!(
                decode(&line_with_payload(payload)).map(|_| ()),
                Err(RecordError::BadPayload),
                "{payload}"
            );
        }
    }

    #[test]
    fn event_id_is_strict_and_alone_is_a_context() {
        let base = r#"{"ts":5,"event":"play","domain":"a.b","file_id":7,"eid":"#;
        let ok = line_with_payload(&format!(r#"{base}"3f2b8c1e9d4a4c6b8e217a5f0d9c1b2e"}}"#));
        let (_, ctx, _) = decode(&ok).unwrap();
        assert_eq!(
            ctx.event_id.map(|id| id.to_string()).as_deref(),
            Some("3f2b8c1e-9d4a-4c6b-8e21-7a5f0d9c1b2e")
        );
        for bad in [
            r#""3F2B8C1E9D4A4C6B8E217A5F0D9C1B2E""#,
            r#""3f2b8c1e-9d4a-4c6b-8e21-7a5f0d9c1b2e""#,
            "7",
            r#""""#,
        ] {
            let line = line_with_payload(&format!("{base}{bad}}}"));
            assert_eq!(decode(&line), Err(RecordError::BadPayload), "{bad}");
        }
        let id_only = Context { event_id: EventId::parse(&[b'1'; 32]).ok(), ..Context::default() };
        assert!(!id_only.is_empty());
        let mut buf = Vec::new();
        encode(&sample(1), &id_only, &mut buf);
        assert_eq!(decode(&buf).unwrap().1.event_id, id_only.event_id);
    }

    #[test]
    fn country_is_strict_and_alone_is_a_context() {
        let base = r#"{"ts":5,"event":"play","domain":"a.b","file_id":7,"cc":"#;
        let ok = line_with_payload(&format!(r#"{base}"SE"}}"#));
        assert_eq!(decode(&ok).unwrap().1.country, Country::parse("SE"));
        for bad in [r#""se""#, r#""SWE""#, r#""S""#, r#""""#, "46"] {
            let line = line_with_payload(&format!("{base}{bad}}}"));
            assert_eq!(decode(&line), Err(RecordError::BadPayload), "{bad}");
        }
        let cc_only = Context { country: Country::parse("JP"), ..Context::default() };
        assert!(!cc_only.is_empty());
        let mut buf = Vec::new();
        encode(&sample(1), &cc_only, &mut buf);
        assert_eq!(decode(&buf).unwrap().1.country, cc_only.country);
    }

    #[test]
    fn truncated_record_is_incomplete_at_every_cut() {
        let buf = encoded(&[sample(3)]);
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut]).map(|_| ()), Err(RecordError::Incomplete), "cut at {cut}");
        }
    }

    #[test]
    fn zero_filled_tail_is_bad_header() {
        assert_eq!(decode(&[0u8; 4096]).map(|_| ()), Err(RecordError::BadHeader));
        assert_eq!(decode(&[0u8; 1]).map(|_| ()), Err(RecordError::BadHeader));
    }

    #[test]
    fn header_errors_are_bad_header() {
        let mut buf = encoded(&[sample(3)]);
        buf[8] = b'x';
        assert_eq!(decode(&buf).map(|_| ()), Err(RecordError::BadHeader));
        let mut upper = encoded(&[sample(3)]);
        upper[..8].copy_from_slice(b"ABCDEF12");
        assert_eq!(decode(&upper).map(|_| ()), Err(RecordError::BadHeader));
    }

    #[test]
    fn flipped_payload_byte_is_bad_checksum() {
        let clean = encoded(&[sample(3)]);
        for i in HEADER_BYTES..clean.len() - 1 {
            let mut buf = clean.clone();
            buf[i] ^= 0x01;
            assert_eq!(decode(&buf).map(|_| ()), Err(RecordError::BadChecksum), "flip at {i}");
        }
    }

    #[test]
    fn missing_newline_within_limit_is_too_long() {
        let mut buf = b"00000000 ".to_vec();
        buf.resize(MAX_RECORD_BYTES, b'a');
        assert_eq!(decode(&buf).map(|_| ()), Err(RecordError::TooLong));
        buf.pop();
        assert_eq!(decode(&buf).map(|_| ()), Err(RecordError::Incomplete));
        buf.push(b'\n');
        assert_eq!(
            decode(&buf).map(|_| ()),
            Err(RecordError::BadChecksum),
            "exactly at the limit is allowed"
        );
    }

    #[test]
    fn scan_skips_bad_records_and_tells_a_torn_tail_apart() {
        let good = encoded(&[sample(1), sample(2), sample(3)]);
        let clean = scan(&good);
        assert!(clean.is_clean());
        assert_eq!((clean.valid_len, clean.records), (good.len(), 3));
        let one = encoded(&[sample(1)]).len();

        let mut torn = good.clone();
        torn.truncate(good.len() - 5);
        let s = scan(&torn);
        assert_eq!((s.valid_len, s.records), (2 * one, 2));
        assert_eq!(s.tail, Some(BadRange { offset: 2 * one, len: one - 5, reason: RecordError::Incomplete }));

        let mut flipped = good.clone();
        flipped[one + 20] ^= 0x08;
        flipped.extend_from_slice(&[0u8; 100]);
        let s = scan(&flipped);
        assert_eq!(s.records, 2, "only the flipped record is lost");
        assert_eq!(s.corrupt, vec![BadRange { offset: one, len: one, reason: RecordError::BadChecksum }]);
        assert_eq!(
            s.tail.map(|t| (t.offset, t.len, t.reason)),
            Some((good.len(), 100, RecordError::BadHeader))
        );
        assert_eq!(scan(&[]), Scan { valid_len: 0, records: 0, corrupt: Vec::new(), tail: None });
    }

    #[test]
    fn a_flipped_newline_costs_one_record() {
        let good = encoded(&[sample(1), sample(2), sample(3)]);
        let one = encoded(&[sample(1)]).len();
        let mut bytes = good.clone();
        bytes[one - 1] = b' ';
        let s = scan(&bytes);
        assert_eq!(s.records, 2);
        assert_eq!(s.corrupt.len(), 1);
        assert_eq!((s.corrupt[0].offset, s.corrupt[0].len), (0, one));
        assert!(s.tail.is_none());
    }

    #[test]
    fn resync_checks_every_offset_and_asks_for_more_bytes_when_cut_short() {
        let good = encoded(&[sample(1), sample(2)]);
        let one = encoded(&[sample(1)]).len();
        let mut bytes = vec![b'#'; 7];
        bytes.extend_from_slice(&good);
        assert_eq!(resync(&bytes, 1, true), Resync::At(7));
        assert_eq!(resync(&bytes, 8, true), Resync::At(7 + one));
        assert_eq!(resync(&bytes, 8 + one, true), Resync::None);
        let cut = &bytes[..7 + one + 20];
        assert_eq!(resync(cut, 8, false), Resync::NeedMore(7 + one), "a record cut by the buffer end");
        assert_eq!(resync(cut, 8, true), Resync::None, "but not past the readable end");
        assert_eq!(resync(&bytes[..11], 1, false), Resync::NeedMore(7), "a header may start here");
        assert_eq!(resync(b"xx", 1, true), Resync::None);
    }
}
