//! The properties every network-facing parser must keep, one function per fuzz target. Each
//! takes arbitrary bytes and panics when a property breaks; returning is a pass.
//!
//! Shared by the libFuzzer targets (`fuzz/fuzz_targets/*.rs`, `make fuzz`) and by the corpus
//! replay in `make test` (`tests/fuzz_corpus.rs`, via `#[path]`), so a corpus entry that once
//! found a bug is checked by the same code forever after.
//!
//! Limits are shrunk (a 4 KiB body cap, 300-byte heads) so the edges are reached quickly.

use std::net::IpAddr;

use psc::http::chunked::{dechunk, Dechunk};
use psc::http::request::{parse, Body, Limits, Parsed};
use psc::ingest::body::{body_kind, parse_body, BatchScratch, BodyError, BodyRules, JsonParser};
use psc::ingest::client::{referer_host, user_agent, ForwardedFor, TrustedProxies, UA_MAX_BYTES};
use psc::ingest::encoding::{BodyDecoder, Coding, DecodeError, DecodeLimits};
use psc::ingest::extra::{KeepParams, EXTRA_MAX_BYTES};
use psc::ingest::{is_valid_event_name, parse_beacon, QueryScratch, Rules};
use psc::wal::record::{decode, encode, scan, Context, Event};

/// Body cap of the body and chunked targets, bytes.
pub const BODY_MAX_BYTES: usize = 4096;
/// Ratio cap of the body target.
pub const RATIO_MAX: usize = 20;

/// `http::request::parse`: never panics; a complete head stays within every limit.
pub fn request_head(data: &[u8]) {
    let limits =
        Limits { max_header_bytes: 300, max_url_bytes: 100, max_body_bytes: BODY_MAX_BYTES, max_headers: 8 };
    if let Parsed::Complete(req) = parse(data, &limits) {
        assert!(req.head_len <= limits.max_header_bytes && req.head_len <= data.len());
        assert!(req.path.len() + req.query.len() < limits.max_url_bytes + 1);
        if let Body::Length(n) = req.body {
            assert!((1..=BODY_MAX_BYTES).contains(&n));
        }
    }
}

/// Query validation and the client-context parsers: never panic; what is accepted obeys the
/// rules; what is kept is bounded.
pub fn query(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for require_event_id in [false, true] {
        let rules = Rules { require_event_id, ..Rules::default() };
        let mut scratch = QueryScratch::new();
        if let Ok(beacon) = parse_beacon(text, 1, &rules, &mut scratch) {
            assert_valid_event(&beacon.event);
            assert!(!require_event_id || beacon.event_id.is_some());
        }
    }
    let keep = KeepParams::new(&["quality".to_owned(), "position".to_owned(), "x".to_owned()]);
    let mut extra = String::new();
    if keep.extract(text, &mut extra) {
        assert!(extra.len() <= EXTRA_MAX_BYTES);
        serde_json::from_str::<serde_json::Value>(&extra).expect("extra is a JSON object");
    }
    let proxies = TrustedProxies::parse(&["10.0.0.0/8".to_owned(), "::1".to_owned()]).expect("valid");
    let peer: IpAddr = [10, 0, 0, 1].into();
    // Read as the span of two X-Forwarded-For header lines, with whatever lines in between.
    let _ = proxies.client_ip(peer, &ForwardedFor::spanning(data, 2));
    let _ = proxies.client_ip(peer, &ForwardedFor::one(data));
    let mut host = String::new();
    if referer_host(data, &mut host) {
        assert!(!host.is_empty() && host.len() <= 253 && !host.contains(['"', '\\', '\'']));
    }
    if let Some(ua) = user_agent(data) {
        assert!(!ua.is_empty() && ua.len() <= UA_MAX_BYTES);
    }
}

fn assert_valid_event(ev: &Event<'_>) {
    assert!(is_valid_event_name(ev.event), "{ev:?}");
    assert!(ev.domain.len() <= 253 && !ev.domain.is_empty(), "{ev:?}");
    assert!(ev.domain.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    }));
    assert!(ev.file_id >= 1);
}

/// `http::chunked::dechunk`: never panics, never yields more than the cap, consumes no more
/// than it was given, and a split of the input never changes a complete answer.
pub fn chunked(data: &[u8]) {
    let mut out = Vec::new();
    let whole = dechunk(data, BODY_MAX_BYTES, &mut out);
    assert!(out.len() <= BODY_MAX_BYTES);
    if let Dechunk::Complete { wire_len } = whole {
        assert!(wire_len <= data.len());
        let decoded = out.clone();
        // The same body with anything after it decodes the same.
        let mut longer = data[..wire_len].to_vec();
        longer.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(dechunk(&longer, BODY_MAX_BYTES, &mut out), whole);
        assert_eq!(out, decoded);
        // Every strict prefix is Partial or already refused, never Complete.
        let cut = wire_len / 2;
        assert!(!matches!(dechunk(&data[..cut], BODY_MAX_BYTES, &mut out), Dechunk::Complete { .. }));
    }
}

/// Body decoding: `data[0]` picks the coding, the content type and whether the rest is a
/// compressed stream (decoded) or a plain body (compressed first, then decoded: a round trip).
/// The decoded body is bounded; both JSON parsers agree on what they accept.
pub fn body(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let coding = Coding::ALL[usize::from(selector % 3)];
    let limits = DecodeLimits { max_bytes: BODY_MAX_BYTES, max_ratio: RATIO_MAX };
    let mut decoder = BodyDecoder::default();
    if selector & 0x80 != 0 {
        return round_trip(&mut decoder, coding, rest, limits);
    }
    let decoded = match decoder.decode(coding, rest, limits) {
        Ok(decoded) => decoded.to_vec(),
        Err(e) => {
            assert!(e.status() == 413 || e.status() == 400);
            return;
        }
    };
    let bound = BODY_MAX_BYTES.min(rest.len().saturating_mul(RATIO_MAX));
    assert!(coding == Coding::Identity || decoded.len() <= bound, "{} > {bound}", decoded.len());
    let content_type: Option<&[u8]> = match (selector >> 2) % 4 {
        0 => None,
        1 => Some(b"application/json"),
        2 => Some(b"application/x-www-form-urlencoded"),
        _ => Some(b"text/plain;charset=UTF-8"),
    };
    parse_both(content_type, &decoded);
}

/// Compresses `plain` with `coding` and checks it decodes back (within the limits).
fn round_trip(decoder: &mut BodyDecoder, coding: Coding, plain: &[u8], limits: DecodeLimits) {
    use std::io::Write;
    let level = flate2::Compression::fast();
    let encoded = match coding {
        Coding::Identity => plain.to_vec(),
        Coding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
            e.write_all(plain).expect("in memory");
            e.finish().expect("in memory")
        }
        Coding::Deflate => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), level);
            e.write_all(plain).expect("in memory");
            e.finish().expect("in memory")
        }
    };
    match decoder.decode(coding, &encoded, limits) {
        Ok(decoded) => assert_eq!(decoded, plain),
        Err(DecodeError::TooLarge) => assert!(plain.len() > limits.max_bytes),
        Err(DecodeError::Ratio) => assert!(plain.len() > encoded.len() * limits.max_ratio),
        Err(e) => panic!("a stream we compressed failed: {e}"),
    }
}

/// Parses `body` with both JSON parsers; they accept and refuse the same bodies, and every
/// accepted event obeys the rules.
fn parse_both(content_type: Option<&[u8]>, body: &[u8]) {
    let Ok(kind) = body_kind(content_type, body) else {
        return;
    };
    let base = Rules::default();
    let mut results = Vec::new();
    for parser in [JsonParser::Simd, JsonParser::Serde] {
        let rules = BodyRules { rules: &base, max_events: 10, parser };
        let mut out = BatchScratch::default();
        let mut bytes = body.to_vec();
        let result = parse_body(kind, &mut bytes, &rules, &mut out);
        assert!(out.len() <= 10);
        let events: Vec<_> = out
            .beacons(1)
            .map(|b| (b.event.event.to_owned(), b.event.domain.to_owned(), b.event.file_id, b.event_id))
            .collect();
        for b in out.beacons(1) {
            assert_valid_event(&b.event);
        }
        results.push((result.map_err(|e: BodyError| e.status()), events));
    }
    assert_eq!(
        results[0],
        results[1],
        "simd-json and serde_json disagree on {:?}",
        String::from_utf8_lossy(body)
    );
}

/// WAL record decoding: never panics; a decoded record is one line within the input; what is
/// decoded re-encodes to a record that decodes to the same values; `scan` agrees with `decode`
/// (and, resyncing after damage, reports the damage where `decode` fails).
pub fn wal_record(data: &[u8]) {
    let s = scan(data);
    assert!(s.valid_len <= data.len());
    let Ok((event, ctx, len)) = decode(data) else {
        // `scan` resyncs after a bad record: the damage starts at 0, records may follow.
        let first_bad = s.corrupt.first().or(s.tail.as_ref()).map(|bad| bad.offset);
        assert!(data.is_empty() || first_bad == Some(0), "{first_bad:?}");
        return;
    };
    assert!(s.records >= 1 && len <= data.len() && data[len - 1] == b'\n');
    assert!(s.valid_len >= len);
    let plain = |t: &str| t.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    if !(plain(event.event)
        && plain(event.domain)
        && ctx.ip.is_none_or(plain)
        && ctx.referer_host.is_none_or(plain))
    {
        return; // the encoder's contract: these fields were validated before encoding
    }
    let context = Context {
        ip: ctx.ip,
        ua: ctx.ua.as_deref(),
        referer_host: ctx.referer_host,
        extra: ctx.extra.as_deref(),
        event_id: ctx.event_id,
        country: ctx.country,
    };
    let mut again = Vec::new();
    encode(&event, &context, &mut again);
    let (event2, ctx2, len2) = decode(&again).expect("a re-encoded record decodes");
    assert_eq!((event2, len2), (event, again.len()));
    assert_eq!(ctx2, ctx);
}
