//! The `[server]` and `[log]` keys: listen address, cores, io_uring size, drain budget, the
//! flusher's nice value, and the log format.

use std::net::SocketAddr;

use serde::Deserialize;

use crate::invalid::InvalidKey;

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
    /// Nice value of the flusher thread, -20..=19 (below 0 needs CAP_SYS_NICE). Default 0.
    /// A positive value lets a core thread that shares a CPU with the flusher preempt it
    /// at once, instead of waiting out its delivery bursts.
    pub flusher_nice: i32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 34201)),
            cores: 0,
            pin_cores: true,
            uring_entries: 1024,
            shutdown_timeout_ms: 10_000,
            flusher_nice: 0,
        }
    }
}

impl ServerConfig {
    pub fn validate(&self) -> Result<(), InvalidKey> {
        if !(-20..=19).contains(&self.flusher_nice) {
            let message = format!("{} is not a nice value (-20..=19)", self.flusher_nice);
            return InvalidKey::err("server.flusher_nice", message);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("`{other}` is not one of text, json")),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (default; colours only when stderr is a terminal) or `json` (one object per
    /// line with `timestamp`, `level`, `target` and `fields`).
    pub format: LogFormat,
    /// tracing filter directive, overridden by `RUST_LOG`. Default `info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: "info".into() }
    }
}
