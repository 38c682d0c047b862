//! The fast path of [`super::parse`]: the common request shape, read in one pass with no
//! header array, eight bytes at a time where the bytes are many (the target, header values).
//!
//! The shape it takes: an upper-case method, one space, a target of visible ASCII, one space,
//! `HTTP/1.1` or `HTTP/1.0`, then header lines `Name: value` of a token name and a value of
//! printable ASCII, every line ending in `\r\n`, the whole head within the window and no more
//! header lines than `max_headers`.
//!
//! Invariant: [`parse`] returns `Some` only for a head that [`super::general`] (httparse)
//! parses to the very same [`Request`]; for anything else (leading blank lines, a bare `\n`,
//! tabs, bytes past `0x7e`, obsolete line folding, an incomplete head, any limit or framing
//! error) it returns `None` and the general path decides, so accept/reject, status and fields
//! are the general path's. The differential proptests below hold it to that.

use super::headers::Interesting;
use super::{build, Limits, Request, RequestLine, MAX_HEADERS_CAP};

/// The head at the start of `window` if it has the common shape and is valid; else `None`.
pub(super) fn parse<'a>(window: &'a [u8], limits: &Limits) -> Option<Request<'a>> {
    let method_len = window.iter().position(|b| !b.is_ascii_uppercase())?;
    if method_len == 0 || window[method_len] != b' ' {
        return None;
    }
    let target_at = method_len + 1;
    let target_len = run_within(&window[target_at..], b'!', b'~');
    let target_end = target_at + target_len;
    let minor_version = match window.get(target_end..target_end + 11)? {
        b" HTTP/1.1\r\n" => 1,
        b" HTTP/1.0\r\n" => 0,
        _ => return None,
    };
    if target_len == 0 {
        return None;
    }
    let target = &window[target_at..target_end];
    debug_assert!(target.is_ascii());
    // SAFETY: every byte of `target` is in `!..=~` (`run_within`), so ASCII, so UTF-8.
    // `str::from_utf8` would scan it again: ~140 instructions for a beacon (callgrind).
    let target = unsafe { std::str::from_utf8_unchecked(target) };
    let line = RequestLine { method: &window[..method_len], target, minor_version };
    line.check_url(limits).ok()?;
    let mut h = Interesting::default();
    let head_len = headers(window, target_end + 11, limits, &mut h)?;
    build(line, &h, head_len, window, limits).ok()
}

/// Reads the header lines from `at` to the blank line into `h`; returns the head's length.
// `h` is filled in place: returned by value, its 168 bytes were copied twice (callgrind).
#[inline(always)]
fn headers<'a>(window: &'a [u8], mut at: usize, limits: &Limits, h: &mut Interesting<'a>) -> Option<usize> {
    let max_headers = limits.max_headers.min(MAX_HEADERS_CAP);
    let mut lines = 0;
    loop {
        let rest = window.get(at..)?;
        if rest.starts_with(b"\r\n") {
            return Some(at + 2);
        }
        let mut name_len = 0;
        while rest.get(name_len).is_some_and(|&b| TOKEN[usize::from(b)]) {
            name_len += 1;
        }
        if name_len == 0 || rest.get(name_len) != Some(&b':') {
            return None;
        }
        let mut value_at = name_len + 1;
        while rest.get(value_at) == Some(&b' ') {
            value_at += 1;
        }
        let value_end = value_at + run_within(&rest[value_at..], b' ', b'~');
        if rest.get(value_end..value_end + 2)? != b"\r\n" {
            return None;
        }
        lines += 1;
        if lines > max_headers {
            return None;
        }
        // Trailing spaces are not part of the value (leading ones were skipped above).
        let value = rest[value_at..value_end].trim_ascii_end();
        h.add(&rest[..name_len], value, window).ok()?;
        at += value_end + 2;
    }
}

/// The header-name bytes (RFC 9110 `tchar`), as httparse takes them.
static TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'!' | b'#'..=b'\'' | b'*' | b'+' | b'-' | b'.')
            || matches!(c, b'^' | b'_' | b'`' | b'|' | b'~');
        b += 1;
    }
    table
};

/// Length of the leading run of `bytes` within `lo..=hi`, for `0 < lo <= hi < 0x7f`.
fn run_within(bytes: &[u8], lo: u8, hi: u8) -> usize {
    debug_assert!(0 < lo && lo <= hi && hi < 0x7f);
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let (words, tail) = bytes.as_chunks::<8>();
    for (i, word) in words.iter().enumerate() {
        let x = u64::from_le_bytes(*word);
        // A byte's high bit is set in `below` if it is under `lo`, in `above` if it is over
        // `hi` (or has its high bit set). The borrows and carries of a flagged byte may flag
        // bytes above it too, never below: the lowest flag is exact.
        let below = x.wrapping_sub(ONES * u64::from(lo)) & !x & HIGHS;
        let above = (x.wrapping_add(ONES * u64::from(0x7f - hi)) | x) & HIGHS;
        let stop = below | above;
        if stop != 0 {
            return i * 8 + (stop.trailing_zeros() / 8) as usize;
        }
    }
    let at = words.len() * 8;
    at + tail.iter().position(|b| !(lo..=hi).contains(b)).unwrap_or(tail.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::config::HttpConfig;
    use crate::http::request::{general, Parsed};
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits::from(&HttpConfig::default())
    }

    const BEACON: &[u8] = b"GET /log?event=play&domain=piratka.biz&file_id=109454 HTTP/1.1\r\n\
          Host: 127.0.0.1\r\nUser-Agent: front-counts\r\n\r\n";

    #[test]
    fn the_beacon_takes_the_fast_path_with_the_general_result() {
        let fast = parse(BEACON, &limits()).expect("fast path");
        assert_eq!(Parsed::Complete(fast), general(BEACON, &limits()));
        assert_eq!(fast.user_agent, Some(&b"front-counts"[..]));
        let pipelined = [BEACON, BEACON].concat();
        assert_eq!(parse(&pipelined, &limits()).map(|r| r.head_len), Some(BEACON.len()));
    }

    #[test]
    fn unusual_shapes_are_left_to_the_general_path() {
        for head in [
            &b"\r\nGET / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1\n\n",
            b"GET / HTTP/1.1\r\nX:\ta\r\n\r\n",
            b"GET /\x80 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            b"get / HTTP/1.1\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        ] {
            assert_eq!(parse(head, &limits()), None, "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn every_byte_is_taken_or_left_as_httparse_would() {
        for b in 0..=255u8 {
            let heads = [
                [&b"GET / HTTP/1.1\r\nA"[..], &[b], b"B: v\r\n\r\n"].concat(),
                [&b"GET /a"[..], &[b], b"b HTTP/1.1\r\n\r\n"].concat(),
                [&b"GET / HTTP/1.1\r\nA: v"[..], &[b], b"v\r\n\r\n"].concat(),
            ];
            for (head, printable) in heads.iter().zip([b' '..=b'~', b'!'..=b'~', b' '..=b'~']) {
                let general = general(head, &limits());
                match parse(head, &limits()) {
                    Some(fast) => assert_eq!(Parsed::Complete(fast), general, "byte {b:#x}"),
                    None => assert!(
                        !printable.contains(&b) || !matches!(general, Parsed::Complete(_)),
                        "byte {b:#x} left to the general path in {head:?}"
                    ),
                }
            }
        }
    }

    #[test]
    fn run_within_finds_the_first_byte_out_of_range() {
        let text = b"abcdefghijklmnopqrstuvwxyz0123456789";
        for len in 0..text.len() {
            for bad in [b' ', b'\r', 0x7f, 0x80, 0xff, 0] {
                let mut bytes = text[..len].to_vec();
                bytes.push(bad);
                bytes.extend_from_slice(b"xyz\xff");
                assert_eq!(run_within(&bytes, b'!', b'~'), len, "len {len} bad {bad:#x}");
            }
            assert_eq!(run_within(&text[..len], b'!', b'~'), len);
        }
        assert_eq!(run_within(b"a b\tc", b' ', b'~'), 3);
    }

    /// Pieces of heads, usual and not, so that generated heads hit every branch of both paths.
    fn piece(choices: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
        proptest::sample::select(choices)
    }

    fn header_line() -> impl Strategy<Value = String> {
        let names = &[
            "Host",
            "User-Agent",
            "user-agent",
            "Origin",
            "Connection",
            "Content-Length",
            "Transfer-Encoding",
            "X-Forwarded-For",
            "Expect",
            "Content-Encoding",
            "Accept",
            "Referer",
            "Content-Type",
            "Access-Control-Request-Method",
            "X-A",
            "Bad Name",
            "",
            "X\u{80}",
            " Folded",
        ];
        let values = &[
            "",
            " ",
            "127.0.0.1",
            "close",
            "keep-alive",
            "Keep-Alive, close",
            "chunked",
            "gzip",
            "100-continue",
            "5",
            "0",
            "12",
            "x",
            "1.1.1.1, 2.2.2.2",
            "a\tb",
            "\u{e9}",
            "a\u{0}b",
            "trailing  ",
            "\u{7f}",
        ];
        let seps = &[": ", ":", ":  ", " :", ":\t"];
        let ends = &["\r\n", "\n", "\r", "\r\r\n"];
        (piece(names), piece(seps), piece(values), piece(ends))
            .prop_map(|(n, s, v, e)| format!("{n}{s}{v}{e}"))
    }

    fn head() -> impl Strategy<Value = Vec<u8>> {
        let lead = &["", "", "", "\r\n", "\n"];
        let methods = &["GET", "GET", "POST", "HEAD", "OPTIONS", "get", "G3T", "DELETE", ""];
        let seps = &[" ", " ", "  ", "\t"];
        let targets = &[
            "/log?event=play&domain=piratka.biz&file_id=109454",
            "/log",
            "/",
            "*",
            "/a?b?c",
            "/%20x",
            "/\u{e9}",
            "/a b",
            "",
            "/0123456789abcdefghijklmnopqrstuvwxyz",
            "http://h/log",
            "/\u{7f}",
        ];
        let versions = &["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "HTTP/2.0", "http/1.1", "HTTP/1.10"];
        let ends = &["\r\n", "\r\n", "\n", "\r", ""];
        (
            piece(lead),
            piece(methods),
            piece(seps),
            piece(targets),
            piece(versions),
            piece(ends),
            proptest::collection::vec(header_line(), 0..7),
            piece(&["\r\n", "\r\n", "\n", "", "\r"]),
            piece(&["", "GET / HTTP/1.1\r\n\r\n", "hello"]),
        )
            .prop_map(|(l, m, s, t, v, e, hs, end, after)| {
                format!("{l}{m}{s}{t} {v}{e}{}{end}{after}", hs.concat()).into_bytes()
            })
    }

    fn small_limits() -> impl Strategy<Value = Limits> {
        (20usize..400, 1usize..80, 0usize..20, 0usize..8).prop_map(|(header, url, body, headers)| Limits {
            max_header_bytes: header,
            max_url_bytes: url,
            max_body_bytes: body,
            max_headers: headers,
        })
    }

    proptest! {
        #[test]
        fn fast_path_agrees_with_httparse(buf in head(), cut in 0usize..400, l in small_limits()) {
            for limits in [limits(), l] {
                for buf in [&buf[..], &buf[..cut.min(buf.len())]] {
                    let window = &buf[..buf.len().min(limits.max_header_bytes)];
                    let general = general(window, &limits);
                    if let Some(fast) = parse(window, &limits) {
                        prop_assert_eq!(Parsed::Complete(fast), general);
                    }
                    prop_assert_eq!(crate::http::request::parse(buf, &limits), general);
                }
            }
        }

        #[test]
        fn fast_path_takes_every_usual_head(
            target in "/[!-~]{0,60}",
            minor in 0u8..2,
            headers in proptest::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,20}", "[ -~]{0,40}"), 0..6),
        ) {
            let mut buf = format!("GET {target} HTTP/1.{minor}\r\n");
            for (name, value) in &headers {
                buf.push_str(&format!("{name}: {value}\r\n"));
            }
            buf.push_str("\r\n");
            let general = general(buf.as_bytes(), &limits());
            match parse(buf.as_bytes(), &limits()) {
                Some(fast) => prop_assert_eq!(Parsed::Complete(fast), general),
                // Only a framing error in the generated headers may leave it to the general path.
                None => prop_assert!(matches!(general, Parsed::Invalid(_)), "{:?}", general),
            }
        }
    }
}
