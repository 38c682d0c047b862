"""The back-end half of `make load-test`: what the collector delivers into MariaDB, per
delivery mode, and MariaDB's own ceilings for the same rows with the same parallelism.
Called by scripts/load_test.py after its HTTP phase (entry points `collector_backend` and
`mariadb_ceiling`); stdlib only.

Phases:
A. Replay: fresh WAL, MySQL unreachable, a pipelined fill of BACKLOG events, a restart still
   unreachable -> the collector's logged WAL read rate.
B. Modes (INSERT and LOAD DATA, each with 1 and N connections, and rollups only with N), each
   on an empty database and a fresh WAL, N = PSC_BENCH_LANES lanes (server.cores):
   1. overload: POST batches at OVERLOAD_RATE for OVERLOAD_S (paced by scripts/wrk/
      paced_batches.lua, realistic keys: FILES files, DOMAINS domains, 4 events), then no
      load: the *drain rate* is the rows/s committed while that backlog empties;
   2. sustained: the same traffic at a fixed 0.9 x drain for SUSTAIN_S; the commit lag
      (accepted - flushed, from /stats every second) must stay bounded: slope over the last
      50 s under 1 % of the rate per second and the last 10 s under 2 s of traffic. With
      PSC_BENCH_PROBES=2 a second probe tries 1.0 x drain (if 0.9 held) or 0.7 x (if not).
      The sustained rate is the highest offered rate (as wrk achieved it) that held.
   Modes the binary cannot run (no `mysql.connections`: the v1 flusher) are reported skipped.
D. (scripts/load_clickhouse.py) ClickHouse: one WAL backlog drained into ClickHouse and into
   MariaDB, beside ClickHouse's own TSV insert of the same rows; its rows join this report.
C. Ceilings: N = 1 and N = lanes concurrent `mariadb` sessions, each with its share of the
   same rows: 5000-row multi-row INSERTs, and LOAD DATA LOCAL of TSV in the collector's
   format, into a scratch copy of `events`.

The offered rate is open loop in effect: the collector acknowledges an event once it is in
its WAL, never waiting for MySQL, so how fast MySQL takes rows cannot slow wrk down.
"""

import json
import re
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from load_clickhouse import clickhouse_ratio_rows, clickhouse_rows
from load_common import (CEILING_DIR, COLLECTOR_DIR, MYSQL_DIR, OWNED, REPO, WAL_DIR, WRK_CPU,
                         BINARY, Collector, cpu_ticks, env_int, fmt_rate, fmt_ratio, free_port,
                         log, parse_wrk, peak_rss_kib, read_pid, ratio, run_wrk, tail, wait_until, CLK_TCK)

BACKLOG_EVENTS = env_int("PSC_BENCH_BACKLOG", 5_000_000)
FILL_MAX_S = env_int("PSC_BENCH_FILL_MAX_S", 40)
REPLAY_WAIT_S = 30
CEILING_ROWS_WITHOUT_COLLECTOR = env_int("PSC_BENCH_CEILING_ROWS", 2_000_000)
INSERT_BATCH_ROWS = 5000
LANES = env_int("PSC_BENCH_LANES", 2)
OVERLOAD_RATE = env_int("PSC_BENCH_OVERLOAD_RATE", 400_000)
OVERLOAD_S = env_int("PSC_BENCH_OVERLOAD_S", 8)
SUSTAIN_S = env_int("PSC_BENCH_SUSTAIN_S", 60)
PROBES = env_int("PSC_BENCH_PROBES", 1)
SETTLE_MAX_S = env_int("PSC_BENCH_SETTLE_MAX_S", 150)
POST_BATCH = 100
FILES = 3000
DOMAINS = 200
PACED_LUA = REPO / "scripts" / "wrk" / "paced_batches.lua"
ROLLUP_TOML = ('[[rollup]]\nname = "plays"\nbucket = "minute"\n'
               'dimensions = ["event", "domain", "file_id"]\n')

TARGET_DRAIN_RATIO = 0.9
TARGET_REPLAY_EVENTS_S = 3_000_000
TARGET_ROLLUP_VS_FRONT = 1.0
TARGET_RSS_MIB = 64


@dataclass
class Mode:
    name: str
    method: str
    connections: int  # 0: one per lane
    rollups_only: bool = False


MODES = [Mode("INSERT, 1 connection", "insert", 1), Mode("INSERT, N connections", "insert", 0),
         Mode("LOAD DATA, 1 connection", "load_data", 1),
         Mode("LOAD DATA, N connections", "load_data", 0),
         Mode("rollups only, N connections", "load_data", 0, rollups_only=True)]


@dataclass
class ModeResult:
    mode: Mode
    skipped: str = None
    drain_rows_s: float = None
    overload_offered: float = None
    probes: list = field(default_factory=list)  # (offered events/s, bounded, last-10-s lag)
    rss_mib: float = None
    mysqld_cpu_pct: float = None
    # The overload left no backlog: the drain is at least the offered rate, not measured.
    front_limited: bool = False

    @property
    def sustained(self):
        held = [offered for offered, bounded, _ in self.probes if bounded]
        return max(held) if held else None


@dataclass
class Backend:
    notes: list = field(default_factory=list)
    backlog_events: int = None
    fill_rps: float = None
    replay_line: str = None
    replay_events_s: float = None
    drain_rows: int = None
    front_pipelined_rps: float = None
    modes: list = field(default_factory=list)
    ceiling_rows: int = None
    ceilings: dict = field(default_factory=dict)  # (method, sessions) -> rows/s
    clickhouse: object = None  # load_clickhouse.ClickhouseResult


# ---------------------------------------------------------------- phase A: replay


def fill_backlog(collector, best_pipelined_rps, backend):
    """Pipelined wrk run against a collector whose MySQL is unreachable: a pure WAL backlog."""
    estimate_s = BACKLOG_EVENTS / best_pipelined_rps * 1.1 if best_pipelined_rps else FILL_MAX_S
    duration_s = max(2, min(FILL_MAX_S, int(estimate_s) + 1))
    result = run_wrk(collector.port, 256, "pipelined", duration_s, COLLECTOR_DIR / "wrk.log")
    backend.backlog_events = result.acked
    backend.fill_rps = result.rps
    log(f"backlog fill: {result.acked:,} events acked in {result.duration_s:.1f} s "
        f"({result.rps:,.0f} req/s, non2xx={result.non2xx}, sockerr={result.socket_errors})")


# `WAL replay done events=N seconds=S events_per_sec=R read_events_per_sec=W` (text or JSON).
REPLAY_LINE = re.compile(r"^.*replay.*(events/s|events_per_sec).*$", re.M | re.I)
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
READ_RATE = re.compile(r"read_events_per_sec\W*([0-9][0-9_,.]*)")


def find_replay(log_text):
    """(line, WAL read events/s or None) of the collector's replay log line, or None."""
    found = REPLAY_LINE.search(ANSI_ESCAPE.sub("", log_text))
    if not found:
        return None
    line = found.group(0).strip().replace("|", "/")  # a '|' would split a Markdown cell
    read = READ_RATE.search(line)
    return line, float(read.group(1).replace(",", "").replace("_", "")) if read else None


def replay_phase(mysql_url, best_pipelined_rps, backend):
    subprocess.run(["rm", "-rf", str(WAL_DIR)], check=True)
    closed_url = re.sub(r"@127\.0\.0\.1:\d+/", f"@127.0.0.1:{free_port()}/", mysql_url)
    filler = Collector(closed_url, WAL_DIR, "fill")
    if not filler.start():
        backend.notes.append("replay skipped: the collector did not come up with MySQL unreachable")
        return
    try:
        fill_backlog(filler, best_pipelined_rps, backend)
    finally:
        filler.stop()
    # A core that replays only as fast as MySQL takes the rows logs its replay line only once
    # it delivered them: then the reachable run's line is quoted (its read_events_per_sec
    # still counts time in the WAL reader only).
    for tag, url, wait_s in (("replay", closed_url, REPLAY_WAIT_S), ("replay-drain", mysql_url, SETTLE_MAX_S)):
        replayer = Collector(url, WAL_DIR, tag)
        if not replayer.start():
            continue
        try:
            found = wait_until(lambda: find_replay(tail(replayer.log_path, 500)), wait_s)
        finally:
            replayer.stop()
        if found:
            backend.replay_line, backend.replay_events_s = found
            if url == mysql_url:
                backend.notes.append(f"no replay line within {REPLAY_WAIT_S} s with MySQL unreachable; "
                                     "the one quoted is from a run with MySQL reachable")
            break
    subprocess.run(["rm", "-rf", str(WAL_DIR)], check=True)


# ---------------------------------------------------------------- phase B: modes


def lag(collector):
    """(accepted, flushed) from /stats, or None."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{collector.port}/stats", timeout=5) as r:
            events = json.load(r)["events"]
        return events["accepted"], events["flushed"]
    except (OSError, ValueError, KeyError):
        return None


def paced(collector, rate, seconds, on_second=None):
    """wrk POSTing batches at `rate` events/s for `seconds`; `on_second()` runs every second
    meanwhile. Returns the events/s wrk achieved (acknowledged)."""
    conns = max(4, min(64, int(rate / POST_BATCH / 100) + 1))  # >= 10 ms between a conn's requests
    argv = ["taskset", "-c", WRK_CPU, "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s",
            "-s", str(PACED_LUA), f"http://127.0.0.1:{collector.port}/log", "--",
            str(rate), str(POST_BATCH), str(conns), str(FILES), str(DOMAINS)]
    proc = OWNED.spawn("wrk", argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + seconds + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if on_second:
                on_second()
            time.sleep(1)
        output, _ = proc.communicate(timeout=max(1, deadline - time.monotonic()))
    finally:
        OWNED.stop(proc)
    with open(COLLECTOR_DIR / "wrk.log", "a") as f:
        f.write(f"$ {' '.join(argv)}\n{output}\n")
    result = parse_wrk(output)
    return result.acked * POST_BATCH / result.duration_s if result.duration_s else 0.0


def settle(collector, offered=None):
    """Waits for the backlog to empty; returns rows/s committed meanwhile. None: no backlog
    worth timing, i.e. less than one second of the `offered` rate was left (delivery kept up
    with the overload, and what is left is one flush interval, not a drain)."""
    start = lag(collector)
    started = time.monotonic()
    if not start or start[0] - start[1] <= max(POST_BATCH, offered or 0):
        return None
    done = wait_until(lambda: (s := lag(collector)) and s[0] - s[1] <= 0 and s, SETTLE_MAX_S, 0.2)
    end = done or lag(collector)
    elapsed = time.monotonic() - started
    return (end[1] - start[1]) / elapsed if end and elapsed > 0 else None


def bounded(samples, rate):
    """Lag samples [(t, lag)]: slope of the last 50 s under 1 % of the rate per second, and
    the last 10 s under 2 s of traffic (module doc)."""
    tail_s = [(t, v) for t, v in samples if t >= samples[-1][0] - 50]
    n = len(tail_s)
    mean_t = sum(t for t, _ in tail_s) / n
    mean_v = sum(v for _, v in tail_s) / n
    var = sum((t - mean_t) ** 2 for t, _ in tail_s)
    slope = sum((t - mean_t) * (v - mean_v) for t, v in tail_s) / var if var else 0.0
    last = max(v for t, v in samples if t >= samples[-1][0] - 10)
    return slope < 0.01 * rate and last < 2 * rate, last


def probe(collector, rate, mysqld_pid):
    """One sustained run at `rate`; returns (offered, bounded, last lag, mariadbd CPU %)."""
    samples = []
    started = time.monotonic()
    ticks = cpu_ticks(mysqld_pid) if mysqld_pid else 0

    def sample():
        s = lag(collector)
        if s:
            samples.append((time.monotonic() - started, s[0] - s[1]))

    offered = paced(collector, rate, SUSTAIN_S, sample)
    wall = time.monotonic() - started
    cpu = 100 * (cpu_ticks(mysqld_pid) - ticks) / CLK_TCK / wall if mysqld_pid and wall else None
    if len(samples) < 10:
        return offered, False, None, cpu
    ok, last = bounded(samples, offered)
    log(f"  probe {offered:,.0f} events/s for {SUSTAIN_S} s: lag {'bounded' if ok else 'GROWS'} "
        f"(last 10 s max {last:,.0f}), mariadbd {cpu or 0:.0f} % CPU")
    return offered, ok, last, cpu


def mode_toml(mode, v2):
    """([mysql] lines, more tables) of a mode; the v1 flusher knows no `connections`."""
    keys = f'method = "{mode.method}"\n'
    if v2:
        keys += f"connections = {mode.connections}\n"
    if mode.rollups_only:
        keys += "raw_events = false\n"
    return keys, ROLLUP_TOML if mode.rollups_only else ""


def supports_connections():
    """Whether the binary knows `mysql.connections` (the v2 delivery core)."""
    probe_cfg = COLLECTOR_DIR / "probe.toml"
    COLLECTOR_DIR.mkdir(parents=True, exist_ok=True)
    probe_cfg.write_text("[mysql]\nurl = \"mysql://x:y@127.0.0.1:1/psc\"\nconnections = 1\n"
                         "connect_timeout_ms = 100\n")
    out = subprocess.run([str(BINARY), "--config", str(probe_cfg), "migrate"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    return "unknown field `connections`" not in out.stdout


def run_mode(db, mysql_url, mode, v2):
    result = ModeResult(mode)
    db.sql("TRUNCATE TABLE events; TRUNCATE TABLE ingest_cursors; DROP TABLE IF EXISTS rollup_plays")
    subprocess.run(["rm", "-rf", str(WAL_DIR)], check=True)
    keys, tail_toml = mode_toml(mode, v2)
    tag = re.sub(r"[^a-z0-9]+", "-", mode.name.lower()).strip("-")
    collector = Collector(mysql_url, WAL_DIR, tag, cores=LANES, mysql_keys=keys, tail_toml=tail_toml)
    if not collector.start():
        result.skipped = f"the collector did not start (var/bench-collector/{tag}.log)"
        return result
    try:
        log(f"mode {mode.name}: overload {OVERLOAD_RATE:,} events/s for {OVERLOAD_S} s")
        result.overload_offered = paced(collector, OVERLOAD_RATE, OVERLOAD_S)
        result.drain_rows_s = settle(collector, result.overload_offered)
        if result.drain_rows_s is None:
            # No backlog: delivery kept up with all wrk could offer.
            result.front_limited = True
            result.drain_rows_s = result.overload_offered
        rate = 0.9 * result.drain_rows_s
        for i in range(PROBES):
            offered, ok, last, cpu = probe(collector, int(rate), read_pid(MYSQL_DIR / "mysqld.pid"))
            result.probes.append((offered, ok, last))
            result.mysqld_cpu_pct = cpu if cpu is not None else result.mysqld_cpu_pct
            settle(collector)
            rate = (1.0 if ok else 0.7) * result.drain_rows_s
        result.rss_mib = peak_rss_kib(collector.measured_pid) / 1024
    finally:
        collector.stop()
    return result


def modes_phase(db, mysql_url, backend):
    v2 = supports_connections()
    for mode in MODES:
        # The v1 flusher sends INSERTs on one connection whatever the config says.
        if not v2 and (mode.connections != 1 or mode.rollups_only or mode.method != "insert"):
            backend.modes.append(ModeResult(mode, skipped="needs the v2 delivery core "
                                                          "(mysql.connections, method, rollups)"))
            continue
        try:
            backend.modes.append(run_mode(db, mysql_url, mode, v2))
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            log(f"mode {mode.name} failed: {e}")
            backend.modes.append(ModeResult(mode, skipped=f"failed: {str(e).splitlines()[0]}"))


def collector_backend(db, mysql_url, collector, acked, best_pipelined_rps, backend, http_db):
    """Phases A and B. `acked`: events wrk acknowledged in the HTTP phase (their backlog is
    dropped: every mode starts from an empty database); `http_db`: the MariaDB the HTTP
    phase's collector made its tables in. A failure is reported, not fatal."""
    backend.front_pipelined_rps = best_pipelined_rps
    try:
        collector.stop()
        if not (http_db.has_table("events") and http_db.has_table("ingest_cursors")):
            backend.notes.append("collector back end skipped: the collector created no "
                                 "`events`/`ingest_cursors` tables (migrations missing?)")
            return
        backend.notes.append(f"{acked:,} events of the HTTP phase were not waited for")
        replay_phase(mysql_url, best_pipelined_rps, backend)
        modes_phase(db, mysql_url, backend)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        log(f"collector back end failed: {e}")
        backend.notes.append(f"collector back end failed: {str(e).splitlines()[0]}")
    finally:
        collector.stop()


# ---------------------------------------------------------------- phase C: ceilings

EVENT_NAMES = ("play", "pause", "start", "end")


def ceiling_files(rows, sessions):
    """Per session: a SQL file of 5000-row INSERTs and a TSV file (the collector's LOAD DATA
    format) of the same rows, keyed like the paced traffic."""
    CEILING_DIR.mkdir(parents=True, exist_ok=True)
    base = datetime.now(timezone.utc).replace(tzinfo=None)
    files = []
    per = rows // sessions
    for s in range(sessions):
        sql_path, tsv_path = CEILING_DIR / f"insert-{s}.sql", CEILING_DIR / f"rows-{s}.tsv"
        with open(sql_path, "w") as sql, open(tsv_path, "wb") as tsv:
            for start in range(s * per, (s + 1) * per, INSERT_BATCH_ROWS):
                tuples, lines = [], []
                for n in range(start, min((s + 1) * per, start + INSERT_BATCH_ROWS)):
                    stamp = (base + timedelta(milliseconds=n // 10)).isoformat(" ", "milliseconds")
                    event, domain, file_id = EVENT_NAMES[n % 4], 1 + (n * 7) % DOMAINS, 1 + (n * 13) % FILES
                    tuples.append(f"('{stamp}','{event}',{domain},{file_id},X'7F000001',NULL,NULL,NULL)")
                    lines.append(f"{stamp}\t{event}\t{domain}\t{file_id}\t\x7f\\0\\0\x01\t\\N\t\\N\t\\N\n")
                sql.write("INSERT INTO bench_events (received_at, event, domain_id, file_id, "
                          "client_ip, ua_hash, referer_host, extra) VALUES ")
                sql.write(",".join(tuples) + ";\n")
                tsv.write("".join(lines).encode("latin-1"))
        files.append((sql_path, tsv_path))
    return files, per * sessions


LOAD_SQL = ("LOAD DATA LOCAL INFILE '{path}' INTO TABLE bench_events CHARACTER SET binary "
            "FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' "
            "(received_at, event, domain_id, file_id, client_ip, ua_hash, referer_host, extra)")


def run_sessions(db, files, method):
    """All sessions at once; returns the wall time until the last ended."""
    procs = []
    start = time.monotonic()
    for sql_path, tsv_path in files:
        if method == "insert":
            argv = db.cli()
            procs.append(OWNED.spawn("mariadb", argv, stdin=open(sql_path)))
        else:
            argv = db.cli("--local-infile=1", "-e", LOAD_SQL.format(path=tsv_path))
            procs.append(OWNED.spawn("mariadb", argv))
    for p in procs:
        p.wait(900)
        OWNED.stop(p)
        if p.returncode != 0:
            raise RuntimeError(f"a ceiling session ({method}) failed with {p.returncode}")
    return time.monotonic() - start


def mariadb_ceiling(db, rows, backend):
    """Phase C for 1 and LANES sessions, INSERT and LOAD DATA, into a scratch `events` copy."""
    for sessions in sorted({1, LANES}):
        files, total = ceiling_files(rows, sessions)
        backend.ceiling_rows = total
        for method in ("insert", "load_data"):
            db.sql("DROP TABLE IF EXISTS bench_events; CREATE TABLE bench_events LIKE events")
            seconds = run_sessions(db, files, method)
            taken = db.scalar_int("SELECT COUNT(*) FROM bench_events")
            backend.ceilings[(method, sessions)] = taken / seconds
            log(f"ceiling: {method} × {sessions} sessions: {taken:,} rows in {seconds:.1f} s")
            if taken != total:
                backend.notes.append(f"ceiling {method} × {sessions}: {taken:,} of {total:,} rows")
        for pair in files:
            for path in pair:
                path.unlink()
    db.sql("DROP TABLE IF EXISTS bench_events")


# ---------------------------------------------------------------- report


def mode_text(r):
    if r.skipped:
        return f"skipped: {r.skipped}"
    probes = "; ".join(f"{o:,.0f}/s {'held' if ok else 'grew'}" for o, ok, _ in r.probes)
    sustained = f"≥ {r.sustained:,.0f} events/s" if r.sustained else "below every probe"
    drain = ("≥ " if r.front_limited else "") + fmt_rate(r.drain_rows_s)
    return (f"drain {drain} after an overload at {r.overload_offered:,.0f}/s; "
            f"sustained {sustained} ({SUSTAIN_S} s probes: {probes}); mariadbd "
            f"{r.mysqld_cpu_pct or 0:.0f} % CPU; collector peak RSS {r.rss_mib or 0:.1f} MiB")


def backend_rows(backend):
    rows = [
        ["WAL backlog filled (MySQL unreachable)",
         f"{backend.backlog_events:,} events at {backend.fill_rps:,.0f} req/s"
         if backend.backlog_events is not None else "n/a"],
        ["collector replay (its log line)", backend.replay_line or "n/a"],
    ]
    rows += [[f"mode: {r.mode.name} (N = {LANES} lanes)", mode_text(r)] for r in backend.modes]
    for (method, sessions), rate in sorted(backend.ceilings.items()):
        rows.append([f"MariaDB {'multi-row INSERT' if method == 'insert' else 'LOAD DATA LOCAL'}, "
                     f"{sessions} concurrent session(s)",
                     fmt_rate(rate) + f" ({backend.ceiling_rows:,} rows)"])
    return rows + clickhouse_rows(backend)


def best_ceiling(backend, sessions):
    rates = [v for (_, s), v in backend.ceilings.items() if s == sessions]
    return max(rates) if rates else None


def backend_ratio_rows(backend):
    """The back end's rows of the "ratios vs targets" table."""
    rows = []
    for r in backend.modes:
        if r.skipped or r.mode.rollups_only:
            continue
        sessions = 1 if r.mode.connections == 1 else LANES
        value, verdict = fmt_ratio(ratio(r.drain_rows_s, best_ceiling(backend, sessions)),
                                   TARGET_DRAIN_RATIO)
        rows.append([f"drain {r.mode.name} / MariaDB's best bulk rate, {sessions} session(s)",
                     value, f"≥ {TARGET_DRAIN_RATIO}×", verdict])
    for r in backend.modes:
        if r.mode.rollups_only and not r.skipped:
            value, verdict = fmt_ratio(ratio(r.sustained, backend.front_pipelined_rps),
                                       TARGET_ROLLUP_VS_FRONT)
            rows.append(["rollups-only sustained / front end's pipelined req/s (one core)", value,
                         f"≥ {TARGET_ROLLUP_VS_FRONT}×", verdict])
    value, verdict = fmt_ratio(backend.replay_events_s, TARGET_REPLAY_EVENTS_S, suffix="")
    if backend.replay_events_s is not None:
        value = f"{backend.replay_events_s:,.0f} events/s"
    rows.append(["replay rate (WAL read + decode)", value, f"≥ {TARGET_REPLAY_EVENTS_S:,} events/s",
                 verdict])
    rss = [r.rss_mib for r in backend.modes if r.rss_mib is not None]
    value, verdict = fmt_ratio(max(rss) if rss else None, TARGET_RSS_MIB, higher_is_better=False,
                               suffix=" MiB")
    rows.append(["collector peak RSS over the modes", value, f"≤ {TARGET_RSS_MIB} MiB", verdict])
    return rows + clickhouse_ratio_rows(backend)
