//! Where the body of a parsed request head ends in the read buffer: `Content-Length` bytes
//! copied, or a chunked body decoded, into the connection's body scratch. No IO.
//!
//! Invariants:
//! - a body is never read past `http.max_body_bytes` (decoded size, for chunked bodies);
//! - [`frame_body`] and [`is_complete`] agree on when a request is whole: `Wait` from the one
//!   is `false` from the other, so the connection loop never reads for a request it could
//!   answer, nor answers one whose body is still on its way;
//! - an `Expect` other than `100-continue` is refused (417) before any body is looked at.

use super::chunked::{self, Dechunk};
use super::request::{Body, Expect, Limits, Request};
use crate::metrics::CoreCounters;

/// Where the body of a parsed request stands.
pub(super) enum Framing {
    /// Complete: this many bytes after the head are its body (framing included).
    Ready(usize),
    /// Not all here yet: read more.
    Wait,
    /// Cannot be read: answer and close.
    Refused { status: u16, reason: &'static str },
}

/// How much of `rest` (the bytes after the head) is the body of `req`, with the body (if
/// any) copied or de-chunked into `body`; refusals count their limit hit.
pub(super) fn frame_body(
    req: &Request<'_>,
    rest: &[u8],
    body: &mut Vec<u8>,
    limits: &Limits,
    counters: &CoreCounters,
) -> Framing {
    if req.expect == Expect::Unsupported {
        counters.count_limit_hit("expect");
        return Framing::Refused { status: 417, reason: "only Expect: 100-continue is supported" };
    }
    match req.body {
        Body::None => Framing::Ready(0),
        Body::Length(n) => match rest.get(..n) {
            Some(bytes) => {
                body.clear();
                body.extend_from_slice(bytes);
                Framing::Ready(n)
            }
            None => Framing::Wait, // the body is still on its way
        },
        Body::Chunked => match chunked::dechunk(rest, limits.max_body_bytes, body) {
            Dechunk::Complete { wire_len } => Framing::Ready(wire_len),
            Dechunk::Partial => Framing::Wait,
            failed @ (Dechunk::TooLarge | Dechunk::Malformed) => {
                let (status, reason) = chunk_error(counters, failed);
                Framing::Refused { status, reason }
            }
        },
    }
}

/// Whether the body of `req` is all in `rest` (or cannot be read: then the answer is due
/// now too). Counts nothing; a chunked body is decoded into `body` to find its end.
pub(super) fn is_complete(req: &Request<'_>, rest: &[u8], body: &mut Vec<u8>, limits: &Limits) -> bool {
    match req.body {
        Body::None => true,
        Body::Length(n) => rest.len() >= n,
        Body::Chunked => !matches!(chunked::dechunk(rest, limits.max_body_bytes, body), Dechunk::Partial),
    }
}

/// Status and reason for a chunked body that cannot be read, counting the limit hit.
fn chunk_error(counters: &CoreCounters, failed: Dechunk) -> (u16, &'static str) {
    if failed == Dechunk::TooLarge {
        counters.count_limit_hit("body_bytes");
        (413, "chunked body exceeds http.max_body_bytes")
    } else {
        counters.count_limit_hit("malformed");
        (400, "malformed chunked body")
    }
}
