//! Configuration: one sub-config per pipeline stage, loaded from TOML, then environment overrides,
//! then [`Config::validate`].
//!
//! Invariants:
//! - every key has a default (an empty file is a valid config) and each field's doc states it;
//! - an unknown key is an error naming the key (`deny_unknown_fields`);
//! - relations between fields are checked in `validate()`, which names the offending key.
//!
//! Every limit carries its unit in its name (`_bytes`, `_ms`, `_events`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: &'static str, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub http: HttpConfig,
    pub ingest: IngestConfig,
    pub wal: WalConfig,
    pub queue: QueueConfig,
    pub mysql: MysqlConfig,
    pub domains: DomainsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address every core listens on with its own SO_REUSEPORT socket. Default `0.0.0.0:34201`.
    pub listen: SocketAddr,
    /// Number of core threads. Default 0 = one per CPU in the process's affinity mask.
    pub cores: usize,
    /// Pin core thread N to the N-th CPU of the affinity mask. Default true.
    pub pin_cores: bool,
    /// io_uring submission queue entries per core. Default 1024.
    pub uring_entries: u32,
    /// Upper bound for a graceful drain on SIGTERM/SIGINT. Default 10000 ms.
    pub shutdown_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 34201)),
            cores: 0,
            pin_cores: true,
            uring_entries: 1024,
            shutdown_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest request head (request line + headers); past it: 431. Default 8192 bytes.
    pub max_header_bytes: usize,
    /// Longest request target (path + query); past it: 414. Default 8192 bytes.
    pub max_url_bytes: usize,
    /// Largest request body; past it: 413. Default 65536 bytes.
    pub max_body_bytes: usize,
    /// Most headers in one request; past it: 431. Default 64.
    pub max_headers: usize,
    /// Open connections per core; past it new connections are closed at once. Default 10000.
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
            max_headers: 64,
            max_connections_per_core: 10_000,
            idle_timeout_ms: 30_000,
            max_pipelined_requests: 256,
            cors_origins: vec!["*".into()],
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Optional allowlist of event names. Default: empty = any name matching `[a-z0-9_]{1,32}`.
    pub events: Vec<String>,
    /// Identity of this collector in `ingest_cursors.node`. Default: the hostname.
    pub node_id: String,
    /// Most events in one `POST /log` body; past it: 413. Default 100.
    pub max_batch_events: usize,
    /// Extra query parameters kept in the `extra` JSON column (at most 1 KiB per event).
    /// Default `[]`: extra parameters are ignored.
    pub keep_params: Vec<String>,
    /// Store the client IP (socket peer or trusted `X-Forwarded-For`). Default true.
    pub client_ip: bool,
    /// Store the User-Agent (hash in `events`, text once in `user_agents`). Default true.
    pub user_agent: bool,
    /// Store the host of the Referer. Default true.
    pub referer: bool,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            events: Vec::new(),
            node_id: String::new(),
            max_batch_events: 100,
            keep_params: Vec::new(),
            client_ip: true,
            user_agent: true,
            referer: true,
        }
    }
}

/// When the WAL is fdatasynced. `None` still survives `kill -9` (the page cache holds the
/// data); `Interval` and `Always` also survive a power cut, the latter before every ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    None,
    Interval,
    Always,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    /// Root of the write-ahead log: `core-N/` directories and `commit.meta`. Default `./var/wal`.
    pub dir: PathBuf,
    /// A segment is sealed and a new one opened once it reaches this size. Default 64 MiB.
    pub segment_bytes: u64,
    /// fdatasync policy. Default `none`.
    pub sync: SyncPolicy,
    /// Period of the fdatasync with `sync = "interval"`. Default 1000 ms.
    pub sync_interval_ms: u64,
    /// Most bytes one core buffers for a single WAL write. Default 1 MiB.
    pub write_buffer_bytes: usize,
    /// Most bytes of WAL segments on disk (all cores); past it `/log` answers 503 +
    /// `Retry-After` (reason `wal_full`) until compaction frees space. Default 0 = 80 % of
    /// (free space of `wal.dir` + WAL already there) at start.
    pub max_bytes: u64,
    /// Free space `wal.dir`'s filesystem keeps; below it `/log` answers 503 (`wal_full`).
    /// Default 0 = the smaller of 1 GiB and 5 % of the filesystem's size.
    pub min_free_bytes: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./var/wal"),
            segment_bytes: 64 * 1024 * 1024,
            sync: SyncPolicy::None,
            sync_interval_ms: 1000,
            write_buffer_bytes: 1024 * 1024,
            max_bytes: 0,
            min_free_bytes: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Most events held in memory between the cores and the flusher. Past it, events live only
    /// in the WAL until the flusher catches up from there. Default 65536.
    pub capacity: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self { capacity: 65_536 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MysqlConfig {
    /// `mysql://user:pass@host:port/db`. Default empty = `make run` starts a private MariaDB.
    pub url: String,
    /// A batch is cut at this many rows. Default 5000.
    pub batch_rows: usize,
    /// A batch is cut at the latest this long after its first row. Default 1000 ms.
    pub flush_interval_ms: u64,
    /// Timeout of a connect attempt. Default 5000 ms.
    pub connect_timeout_ms: u64,
    /// Timeout of one statement or transaction step. Default 30000 ms.
    pub query_timeout_ms: u64,
    /// First retry delay after a failure; doubles up to `retry_max_ms`. Default 100 ms.
    pub retry_min_ms: u64,
    /// Longest retry delay. Default 5000 ms.
    pub retry_max_ms: u64,
    /// Largest statement sent; keep below the server's max_allowed_packet. Default 8 MiB.
    pub max_statement_bytes: usize,
}

impl Default for MysqlConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            batch_rows: 5000,
            flush_interval_ms: 1000,
            connect_timeout_ms: 5000,
            query_timeout_ms: 30_000,
            retry_min_ms: 100,
            retry_max_ms: 5000,
            max_statement_bytes: 8 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DomainsConfig {
    /// Most domain name → id entries the flusher keeps in memory. Default 100000.
    pub cache_entries: usize,
}

impl Default for DomainsConfig {
    fn default() -> Self {
        Self { cache_entries: 100_000 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// tracing filter directive, overridden by `RUST_LOG`. Default `info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: "info".into() }
    }
}

/// Environment variables that override config keys, as (variable, key).
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("PSC_SERVER_LISTEN", "server.listen"),
    ("PSC_SERVER_CORES", "server.cores"),
    ("PSC_WAL_DIR", "wal.dir"),
    ("PSC_WAL_SYNC", "wal.sync"),
    ("PSC_QUEUE_CAPACITY", "queue.capacity"),
    ("PSC_MYSQL_URL", "mysql.url"),
    ("PSC_NODE_ID", "ingest.node_id"),
    ("PSC_LOG_FORMAT", "log.format"),
];

impl Config {
    /// Reads `path` (if given), applies the `PSC_*` environment overrides and validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => Self::from_file(path)?,
            None => Config::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        config.fill_derived_defaults();
        config.validate()?;
        Ok(config)
    }

    fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse { path: path.to_owned(), message })
    }

    /// Parses TOML text; unknown keys are rejected with their name.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))
    }

    /// Applies `PSC_*` overrides, reading variables through `get` so tests need no real env.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(var: &'static str, v: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            v.parse::<T>().map_err(|e| ConfigError::Env { var, message: e.to_string() })
        }
        if let Some(v) = get("PSC_SERVER_LISTEN") {
            self.server.listen = parse("PSC_SERVER_LISTEN", &v)?;
        }
        if let Some(v) = get("PSC_SERVER_CORES") {
            self.server.cores = parse("PSC_SERVER_CORES", &v)?;
        }
        if let Some(v) = get("PSC_WAL_DIR") {
            self.wal.dir = PathBuf::from(v);
        }
        if let Some(v) = get("PSC_WAL_SYNC") {
            self.wal.sync = match v.as_str() {
                "none" => SyncPolicy::None,
                "interval" => SyncPolicy::Interval,
                "always" => SyncPolicy::Always,
                other => {
                    return Err(ConfigError::Env {
                        var: "PSC_WAL_SYNC",
                        message: format!("`{other}` is not one of none, interval, always"),
                    })
                }
            };
        }
        if let Some(v) = get("PSC_QUEUE_CAPACITY") {
            self.queue.capacity = parse("PSC_QUEUE_CAPACITY", &v)?;
        }
        if let Some(v) = get("PSC_MYSQL_URL") {
            self.mysql.url = v;
        }
        if let Some(v) = get("PSC_NODE_ID") {
            self.ingest.node_id = v;
        }
        if let Some(v) = get("PSC_LOG_FORMAT") {
            self.log.format = match v.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(ConfigError::Env {
                        var: "PSC_LOG_FORMAT",
                        message: format!("`{other}` is not one of text, json"),
                    })
                }
            };
        }
        Ok(())
    }

    /// Defaults that depend on the machine: the node id (hostname).
    pub fn fill_derived_defaults(&mut self) {
        if self.ingest.node_id.is_empty() {
            self.ingest.node_id = hostname();
        }
    }

    /// Checks each value and the relations between values; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, message: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid { key, message: message.into() })
        }
        if self.http.max_header_bytes < 256 {
            return invalid("http.max_header_bytes", "must be at least 256");
        }
        if self.http.max_url_bytes > self.http.max_header_bytes {
            return invalid("http.max_url_bytes", "must not exceed http.max_header_bytes");
        }
        if self.http.max_headers == 0 || self.http.max_headers > crate::http::request::MAX_HEADERS_CAP {
            return invalid(
                "http.max_headers",
                format!("must be 1..={}", crate::http::request::MAX_HEADERS_CAP),
            );
        }
        if self.http.max_connections_per_core == 0 {
            return invalid("http.max_connections_per_core", "must be at least 1");
        }
        if self.http.max_pipelined_requests == 0 {
            return invalid("http.max_pipelined_requests", "must be at least 1");
        }
        if self.wal.segment_bytes < 4096 {
            return invalid("wal.segment_bytes", "must be at least 4096");
        }
        if (self.wal.write_buffer_bytes as u64) > self.wal.segment_bytes {
            return invalid("wal.write_buffer_bytes", "must not exceed wal.segment_bytes");
        }
        if self.wal.write_buffer_bytes < 4096 {
            return invalid("wal.write_buffer_bytes", "must be at least 4096");
        }
        if self.wal.max_bytes != 0 && self.wal.max_bytes < 2 * self.wal.segment_bytes {
            return invalid("wal.max_bytes", "must be 0 (derived) or at least 2 × wal.segment_bytes");
        }
        if self.wal.sync == SyncPolicy::Interval && self.wal.sync_interval_ms == 0 {
            return invalid("wal.sync_interval_ms", "must be at least 1 with wal.sync = \"interval\"");
        }
        if self.queue.capacity == 0 {
            return invalid("queue.capacity", "must be at least 1");
        }
        if self.mysql.batch_rows == 0 {
            return invalid("mysql.batch_rows", "must be at least 1");
        }
        if self.mysql.flush_interval_ms == 0 {
            return invalid("mysql.flush_interval_ms", "must be at least 1");
        }
        if self.mysql.retry_min_ms == 0 || self.mysql.retry_min_ms > self.mysql.retry_max_ms {
            return invalid("mysql.retry_min_ms", "must be at least 1 and at most mysql.retry_max_ms");
        }
        if self.mysql.max_statement_bytes < 64 * 1024 {
            return invalid("mysql.max_statement_bytes", "must be at least 65536");
        }
        if !self.mysql.url.is_empty() && !self.mysql.url.starts_with("mysql://") {
            return invalid("mysql.url", "must look like mysql://user:pass@host:port/db");
        }
        if self.domains.cache_entries == 0 {
            return invalid("domains.cache_entries", "must be at least 1");
        }
        if self.ingest.node_id.len() > 64 {
            return invalid("ingest.node_id", "must be at most 64 bytes");
        }
        self.validate_dialects()?;
        for name in &self.ingest.events {
            if !crate::ingest::is_valid_event_name(name) {
                return invalid("ingest.events", format!("`{name}` does not match [a-z0-9_]{{1,32}}"));
            }
        }
        Ok(())
    }
}

impl Config {
    /// The keys of the beacon dialects: POST batches, CORS, client context.
    fn validate_dialects(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, message: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid { key, message: message.into() })
        }
        if self.ingest.max_batch_events == 0 {
            return invalid("ingest.max_batch_events", "must be at least 1");
        }
        for origin in &self.http.cors_origins {
            let well_formed = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && origin.bytes().all(|b| b.is_ascii_graphic()));
            if !well_formed {
                return invalid(
                    "http.cors_origins",
                    format!("`{origin}` is neither \"*\" nor an origin like https://player.example"),
                );
            }
        }
        if let Err(e) = crate::ingest::client::TrustedProxies::parse(&self.http.trusted_proxies) {
            return invalid("http.trusted_proxies", e.to_string());
        }
        for name in &self.ingest.keep_params {
            if name.is_empty() || name.len() > 64 || ["event", "domain", "file_id"].contains(&name.as_str()) {
                return invalid(
                    "ingest.keep_params",
                    format!("`{name}` must be 1..=64 bytes and not event, domain or file_id"),
                );
            }
        }
        Ok(())
    }
}

/// The machine's hostname, or `"localhost"` if it cannot be read.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..len]) {
        Ok(name) if !name.is_empty() => name.chars().take(64).collect(),
        _ => "localhost".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = Config::from_toml("").expect("empty config parses");
        assert_eq!(c.server.listen.port(), 34201);
        assert_eq!(c.wal.segment_bytes, 64 * 1024 * 1024);
        assert_eq!(c.wal.sync, SyncPolicy::None);
        assert_eq!(c.mysql.batch_rows, 5000);
        assert_eq!(c.http.max_url_bytes, 8192);
        c.validate().expect("defaults are valid");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[wal]\nsegmnet_bytes = 5\n").unwrap_err();
        assert!(err.contains("segmnet_bytes"), "{err}");
        let err = Config::from_toml("[walz]\n").unwrap_err();
        assert!(err.contains("walz"), "{err}");
    }

    #[test]
    fn env_overrides_apply() {
        let mut c = Config::default();
        c.apply_env(|k| match k {
            "PSC_SERVER_LISTEN" => Some("127.0.0.1:0".into()),
            "PSC_WAL_DIR" => Some("/tmp/x".into()),
            "PSC_MYSQL_URL" => Some("mysql://a:b@127.0.0.1:1/db".into()),
            "PSC_WAL_SYNC" => Some("always".into()),
            _ => None,
        })
        .expect("valid overrides");
        assert_eq!(c.server.listen.port(), 0);
        assert_eq!(c.wal.dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.mysql.url, "mysql://a:b@127.0.0.1:1/db");
        assert_eq!(c.wal.sync, SyncPolicy::Always);
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let mut c = Config::default();
        let err = c.apply_env(|k| (k == "PSC_SERVER_LISTEN").then(|| "nope".into())).unwrap_err();
        assert!(err.to_string().contains("PSC_SERVER_LISTEN"));
    }

    #[test]
    fn validate_names_the_key() {
        let mut c = Config::default();
        c.wal.segment_bytes = 10;
        assert!(c.validate().unwrap_err().to_string().contains("wal.segment_bytes"));
        let mut c = Config::default();
        c.ingest.events = vec!["Bad-Name".into()];
        assert!(c.validate().unwrap_err().to_string().contains("ingest.events"));
        let mut c = Config::default();
        c.http.max_url_bytes = c.http.max_header_bytes + 1;
        assert!(c.validate().unwrap_err().to_string().contains("http.max_url_bytes"));
        let mut c = Config::default();
        c.wal.max_bytes = c.wal.segment_bytes;
        assert!(c.validate().unwrap_err().to_string().contains("wal.max_bytes"));
    }

    #[test]
    fn dialect_keys_default_and_validate() {
        let c = Config::default();
        assert_eq!(c.http.cors_origins, vec!["*".to_string()]);
        assert!(c.http.trusted_proxies.is_empty());
        assert_eq!(c.ingest.max_batch_events, 100);
        assert!(c.ingest.keep_params.is_empty());
        assert!(c.ingest.client_ip && c.ingest.user_agent && c.ingest.referer);
        let with = |edit: fn(&mut Config)| {
            let mut c = Config::default();
            edit(&mut c);
            c.validate().err().map(|e| e.to_string())
        };
        let named = |err: Option<String>, key: &str| {
            assert!(err.as_deref().is_some_and(|e| e.contains(key)), "{err:?}")
        };
        named(with(|c| c.ingest.max_batch_events = 0), "ingest.max_batch_events");
        named(with(|c| c.http.trusted_proxies = vec!["10.0.0.0/40".into()]), "http.trusted_proxies");
        named(with(|c| c.http.cors_origins = vec!["player.example".into()]), "http.cors_origins");
        named(with(|c| c.ingest.keep_params = vec!["domain".into()]), "ingest.keep_params");
        assert_eq!(with(|c| c.http.trusted_proxies = vec!["10.0.0.0/8".into(), "::1".into()]), None);
        assert_eq!(with(|c| c.http.cors_origins = vec!["https://a.example".into(), "*".into()]), None);
    }
}
