//! Configuration: the stages' own config types (`server::config`, `http::config`,
//! `ingest::config`, `ingest::enrich`, `wal::config`, `queue`, `mysql::config`,
//! `clickhouse::config`), assembled here, loaded from TOML, then environment overrides, then
//! [`Config::validate`].
//!
//! Invariants:
//! - every key has a default (an empty file is a valid config) and each field's doc states it;
//! - an unknown key is an error naming the key (`deny_unknown_fields`);
//! - each stage checks its own keys; relations between stages are checked here. Either way
//!   the error names the offending key.
//!
//! Every limit carries its unit in its name (`_bytes`, `_ms`, `_events`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::clickhouse::config::ClickhouseConfig;
pub use crate::http::config::HttpConfig;
pub use crate::ingest::config::IngestConfig;
pub use crate::ingest::enrich::EnrichConfig;
use crate::invalid::InvalidKey;
pub use crate::mysql::config::{DomainsConfig, MysqlConfig};
pub use crate::queue::QueueConfig;
pub use crate::server::config::{LogConfig, LogFormat, ServerConfig};
pub use crate::sink::config::{SinkConfig, SinkKind};
pub use crate::wal::config::{SyncPolicy, WalConfig};

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

impl From<InvalidKey> for ConfigError {
    fn from(e: InvalidKey) -> Self {
        ConfigError::Invalid { key: e.key, message: e.message }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub http: HttpConfig,
    pub ingest: IngestConfig,
    pub enrich: EnrichConfig,
    pub wal: WalConfig,
    pub queue: QueueConfig,
    pub sink: SinkConfig,
    pub mysql: MysqlConfig,
    pub clickhouse: ClickhouseConfig,
    pub domains: DomainsConfig,
    pub log: LogConfig,
    /// `[[rollup]]` entries: counts per time bucket and key (`crate::rollup`). Default none.
    pub rollup: Vec<crate::rollup::RollupConfig>,
}

/// Environment variables that override config keys, as (variable, key).
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("PSC_SERVER_LISTEN", "server.listen"),
    ("PSC_SERVER_CORES", "server.cores"),
    ("PSC_WAL_DIR", "wal.dir"),
    ("PSC_WAL_SYNC", "wal.sync"),
    ("PSC_QUEUE_CAPACITY", "queue.capacity"),
    ("PSC_MYSQL_URL", "mysql.url"),
    ("PSC_CLICKHOUSE_URL", "clickhouse.url"),
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
            self.wal.sync = parse("PSC_WAL_SYNC", &v)?;
        }
        if let Some(v) = get("PSC_QUEUE_CAPACITY") {
            self.queue.capacity = parse("PSC_QUEUE_CAPACITY", &v)?;
        }
        if let Some(v) = get("PSC_MYSQL_URL") {
            self.mysql.url = v;
        }
        if let Some(v) = get("PSC_CLICKHOUSE_URL") {
            self.clickhouse.url = v;
        }
        if let Some(v) = get("PSC_NODE_ID") {
            self.ingest.node_id = v;
        }
        if let Some(v) = get("PSC_LOG_FORMAT") {
            self.log.format = parse("PSC_LOG_FORMAT", &v)?;
        }
        Ok(())
    }

    /// Checks every stage's keys, then the relations between stages; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.http.validate()?;
        self.ingest.validate()?;
        self.enrich.validate()?;
        self.wal.validate()?;
        self.queue.validate()?;
        self.mysql.validate()?;
        self.clickhouse.validate()?;
        self.domains.validate()?;
        crate::rollup::validate(&self.rollup)?;
        let (raw_events, key) = match self.sink.kind {
            SinkKind::Mysql => (self.mysql.raw_events, "mysql.raw_events"),
            SinkKind::Clickhouse => (self.clickhouse.raw_events, "clickhouse.raw_events"),
        };
        if !raw_events && self.rollup.is_empty() {
            return Err(ConfigError::Invalid {
                key,
                message: "false writes no events rows, so it needs at least one [[rollup]]".into(),
            });
        }
        Ok(())
    }
}

/// The machine's hostname, or `"localhost"` if it cannot be read.
pub fn hostname() -> String {
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
    fn rollups_parse_and_rollups_only_needs_one() {
        let text = "[mysql]\nraw_events = false\n[[rollup]]\nname = \"plays\"\nbucket = \"hour\"\n\
                    dimensions = [\"file_id\", \"domain\"]\n";
        let c = Config::from_toml(text).expect("a rollup parses");
        assert_eq!(c.rollup[0].definition(), "bucket=hour dimensions=file_id,domain");
        c.validate().expect("rollups only, with a rollup");
        let none = Config::from_toml("[mysql]\nraw_events = false\n").unwrap();
        assert!(none.validate().unwrap_err().to_string().contains("mysql.raw_events"));
        let ch =
            Config::from_toml("[sink]\nkind = \"clickhouse\"\n[clickhouse]\nraw_events = false\n").unwrap();
        assert!(ch.validate().unwrap_err().to_string().contains("clickhouse.raw_events"));
        let ch_mysql_off = Config::from_toml("[sink]\nkind = \"clickhouse\"\n[mysql]\nraw_events = false\n");
        ch_mysql_off.unwrap().validate().expect("the MySQL key does not apply to ClickHouse");
        let bad = Config::from_toml("[[rollup]]\nname = \"x\"\nbucket = \"week\"\ndimensions = []\n");
        assert!(bad.unwrap_err().contains("week"));
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
