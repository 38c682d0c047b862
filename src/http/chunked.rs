//! De-chunking of `Transfer-Encoding: chunked` request bodies (RFC 9112 §7.1). Pure: no IO.
//!
//! Invariants:
//! - the decoded body never exceeds `max_body_bytes` ([`Dechunk::TooLarge`] as soon as the
//!   announced chunk sizes pass it, before the bytes arrive);
//! - the framing (sizes, extensions, CRLFs, trailers) may add at most `max_body_bytes` more
//!   bytes on the wire, so a stream of tiny chunks cannot make the read buffer grow forever;
//! - a body is only `Complete` after its last chunk, trailer section and final CRLF: then
//!   `wire_len` bytes belong to it and the next request starts right after.

/// Outcome of [`dechunk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dechunk {
    /// The whole body is in `out`; it took `wire_len` bytes of the input.
    Complete { wire_len: usize },
    /// More bytes are needed.
    Partial,
    /// The decoded body (or its framing) passes the limit: 413.
    TooLarge,
    /// Not valid chunked framing: 400.
    Malformed,
}

/// Longest chunk-size line (size, extensions, CRLF) accepted, bytes.
const SIZE_LINE_MAX_BYTES: usize = 256;

/// Decodes the chunked body at the start of `wire` into `out` (cleared first).
pub fn dechunk(wire: &[u8], max_body_bytes: usize, out: &mut Vec<u8>) -> Dechunk {
    out.clear();
    let max_wire = max_body_bytes.saturating_mul(2).saturating_add(SIZE_LINE_MAX_BYTES);
    let mut at = 0;
    loop {
        if at > max_wire {
            return Dechunk::TooLarge;
        }
        let Some((size, line_len)) = (match size_line(&wire[at..]) {
            Line::Size(size, len) => Some((size, len)),
            Line::Partial => None,
            Line::Bad => return Dechunk::Malformed,
        }) else {
            return if wire.len() - at > SIZE_LINE_MAX_BYTES { Dechunk::Malformed } else { Dechunk::Partial };
        };
        at += line_len;
        if size == 0 {
            return trailers(wire, at);
        }
        if out.len().saturating_add(size) > max_body_bytes {
            return Dechunk::TooLarge;
        }
        let Some(data) = wire.get(at..at + size) else {
            return Dechunk::Partial;
        };
        out.extend_from_slice(data);
        at += size;
        match wire.get(at..at + 2) {
            Some(b"\r\n") => at += 2,
            Some(_) => return Dechunk::Malformed,
            None if wire.len() > at && wire[at] != b'\r' => return Dechunk::Malformed,
            None => return Dechunk::Partial,
        }
    }
}

enum Line {
    /// Chunk size and the length of its line, CRLF included.
    Size(usize, usize),
    Partial,
    Bad,
}

/// `1*HEXDIG [ ; extensions ] CRLF`; extensions are skipped.
fn size_line(buf: &[u8]) -> Line {
    let window = &buf[..buf.len().min(SIZE_LINE_MAX_BYTES)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return Line::Partial;
    };
    let Some(line) = window[..lf].strip_suffix(b"\r") else {
        return Line::Bad;
    };
    let digits_end = line.iter().position(|b| !b.is_ascii_hexdigit()).unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    if digits.is_empty()
        || digits.len() > 8
        || !(rest.is_empty() || rest.trim_ascii_start().starts_with(b";"))
    {
        return Line::Bad;
    }
    let size = digits.iter().fold(0usize, |n, &b| n * 16 + usize::from(hex(b)));
    Line::Size(size, lf + 1)
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// After the last chunk: trailer fields (ignored) up to an empty line.
fn trailers(wire: &[u8], mut at: usize) -> Dechunk {
    loop {
        let rest = &wire[at..];
        let Some(lf) = rest.iter().take(SIZE_LINE_MAX_BYTES * 4).position(|&b| b == b'\n') else {
            return if rest.len() > SIZE_LINE_MAX_BYTES * 4 { Dechunk::Malformed } else { Dechunk::Partial };
        };
        if rest[..lf].last() != Some(&b'\r') {
            return Dechunk::Malformed;
        }
        at += lf + 1;
        if lf == 1 {
            return Dechunk::Complete { wire_len: at };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(wire: &[u8], max: usize) -> (Dechunk, Vec<u8>) {
        let mut out = b"stale".to_vec();
        let r = dechunk(wire, max, &mut out);
        (r, out)
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: y\r\n\r\nGET / HTTP/1.1";
        let (r, out) = run(wire, 100);
        assert_eq!(out, b"hello, world");
        assert_eq!(r, Dechunk::Complete { wire_len: wire.len() - b"GET / HTTP/1.1".len() });
        let (r, out) = run(b"A\r\n0123456789\r\n0\r\n\r\n", 100);
        assert_eq!((r, out.len()), (Dechunk::Complete { wire_len: 20 }, 10));
    }

    #[test]
    fn every_strict_prefix_is_partial() {
        let wire = b"5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n";
        for cut in 0..wire.len() {
            assert_eq!(run(&wire[..cut], 100).0, Dechunk::Partial, "cut at {cut}");
        }
        assert_eq!(run(wire, 100).0, Dechunk::Complete { wire_len: wire.len() });
    }

    #[test]
    fn body_limit_exact_and_one_past() {
        let wire = b"4\r\nabcd\r\n0\r\n\r\n";
        assert!(matches!(run(wire, 4).0, Dechunk::Complete { .. }));
        assert_eq!(run(wire, 3).0, Dechunk::TooLarge);
        // Announced sizes are checked before the data arrives.
        assert_eq!(run(b"ffffff\r\n", 1000).0, Dechunk::TooLarge);
    }

    #[test]
    fn framing_overhead_is_bounded() {
        let mut wire = Vec::new();
        for _ in 0..200 {
            wire.extend_from_slice(b"1;aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\nx\r\n");
        }
        assert_eq!(run(&wire, 100).0, Dechunk::TooLarge);
    }

    #[test]
    fn malformed_framing() {
        for wire in [&b"x\r\n"[..], b"5\nhello\r\n", b"5\r\nhelloXX", b"5 junk\r\nhello\r\n", b"0\r\nbad\n"] {
            assert_eq!(run(wire, 100).0, Dechunk::Malformed, "{}", String::from_utf8_lossy(wire));
        }
        let long_line = vec![b'1'; SIZE_LINE_MAX_BYTES + 1];
        assert_eq!(run(&long_line, 100).0, Dechunk::Malformed);
    }
}
