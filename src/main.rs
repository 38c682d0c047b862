//! `player-stat-collector`: parses the command line, loads the config, sets up logging and
//! hands over to the library. Only wiring lives here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use psc::config::{Config, LogFormat};
use psc::cursor::CursorError;
use psc::ingest::enrich::Enrichment;
use psc::server::{self, signals};
use psc::wal::identity::{self, IdentityError, LaneId};
use psc::wal::Position;

#[derive(Parser)]
#[command(version, about = "Durable beacon collector: HTTP -> per-core WAL -> MySQL, exactly once")]
struct Cli {
    /// Configuration file (TOML). Every key has a default; PSC_* variables override keys.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve beacons (the default).
    Serve,
    /// Apply the database migrations, or with sink.kind = "clickhouse" create the ClickHouse
    /// database and tables on every shard (idempotent; serving does it too) and exit.
    Migrate,
    /// WAL tools: `inspect` and `verify` only read (safe while the collector runs).
    Wal {
        #[command(subcommand)]
        action: WalAction,
    },
}

#[derive(Subcommand)]
enum WalAction {
    /// Per core: segments with record counts, committed cursor, backlog, corrupt records.
    Inspect,
    /// Like inspect, but exits with status 1 if a record is corrupt (a torn tail of the
    /// newest segment is reported, not counted: recovery cuts it).
    Verify,
    /// Makes the WAL in wal.dir this node's after a hostname or ingest.node_id change: keeps
    /// its WAL id, so its cursors carry over. Refused while a collector runs on it.
    Adopt,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("player-stat-collector: {err}");
            return ExitCode::from(2);
        }
    };
    if matches!(cli.command, None | Some(Command::Serve)) {
        // Before any thread starts (the log writer is one): every thread inherits the mask,
        // so SIGTERM/SIGINT only ever reach the sigwait loop and never kill a thread.
        if let Err(err) = signals::block_shutdown_signals() {
            eprintln!("player-stat-collector: blocking shutdown signals: {err}");
            return ExitCode::FAILURE;
        }
    }
    let _log_guard = init_logging(&config);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config),
        Command::Migrate => migrate(&config),
        Command::Wal { action } => wal_tool(&config, action),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("player-stat-collector: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(mut config: Config) -> anyhow::Result<ExitCode> {
    // Before the cores start: they take the GeoIP database from their copy of the config.
    let _enrichment = Enrichment::start(&mut config.enrich).context("enrich.geoip_db")?;
    let running = server::start(config).context("starting the collector")?;
    if let Some(path) = std::env::var_os("PSC_PORT_FILE") {
        write_port_file(Path::new(&path), running.local_addr()).context("writing PSC_PORT_FILE")?;
    }
    // WAL recovery ran and every listener is bound: events are accepted from now on.
    notify_systemd("READY=1");
    loop {
        if let Some(sig) = signals::wait_for_shutdown_signal(Duration::from_millis(500)) {
            tracing::info!(signal = sig, "draining; a second signal exits at once");
            notify_systemd("STOPPING=1");
            break;
        }
        if running.any_core_finished() {
            tracing::error!("a core thread stopped unexpectedly; shutting down");
            running.shutdown();
            return Ok(ExitCode::FAILURE);
        }
    }
    // A second signal ends the process at once; the WAL already holds every acked event.
    std::thread::spawn(|| loop {
        if signals::wait_for_shutdown_signal(Duration::from_secs(3600)).is_some() {
            eprintln!("player-stat-collector: second signal, exiting now");
            std::process::exit(130);
        }
    });
    let stopped = running.shutdown();
    tracing::info!(?stopped, "stopped");
    Ok(match stopped {
        server::Stopped::Drained => ExitCode::SUCCESS,
        // EX_TEMPFAIL: events are left in the WAL for the next start (said in the log).
        server::Stopped::EventsLeft => ExitCode::from(75),
        server::Stopped::Failed => ExitCode::FAILURE,
    })
}

/// Tells systemd about a state change; failing to is logged, never fatal.
fn notify_systemd(state: &str) {
    if let Err(err) = server::sd_notify::notify(state) {
        tracing::warn!(%err, state, "sd_notify failed");
    }
}

fn migrate(config: &Config) -> anyhow::Result<ExitCode> {
    if config.sink.kind == psc::config::SinkKind::Clickhouse {
        let done = psc::clickhouse::migrate_blocking(config).context("creating the ClickHouse schema")?;
        done.iter().for_each(|line| println!("{line}"));
        return Ok(ExitCode::SUCCESS);
    }
    let applied = psc::mysql::migrate_blocking(config).context("applying migrations")?;
    if applied.is_empty() {
        println!("schema is up to date");
    }
    for name in applied {
        println!("applied {name}");
    }
    Ok(ExitCode::SUCCESS)
}

fn wal_tool(config: &Config, action: WalAction) -> anyhow::Result<ExitCode> {
    let dir = &config.wal.dir;
    if matches!(action, WalAction::Adopt) {
        return wal_adopt(config);
    }
    let committed =
        committed_lanes(dir).with_context(|| format!("reading commit.meta in {}", dir.display()))?;
    let found = psc::wal::inspect::inspect(dir, &committed)
        .with_context(|| format!("inspecting {}", dir.display()))?;
    print!("{}", psc::wal::inspect::render(&found, dir));
    let corrupt = found.corrupt_ranges() > 0;
    Ok(if matches!(action, WalAction::Verify) && corrupt { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Each lane's cursor in `commit.meta` (the least over its shards); none without IDENTITY.
fn committed_lanes(dir: &Path) -> anyhow::Result<Vec<(LaneId, Position)>> {
    let Some(identity) = identity::read_identity(dir)? else {
        return Ok(Vec::new());
    };
    let Some(meta) = psc::cursor::read_commit_meta(dir, &identity)? else {
        return Ok(Vec::new());
    };
    let mut lanes: Vec<LaneId> = meta.cursors().iter().map(|c| c.lane).collect();
    lanes.dedup();
    Ok(lanes.into_iter().filter_map(|lane| Some((lane, meta.lane_floor(lane)?))).collect())
}

/// `wal adopt`: under the WAL's lock, upgrades a WAL of the previous version if needed (as a
/// start would), then rewrites its node id. Prints what it did.
fn wal_adopt(config: &Config) -> anyhow::Result<ExitCode> {
    let dir = &config.wal.dir;
    let _lock = psc::server::lock::lock_wal_dir(dir)
        .with_context(|| format!("locking {} (is a collector running on it?)", dir.display()))?;
    if identity::read_identity(dir)?.is_none() && !identity::holds_wal_data(dir)? {
        anyhow::bail!("{} holds no WAL: nothing to adopt", dir.display());
    }
    let hostname = psc::config::hostname();
    let node = &config.ingest.node_id;
    match psc::cursor::open_wal_identity(dir, node, &hostname) {
        Ok(_) | Err(CursorError::Identity(IdentityError::NodeMismatch { .. })) => {}
        Err(e) => return Err(e).context("opening the WAL's identity"),
    }
    let adopted = identity::adopt(dir, node, &hostname)?;
    let (before, now) = (&adopted.previous, &adopted.now);
    if before == now {
        println!(
            "WAL {} (wal id {}) already belongs to node {}: nothing to do",
            dir.display(),
            now.wal,
            now.node
        );
    } else {
        println!(
            "WAL {} (wal id {}) adopted: node {} -> {}; its cursors are keyed by the wal id and carry over",
            dir.display(),
            now.wal,
            before.node,
            now.node
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `addr` to `path` atomically (tests start the server on port 0 and read it back).
fn write_port_file(path: &Path, addr: std::net::SocketAddr) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, path)
}

/// Logs go through a non-blocking writer so a slow stderr never stalls a core. Colours only
/// on a terminal: under systemd or piped to a file, escape codes would garble the journal.
fn init_logging(config: &Config) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    guard
}
