//! The `[enrich]` keys and the running GeoIP enrichment: the database opened once per process
//! before the cores start, shared by every core (each through its own
//! [`CoreGeo`](super::geoip::CoreGeo)), and the watcher thread that reloads it.
//!
//! Lifecycle: `main` calls [`Enrichment::start`] on the loaded config before the server
//! starts. It opens `enrich.geoip_db` (an unreadable file is an error: the operator asked
//! for countries), puts the shared handle into the config ([`EnrichConfig::opened`]), so each
//! core's copy of the config carries it to `http::dialect::Dialects`, and starts the watcher.
//! Dropping the [`Enrichment`] stops the watcher (within 100 ms) and joins it.
//!
//! Invariant: the cores never open, stat or free a database file; the watcher does all of it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Deserialize;

use super::geoip::{GeoError, GeoIp};
use crate::invalid::InvalidKey;

/// Shortest `enrich.geoip_refresh_ms`: a stat every 100 ms already costs nothing noticeable.
const REFRESH_MIN_MS: u64 = 100;
/// How often the watcher looks at its stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrichConfig {
    /// MaxMind DB file (GeoIP2/GeoLite2 Country or City, or ip-location-db's country
    /// databases) giving `events.country` from the client IP. Default empty: no GeoIP, every
    /// country is NULL and a core does no lookup.
    pub geoip_db: PathBuf,
    /// How often the file is checked for a replacement (a rename over it, as `geoipupdate`
    /// does) and reloaded, off the cores. Default 60000 ms; at least 100.
    pub geoip_refresh_ms: u64,
    /// Not a key: the database [`Enrichment::start`] opened, shared by every copy of the
    /// config. `None` while nobody opened it (GeoIP off, or a config that never went through
    /// `main`, as in unit tests).
    #[serde(skip)]
    pub opened: Option<Arc<GeoIp>>,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        Self { geoip_db: PathBuf::new(), geoip_refresh_ms: 60_000, opened: None }
    }
}

impl EnrichConfig {
    /// Whether `enrich.geoip_db` is set.
    pub fn geoip_enabled(&self) -> bool {
        !self.geoip_db.as_os_str().is_empty()
    }

    /// Checks the `[enrich]` keys (the file itself is opened by [`Enrichment::start`]).
    pub fn validate(&self) -> Result<(), InvalidKey> {
        if self.geoip_refresh_ms < REFRESH_MIN_MS {
            return InvalidKey::err("enrich.geoip_refresh_ms", format!("must be at least {REFRESH_MIN_MS}"));
        }
        Ok(())
    }
}

/// The running enrichment of one process; dropping it stops the watcher.
#[derive(Debug)]
pub struct Enrichment {
    watcher: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Enrichment {
    /// Opens the configured database into `config.opened` and starts its watcher; without
    /// `enrich.geoip_db`, does nothing.
    pub fn start(config: &mut EnrichConfig) -> Result<Enrichment, GeoError> {
        if !config.geoip_enabled() {
            return Ok(Enrichment { watcher: None });
        }
        let geo = Arc::new(GeoIp::open(&config.geoip_db)?);
        let info = geo.status().info;
        tracing::info!(path = %info.path, database_type = %info.database_type,
            build_epoch_s = info.build_epoch_s, "GeoIP database loaded");
        let stop = Arc::new(AtomicBool::new(false));
        let interval = Duration::from_millis(config.geoip_refresh_ms);
        let handle = spawn_watcher(geo.clone(), interval, stop.clone()).map_err(GeoError::Watcher)?;
        config.opened = Some(geo);
        Ok(Enrichment { watcher: Some((stop, handle)) })
    }
}

impl Drop for Enrichment {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.watcher.take() {
            stop.store(true, Ordering::Relaxed);
            // A watcher that panicked has nothing left to clean up.
            let _ = handle.join();
        }
    }
}

/// Calls [`GeoIp::refresh`] every `interval` until `stop` says so (checked every 100 ms, so
/// shutdown never waits for a whole interval).
pub fn spawn_watcher(
    geo: Arc<GeoIp>,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("geoip-watch".into()).spawn(move || {
        let step = STOP_CHECK.min(interval);
        let mut waited = Duration::ZERO;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(step);
            waited += step;
            if waited >= interval {
                waited = Duration::ZERO;
                geo.refresh();
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::geoip::test_db;

    #[test]
    fn off_by_default_and_refresh_is_bounded() {
        let mut c = EnrichConfig::default();
        assert!(!c.geoip_enabled());
        let running = Enrichment::start(&mut c).unwrap();
        assert!(c.opened.is_none() && running.watcher.is_none());
        c.geoip_refresh_ms = 99;
        assert_eq!(c.validate().unwrap_err().key, "enrich.geoip_refresh_ms");
    }

    #[test]
    fn start_opens_or_fails_naming_the_file() {
        let mut c = EnrichConfig { geoip_db: "/nonexistent/country.mmdb".into(), ..EnrichConfig::default() };
        let err = Enrichment::start(&mut c).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/country.mmdb"), "{err}");
        c.geoip_db = test_db();
        let running = Enrichment::start(&mut c).unwrap();
        let geo = c.opened.clone().expect("opened");
        assert!(geo.status().info.node_count > 0);
        let copy = c.clone();
        assert!(Arc::ptr_eq(copy.opened.as_ref().unwrap(), &geo), "every copy shares one database");
        drop(running);
    }

    #[test]
    fn watcher_reloads_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("country.mmdb");
        std::fs::copy(test_db(), &path).unwrap();
        let geo = Arc::new(GeoIp::open(&path).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = spawn_watcher(geo.clone(), Duration::from_millis(20), stop.clone()).unwrap();
        let tmp = dir.path().join("new.mmdb");
        std::fs::copy(test_db(), &tmp).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while geo.status().reloads == 0 {
            assert!(std::time::Instant::now() < deadline, "watcher did not reload");
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        watcher.join().unwrap();
    }
}
