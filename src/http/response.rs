//! HTTP/1.1 responses: pre-rendered static bytes for the beacon answers on the hot path, and
//! small writers that append other responses to a reused buffer.
//!
//! Invariants:
//! - every response carries `Cache-Control: no-store` (a cached beacon answer is a lost event);
//! - a `204` carries no `Content-Length` and no body (RFC 9110 §8.6);
//! - every other response carries an exact `Content-Length`, so keep-alive framing holds;
//! - no `Server` or `Date` header: they cost bytes on every answer and say nothing useful.

/// Answer to an accepted beacon on a connection that stays open (HTTP/1.1).
pub const NO_CONTENT: &[u8] = b"HTTP/1.1 204 No Content\r\nCache-Control: no-store\r\n\r\n";

/// Answer to an accepted beacon when the connection is closed afterwards.
pub const NO_CONTENT_CLOSE: &[u8] =
    b"HTTP/1.1 204 No Content\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n";

/// Answer to an accepted beacon from an HTTP/1.0 client that asked for keep-alive: HTTP/1.0
/// clients assume the connection closes unless the answer says otherwise.
pub const NO_CONTENT_KEEP_ALIVE: &[u8] =
    b"HTTP/1.1 204 No Content\r\nCache-Control: no-store\r\nConnection: keep-alive\r\n\r\n";

/// The static 204 for a request of HTTP/1.`minor_version` whose connection stays open iff
/// `keep_alive`.
pub fn no_content(minor_version: u8, keep_alive: bool) -> &'static [u8] {
    match (keep_alive, minor_version) {
        (false, _) => NO_CONTENT_CLOSE,
        (true, 0) => NO_CONTENT_KEEP_ALIVE,
        (true, _) => NO_CONTENT,
    }
}

/// Reason phrase (RFC 9110 §15) for the statuses we send, every one of
/// `crate::metrics::STATUS_CODES` (a test keeps them in step); empty, which RFC 9112 §4
/// allows, for any other.
pub fn status_text(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Appends a `text/plain` error whose body is `reason` plus a newline.
pub fn write_error(out: &mut Vec<u8>, status: u16, reason: &str, close: bool) {
    write_text(out, status, Extra::None, reason, close);
}

/// Appends a `503` telling the client to retry after `retry_after_s` seconds.
pub fn write_503_retry(out: &mut Vec<u8>, retry_after_s: u32, reason: &str, close: bool) {
    write_text(out, 503, Extra::RetryAfter(retry_after_s), reason, close);
}

/// Appends a `405` naming the methods the path takes in `Allow`.
pub fn write_405(out: &mut Vec<u8>, allow: &'static str, close: bool) {
    write_text(out, 405, Extra::Allow(allow), "method not allowed", close);
}

/// Appends a response with an arbitrary body, for `/healthz`, `/metrics` and the like.
pub fn write_body(out: &mut Vec<u8>, status: u16, content_type: &str, body: &[u8], close: bool) {
    write_head(out, status, content_type, body.len(), close, Extra::None);
    out.extend_from_slice(body);
}

/// The one optional header some responses carry.
#[derive(Clone, Copy)]
enum Extra {
    None,
    RetryAfter(u32),
    Allow(&'static str),
}

fn write_text(out: &mut Vec<u8>, status: u16, extra: Extra, reason: &str, close: bool) {
    write_head(out, status, "text/plain; charset=utf-8", reason.len() + 1, close, extra);
    out.extend_from_slice(reason.as_bytes());
    out.push(b'\n');
}

fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    content_length: usize,
    close: bool,
    extra: Extra,
) {
    debug_assert!((100..=999).contains(&status), "status {status} is not three digits");
    debug_assert!(!content_type.contains(['\r', '\n']), "header injection in content type");
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(num.format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(status_text(status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(num.format(content_length).as_bytes());
    out.extend_from_slice(b"\r\nCache-Control: no-store\r\n");
    match extra {
        Extra::None => {}
        Extra::RetryAfter(seconds) => {
            out.extend_from_slice(b"Retry-After: ");
            out.extend_from_slice(num.format(seconds).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Extra::Allow(methods) => {
            out.extend_from_slice(b"Allow: ");
            out.extend_from_slice(methods.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response parsed back: status, headers as (lower-case name, value), body.
    struct Parsed {
        code: u16,
        reason: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Parsed {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
        }
    }

    fn parse_back(bytes: &[u8]) -> Parsed {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(bytes).expect("valid response") {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("incomplete response"),
        };
        assert_eq!(resp.version, Some(1));
        Parsed {
            code: resp.code.expect("status"),
            reason: resp.reason.expect("reason").to_owned(),
            headers: resp
                .headers
                .iter()
                .map(|h| {
                    let value = String::from_utf8(h.value.to_vec()).expect("ascii header");
                    (h.name.to_ascii_lowercase(), value)
                })
                .collect(),
            body: bytes[head_len..].to_vec(),
        }
    }

    #[test]
    fn static_204s() {
        for (bytes, connection) in [
            (NO_CONTENT, None),
            (NO_CONTENT_CLOSE, Some("close")),
            (NO_CONTENT_KEEP_ALIVE, Some("keep-alive")),
        ] {
            let r = parse_back(bytes);
            assert_eq!((r.code, r.reason.as_str()), (204, "No Content"));
            assert_eq!(r.header("cache-control"), Some("no-store"));
            assert_eq!(r.header("connection"), connection);
            assert_eq!(r.header("content-length"), None);
            assert!(r.body.is_empty());
        }
    }

    #[test]
    fn no_content_picks_by_version_and_keep_alive() {
        assert_eq!(no_content(1, true), NO_CONTENT);
        assert_eq!(no_content(1, false), NO_CONTENT_CLOSE);
        assert_eq!(no_content(0, true), NO_CONTENT_KEEP_ALIVE);
        assert_eq!(no_content(0, false), NO_CONTENT_CLOSE);
    }

    #[test]
    fn error_response_round_trips() {
        let mut out = Vec::new();
        write_error(&mut out, 400, "missing parameter: domain", false);
        let r = parse_back(&out);
        assert_eq!((r.code, r.reason.as_str()), (400, "Bad Request"));
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(r.header("content-length"), Some("26"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert_eq!(r.header("connection"), None);
        assert_eq!(r.body, b"missing parameter: domain\n");
    }

    #[test]
    fn error_response_with_close_appends_to_existing_bytes() {
        let mut out = NO_CONTENT.to_vec();
        write_error(&mut out, 431, "too big", true);
        let r = parse_back(&out[NO_CONTENT.len()..]);
        assert_eq!((r.code, r.reason.as_str()), (431, "Request Header Fields Too Large"));
        assert_eq!(r.header("connection"), Some("close"));
        assert_eq!(r.body, b"too big\n");
    }

    #[test]
    fn retry_503() {
        let mut out = Vec::new();
        write_503_retry(&mut out, 7, "WAL unavailable", true);
        let r = parse_back(&out);
        assert_eq!((r.code, r.reason.as_str()), (503, "Service Unavailable"));
        assert_eq!(r.header("retry-after"), Some("7"));
        assert_eq!(r.header("content-length"), Some("16"));
        assert_eq!(r.header("connection"), Some("close"));
        assert_eq!(r.body, b"WAL unavailable\n");
    }

    #[test]
    fn body_response() {
        let mut out = Vec::new();
        let body = b"# TYPE x counter\nx 1\n";
        write_body(&mut out, 200, "text/plain; version=0.0.4", body, false);
        let r = parse_back(&out);
        assert_eq!((r.code, r.reason.as_str()), (200, "OK"));
        assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4"));
        assert_eq!(r.header("content-length"), Some(body.len().to_string().as_str()));
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert_eq!(r.body, body);
        let mut out = Vec::new();
        write_body(&mut out, 200, "application/json", b"", true);
        assert_eq!(parse_back(&out).header("content-length"), Some("0"));
    }

    #[test]
    fn every_status_we_use_has_text_and_round_trips() {
        assert_eq!(status_text(204), "No Content");
        for status in [200, 400, 404, 405, 408, 413, 414, 431, 500, 501, 503, 505] {
            assert!(!status_text(status).is_empty(), "{status}");
            let mut out = Vec::new();
            write_error(&mut out, status, "x", false);
            let r = parse_back(&out);
            assert_eq!((r.code, r.reason.as_str()), (status, status_text(status)));
        }
        let mut out = Vec::new();
        write_error(&mut out, 418, "x", false);
        assert_eq!(parse_back(&out).code, 418);
    }

    #[test]
    fn every_counted_status_has_its_reason_phrase() {
        for &status in crate::metrics::STATUS_CODES.iter().filter(|&&s| s != 0) {
            assert!(!status_text(status).is_empty(), "{status} goes out without a reason phrase");
            let mut out = Vec::new();
            write_body(&mut out, status, "text/plain", b"x", false);
            assert_eq!(parse_back(&out).reason, status_text(status));
        }
        assert_eq!((status_text(403), status_text(415)), ("Forbidden", "Unsupported Media Type"));
    }
}
