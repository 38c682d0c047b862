//! Parsing of one HTTP/1.x request head from the start of a connection's read buffer.
//! Pure: no IO, no allocation; everything in a [`Request`] borrows from the buffer.
//! Two paths, one result: the common head shape is read by [`fast`], everything else by
//! httparse ([`general`]); `fast` answers only where `general` would give the same request
//! (differential proptests in `fast`).
//!
//! Invariants:
//! - [`parse`] never looks past `max_header_bytes` for the head: a head that is not complete
//!   within that many bytes is [`HttpError::HeaderTooLarge`], however much is buffered.
//! - A request target longer than `max_url_bytes` is [`HttpError::UrlTooLong`], detected as
//!   soon as that many target bytes are buffered, even before the request line is complete.
//! - Every [`HttpError`] closes the connection: after a framing error we no longer know where
//!   the next request starts.
//! - Body framing is unambiguous or rejected (the rules are in [`headers`], which reads the
//!   header lines either path found).
//!
//! Deliberate leniency: a missing `Host` header is accepted (we route on the path only), and
//! an absolute-form target (`http://host/log`) is passed through as the path, so it 404s.

use std::fmt;
use std::mem::MaybeUninit;

mod fast;
mod headers;

use headers::{body_framing, keep_alive, scan_headers, Interesting};

use super::config::HttpConfig;
pub use super::config::MAX_HEADERS_CAP;
use crate::ingest::client::ForwardedFor;

/// Request size limits, one per way a request can be too big.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request head (request line + headers + blank line); past it: 431.
    pub max_header_bytes: usize,
    /// Longest request target (path + `?` + query); past it: 414.
    pub max_url_bytes: usize,
    /// Largest announced `Content-Length`; past it: 413.
    pub max_body_bytes: usize,
    /// Most header lines; past it: 431. Clamped to [`MAX_HEADERS_CAP`].
    pub max_headers: usize,
}

impl From<&HttpConfig> for Limits {
    fn from(c: &HttpConfig) -> Self {
        Limits {
            max_header_bytes: c.max_header_bytes,
            max_url_bytes: c.max_url_bytes,
            max_body_bytes: c.max_body_bytes,
            // Config validation should already refuse larger values; clamping keeps `parse`
            // panic-free even if it did not.
            max_headers: c.max_headers.min(MAX_HEADERS_CAP),
        }
    }
}

/// Request methods we route on; anything else is `Other` (405 for the router).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Options,
    Other,
}

impl Method {
    fn from_token(token: &[u8]) -> Method {
        // Byte patterns rather than string literals: they compile to inline compares, never a
        // call to memcmp (which the optimiser sometimes picks for `&str` patterns).
        match token {
            [b'G', b'E', b'T'] => Method::Get,
            [b'H', b'E', b'A', b'D'] => Method::Head,
            [b'P', b'O', b'S', b'T'] => Method::Post,
            [b'O', b'P', b'T', b'I', b'O', b'N', b'S'] => Method::Options,
            _ => Method::Other,
        }
    }
}

/// How the body that follows the head is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body (no framing header, or `Content-Length: 0`).
    None,
    /// Exactly this many bytes, 1..=`max_body_bytes`.
    Length(usize),
    /// `Transfer-Encoding: chunked`; the caller enforces `max_body_bytes` while decoding.
    Chunked,
}

/// One parsed request head. Strings borrow from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: Method,
    /// The target up to the first `?`.
    pub path: &'a str,
    /// The raw target after the first `?`; `""` if there is none.
    pub query: &'a str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Whether the connection stays open after the answer: HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// Bytes of the head, blank line included: the body (or next request) starts here.
    pub head_len: usize,
    pub body: Body,
    /// `Origin` header value, for CORS.
    pub origin: Option<&'a [u8]>,
    /// `Content-Type` header value, for POST bodies.
    pub content_type: Option<&'a [u8]>,
    /// `User-Agent` header value (first one), for the client context.
    pub user_agent: Option<&'a [u8]>,
    /// `Referer` header value (first one), for the client context.
    pub referer: Option<&'a [u8]>,
    /// `X-Forwarded-For` lines, in order; several lines are one list (RFC 9110 §5.3).
    pub forwarded_for: ForwardedFor<'a>,
    /// `Content-Encoding` of the body (first line); `None` without the header.
    pub content_encoding: Option<&'a [u8]>,
    /// More than one `Content-Encoding` line: refused as a stacked coding (415).
    pub content_encoding_repeated: bool,
    /// `Expect`, HTTP/1.1 only (RFC 9110 §10.1.1: a 1.0 request's is ignored).
    pub expect: Expect,
    /// `Access-Control-Request-Method`: present only on a CORS preflight.
    pub cors_request_method: Option<&'a [u8]>,
    /// `Accept` header value (first one), for the `/metrics` format.
    pub accept: Option<&'a [u8]>,
}

/// What an `Expect` header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expect {
    #[default]
    Nothing,
    /// `100-continue`: answer `100 Continue` before reading the body.
    Continue,
    /// Any other expectation: 417.
    Unsupported,
}

/// Outcome of [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'a> {
    Complete(Request<'a>),
    /// The head is incomplete but still within limits: read more.
    Partial,
    /// Answer with `status()` and close the connection.
    Invalid(HttpError),
}

/// Why a request head is rejected. Allocation-free; maps to a status, a one-line reason
/// for the response body and a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// The head was not complete within `max_header_bytes`.
    HeaderTooLarge,
    /// More than `max_headers` header lines.
    TooManyHeaders,
    /// The request target is longer than `max_url_bytes`.
    UrlTooLong,
    /// `Content-Length` above `max_body_bytes`.
    BodyTooLarge,
    /// `Content-Length` not a decimal number, or repeated with different values.
    BadContentLength,
    /// Not HTTP/1.x syntax, or ambiguous framing.
    Malformed,
    /// A well-formed version other than HTTP/1.0 and HTTP/1.1.
    UnsupportedVersion,
    /// A `Transfer-Encoding` other than exactly `chunked`.
    UnsupportedTransferEncoding,
}

impl HttpError {
    pub fn status(self) -> u16 {
        match self {
            HttpError::HeaderTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::UrlTooLong => 414,
            HttpError::BodyTooLarge => 413,
            HttpError::BadContentLength | HttpError::Malformed => 400,
            HttpError::UnsupportedVersion => 505,
            HttpError::UnsupportedTransferEncoding => 501,
        }
    }

    /// One line, no newline, for the response body.
    pub fn reason(self) -> &'static str {
        match self {
            HttpError::HeaderTooLarge => "request head exceeds http.max_header_bytes",
            HttpError::TooManyHeaders => "request has more than http.max_headers headers",
            HttpError::UrlTooLong => "request target exceeds http.max_url_bytes",
            HttpError::BodyTooLarge => "Content-Length exceeds http.max_body_bytes",
            HttpError::BadContentLength => "invalid or conflicting Content-Length",
            HttpError::Malformed => "malformed HTTP request",
            HttpError::UnsupportedVersion => "only HTTP/1.0 and HTTP/1.1 are supported",
            HttpError::UnsupportedTransferEncoding => "only Transfer-Encoding: chunked is supported",
        }
    }

    /// Label for the rejected-requests metric.
    pub fn label(self) -> &'static str {
        match self {
            HttpError::HeaderTooLarge => "header_bytes",
            HttpError::TooManyHeaders => "headers",
            HttpError::UrlTooLong => "url_bytes",
            HttpError::BodyTooLarge => "body_bytes",
            HttpError::BadContentLength => "content_length",
            HttpError::Malformed => "malformed",
            HttpError::UnsupportedVersion => "version",
            HttpError::UnsupportedTransferEncoding => "transfer_encoding",
        }
    }

    /// Always true: after a parse error the start of the next request is unknown.
    pub fn closes_connection(self) -> bool {
        true
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for HttpError {}

/// Parses the request head at the start of `buf`. Bytes past `head_len` (a body or the next
/// pipelined request) are left for the caller. The common shape takes the fast path
/// ([`fast`]); anything it does not take is parsed by httparse ([`general`]), with the same
/// result either way.
pub fn parse<'a>(buf: &'a [u8], limits: &Limits) -> Parsed<'a> {
    let window = &buf[..buf.len().min(limits.max_header_bytes)];
    match fast::parse(window, limits) {
        Some(request) => Parsed::Complete(request),
        None => general(window, limits),
    }
}

/// [`parse`] by httparse, for any head: `window` is the buffer cut at `max_header_bytes`.
fn general<'a>(window: &'a [u8], limits: &Limits) -> Parsed<'a> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'a>>::uninit() }; MAX_HEADERS_CAP];
    let slots = &mut slots[..limits.max_headers.min(MAX_HEADERS_CAP)];
    let mut req = httparse::Request::new(&mut []);
    let built = match req.parse_with_uninit_headers(window, slots) {
        Ok(httparse::Status::Complete(head_len)) => match (req.method, req.path, req.version) {
            (Some(method), Some(target), Some(minor_version)) => {
                let line = RequestLine { method: method.as_bytes(), target, minor_version };
                // The target's limit is checked before the headers: a too-long URL is 414
                // whatever the headers say.
                (line.check_url(limits))
                    .and_then(|()| scan_headers(req.headers, window))
                    .and_then(|h| build(line, &h, head_len, window, limits))
            }
            _ => Err(HttpError::Malformed),
        },
        Ok(httparse::Status::Partial) => return partial(window, limits),
        Err(httparse::Error::TooManyHeaders) => Err(HttpError::TooManyHeaders),
        Err(httparse::Error::Version) => Err(version_error(window)),
        Err(_) => Err(HttpError::Malformed),
    };
    match built {
        Ok(request) => Parsed::Complete(request),
        Err(e) => Parsed::Invalid(e),
    }
}

/// An incomplete head: wait for more bytes unless a limit is already exceeded.
fn partial(window: &[u8], limits: &Limits) -> Parsed<'static> {
    if partial_target_len(window) > limits.max_url_bytes {
        Parsed::Invalid(HttpError::UrlTooLong)
    } else if window.len() >= limits.max_header_bytes {
        Parsed::Invalid(HttpError::HeaderTooLarge)
    } else {
        Parsed::Partial
    }
}

/// Bytes of the request target buffered so far (0 while the method is incomplete).
/// Leading blank lines are skipped, as httparse does.
fn partial_target_len(window: &[u8]) -> usize {
    let line_start = window.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(window.len());
    let line = &window[line_start..];
    let Some(method_end) = line.iter().position(|&b| b == b' ') else {
        return 0;
    };
    let target = &line[method_end + 1..];
    target.iter().position(|&b| matches!(b, b' ' | b'\r' | b'\n')).unwrap_or(target.len())
}

/// httparse reports any version other than 1.0/1.1 as an error: 505 if the request line ends
/// in a well-formed `HTTP/d.d`, else the line is just malformed.
fn version_error(window: &[u8]) -> HttpError {
    let line_end = window.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(window.len());
    let line = &window[..line_end];
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or(&[]);
    match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            HttpError::UnsupportedVersion
        }
        _ => HttpError::Malformed,
    }
}

/// The request line, as either parser found it.
#[derive(Clone, Copy)]
struct RequestLine<'a> {
    method: &'a [u8],
    target: &'a str,
    minor_version: u8,
}

impl RequestLine<'_> {
    fn check_url(&self, limits: &Limits) -> Result<(), HttpError> {
        if self.target.len() > limits.max_url_bytes {
            return Err(HttpError::UrlTooLong);
        }
        Ok(())
    }
}

/// The [`Request`] of a parsed head whose target passed [`RequestLine::check_url`]: the
/// framing rules applied.
#[inline(always)]
fn build<'a>(
    line: RequestLine<'a>,
    h: &Interesting<'a>,
    head_len: usize,
    window: &'a [u8],
    limits: &Limits,
) -> Result<Request<'a>, HttpError> {
    let RequestLine { method, target, minor_version } = line;
    // A byte search: `split_once('?')` goes through the generic char searcher.
    let (path, query) = match target.bytes().position(|b| b == b'?') {
        Some(at) => (&target[..at], &target[at + 1..]),
        None => (target, ""),
    };
    Ok(Request {
        method: Method::from_token(method),
        path,
        query,
        minor_version,
        keep_alive: keep_alive(minor_version, h.connection),
        head_len,
        body: body_framing(minor_version, h, limits)?,
        origin: h.origin,
        content_type: h.content_type,
        user_agent: h.user_agent,
        referer: h.referer,
        forwarded_for: h.forwarded.of(window),
        content_encoding: h.content_encoding,
        content_encoding_repeated: h.content_encoding_lines > 1,
        expect: if minor_version >= 1 { h.expect } else { Expect::Nothing },
        cors_request_method: h.cors_request_method,
        accept: h.accept,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::client::ForwardedFor;

    fn limits() -> Limits {
        Limits::from(&HttpConfig::default())
    }

    fn complete(buf: &[u8]) -> Request<'_> {
        match parse(buf, &limits()) {
            Parsed::Complete(r) => r,
            other => panic!("expected Complete for {:?}, got {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn invalid_with(buf: &[u8], limits: &Limits) -> HttpError {
        match parse(buf, limits) {
            Parsed::Invalid(e) => e,
            other => panic!("expected Invalid for {:?}, got {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn invalid(buf: &[u8]) -> HttpError {
        invalid_with(buf, &limits())
    }

    const BEACON: &[u8] =
        b"GET /log?event=play&domain=piratka.biz&file_id=109454 HTTP/1.1\r\nHost: localhost\r\n\r\n";

    #[test]
    fn default_config_fits_the_header_array() {
        assert!(HttpConfig::default().max_headers <= MAX_HEADERS_CAP);
        let c = HttpConfig { max_headers: MAX_HEADERS_CAP * 4, ..HttpConfig::default() };
        assert_eq!(Limits::from(&c).max_headers, MAX_HEADERS_CAP);
    }

    #[test]
    fn get_with_query() {
        let r = complete(BEACON);
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, "/log");
        assert_eq!(r.query, "event=play&domain=piratka.biz&file_id=109454");
        assert_eq!(r.minor_version, 1);
        assert!(r.keep_alive);
        assert_eq!(r.head_len, BEACON.len());
        assert_eq!(r.body, Body::None);
        assert_eq!(r.origin, None);
        assert_eq!(r.content_type, None);
    }

    #[test]
    fn get_without_query_and_with_empty_query() {
        let r = complete(b"GET /healthz HTTP/1.1\r\n\r\n");
        assert_eq!((r.path, r.query), ("/healthz", ""));
        let r = complete(b"GET /log? HTTP/1.1\r\n\r\n");
        assert_eq!((r.path, r.query), ("/log", ""));
        let r = complete(b"GET /log?a=1?b HTTP/1.1\r\n\r\n");
        assert_eq!((r.path, r.query), ("/log", "a=1?b"));
    }

    #[test]
    fn methods() {
        assert_eq!(complete(b"HEAD / HTTP/1.1\r\n\r\n").method, Method::Head);
        assert_eq!(complete(b"POST / HTTP/1.1\r\n\r\n").method, Method::Post);
        assert_eq!(complete(b"OPTIONS * HTTP/1.1\r\n\r\n").method, Method::Options);
        assert_eq!(complete(b"DELETE / HTTP/1.1\r\n\r\n").method, Method::Other);
        assert_eq!(complete(b"get / HTTP/1.1\r\n\r\n").method, Method::Other);
    }

    #[test]
    fn http10_keep_alive_only_when_asked() {
        let r = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(r.minor_version, 0);
        assert!(!r.keep_alive);
        assert!(complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(complete(b"GET / HTTP/1.0\r\nconnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(!complete(b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").keep_alive);
    }

    #[test]
    fn http11_connection_close() {
        assert!(!complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!complete(b"GET / HTTP/1.1\r\nConnection: TE, Close\r\n\r\n").keep_alive);
        assert!(!complete(b"GET / HTTP/1.1\r\nConnection: x\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(complete(b"GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n").keep_alive);
        assert!(complete(b"GET / HTTP/1.1\r\nConnection: closed\r\n\r\n").keep_alive);
    }

    #[test]
    fn pipelined_requests_parse_one_after_the_other() {
        let second = b"GET /log?event=stop&domain=a.b&file_id=2 HTTP/1.1\r\nConnection: close\r\n\r\n";
        let buf = [BEACON, second.as_slice()].concat();
        let first = complete(&buf);
        assert_eq!(first.head_len, BEACON.len());
        assert!(first.query.starts_with("event=play"));
        let next = complete(&buf[first.head_len..]);
        assert_eq!(next.head_len, second.len());
        assert_eq!(next.query, "event=stop&domain=a.b&file_id=2");
        assert!(!next.keep_alive);
    }

    #[test]
    fn every_strict_prefix_is_partial() {
        for end in 0..BEACON.len() {
            assert_eq!(parse(&BEACON[..end], &limits()), Parsed::Partial, "prefix of {end} bytes");
        }
    }

    #[test]
    fn leading_blank_lines_are_skipped() {
        let r = complete(b"\r\n\r\nGET /x HTTP/1.1\r\n\r\n");
        assert_eq!(r.path, "/x");
        assert_eq!(r.head_len, b"\r\n\r\nGET /x HTTP/1.1\r\n\r\n".len());
    }

    #[test]
    fn origin_and_content_type_are_exposed() {
        let r = complete(
            b"POST /log HTTP/1.1\r\nOrigin: https://a.example\r\nContent-Type: text/plain\r\n\
              Content-Length: 5\r\n\r\nhello",
        );
        assert_eq!(r.origin, Some(b"https://a.example".as_slice()));
        assert_eq!(r.content_type, Some(b"text/plain".as_slice()));
        assert_eq!(r.body, Body::Length(5));
    }

    #[test]
    fn client_context_headers_are_exposed() {
        let r = complete(
            b"OPTIONS /log HTTP/1.1\r\nuser-agent: UA/1\r\nREFERER: https://a.b/x\r\n\
              X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2, 3.3.3.3\r\n\
              Access-Control-Request-Method: POST\r\nUser-Agent: second\r\n\r\n",
        );
        assert_eq!(r.user_agent, Some(&b"UA/1"[..]));
        assert_eq!(r.referer, Some(&b"https://a.b/x"[..]));
        let lines: Vec<&[u8]> = r.forwarded_for.values_rev().collect();
        assert_eq!(lines, [&b"2.2.2.2, 3.3.3.3"[..], b"1.1.1.1"], "both lines, last first");
        let one = complete(b"GET / HTTP/1.1\r\nX-Forwarded-For:  9.9.9.9 \r\n\r\n").forwarded_for;
        assert_eq!(one, ForwardedFor::one(b"9.9.9.9"));
        assert_eq!(r.cors_request_method, Some(&b"POST"[..]));
        let r = complete(BEACON);
        assert_eq!(
            (r.user_agent, r.referer, r.forwarded_for.is_empty(), r.cors_request_method),
            (None, None, true, None)
        );
    }

    #[test]
    fn content_encoding_and_expect() {
        let r = complete(b"POST / HTTP/1.1\r\nContent-Encoding: gzip\r\nExpect: 100-Continue\r\n\r\n");
        assert_eq!((r.content_encoding, r.content_encoding_repeated), (Some(&b"gzip"[..]), false));
        assert_eq!(r.expect, Expect::Continue);
        let r = complete(b"POST / HTTP/1.1\r\nContent-Encoding: gzip\r\ncontent-encoding: gzip\r\n\r\n");
        assert!(r.content_encoding_repeated);
        assert_eq!(complete(b"POST / HTTP/1.1\r\nExpect: something\r\n\r\n").expect, Expect::Unsupported);
        let both = b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nExpect: x\r\n\r\n";
        assert_eq!(complete(both).expect, Expect::Unsupported);
        assert_eq!(complete(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect, Expect::Nothing);
        let r = complete(BEACON);
        assert_eq!((r.content_encoding, r.expect), (None, Expect::Nothing));
    }

    #[test]
    fn body_framing_variants() {
        assert_eq!(complete(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").body, Body::None);
        let r = complete(b"POST / HTTP/1.1\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n");
        assert_eq!(r.body, Body::Length(7));
        let r = complete(b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(r.body, Body::Chunked);
    }

    #[test]
    fn header_bytes_limit_exact_and_one_past() {
        let mut l = limits();
        let head = b"GET / HTTP/1.1\r\nX: yyyyyyyyyyyy\r\n\r\n";
        l.max_header_bytes = head.len();
        match parse(head, &l) {
            Parsed::Complete(r) => assert_eq!(r.head_len, head.len()),
            other => panic!("{other:?}"),
        }
        l.max_header_bytes = head.len() - 1;
        assert_eq!(invalid_with(head, &l), HttpError::HeaderTooLarge);
        // Incomplete and below the limit is still Partial.
        assert_eq!(parse(&head[..head.len() - 2], &l), Parsed::Partial);
    }

    #[test]
    fn header_bytes_limit_ignores_bytes_after_the_head() {
        let mut l = limits();
        l.max_header_bytes = BEACON.len();
        let buf = [BEACON, &[b'G'; 4096][..]].concat();
        assert!(matches!(parse(&buf, &l), Parsed::Complete(r) if r.head_len == BEACON.len()));
    }

    #[test]
    fn too_many_headers_exact_and_one_past() {
        let mut l = limits();
        l.max_headers = 3;
        let three = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert!(matches!(parse(three, &l), Parsed::Complete(_)));
        let four = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
        assert_eq!(invalid_with(four, &l), HttpError::TooManyHeaders);
    }

    #[test]
    fn url_limit_exact_and_one_past() {
        let mut l = limits();
        l.max_url_bytes = 10;
        let exact = b"GET /123456789 HTTP/1.1\r\n\r\n";
        assert!(matches!(parse(exact, &l), Parsed::Complete(r) if r.path.len() == 10));
        let past = b"GET /1234567890 HTTP/1.1\r\n\r\n";
        assert_eq!(invalid_with(past, &l), HttpError::UrlTooLong);
    }

    #[test]
    fn url_limit_detected_while_request_line_is_partial() {
        let mut l = limits();
        l.max_url_bytes = 10;
        assert_eq!(parse(b"GET /123456789", &l), Parsed::Partial);
        assert_eq!(invalid_with(b"GET /1234567890", &l), HttpError::UrlTooLong);
        assert_eq!(invalid_with(b"\r\nGET /1234567890 HT", &l), HttpError::UrlTooLong);
        assert_eq!(parse(b"GET /123456789 HTTP/1.1\r\nHost: x", &l), Parsed::Partial);
    }

    #[test]
    fn url_too_long_wins_over_header_too_large() {
        let mut l = limits();
        l.max_url_bytes = 10;
        l.max_header_bytes = 20;
        let buf = b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        assert_eq!(invalid_with(buf, &l), HttpError::UrlTooLong);
    }

    #[test]
    fn body_limit_exact_and_one_past() {
        let mut l = limits();
        l.max_body_bytes = 100;
        let ok = b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n";
        assert!(matches!(parse(ok, &l), Parsed::Complete(r) if r.body == Body::Length(100)));
        let past = b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n";
        assert_eq!(invalid_with(past, &l), HttpError::BodyTooLarge);
        let huge = b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n";
        assert_eq!(invalid_with(huge, &l), HttpError::BodyTooLarge);
    }

    #[test]
    fn bad_content_length() {
        for value in ["abc", "-1", "+1", "1 2", "1,1", "0x10", "18446744073709551616", ""] {
            let req = format!("POST / HTTP/1.1\r\nContent-Length: {value}\r\n\r\n");
            assert_eq!(invalid(req.as_bytes()), HttpError::BadContentLength, "{value:?}");
        }
        let conflicting = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(invalid(conflicting), HttpError::BadContentLength);
    }

    #[test]
    fn ambiguous_framing_is_malformed() {
        let both = b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(invalid(both), HttpError::Malformed);
        let both = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(invalid(both), HttpError::Malformed);
        let twice = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(invalid(twice), HttpError::Malformed);
        let http10 = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(invalid(http10), HttpError::Malformed);
    }

    #[test]
    fn other_transfer_codings_are_not_implemented() {
        for te in ["gzip", "gzip, chunked", "chunked, gzip", "identity"] {
            let req = format!("POST / HTTP/1.1\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert_eq!(invalid(req.as_bytes()), HttpError::UnsupportedTransferEncoding, "{te}");
        }
    }

    #[test]
    fn versions() {
        assert_eq!(invalid(b"GET / HTTP/2.0\r\n\r\n"), HttpError::UnsupportedVersion);
        assert_eq!(invalid(b"GET / HTTP/1.2\r\n\r\n"), HttpError::UnsupportedVersion);
        assert_eq!(invalid(b"GET / HTTP/1.x\r\n\r\n"), HttpError::Malformed);
        assert_eq!(invalid(b"GET / HTTQ/1.1\r\n\r\n"), HttpError::Malformed);
        assert_eq!(invalid(b"GET / HTTP/1.10\r\n\r\n"), HttpError::Malformed);
    }

    #[test]
    fn garbage_and_nul_bytes_are_malformed() {
        assert_eq!(invalid(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), HttpError::Malformed);
        assert_eq!(invalid(b"GET /a\0b HTTP/1.1\r\n\r\n"), HttpError::Malformed);
        assert_eq!(invalid(b"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n"), HttpError::Malformed);
        assert_eq!(invalid(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"), HttpError::Malformed);
        assert_eq!(invalid(b"GET  HTTP/1.1\r\n\r\n"), HttpError::Malformed);
        assert_eq!(invalid(b"\0\0\0\0"), HttpError::Malformed);
    }

    #[test]
    fn every_error_closes_and_has_one_line_reason() {
        let all = [
            HttpError::HeaderTooLarge,
            HttpError::TooManyHeaders,
            HttpError::UrlTooLong,
            HttpError::BodyTooLarge,
            HttpError::BadContentLength,
            HttpError::Malformed,
            HttpError::UnsupportedVersion,
            HttpError::UnsupportedTransferEncoding,
        ];
        let statuses: Vec<u16> = all.iter().map(|e| e.status()).collect();
        assert_eq!(statuses, [431, 431, 414, 413, 400, 400, 505, 501]);
        for e in all {
            assert!(e.closes_connection());
            assert!(!e.reason().is_empty() && !e.reason().contains(['\r', '\n']));
            assert!(e.label().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{e:?}");
            assert_eq!(e.to_string(), e.reason());
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let mut l = limits();
            l.max_header_bytes = 300;
            l.max_url_bytes = 100;
            l.max_headers = 4;
            if let Parsed::Complete(r) = parse(&buf, &l) {
                proptest::prop_assert!(r.head_len <= 300);
                proptest::prop_assert!(r.path.len() + r.query.len() <= 100);
            }
        }
    }
}
