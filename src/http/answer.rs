//! Answers to accepted beacons in every dialect: `204` for `/log` (GET and POST), `200` with
//! a transparent 1×1 GIF for the pixel paths, each optionally with CORS headers.
//!
//! Invariants:
//! - every answer carries `Cache-Control: no-store` (the pixel also `max-age=0`, for old
//!   caches); the GIF answer has an exact `Content-Length`, the 204 none;
//! - without CORS the answer is static bytes (one or two copies, nothing formatted).

use super::cors::{Cors, Grant};
use super::response;

/// The smallest transparent 1×1 GIF (GIF89a, one-entry palette, transparency extension).
pub const TRANSPARENT_GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff,
    0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00,
    0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// Head of the pixel answer up to (not including) the connection header and the blank line.
const GIF_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: image/gif\r\nContent-Length: 43\r\n\
Cache-Control: no-store, max-age=0\r\n";
/// Head of the 204 up to the connection header.
const NO_CONTENT_HEAD: &[u8] = b"HTTP/1.1 204 No Content\r\nCache-Control: no-store\r\n";

/// Which answer an accepted beacon gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeaconKind {
    /// `204 No Content` (`/log`).
    NoContent,
    /// `200` with [`TRANSPARENT_GIF`] (`/log.gif`, `/pixel.gif`).
    Gif,
}

/// Appends the answer to an accepted beacon.
pub fn write_beacon(
    out: &mut Vec<u8>,
    kind: BeaconKind,
    minor_version: u8,
    keep_alive: bool,
    cors: Option<(&Cors, Grant)>,
) {
    if kind == BeaconKind::NoContent && cors.is_none() {
        out.extend_from_slice(response::no_content(minor_version, keep_alive));
        return;
    }
    out.extend_from_slice(match kind {
        BeaconKind::NoContent => NO_CONTENT_HEAD,
        BeaconKind::Gif => GIF_HEAD,
    });
    if let Some((cors, grant)) = cors {
        cors.write_headers(grant, out);
    }
    out.extend_from_slice(match (keep_alive, minor_version) {
        (false, _) => &b"Connection: close\r\n\r\n"[..],
        (true, 0) => b"Connection: keep-alive\r\n\r\n",
        (true, _) => b"\r\n",
    });
    if kind == BeaconKind::Gif {
        out.extend_from_slice(&TRANSPARENT_GIF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut h = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut h);
        let httparse::Status::Complete(len) = resp.parse(bytes).unwrap() else { panic!("partial") };
        let headers = resp
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8(h.value.to_vec()).unwrap()))
            .collect();
        (resp.code.unwrap(), headers, bytes[len..].to_vec())
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn gif_is_a_43_byte_gif89a() {
        assert_eq!(TRANSPARENT_GIF.len(), 43);
        assert_eq!(&TRANSPARENT_GIF[..6], b"GIF89a");
        assert_eq!(TRANSPARENT_GIF[6..10], [1, 0, 1, 0], "1x1");
        assert_eq!(TRANSPARENT_GIF.last(), Some(&0x3b), "trailer");
    }

    #[test]
    fn pixel_answers() {
        for (keep_alive, minor, connection) in
            [(true, 1, None), (false, 1, Some("close")), (true, 0, Some("keep-alive"))]
        {
            let mut out = Vec::new();
            write_beacon(&mut out, BeaconKind::Gif, minor, keep_alive, None);
            let (code, headers, body) = parse(&out);
            assert_eq!(code, 200);
            assert_eq!(header(&headers, "content-type"), Some("image/gif"));
            assert_eq!(header(&headers, "content-length"), Some("43"));
            assert_eq!(header(&headers, "cache-control"), Some("no-store, max-age=0"));
            assert_eq!(header(&headers, "connection"), connection);
            assert_eq!(body, TRANSPARENT_GIF);
        }
    }

    #[test]
    fn no_cors_204_is_the_static_answer() {
        let mut out = Vec::new();
        write_beacon(&mut out, BeaconKind::NoContent, 1, true, None);
        assert_eq!(out, response::NO_CONTENT);
    }

    #[test]
    fn cors_headers_are_added() {
        let cors = Cors::new(&["http://a.b".to_string()]);
        let mut out = Vec::new();
        write_beacon(&mut out, BeaconKind::NoContent, 1, false, Some((&cors, Grant::Listed(0))));
        let (code, headers, body) = parse(&out);
        assert_eq!(code, 204);
        assert!(body.is_empty());
        assert_eq!(header(&headers, "access-control-allow-origin"), Some("http://a.b"));
        assert_eq!(header(&headers, "access-control-allow-credentials"), Some("true"));
        assert_eq!(header(&headers, "vary"), Some("Origin"));
        assert_eq!(header(&headers, "cache-control"), Some("no-store"));
        assert_eq!(header(&headers, "connection"), Some("close"));
        let mut out = Vec::new();
        write_beacon(&mut out, BeaconKind::Gif, 1, true, Some((&cors, Grant::Any)));
        let (_, headers, body) = parse(&out);
        assert_eq!(header(&headers, "access-control-allow-origin"), Some("*"));
        assert_eq!(body, TRANSPARENT_GIF);
    }
}
