//! GeoIP country of a client IP, from a MaxMind DB file (`enrich.geoip_db`): GeoIP2/GeoLite2
//! Country or City (`country.iso_code`) or the ip-location-db layout (`country_code`).
//!
//! Where it runs: on the core, at intake, from the client IP after the trusted-proxy rule
//! (`http::dialect::client_context`), through the core's own [`CoreGeo`]; the country goes
//! into the WAL record (`cc`). So a replay stores the country the event was accepted with,
//! every sink gets it without a lookup of its own, and the flusher needs no GeoIP state. With
//! `enrich.geoip_db` unset a core holds no [`CoreGeo`] and the GET path does no more than
//! before (one `Option` test; see the `hot_path` bench and the README).
//!
//! Reload: [`GeoIp::refresh`] compares the file's identity (device, inode, size, mtime) with
//! the loaded one and, when it changed (a replace by rename, as `geoipupdate` does), opens the
//! new file and swaps it in, then bumps a generation counter. A watcher thread
//! ([`spawn_watcher`]) calls it every `enrich.geoip_refresh_ms`, so no core ever waits for a
//! load: a core reads the generation (one relaxed atomic load per lookup) and only when it
//! changed takes the lock, for an `Arc` clone. Lookups in flight keep the old database until
//! they finish; the replaced database is kept in a retired list until no core holds it and is
//! then freed by the watcher, so freeing megabytes never happens on a core either. A file that
//! fails to open keeps the previous database, and is counted and logged.
//!
//! Invariants:
//! - a country is exactly two ASCII upper-case letters (ISO 3166-1 alpha-2) or none; the
//!   database's text is never stored unchecked ([`Country::parse`]);
//! - at start a configured database that cannot be read is an error (the operator asked for
//!   countries); later a bad file never replaces a good one;
//! - the lock guards an `Arc` swap only: nobody holds it across a lookup or a load.

use std::cell::{Cell, RefCell};
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use maxminddb::{MaxMindDbError, PathElement, Reader};

pub use crate::country::Country;

/// Why a database cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a MaxMind DB: {source}")]
    Format { path: PathBuf, source: MaxMindDbError },
    #[error("cannot start the geoip-watch thread: {0}")]
    Watcher(std::io::Error),
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

/// The reloading database of one process, shared by the cores (lookups through their
/// [`CoreGeo`]), the watcher (reloads) and `/debug/geoip` (status).
#[derive(Debug)]
pub struct GeoIp {
    path: PathBuf,
    current: Mutex<Loaded>,
    /// Bumped after every swap; a core compares it with the generation of the `Arc` it holds.
    generation: AtomicU64,
    /// Replaced databases some core may still hold; freed by the watcher once none does.
    retired: Mutex<Vec<Arc<GeoDb>>>,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
}

#[derive(Debug)]
struct Loaded {
    db: Arc<GeoDb>,
    generation: u64,
    stamp: FileStamp,
    last_error: Option<String>,
}

/// Counters and state for `/debug/geoip`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GeoStatus {
    #[serde(flatten)]
    pub info: DbInfo,
    pub reloads: u64,
    pub reload_failures: u64,
    /// Replaced databases still held by a core that has looked nothing up since.
    pub retired_held: usize,
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
            current: Mutex::new(Loaded { db, generation: 0, stamp, last_error: None }),
            generation: AtomicU64::new(0),
            retired: Mutex::new(Vec::new()),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Loaded> {
        // A panic while holding the lock cannot leave `Loaded` half-written (one assignment).
        self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_retired(&self) -> MutexGuard<'_, Vec<Arc<GeoDb>>> {
        self.retired.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The database to use now and its generation; the caller keeps it until the generation
    /// moves on.
    pub fn current(&self) -> (Arc<GeoDb>, u64) {
        let loaded = self.lock();
        (loaded.db.clone(), loaded.generation)
    }

    /// The generation of the loaded database: a relaxed load, the whole cost of a lookup's
    /// check for a reload.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Frees retired databases no core holds any more, then reloads the file if it changed
    /// since it was loaded. Returns whether it swapped.
    pub fn refresh(&self) -> bool {
        self.lock_retired().retain(|db| Arc::strong_count(db) > 1);
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
                let generation = self.generation() + 1;
                let loaded = Loaded { db: Arc::new(db), generation, stamp: now, last_error: None };
                let old = std::mem::replace(&mut *self.lock(), loaded);
                self.generation.store(generation, Ordering::Relaxed);
                self.lock_retired().push(old.db);
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
        let retired_held = self.lock_retired().iter().filter(|db| Arc::strong_count(db) > 1).count();
        let loaded = self.lock();
        GeoStatus {
            info: loaded.db.info.clone(),
            reloads: self.reloads.load(Ordering::Relaxed),
            reload_failures: self.reload_failures.load(Ordering::Relaxed),
            retired_held,
            last_error: loaded.last_error.clone(),
        }
    }
}

/// One core's view of the [`GeoIp`]: the database it last took and its generation. Lives on
/// that core only (`Cell`/`RefCell`, never borrowed across an await).
#[derive(Debug, Clone)]
pub struct CoreGeo {
    geo: Arc<GeoIp>,
    db: RefCell<Arc<GeoDb>>,
    generation: Cell<u64>,
}

impl CoreGeo {
    pub fn new(geo: Arc<GeoIp>) -> CoreGeo {
        let (db, generation) = geo.current();
        CoreGeo { geo, db: RefCell::new(db), generation: Cell::new(generation) }
    }

    /// The country of `ip` in the newest database this core has seen; takes the newer one
    /// first if the watcher swapped it in since (a lock held for an `Arc` clone).
    pub fn country(&self, ip: IpAddr) -> Option<Country> {
        if self.geo.generation() != self.generation.get() {
            let (db, generation) = self.geo.current();
            *self.db.borrow_mut() = db;
            self.generation.set(generation);
        }
        self.db.borrow().country(ip)
    }

    /// The shared database, for `/debug/geoip`.
    pub fn shared(&self) -> &GeoIp {
        &self.geo
    }
}

/// The real test database (`scripts/geoip-test-db.sh` fetches it once and prints its path).
#[cfg(test)]
pub(crate) fn test_db() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/geoip-test-db.sh");
    let out = std::process::Command::new(script).output().expect("run scripts/geoip-test-db.sh");
    assert!(out.status.success(), "geoip-test-db.sh: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).expect("a path").trim())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (first, _) = geo.current();
        assert!(!geo.refresh(), "unchanged file: no reload");
        // A bad file renamed over it is refused, the old database stays.
        let tmp = dir.path().join("country.mmdb.tmp");
        fs::write(&tmp, b"garbage").unwrap();
        fs::rename(&tmp, &path).unwrap();
        assert!(!geo.refresh());
        let status = geo.status();
        assert_eq!((status.reloads, status.reload_failures), (0, 1));
        assert!(status.last_error.is_some());
        assert!(Arc::ptr_eq(&first, &geo.current().0));
        assert!(!geo.refresh(), "the same bad file is not tried twice");
        // A good file renamed over it is loaded; the old Arc stays usable.
        fs::copy(test_db(), &tmp).unwrap();
        fs::rename(&tmp, &path).unwrap();
        assert!(geo.refresh());
        assert!(!Arc::ptr_eq(&first, &geo.current().0));
        assert_eq!(first.country(ip("8.8.8.8")), geo.current().0.country(ip("8.8.8.8")));
        let status = geo.status();
        assert_eq!((status.reloads, status.last_error), (1, None));
    }

    #[test]
    fn a_core_moves_to_the_new_database_and_the_old_one_is_freed_off_the_core() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("country.mmdb");
        fs::copy(test_db(), &path).unwrap();
        let geo = Arc::new(GeoIp::open(&path).unwrap());
        let core = CoreGeo::new(geo.clone());
        assert_eq!(core.country(ip("8.8.8.8")), Country::parse("US"));
        let old = Arc::downgrade(&geo.current().0);
        let tmp = dir.path().join("new.mmdb");
        fs::copy(test_db(), &tmp).unwrap();
        fs::rename(&tmp, &path).unwrap();
        assert!(geo.refresh());
        assert_eq!(geo.status().retired_held, 1, "the core still holds the old database");
        assert_eq!(core.country(ip("8.8.8.8")), Country::parse("US"));
        assert_eq!(geo.status().retired_held, 0, "the core took the new one");
        assert!(old.upgrade().is_some(), "but did not free the old one itself");
        assert!(!geo.refresh());
        assert!(old.upgrade().is_none(), "the watcher's next pass freed it");
    }
}
