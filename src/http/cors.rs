//! CORS for beacons sent by `fetch` and `sendBeacon` from other origins.
//!
//! Policy (`http.cors_origins`, default `["*"]`):
//! - `*` allows every origin: answers carry `Access-Control-Allow-Origin: *` and no
//!   credentials (the wildcard and credentials exclude each other in the Fetch standard);
//! - an explicit list allows exactly those origins (ASCII case-insensitive match): answers echo
//!   the origin, allow credentials (so `sendBeacon`, which always sends them, gets a readable
//!   answer) and carry `Vary: Origin`, as the answer differs by origin;
//! - a request without `Origin` (an `<img>` pixel, a same-origin or non-browser GET) skips all
//!   of this: the router only asks for a grant when the header is present;
//! - a preflight (`OPTIONS` with `Access-Control-Request-Method`) for an allowed origin gets
//!   204 with the allowed methods and headers, `Access-Control-Max-Age` and `Vary: Origin`;
//!   for any other origin 403, so a misconfiguration is visible in the browser's console.
//!
//! A grant refers to the configured origin by index, so no request allocates.

/// Seconds a browser may cache a preflight answer (Chromium caps it at 7200).
pub const PREFLIGHT_MAX_AGE_S: u32 = 7200;
/// Methods a beacon may use cross-origin.
const ALLOW_METHODS: &str = "GET, POST, OPTIONS";
/// Request headers a beacon may send cross-origin (JSON bodies need `Content-Type`).
const ALLOW_HEADERS: &str = "Content-Type";

/// The allowed origins, from `http.cors_origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    any: bool,
    origins: Vec<String>,
}

/// What an allowed cross-origin request gets in its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// `Access-Control-Allow-Origin: *`.
    Any,
    /// Echo configured origin number `n`, with credentials.
    Listed(usize),
}

impl Cors {
    pub fn new(origins: &[String]) -> Cors {
        Cors {
            any: origins.iter().any(|o| o == "*"),
            origins: origins
                .iter()
                .filter(|o| *o != "*")
                .map(|o| o.trim_end_matches('/').to_owned())
                .collect(),
        }
    }

    /// The grant for a request carrying `Origin: origin`, or `None` if it is not allowed.
    pub fn grant(&self, origin: &[u8]) -> Option<Grant> {
        if let Some(n) = self.origins.iter().position(|o| o.as_bytes().eq_ignore_ascii_case(origin)) {
            return Some(Grant::Listed(n));
        }
        self.any.then_some(Grant::Any)
    }

    /// Appends the CORS response headers of `grant` (each ending in CRLF).
    pub fn write_headers(&self, grant: Grant, out: &mut Vec<u8>) {
        match grant {
            Grant::Any => out.extend_from_slice(b"Access-Control-Allow-Origin: *\r\n"),
            Grant::Listed(n) => {
                out.extend_from_slice(b"Access-Control-Allow-Origin: ");
                out.extend_from_slice(self.origins.get(n).map_or(&b"null"[..], |o| o.as_bytes()));
                out.extend_from_slice(b"\r\nAccess-Control-Allow-Credentials: true\r\nVary: Origin\r\n");
            }
        }
    }

    /// Appends the answer to a preflight from an allowed origin.
    pub fn write_preflight(&self, grant: Grant, close: bool, out: &mut Vec<u8>) {
        let mut num = itoa::Buffer::new();
        out.extend_from_slice(b"HTTP/1.1 204 No Content\r\nCache-Control: no-store\r\n");
        self.write_headers(grant, out);
        if grant == Grant::Any {
            out.extend_from_slice(b"Vary: Origin\r\n");
        }
        out.extend_from_slice(b"Access-Control-Allow-Methods: ");
        out.extend_from_slice(ALLOW_METHODS.as_bytes());
        out.extend_from_slice(b"\r\nAccess-Control-Allow-Headers: ");
        out.extend_from_slice(ALLOW_HEADERS.as_bytes());
        out.extend_from_slice(b"\r\nAccess-Control-Max-Age: ");
        out.extend_from_slice(num.format(PREFLIGHT_MAX_AGE_S).as_bytes());
        out.extend_from_slice(b"\r\n");
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(list: &[&str]) -> Cors {
        Cors::new(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn headers(c: &Cors, grant: Grant) -> String {
        let mut out = Vec::new();
        c.write_headers(grant, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn wildcard_allows_all_without_credentials() {
        let c = cors(&["*"]);
        assert_eq!(c.grant(b"http://a.example"), Some(Grant::Any));
        assert_eq!(c.grant(b"null"), Some(Grant::Any));
        assert_eq!(headers(&c, Grant::Any), "Access-Control-Allow-Origin: *\r\n");
    }

    #[test]
    fn explicit_list_echoes_with_credentials_and_vary() {
        let c = cors(&["https://Player.example/", "http://127.0.0.1:8080"]);
        assert_eq!(c.grant(b"https://player.example"), Some(Grant::Listed(0)));
        assert_eq!(c.grant(b"http://127.0.0.1:8080"), Some(Grant::Listed(1)));
        assert_eq!(c.grant(b"http://127.0.0.1:8081"), None);
        assert_eq!(c.grant(b"https://player.example.evil.com"), None);
        assert_eq!(
            headers(&c, Grant::Listed(1)),
            "Access-Control-Allow-Origin: http://127.0.0.1:8080\r\n\
             Access-Control-Allow-Credentials: true\r\nVary: Origin\r\n"
        );
        assert_eq!(cors(&[]).grant(b"http://x"), None, "an empty list allows nobody");
    }

    #[test]
    fn preflight_answer_parses_and_carries_everything() {
        for (c, origin) in [(cors(&["*"]), "*"), (cors(&["http://a.b"]), "http://a.b")] {
            let grant = c.grant(b"http://a.b").unwrap();
            let mut out = Vec::new();
            c.write_preflight(grant, false, &mut out);
            let mut h = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut h);
            let httparse::Status::Complete(len) = resp.parse(&out).unwrap() else { panic!("partial") };
            assert_eq!(len, out.len());
            assert_eq!(resp.code, Some(204));
            let get = |name: &str| {
                resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.to_vec())
            };
            assert_eq!(get("access-control-allow-origin"), Some(origin.as_bytes().to_vec()));
            assert_eq!(get("vary"), Some(b"Origin".to_vec()));
            assert_eq!(get("access-control-max-age"), Some(b"7200".to_vec()));
            assert_eq!(get("access-control-allow-headers"), Some(b"Content-Type".to_vec()));
            assert_eq!(get("access-control-allow-methods"), Some(b"GET, POST, OPTIONS".to_vec()));
            assert_eq!(get("access-control-allow-credentials").is_some(), origin != "*");
        }
    }
}
