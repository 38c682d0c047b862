//! One pass over the header lines of a head (found by httparse or by the fast path), keeping
//! the few we act on, and the framing decisions taken from them: the body's length, keep-alive
//! and `Expect`.
//!
//! Invariants:
//! - body framing is unambiguous or rejected: `Content-Length` together with
//!   `Transfer-Encoding` is [`HttpError::Malformed`] (request smuggling), as is a repeated
//!   `Transfer-Encoding` line or one in an HTTP/1.0 request; conflicting `Content-Length`
//!   values are [`HttpError::BadContentLength`]; any transfer coding other than exactly
//!   `chunked` is [`HttpError::UnsupportedTransferEncoding`] (501, as RFC 9112 §6.1 suggests
//!   for codings the server does not implement);
//! - of a header we read once (`Origin`, `User-Agent`, ...) the first line wins; every
//!   `X-Forwarded-For` line is kept, as one span of the head;
//! - nothing is copied: every value borrows from the head, as in [`super::Request`].

use super::{Body, Expect, HttpError, Limits};
use crate::ingest::client::ForwardedFor;

/// The headers we act on, collected in one pass.
#[derive(Default)]
pub(super) struct Interesting<'a> {
    pub(super) content_length: Option<u64>,
    pub(super) transfer_encoding: Option<&'a [u8]>,
    pub(super) connection: ConnectionTokens,
    pub(super) origin: Option<&'a [u8]>,
    pub(super) content_type: Option<&'a [u8]>,
    pub(super) user_agent: Option<&'a [u8]>,
    pub(super) referer: Option<&'a [u8]>,
    pub(super) forwarded: ForwardedSpan,
    pub(super) content_encoding: Option<&'a [u8]>,
    pub(super) content_encoding_lines: u8,
    pub(super) expect: Expect,
    pub(super) cors_request_method: Option<&'a [u8]>,
    pub(super) accept: Option<&'a [u8]>,
}

#[derive(Default, Clone, Copy)]
pub(super) struct ConnectionTokens {
    close: bool,
    keep_alive: bool,
}

/// Where the `X-Forwarded-For` lines are in the head: offsets of the first value's start and
/// the last value's end, and the number of lines.
#[derive(Default, Clone, Copy)]
pub(super) struct ForwardedSpan {
    start: usize,
    end: usize,
    lines: u16,
}

impl ForwardedSpan {
    fn add(&mut self, window: &[u8], value: &[u8]) {
        // Values are slices of `window` (from either parser): their offsets are plain address
        // arithmetic.
        let start = (value.as_ptr() as usize).saturating_sub(window.as_ptr() as usize);
        if self.lines == 0 {
            self.start = start;
        }
        self.end = start + value.len();
        self.lines = self.lines.saturating_add(1);
    }

    pub(super) fn of<'a>(&self, window: &'a [u8]) -> ForwardedFor<'a> {
        match window.get(self.start..self.end) {
            Some(span) if self.lines > 0 => ForwardedFor::spanning(span, self.lines),
            _ => ForwardedFor::default(),
        }
    }
}

/// Every header line httparse found, in order.
pub(super) fn scan_headers<'a>(
    headers: &[httparse::Header<'a>],
    window: &[u8],
) -> Result<Interesting<'a>, HttpError> {
    let mut h = Interesting::default();
    for header in headers {
        h.add(header.name.as_bytes(), header.value, window)?;
    }
    Ok(h)
}

impl<'a> Interesting<'a> {
    /// Takes one header line (`value` trimmed, a slice of `window`) into account.
    // Inlined into both head parsers: out of line, the collected headers travel through
    // memory and a plain beacon costs ~150 more instructions (callgrind).
    #[inline(always)]
    pub(super) fn add(&mut self, name: &[u8], value: &'a [u8], window: &[u8]) -> Result<(), HttpError> {
        // Dispatch on the length first: most headers (Host, Accept, ...) then cost one compare
        // of a length, and the rest one or two name compares, however many names we know.
        match name.len() {
            6 if is_name(name, b"origin") => self.origin = self.origin.or(Some(value)),
            6 if is_name(name, b"accept") => self.accept = self.accept.or(Some(value)),
            7 if is_name(name, b"referer") => self.referer = self.referer.or(Some(value)),
            10 if is_name(name, b"connection") => add_connection_tokens(&mut self.connection, value),
            10 if is_name(name, b"user-agent") => self.user_agent = self.user_agent.or(Some(value)),
            12 if is_name(name, b"content-type") => self.content_type = self.content_type.or(Some(value)),
            14 if is_name(name, b"content-length") => {
                let length = parse_content_length(value)?;
                if self.content_length.is_some_and(|seen| seen != length) {
                    return Err(HttpError::BadContentLength);
                }
                self.content_length = Some(length);
            }
            6 if is_name(name, b"expect") => self.expect = expectation(self.expect, value),
            15 if is_name(name, b"x-forwarded-for") => self.forwarded.add(window, value),
            16 if is_name(name, b"content-encoding") => {
                self.content_encoding = self.content_encoding.or(Some(value));
                self.content_encoding_lines = self.content_encoding_lines.saturating_add(1);
            }
            17 if is_name(name, b"transfer-encoding") => {
                if self.transfer_encoding.is_some() {
                    return Err(HttpError::Malformed);
                }
                self.transfer_encoding = Some(value);
            }
            29 if is_name(name, b"access-control-request-method") => {
                self.cors_request_method = self.cors_request_method.or(Some(value))
            }
            _ => {}
        }
        Ok(())
    }
}

/// Whether the header name `name` is `lower` in any case. Both parsers hand over names of
/// token bytes only, and `lower` is lower-case letters and `-`: of the token bytes, only a
/// letter's two cases set the 0x20 bit into a letter, and only `-` itself into `-`, so one OR
/// folds the case, eight bytes at a time (`eq_ignore_ascii_case` maps each byte of both).
fn is_name(name: &[u8], lower: &[u8]) -> bool {
    debug_assert!(lower.iter().all(|&b| b.is_ascii_lowercase() || b == b'-'));
    const FOLD: u64 = 0x2020_2020_2020_2020;
    if name.len() != lower.len() {
        return false;
    }
    let ((words, tail), (lower_words, lower_tail)) = (name.as_chunks::<8>(), lower.as_chunks::<8>());
    words.iter().zip(lower_words).all(|(w, l)| u64::from_ne_bytes(*w) | FOLD == u64::from_ne_bytes(*l))
        && tail.iter().zip(lower_tail).all(|(&b, &l)| b | 0x20 == l)
}

/// `100-continue` (case-insensitive) is the only expectation defined; anything else, or a
/// second different one, is unsupported.
fn expectation(seen: Expect, value: &[u8]) -> Expect {
    match (seen, value.trim_ascii().eq_ignore_ascii_case(b"100-continue")) {
        (Expect::Nothing | Expect::Continue, true) => Expect::Continue,
        _ => Expect::Unsupported,
    }
}

/// Decimal digits only (httparse already trimmed surrounding whitespace); no sign, no list.
fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    if value.is_empty() {
        return Err(HttpError::BadContentLength);
    }
    value.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return Err(HttpError::BadContentLength);
        }
        n.checked_mul(10).and_then(|n| n.checked_add(u64::from(b - b'0'))).ok_or(HttpError::BadContentLength)
    })
}

fn add_connection_tokens(tokens: &mut ConnectionTokens, value: &[u8]) {
    for token in value.split(|&b| b == b',') {
        let token = token.trim_ascii();
        tokens.close |= token.eq_ignore_ascii_case(b"close");
        tokens.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
    }
}

pub(super) fn keep_alive(minor_version: u8, tokens: ConnectionTokens) -> bool {
    if tokens.close {
        false
    } else {
        minor_version >= 1 || tokens.keep_alive
    }
}

pub(super) fn body_framing(
    minor_version: u8,
    h: &Interesting<'_>,
    limits: &Limits,
) -> Result<Body, HttpError> {
    match (h.content_length, h.transfer_encoding) {
        (Some(_), Some(_)) => Err(HttpError::Malformed),
        // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 request means faulty framing.
        (None, Some(_)) if minor_version == 0 => Err(HttpError::Malformed),
        (None, Some(te)) if te.eq_ignore_ascii_case(b"chunked") => Ok(Body::Chunked),
        (None, Some(_)) => Err(HttpError::UnsupportedTransferEncoding),
        (Some(0), None) | (None, None) => Ok(Body::None),
        (Some(n), None) => match usize::try_from(n) {
            Ok(n) if n <= limits.max_body_bytes => Ok(Body::Length(n)),
            _ => Err(HttpError::BodyTooLarge),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_token_byte(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
    }

    #[test]
    fn is_name_agrees_with_eq_ignore_ascii_case_on_every_token_byte() {
        let names: [&[u8]; 4] =
            [b"user-agent", b"access-control-request-method", b"origin", b"x-forwarded-for"];
        for lower in names {
            for at in 0..lower.len() {
                for b in (0..=255u8).filter(|&b| is_token_byte(b)) {
                    let mut name = lower.to_vec();
                    name[at] = b;
                    assert_eq!(is_name(&name, lower), name.eq_ignore_ascii_case(lower), "{name:?}");
                }
            }
            assert!(is_name(&lower.to_ascii_uppercase(), lower));
            assert!(!is_name(&lower[1..], lower) && !is_name(&[lower, b"x"].concat(), lower));
        }
    }
}
