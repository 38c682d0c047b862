//! The `[http]` keys: request size limits, connection limits, CORS origins and trusted proxies.

use serde::Deserialize;

use crate::ingest::client::TrustedProxies;
use crate::invalid::InvalidKey;

/// Capacity of the on-stack header array; `http.max_headers` must not exceed it.
pub const MAX_HEADERS_CAP: usize = 128;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest request head (request line + headers); past it: 431. Default 8192 bytes.
    pub max_header_bytes: usize,
    /// Longest request target (path + query); past it: 414. Default 8192 bytes.
    pub max_url_bytes: usize,
    /// Largest request body, on the wire and, for a compressed body, once decompressed too;
    /// past it: 413. Default 65536 bytes.
    pub max_body_bytes: usize,
    /// Most a compressed body may expand (decompressed bytes / compressed bytes); past it:
    /// 413, counted as a bomb. JSON batches compress 5-20x. Default 100.
    pub max_decompression_ratio: usize,
    /// Requests answered on one connection before it is closed (`Connection: close` on the
    /// last answer), so L4 balancers can move clients. Default 0: no limit.
    pub max_requests_per_connection: u64,
    /// Age of a connection after which its next answer closes it (`Connection: close`).
    /// Default 0 ms: no limit.
    pub max_connection_age_ms: u64,
    /// Most headers in one request; past it: 431. Default 64.
    pub max_headers: usize,
    /// Open connections per core; past it new connections are closed at once. Default 10000.
    /// Lowered at start, with a warning, to what the descriptor limit holds
    /// (`crate::server::fd_limit`).
    pub max_connections_per_core: usize,
    /// A connection with no complete request for this long is closed. Default 30000 ms.
    pub idle_timeout_ms: u64,
    /// Most pipelined requests answered per read; the rest wait for the next turn. Default 256.
    pub max_pipelined_requests: usize,
    /// Origins allowed to send beacons cross-origin (CORS): `"*"` for any (answered with
    /// `Access-Control-Allow-Origin: *`), or exact origins like `"https://player.example"`
    /// (echoed, with credentials). Empty allows none. Default `["*"]`.
    pub cors_origins: Vec<String>,
    /// Peers (CIDR blocks or addresses) whose `X-Forwarded-For` is believed; the client IP is
    /// then the right-most address in it that is not one of these. Default `[]`: the socket
    /// peer is the client and `X-Forwarded-For` is ignored.
    pub trusted_proxies: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: 8192,
            max_url_bytes: 8192,
            max_body_bytes: 64 * 1024,
            max_decompression_ratio: 100,
            max_requests_per_connection: 0,
            max_connection_age_ms: 0,
            max_headers: 64,
            max_connections_per_core: 10_000,
            idle_timeout_ms: 30_000,
            max_pipelined_requests: 256,
            cors_origins: vec!["*".into()],
            trusted_proxies: Vec::new(),
        }
    }
}

impl HttpConfig {
    /// Checks the `[http]` keys and how they relate to each other.
    pub fn validate(&self) -> Result<(), InvalidKey> {
        if self.max_header_bytes < 256 {
            return InvalidKey::err("http.max_header_bytes", "must be at least 256");
        }
        if self.max_url_bytes > self.max_header_bytes {
            return InvalidKey::err("http.max_url_bytes", "must not exceed http.max_header_bytes");
        }
        if self.max_headers == 0 || self.max_headers > MAX_HEADERS_CAP {
            return InvalidKey::err("http.max_headers", format!("must be 1..={MAX_HEADERS_CAP}"));
        }
        if self.max_connections_per_core == 0 {
            return InvalidKey::err("http.max_connections_per_core", "must be at least 1");
        }
        if self.max_decompression_ratio == 0 {
            return InvalidKey::err("http.max_decompression_ratio", "must be at least 1");
        }
        if self.max_pipelined_requests == 0 {
            return InvalidKey::err("http.max_pipelined_requests", "must be at least 1");
        }
        for origin in &self.cors_origins {
            let well_formed = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && origin.bytes().all(|b| b.is_ascii_graphic()));
            if !well_formed {
                return InvalidKey::err(
                    "http.cors_origins",
                    format!("`{origin}` is neither \"*\" nor an origin like https://player.example"),
                );
            }
        }
        if let Err(e) = TrustedProxies::parse(&self.trusted_proxies) {
            return InvalidKey::err("http.trusted_proxies", e.to_string());
        }
        Ok(())
    }
}
