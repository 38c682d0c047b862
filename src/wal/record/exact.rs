//! The payload decoder for records exactly as [`super::encode`] writes them: the keys in its
//! order (`ts`, `event`, `domain`, `file_id`, then whichever of `ip`, `ua`, `ref`, `extra`,
//! `eid`, `cc` are present), no whitespace, strings without escapes or control bytes, integers
//! without sign or leading zero, and nothing after the closing brace.
//!
//! Invariant: it only ever agrees with the general parse. [`parse`] returns `None` for anything
//! outside that shape (an escaped User-Agent, an unknown or repeated key, a record written by
//! another encoder, damaged bytes) and the caller then runs serde_json on the same text; when
//! it returns a payload, serde_json would have returned the same one (the property test below
//! checks both on encoded and on mutated payloads). It exists because serde_json's generic
//! struct visitor costs several times more instructions per record, and every delivered event
//! is decoded once on the flusher (and again on a replay).

use std::borrow::Cow;

use super::Payload;

/// The payload in `text` if it has exactly the encoder's shape; `None`: use the general parse.
pub(super) fn parse(text: &str) -> Option<Payload<'_>> {
    let mut c = Cursor { text, at: 0 };
    c.literal("{\"ts\":")?;
    let ts = c.integer()?;
    c.literal(",\"event\":")?;
    let event = c.string()?;
    c.literal(",\"domain\":")?;
    let domain = c.string()?;
    c.literal(",\"file_id\":")?;
    let file_id = c.integer()?;
    let ip = c.optional(",\"ip\":")?;
    let ua = c.optional(",\"ua\":")?.map(Cow::Borrowed);
    let referer_host = c.optional(",\"ref\":")?;
    let extra = c.optional(",\"extra\":")?.map(Cow::Borrowed);
    let eid = c.optional(",\"eid\":")?;
    let cc = c.optional(",\"cc\":")?;
    c.literal("}")?;
    (c.at == text.len()).then_some(Payload {
        ts,
        event,
        domain,
        file_id,
        ip,
        ua,
        referer_host,
        extra,
        eid,
        cc,
    })
}

/// Where the parse stands in the payload text.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a [u8] {
        &self.text.as_bytes()[self.at..]
    }

    fn literal(&mut self, expected: &str) -> Option<()> {
        self.rest().starts_with(expected.as_bytes()).then(|| self.at += expected.len())
    }

    /// `Some(None)` when the key is absent, `Some(Some(value))` when present and plain,
    /// `None` when present in any other shape.
    fn optional(&mut self, key: &str) -> Option<Option<&'a str>> {
        if self.literal(key).is_none() {
            return Some(None);
        }
        self.string().map(Some)
    }

    /// Decimal digits that fit a `u64`, without a leading zero (JSON forbids it).
    fn integer(&mut self) -> Option<u64> {
        let digits = self.rest().iter().take_while(|b| b.is_ascii_digit()).count();
        let text = &self.rest()[..digits];
        if digits == 0 || (digits > 1 && text[0] == b'0') {
            return None;
        }
        let value =
            text.iter().try_fold(0u64, |n, &b| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))?;
        self.at += digits;
        Some(value)
    }

    /// A string literal with neither escapes nor control bytes, borrowed from the text.
    fn string(&mut self) -> Option<&'a str> {
        let rest = self.rest();
        if rest.first() != Some(&b'"') {
            return None;
        }
        let len = rest[1..].iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest[1 + len] != b'"' {
            return None;
        }
        // Both ends are ASCII quotes, so both are char boundaries of the text.
        let value = &self.text[self.at + 1..self.at + 1 + len];
        self.at += len + 2;
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{encode, Context, Event};
    use super::*;
    use crate::country::Country;
    use crate::event_id::EventId;
    use proptest::prelude::*;

    fn general(text: &str) -> Option<Payload<'_>> {
        serde_json::from_str(text).ok()
    }

    fn payload_of(line: &[u8]) -> &str {
        std::str::from_utf8(&line[9..line.len() - 1]).unwrap()
    }

    #[test]
    fn the_encoders_shapes_take_the_exact_path() {
        let ev = Event { ts_ms: 1_763_923_170_123, event: "play", domain: "a.example", file_id: 7 };
        let id = EventId::from_hex(b"0123456789abcdef0123456789abcdef");
        let ctx = Context {
            ip: Some("203.0.113.9"),
            ua: Some("Mozilla/5.0 (X11) é"),
            referer_host: Some("r.example"),
            extra: None,
            event_id: id,
            country: Country::from_wal(b"DE"),
        };
        for ctx in [Context::NONE, ctx, Context { ip: Some("::1"), ..Context::NONE }] {
            let mut line = Vec::new();
            encode(&ev, &ctx, &mut line);
            let text = payload_of(&line);
            let exact = parse(text).expect("the encoder's shape");
            assert_eq!(Some(&exact), general(text).as_ref());
        }
    }

    #[test]
    fn other_shapes_go_to_the_general_parse() {
        for text in [
            r#"{"ts":1,"event":"a","domain":"b","file_id":2,"ua":"q\"uote"}"#,
            r#"{"ts":1,"event":"a","domain":"b","file_id":2,"zz":1}"#,
            r#"{"ts":1,"event":"a","domain":"b","file_id":2,"ip":"x","ip":"y"}"#,
            r#"{"ts":01,"event":"a","domain":"b","file_id":2}"#,
            r#"{"ts":1,"event":"a","domain":"b","file_id":18446744073709551616}"#,
            r#"{"ts":1,"event":"a","domain":"b","file_id":2} "#,
            r#"{"ts":1, "event":"a","domain":"b","file_id":2}"#,
            r#"{"event":"a","ts":1,"domain":"b","file_id":2}"#,
            "{\"ts\":1,\"event\":\"a\tb\",\"domain\":\"b\",\"file_id\":2}",
        ] {
            assert!(parse(text).is_none(), "{text}");
        }
        let reordered = r#"{"event":"a","ts":1,"domain":"b","file_id":2}"#;
        assert!(general(reordered).is_some(), "the general parse still reads it");
    }

    /// Encoded payloads with random context, then cut, with one byte replaced or inserted.
    fn mutated() -> impl Strategy<Value = String> {
        let text = proptest::option::of("[ -~é\"\\\\\t]{0,12}");
        (
            any::<u64>(),
            "[a-z0-9_]{0,4}",
            (text.clone(), text, proptest::option::of("[0-9.:]{1,8}")),
            (any::<u16>(), any::<u8>(), 0u8..4),
        )
            .prop_map(|(ts, event, (ua, extra, ip), (at, byte, how))| {
                let ev = Event { ts_ms: ts, event: &event, domain: "d.example", file_id: ts % 9 };
                let ctx = Context {
                    ip: ip.as_deref(),
                    ua: ua.as_deref(),
                    extra: extra.as_deref(),
                    ..Context::NONE
                };
                let mut line = Vec::new();
                encode(&ev, &ctx, &mut line);
                let mut bytes = line[9..line.len() - 1].to_vec();
                let at = usize::from(at) % (bytes.len() + 1);
                match how {
                    0 => {}
                    1 => bytes.truncate(at),
                    2 if at < bytes.len() => bytes[at] = byte,
                    _ => bytes.insert(at, byte),
                }
                String::from_utf8_lossy(&bytes).into_owned()
            })
    }

    proptest! {
        #[test]
        fn the_exact_path_agrees_with_the_general_one(text in mutated()) {
            if let Some(exact) = parse(&text) {
                prop_assert_eq!(Some(exact), general(&text));
            }
        }
    }
}
