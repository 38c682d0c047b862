//! GeoIP country of a client IP, from a MaxMind DB file (`enrich.geoip_db`): GeoIP2/GeoLite2
//! Country or City (`country.iso_code`) or the ip-location-db layout (`country_code`).
//!
//! Where it runs: in the flusher, once per row, from the client IP already stored in the WAL
//! record (after the trusted-proxy rule). Never on a core: a lookup costs more than the whole
//! validation of a GET (see `benches/geoip.rs` and the README), and the IP is in the record
//! anyway. So the cores hold no GeoIP state at all, and the default GET path is unchanged.
//!
//! Reload: [`GeoIp::refresh`] compares the file's identity (device, inode, size, mtime) with
//! the loaded one and, when it changed (a replace by rename, as `geoipupdate` does), opens the
//! new file and swaps it in; lookups in flight keep the old database (an `Arc`) until they
//! finish. A watcher thread ([`spawn_watcher`]) calls it every `enrich.geoip_refresh_ms`, so
//! neither the cores nor the flusher ever wait for a load. A file that fails to open keeps the
//! previous database, and is counted and logged.
//!
//! Invariants:
//! - a country is exactly two ASCII upper-case letters (ISO 3166-1 alpha-2) or none; the
//!   database's text is never stored unchecked;
//! - at start a configured database that cannot be read is an error (the operator asked for
//!   countries); later a bad file never replaces a good one.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use maxminddb::{MaxMindDbError, PathElement, Reader};

/// An ISO 3166-1 alpha-2 code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Country([u8; 2]);

impl Country {
    /// Two ASCII letters, upper-cased; anything else is `None`.
    pub fn parse(code: &str) -> Option<Country> {
        match code.as_bytes() {
            &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Country([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        // Two ASCII letters by construction.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }

    pub fn bytes(&self) -> [u8; 2] {
        self.0
    }
}

/// Why a database cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a MaxMind DB: {source}")]
    Format { path: PathBuf, source: MaxMindDbError },
}

/// What `/debug/geoip` shows of the loaded database.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DbInfo {
    pub path: String,
    /// `database_type` from the metadata, e.g. `GeoLite2-Country`.
    pub database_type: String,
    /// `build_epoch` from the metadata, Unix seconds.
    pub build_epoch_s: u64,
    /// When this process loaded it, Unix ms.
    pub loaded_at_ms: u64,
    pub ip_version: u16,
    pub node_count: u32,
    pub file_bytes: u64,
}

/// One loaded database.
pub struct GeoDb {
    reader: Reader<Vec<u8>>,
    info: DbInfo,
}

impl std::fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoDb").field("info", &self.info).finish_non_exhaustive()
    }
}

const ISO_CODE: &[PathElement<'static>] = &[PathElement::Key("country"), PathElement::Key("iso_code")];
const COUNTRY_CODE: &[PathElement<'static>] = &[PathElement::Key("country_code")];

impl GeoDb {
    /// Reads and checks the file at `path`.
    pub fn open(path: &Path) -> Result<GeoDb, GeoError> {
        let bytes = fs::read(path).map_err(|source| GeoError::Read { path: path.to_owned(), source })?;
        let file_bytes = bytes.len() as u64;
        let reader = Reader::from_source(bytes)
            .map_err(|source| GeoError::Format { path: path.to_owned(), source })?;
        let m = reader.metadata();
        let info = DbInfo {
            path: path.display().to_string(),
            database_type: m.database_type.clone(),
            build_epoch_s: m.build_epoch,
            loaded_at_ms: crate::clock::unix_ms(),
            ip_version: m.ip_version,
            node_count: m.node_count,
            file_bytes,
        };
        Ok(GeoDb { reader, info })
    }

    pub fn info(&self) -> &DbInfo {
        &self.info
    }

    /// The country of `ip`, if the database has one for it. An IPv4-mapped IPv6 address is
    /// looked up as the IPv4 address it maps.
    pub fn country(&self, ip: IpAddr) -> Option<Country> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let found = self.reader.lookup(ip).ok()?;
        if !found.has_data() {
            return None;
        }
        let code: Option<&str> = match found.decode_path(ISO_CODE) {
            Ok(Some(code)) => Some(code),
            _ => found.decode_path(COUNTRY_CODE).ok().flatten(),
        };
        code.and_then(Country::parse)
    }
}

/// A file's identity: a replace by rename changes the inode, an edit in place the size or
/// the mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> std::io::Result<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path)?;
    Ok(FileStamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

/// The reloading database of one process, shared by the flusher (lookups), the watcher
/// (reloads) and `/debug/geoip` (status). Its lock guards an `Arc` swap only: nobody holds it
/// across a lookup or a load.
#[derive(Debug)]
pub struct GeoIp {
    path: PathBuf,
    current: Mutex<Loaded>,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
}

#[derive(Debug)]
struct Loaded {
    db: Arc<GeoDb>,
    stamp: FileStamp,
    last_error: Option<String>,
}

/// Counters and state for `/metrics` and `/debug/geoip`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GeoStatus {
    #[serde(flatten)]
    pub info: DbInfo,
    pub reloads: u64,
    pub reload_failures: u64,
    /// Why the newest file was not loaded, if it was not.
    pub last_error: Option<String>,
}

impl GeoIp {
    /// Loads `path`; an unreadable or invalid file is an error.
    pub fn open(path: &Path) -> Result<GeoIp, GeoError> {
        let stamp = stamp(path).map_err(|source| GeoError::Read { path: path.to_owned(), source })?;
        let db = Arc::new(GeoDb::open(path)?);
        Ok(GeoIp {
            path: path.to_owned(),
            current: Mutex::new(Loaded { db, stamp, last_error: None }),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Loaded> {
        // A panic while holding the lock cannot leave `Loaded` half-written (one assignment).
        self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The database to use now; the caller keeps it for a whole batch.
    pub fn current(&self) -> Arc<GeoDb> {
        self.lock().db.clone()
    }

    /// Reloads the file if it changed since it was loaded. Returns whether it swapped.
    pub fn refresh(&self) -> bool {
        let now = match stamp(&self.path) {
            Ok(now) => now,
            Err(e) => return self.failed(format!("cannot stat {}: {e}", self.path.display())),
        };
        if self.lock().stamp == now {
            return false;
        }
        match GeoDb::open(&self.path) {
            Ok(db) => {
                tracing::info!(path = %self.path.display(), database_type = %db.info.database_type,
                    build_epoch_s = db.info.build_epoch_s, "GeoIP database reloaded");
                *self.lock() = Loaded { db: Arc::new(db), stamp: now, last_error: None };
                self.reloads.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                // Not retried until the file changes again: a bad file costs one load.
                self.lock().stamp = now;
                self.failed(e.to_string())
            }
        }
    }

    fn failed(&self, error: String) -> bool {
        tracing::warn!(path = %self.path.display(), %error, "GeoIP database not reloaded; keeping the loaded one");
        self.reload_failures.fetch_add(1, Ordering::Relaxed);
        self.lock().last_error = Some(error);
        false
    }

    pub fn status(&self) -> GeoStatus {
        let loaded = self.lock();
        GeoStatus {
            info: loaded.db.info.clone(),
            reloads: self.reloads.load(Ordering::Relaxed),
            reload_failures: self.reload_failures.load(Ordering::Relaxed),
            last_error: loaded.last_error.clone(),
        }
    }
}

/// Calls [`GeoIp::refresh`] every `interval` until `stop` says so (checked every 100 ms, so
/// shutdown never waits for a whole interval).
pub fn spawn_watcher(
    geo: Arc<GeoIp>,
    interval: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    const TICK: Duration = Duration::from_millis(100);
    std::thread::Builder::new().name("geoip-watch".into()).spawn(move || {
        let mut waited = Duration::ZERO;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(TICK.min(interval));
            waited += TICK.min(interval);
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

    /// The real test database (`scripts/geoip-test-db.sh` fetches it once).
    pub(crate) fn test_db() -> PathBuf {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/geoip-test-db.sh");
        let out = std::process::Command::new(script).output().expect("run scripts/geoip-test-db.sh");
        assert!(out.status.success(), "geoip-test-db.sh: {}", String::from_utf8_lossy(&out.stderr));
        PathBuf::from(String::from_utf8(out.stdout).expect("a path").trim())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn countries_of_known_addresses() {
        let db = GeoDb::open(&test_db()).unwrap();
        let code = |s: &str| db.country(ip(s)).map(|c| c.as_str().to_owned());
        assert_eq!(code("8.8.8.8").as_deref(), Some("US"));
        assert_eq!(code("::ffff:8.8.8.8").as_deref(), Some("US"), "v4-mapped");
        assert_eq!(code("2001:4860:4860::8888").as_deref(), Some("US"));
        assert_eq!(code("127.0.0.1"), None, "loopback has no country");
        assert_eq!(code("10.1.2.3"), None);
        let info = db.info();
        assert!(info.build_epoch_s > 1_600_000_000, "{info:?}");
        assert!(!info.database_type.is_empty() && info.node_count > 0 && info.file_bytes > 0);
    }

    #[test]
    fn country_codes_are_checked() {
        assert_eq!(Country::parse("us").map(|c| c.bytes()), Some(*b"US"));
        assert_eq!(Country::parse("GB").map(|c| c.as_str().to_owned()).as_deref(), Some("GB"));
        for bad in ["", "U", "USA", "1A", "é", "U-"] {
            assert_eq!(Country::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn open_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.mmdb");
        assert!(matches!(GeoIp::open(&missing), Err(GeoError::Read { .. })));
        let junk = dir.path().join("junk.mmdb");
        fs::write(&junk, b"not a database").unwrap();
        let err = GeoDb::open(&junk).unwrap_err();
        assert!(err.to_string().contains("junk.mmdb"), "{err}");
    }

    #[test]
    fn reload_on_rename_keeps_old_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("country.mmdb");
        fs::copy(test_db(), &path).unwrap();
        let geo = GeoIp::open(&path).unwrap();
        let first = geo.current();
        assert!(!geo.refresh(), "unchanged file: no reload");
        // A bad file renamed over it is refused, the old database stays.
        let tmp = dir.path().join("country.mmdb.tmp");
        fs::write(&tmp, b"garbage").unwrap();
        fs::rename(&tmp, &path).unwrap();
        assert!(!geo.refresh());
        let status = geo.status();
        assert_eq!((status.reloads, status.reload_failures), (0, 1));
        assert!(status.last_error.is_some());
        assert!(Arc::ptr_eq(&first, &geo.current()));
        assert!(!geo.refresh(), "the same bad file is not tried twice");
        // A good file renamed over it is loaded; the old Arc stays usable.
        fs::copy(test_db(), &tmp).unwrap();
        fs::rename(&tmp, &path).unwrap();
        assert!(geo.refresh());
        assert!(!Arc::ptr_eq(&first, &geo.current()));
        assert_eq!(first.country(ip("8.8.8.8")), geo.current().country(ip("8.8.8.8")));
        let status = geo.status();
        assert_eq!((status.reloads, status.last_error), (1, None));
    }

    #[test]
    fn watcher_reloads_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("country.mmdb");
        fs::copy(test_db(), &path).unwrap();
        let geo = Arc::new(GeoIp::open(&path).unwrap());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = spawn_watcher(geo.clone(), Duration::from_millis(20), stop.clone()).unwrap();
        let tmp = dir.path().join("new.mmdb");
        fs::copy(test_db(), &tmp).unwrap();
        fs::rename(&tmp, &path).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while geo.status().reloads == 0 {
            assert!(std::time::Instant::now() < deadline, "watcher did not reload");
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        watcher.join().unwrap();
    }
}
