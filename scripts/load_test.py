#!/usr/bin/env python3
"""`make load-test`: the collector side by side with nginx and with MariaDB's own ceiling.

Run by scripts/load-test.sh (which installs nginx/wrk and builds the release binary); stdlib
only. Phases, all in one run, everything on 127.0.0.1:

1. HTTP: for round in 1..ROUNDS, for conns in (64, 256), for mode in (plain, pipelined):
   nginx, then the collector. Both servers are pinned to CPU 0, wrk (1 thread) to CPU 1.
   Per run: req/s, non-2xx, socket errors, p50/p99/p99.9 (wrk, closed loop: coordinated
   omission makes tails optimistic), server CPU-us/request (/proc/PID/stat utime+stime,
   all threads; nginx: the worker) and peak RSS (VmHWM; nginx: the worker).
2. Tail drain: the collector's WAL backlog left by phase 1, delivered into MySQL (rows/s over
   a bounded window).
3. Clean back end: fresh WAL, MySQL unreachable, pipelined fill of BACKLOG events; restart
   still unreachable -> the collector's logged replay rate; restart with the real URL ->
   drain rate from 0 to N rows.
4. MariaDB ceiling for the same N rows: 5000-row multi-row INSERTs through the mariadb CLI,
   and LOAD DATA LOCAL INFILE, each into a scratch copy of `events`.
5. Front end (scripts/load_front.py), a fresh collector with the real MySQL: open-loop
   latency with oha at fixed rates (50 % of the collector's best plain rate, and a sweep to the
   rate where p99 passes 10 ms; nginx at 50 % of its own), 10,000 keep-alive connections on
   one core, and user-space instructions per request under callgrind. Phase 1 also attaches
   `perf stat` to each measured process: syscalls and context switches per request.

Every process started here runs in its own session (Ctrl-C reaches only this script) and is
stopped by its PID in a `finally`, also on SIGINT/SIGTERM/SIGHUP. Results go to stdout and
are appended to docs/BENCHMARKS.md. The collector half is skipped with a message when the
binary is missing or does not come up; the rest still runs.
"""

import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import load_front

REPO = Path(__file__).resolve().parent.parent
VAR = REPO / "var"
MYSQL_DIR = VAR / "bench-mysql"
NGINX_DIR = VAR / "bench-nginx"
COLLECTOR_DIR = VAR / "bench-collector"
WAL_DIR = VAR / "bench-wal"
CEILING_DIR = VAR / "bench-ceiling"
# PSC_BENCH_BINARY: another binary with the same interface (for testing this harness).
BINARY = Path(os.environ.get("PSC_BENCH_BINARY",
                             REPO / "target" / "release" / "player-stat-collector"))
BENCHMARKS_MD = REPO / "docs" / "BENCHMARKS.md"
PIPELINE_LUA = REPO / "scripts" / "wrk" / "pipeline.lua"
REPORT_LUA = REPO / "scripts" / "wrk" / "report.lua"
NGINX_TEMPLATE = REPO / "scripts" / "nginx.conf.template"


def env_int(name, default):
    return int(os.environ.get(name, default))


# Knobs (environment overrides, for a quick smoke run: PSC_BENCH_ROUNDS=1 PSC_BENCH_RUN_S=2).
ROUNDS = env_int("PSC_BENCH_ROUNDS", 3)
RUN_S = env_int("PSC_BENCH_RUN_S", 8)
CONNECTIONS = (64, 256)
MODES = ("plain", "pipelined")
PIPELINE_DEPTH = 16
BACKLOG_EVENTS = env_int("PSC_BENCH_BACKLOG", 5_000_000)
FILL_MAX_S = env_int("PSC_BENCH_FILL_MAX_S", 40)
CEILING_ROWS_WITHOUT_COLLECTOR = env_int("PSC_BENCH_CEILING_ROWS", 2_000_000)
INSERT_BATCH_ROWS = 5000
TAIL_DRAIN_WINDOW_S = 20
DRAIN_MAX_S = 150
DRAIN_STALL_S = 15
REPLAY_WAIT_S = 30
START_TIMEOUT_S = 20
STOP_TIMEOUT_S = 30
POLL_S = 0.2
SERVER_CPU = "0"
WRK_CPU = "1"
URL_PATH = "/log?event=play&domain=piratka.biz&file_id=109454"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Targets of the issue, printed next to the measured ratios.
TARGET_REQ_RATIO = 1.0
TARGET_CPU_RATIO = 0.70
TARGET_PIPELINED_RATIO = 10.0
TARGET_DRAIN_RATIO = 0.9
TARGET_REPLAY_EVENTS_S = 2_000_000
TARGET_RSS_MIB = 64


class Interrupted(Exception):
    """SIGINT/SIGTERM/SIGHUP as an exception, so that `finally` blocks stop our processes."""


def log(msg):
    print(f"load-test: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes we own


class Owned:
    """Every process this script starts, stopped by PID (never by name) in reverse order."""

    def __init__(self):
        self.procs = []  # (name, Popen, first stop signal)

    def spawn(self, name, argv, stop_signal=signal.SIGTERM, **kwargs):
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
        self.procs.append((name, proc, stop_signal))
        return proc

    def stop(self, proc, timeout_s=STOP_TIMEOUT_S):
        entry = next((e for e in self.procs if e[1] is proc), None)
        if entry is None:
            return
        name, _, sig = entry
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log(f"{name} (pid {proc.pid}) still running after {timeout_s}s; SIGKILL")
                proc.kill()
                proc.wait(10)
        self.procs.remove(entry)

    def stop_all(self):
        for _, proc, _ in reversed(list(self.procs)):
            self.stop(proc)


OWNED = Owned()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout_s, poll_s=POLL_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(poll_s)
    return None


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def cpu_ticks(pid):
    """utime + stime of the whole process (the kernel sums all its threads), in clock ticks."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(fields[11]) + int(fields[12])


def peak_rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def children_of(pid):
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            kids.append(int(entry.name))
    return kids


def tail(path, lines=20):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------- MariaDB


class MariaDb:
    """The private server of scripts/mariadb.sh in ./var/bench-mysql, used through the CLI."""

    def __init__(self):
        self.url = None
        self.client_cnf = MYSQL_DIR / "client.cnf"

    def start(self):
        out = subprocess.run(
            [str(REPO / "scripts" / "mariadb.sh"), "start", str(MYSQL_DIR)],
            stdout=subprocess.PIPE, text=True, check=True, timeout=180,
            start_new_session=True,
        )
        self.url = out.stdout.strip().splitlines()[-1]
        return self.url

    def stop(self):
        subprocess.run([str(REPO / "scripts" / "mariadb.sh"), "stop", str(MYSQL_DIR)],
                       check=False, timeout=120)

    def cli(self, *args):
        return ["mariadb", f"--defaults-file={self.client_cnf}", *args]

    def sql(self, query, timeout_s=600):
        out = subprocess.run(self.cli("-N", "-B", "-e", query), stdout=subprocess.PIPE,
                             text=True, check=True, timeout=timeout_s)
        return out.stdout.strip()

    def scalar_int(self, query):
        value = self.sql(query)
        return int(value) if value and value != "NULL" else 0

    def reset_database(self):
        """Every run starts from an empty `psc` database: table sizes shape insert speed."""
        self.sql("DROP DATABASE IF EXISTS psc; CREATE DATABASE psc CHARACTER SET utf8mb4")

    def has_table(self, name):
        return self.scalar_int(
            "SELECT COUNT(*) FROM information_schema.tables "
            f"WHERE table_schema = 'psc' AND table_name = '{name}'") == 1


# Used only when the collector did not create `events` (collector skipped). Kept equal to
# migrations/001_init.sql of the MySQL work so the ceiling inserts into the same shape.
FALLBACK_EVENTS_DDL = """
CREATE TABLE IF NOT EXISTS events (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  received_at DATETIME(3) NOT NULL,
  event VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  domain_id INT UNSIGNED NOT NULL,
  file_id BIGINT UNSIGNED NOT NULL,
  client_ip VARBINARY(16) NULL,
  ua_hash BIGINT UNSIGNED NULL,
  referer_host VARCHAR(253) NULL,
  extra VARCHAR(1024) NULL,
  KEY ix_events_received_at (received_at),
  KEY ix_events_domain_time (domain_id, received_at)
) ENGINE=InnoDB
"""


# ---------------------------------------------------------------- servers


class Nginx:
    def __init__(self):
        self.port = None
        self.master = None
        self.worker_pid = None

    def start(self):
        (NGINX_DIR / "tmp").mkdir(parents=True, exist_ok=True)
        for stale in ("access.log", "error.log", "nginx.pid"):
            (NGINX_DIR / stale).unlink(missing_ok=True)
        self.port = free_port()
        conf = NGINX_TEMPLATE.read_text().replace("@DIR@", str(NGINX_DIR))
        conf = conf.replace("@PORT@", str(self.port))
        conf_path = NGINX_DIR / "nginx.conf"
        conf_path.write_text(conf)
        argv = ["nginx", "-p", str(NGINX_DIR), "-c", str(conf_path), "-e",
                str(NGINX_DIR / "error.log")]
        subprocess.run(argv + ["-t", "-q"], check=True, timeout=30)
        out = open(NGINX_DIR / "stderr.log", "w")
        # SIGQUIT: graceful stop (flushes the buffered access log).
        self.master = OWNED.spawn("nginx", ["taskset", "-c", SERVER_CPU] + argv,
                                  stop_signal=signal.SIGQUIT, stdout=out, stderr=out)
        if not wait_until(lambda: port_open(self.port), START_TIMEOUT_S):
            raise RuntimeError(f"nginx did not listen on {self.port}:\n"
                               f"{tail(NGINX_DIR / 'error.log')}")
        workers = wait_until(lambda: children_of(self.master.pid), START_TIMEOUT_S)
        if not workers or len(workers) != 1:
            raise RuntimeError(f"expected one nginx worker, found {workers}")
        self.worker_pid = workers[0]
        log(f"nginx master {self.master.pid}, worker {self.worker_pid}, port {self.port}")

    @property
    def measured_pid(self):
        return self.worker_pid

    def stop(self):
        if self.master:
            OWNED.stop(self.master)
            self.master = None


class Collector:
    """target/release/player-stat-collector with a generated config, pinned to CPU 0."""

    def __init__(self, mysql_url, wal_dir, tag, extra_toml=""):
        self.mysql_url = mysql_url
        self.wal_dir = wal_dir
        self.tag = tag
        self.extra_toml = extra_toml
        self.proc = None
        self.port = None
        self.log_path = COLLECTOR_DIR / f"{tag}.log"

    def write_config(self):
        config = COLLECTOR_DIR / f"{self.tag}.toml"
        config.write_text(
            "# Generated by scripts/load_test.py\n"
            "[server]\n"
            'listen = "127.0.0.1:0"\n'
            "cores = 1\n"
            "[wal]\n"
            f'dir = "{self.wal_dir}"\n'
            "[mysql]\n"
            f'url = "{self.mysql_url}"\n'
            + self.extra_toml
        )
        return config

    def start(self):
        """Starts it and waits for its port file; returns False (logged) if it does not come up."""
        COLLECTOR_DIR.mkdir(parents=True, exist_ok=True)
        if not BINARY.exists():
            log(f"collector skipped: {BINARY} does not exist")
            return False
        port_file = COLLECTOR_DIR / f"{self.tag}.port"
        port_file.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PSC_")}
        env["PSC_PORT_FILE"] = str(port_file)
        out = open(self.log_path, "a")
        self.proc = OWNED.spawn(
            f"collector[{self.tag}]",
            ["taskset", "-c", SERVER_CPU, str(BINARY), "--config", str(self.write_config())],
            stdout=out, stderr=out, env=env)

        def bound_port():
            if self.proc.poll() is not None:
                return "exited"
            text = port_file.read_text().strip() if port_file.exists() else ""
            return text if text.endswith(tuple("0123456789")) and ":" in text else None

        bound = wait_until(bound_port, START_TIMEOUT_S)
        if bound in (None, "exited"):
            why = f"exited with {self.proc.returncode}" if bound else "no port file"
            log(f"collector skipped: it did not come up ({why}); last lines of "
                f"{self.log_path.relative_to(REPO)}:\n{tail(self.log_path) or '(empty)'}")
            self.stop()
            return False
        self.port = int(bound.rsplit(":", 1)[1])
        log(f"collector[{self.tag}] pid {self.proc.pid}, port {self.port}")
        return True

    @property
    def measured_pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc:
            OWNED.stop(self.proc)
            self.proc = None


# ---------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    non2xx: int
    socket_errors: int
    p50_us: int  # None: wrk could not place the percentile
    p99_us: int
    p999_us: int

    @property
    def rps(self):
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def acked(self):
        return self.requests - self.non2xx


WRK_LINE = re.compile(r"^PSC_WRK (.*)$", re.M)


def run_wrk(port, conns, mode, duration_s, log_path):
    script = PIPELINE_LUA if mode == "pipelined" else REPORT_LUA
    argv = ["taskset", "-c", WRK_CPU, "wrk", "-t1", f"-c{conns}", f"-d{duration_s}s",
            "--latency", "--timeout", "5s", "-s", str(script),
            f"http://127.0.0.1:{port}{URL_PATH}"]
    if mode == "pipelined":
        argv += ["--", str(PIPELINE_DEPTH)]
    proc = OWNED.spawn("wrk", argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=duration_s + 60)
    finally:
        OWNED.stop(proc)
    with open(log_path, "a") as f:
        f.write(f"$ {' '.join(argv)}\n{output}\n")
    return parse_wrk(output)


def parse_wrk(output):
    match = WRK_LINE.search(output)
    if not match:
        raise RuntimeError(f"wrk printed no PSC_WRK line:\n{output}")
    v = {k: int(x) for k, x in (kv.split("=") for kv in match.group(1).split())}
    result = WrkResult(
        requests=v["requests"], duration_s=v["duration_us"] / 1e6, non2xx=v["non2xx"],
        socket_errors=v["connect"] + v["read"] + v["write"] + v["timeout"],
        # wrk answers 0 for a percentile its histogram cannot place (see latency_ms).
        p50_us=v["p50_us"] or None, p99_us=v["p99_us"] or None, p999_us=v["p999_us"] or None)
    cross_check_wrk_text(output, result)
    return result


def cross_check_wrk_text(output, result):
    """wrk's human lines must agree with the hook; a mismatch means the parsing is wrong."""
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if (int(non2xx.group(1)) if non2xx else 0) != result.non2xx:
        raise RuntimeError(f"wrk non-2xx mismatch: {output}")
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                     output)
    if (sum(int(x) for x in sock.groups()) if sock else 0) != result.socket_errors:
        raise RuntimeError(f"wrk socket-error mismatch: {output}")


# ---------------------------------------------------------------- phase 1: HTTP


@dataclass
class Run:
    round: int
    conns: int
    mode: str
    server: str
    wrk: WrkResult
    cpu_us_per_req: float
    rss_mib: float
    # Busy share of one CPU over the run: a server near 100 % is the bottleneck; wrk near
    # 100 % means the client limited the run and its req/s says little about the server.
    server_cpu_pct: float
    wrk_cpu_pct: float
    # perf stat of the measured process over the run, per request (None without perf).
    syscalls_per_req: float = None
    ctx_switches_per_req: float = None


def latency_ms(us):
    """wrk's percentiles in ms. wrk "corrects" coordinated omission by adding synthetic samples
    at multiples of the mean per-connection interval, but without lowering its histogram's
    minimum; with pipelining (one sample per 16-request batch, interval computed per request)
    that makes high percentiles come out as 0, shown as n/a."""
    return f"{us / 1000:.2f}" if us else "n/a"


def children_cpu_s():
    """CPU seconds of every reaped child; wrk is the only child reaped during a run."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(server, name, rnd, conns, mode):
    pid = server.measured_pid
    perf = load_front.PerfStat(OWNED, pid, VAR / "bench-perf.csv")
    ticks_before, wrk_before = cpu_ticks(pid), children_cpu_s()
    result = run_wrk(server.port, conns, mode, RUN_S, VAR / "bench-wrk.log")
    ticks_after, wrk_after = cpu_ticks(pid), children_cpu_s()
    syscalls, switches = perf.finish()
    cpu_us = (ticks_after - ticks_before) * 1e6 / CLK_TCK
    wall_us = result.duration_s * 1e6
    run = Run(rnd, conns, mode, name, result,
              cpu_us / result.requests if result.requests else float("nan"),
              peak_rss_kib(pid) / 1024,
              100 * cpu_us / wall_us if wall_us else float("nan"),
              100 * (wrk_after - wrk_before) * 1e6 / wall_us if wall_us else float("nan"),
              syscalls / result.requests if syscalls is not None and result.requests else None,
              switches / result.requests if switches is not None and result.requests else None)
    log(f"round {rnd} c={conns:<3} {mode:<9} {name:<9} {result.rps:>11,.0f} req/s  "
        f"non2xx={result.non2xx} sockerr={result.socket_errors} "
        f"p50/p99/p99.9={latency_ms(result.p50_us)}/{latency_ms(result.p99_us)}/"
        f"{latency_ms(result.p999_us)} ms "
        f"cpu={run.cpu_us_per_req:.2f}us/req rss={run.rss_mib:.1f}MiB "
        f"busy server/wrk={run.server_cpu_pct:.0f}%/{run.wrk_cpu_pct:.0f}%")
    return run


def http_phase(nginx, collector):
    runs = []
    for rnd in range(1, ROUNDS + 1):
        for conns in CONNECTIONS:
            for mode in MODES:
                runs.append(measure(nginx, "nginx", rnd, conns, mode))
                if collector:
                    runs.append(measure(collector, "collector", rnd, conns, mode))
    return runs


# ---------------------------------------------------------------- phases 2-4: back end


@dataclass
class Backend:
    notes: list = field(default_factory=list)
    tail_drain_rows_s: float = None
    backlog_events: int = None
    fill_rps: float = None
    replay_line: str = None
    replay_events_s: float = None
    drain_rows: int = None
    drain_rows_s: float = None
    drain_end_to_end_rows_s: float = None
    ceiling_rows: int = None
    insert_rows_s: float = None
    load_data_rows_s: float = None


def max_event_id(db):
    return db.scalar_int("SELECT COALESCE(MAX(id), 0) FROM events")


def tail_drain(db, acked_total, backend):
    """Rows/s the collector delivers right after phase 1, over a bounded window."""
    start_rows, start = max_event_id(db), time.monotonic()
    rows = wait_until(lambda: (n := max_event_id(db)) >= acked_total and n,
                      TAIL_DRAIN_WINDOW_S, poll_s=0.5) or max_event_id(db)
    elapsed = time.monotonic() - start
    backend.tail_drain_rows_s = (rows - start_rows) / elapsed if elapsed > 0 else None
    backend.notes.append(
        f"tail drain after the HTTP rounds: {rows - start_rows:,} rows in {elapsed:.1f} s "
        f"(acked by wrk: {acked_total:,}; in events at the end of the window: {rows:,})")


def fill_backlog(collector, best_pipelined_rps, backend):
    """Pipelined wrk run against a collector whose MySQL is unreachable: a pure WAL backlog."""
    estimate_s = BACKLOG_EVENTS / best_pipelined_rps * 1.1 if best_pipelined_rps else FILL_MAX_S
    duration_s = max(2, min(FILL_MAX_S, int(estimate_s) + 1))
    result = run_wrk(collector.port, 256, "pipelined", duration_s, VAR / "bench-wrk.log")
    backend.backlog_events = result.acked
    backend.fill_rps = result.rps
    log(f"backlog fill: {result.acked:,} events acked in {result.duration_s:.1f} s "
        f"({result.rps:,.0f} req/s, non2xx={result.non2xx}, sockerr={result.socket_errors})")
    if result.acked < BACKLOG_EVENTS:
        backend.notes.append(
            f"backlog {result.acked:,} events, below the {BACKLOG_EVENTS:,} asked: the fill is "
            f"capped at {FILL_MAX_S} s to keep the run under 10 minutes")


# The issue asks for a line with "replay" and "events/s"; the collector's tracing line is
# `WAL replay done events=N seconds=S events_per_sec=R` (text) or the same fields in JSON.
REPLAY_LINE = re.compile(r"^.*replay.*(events/s|events_per_sec).*$", re.M | re.I)
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
REPLAY_RATE = re.compile(r"events_per_sec\W*([0-9][0-9_,.]*)()"
                         r"|([0-9][0-9_,.]*)\s*([kM]?)\s*events/s")
UNIT_SUFFIX = {"": 1, "k": 1e3, "M": 1e6}
# The collector also logs how fast it read and decoded the WAL (time in the reader only, not
# waiting for MySQL): that is the replay rate the target is about; the delivered rate is
# bounded by MySQL and is shown in the log line.
READ_RATE = re.compile(r"read_events_per_sec\W*([0-9][0-9_,.]*)")


def find_replay(log_text):
    """(line, events/s or None) of the collector's replay log line, or None."""
    found = REPLAY_LINE.search(ANSI_ESCAPE.sub("", log_text))
    if not found:
        return None
    # A '|' would split the Markdown cell.
    line = found.group(0).strip().replace("|", "/")
    read = READ_RATE.search(line)
    if read:
        return line, float(read.group(1).replace(",", "").replace("_", ""))
    rate = REPLAY_RATE.search(line)
    if not rate:
        return line, None
    digits = (rate.group(1) or rate.group(3)).replace(",", "").replace("_", "")
    return line, float(digits) * UNIT_SUFFIX[rate.group(2) or rate.group(4) or ""]


def replay_rate(collector, backend):
    """The rate the collector logs for its startup replay with MySQL unreachable."""
    found = wait_until(lambda: find_replay(tail(collector.log_path, 500)), REPLAY_WAIT_S)
    if found:
        backend.replay_line, backend.replay_events_s = found


def replay_rate_from_drain(backend):
    """A collector that replays only as fast as MySQL takes the rows logs its replay line only
    in the drain run; that rate includes delivery, and the report says so."""
    found = find_replay(tail(COLLECTOR_DIR / "drain.log", 500))
    if found:
        line, rate = found
        backend.replay_line = f"{line} (logged by the drain run, MySQL reachable)"
        backend.replay_events_s = rate
        backend.notes.append(f"no replay line within {REPLAY_WAIT_S} s with MySQL unreachable; "
                             "the replay line shown is the drain run's (its read_events_per_sec "
                             "counts time in the WAL reader only; events_per_sec includes delivery)")
    else:
        backend.replay_line = "n/a (no log line with 'replay' and 'events/s')"


def timed_drain(db, collector_factory, expected_rows, backend):
    """Starts the collector with the real URL and times events from 0 to the acked count."""
    spawned = time.monotonic()
    collector = collector_factory()
    if not collector.start():
        backend.notes.append("drain: the collector did not restart with the real MySQL URL")
        return
    first_seen = None  # (time, rows) of the first poll with rows
    last_growth = (spawned, 0)
    try:
        while time.monotonic() - spawned < DRAIN_MAX_S:
            rows, now = max_event_id(db), time.monotonic()
            if rows and first_seen is None:
                first_seen = (now, rows)
            if rows > last_growth[1]:
                last_growth = (now, rows)
            if rows >= expected_rows or now - last_growth[0] > DRAIN_STALL_S:
                break
            time.sleep(POLL_S)
    finally:
        collector.stop()
    end, rows = last_growth
    backend.drain_rows = db.scalar_int("SELECT COUNT(*) FROM events")
    if first_seen and end > first_seen[0]:
        backend.drain_rows_s = (rows - first_seen[1]) / (end - first_seen[0])
    if end > spawned:
        backend.drain_end_to_end_rows_s = rows / (end - spawned)
    if rows < expected_rows:
        backend.notes.append(f"drain stopped at {rows:,} of {expected_rows:,} rows "
                             f"(stall of {DRAIN_STALL_S} s or the {DRAIN_MAX_S} s bound)")


def clean_backend(db, mysql_url, best_pipelined_rps, backend):
    """Phase 3: backlog fill, replay rate, drain from 0 to N rows."""
    subprocess.run(["rm", "-rf", str(WAL_DIR)], check=True)
    db.sql("TRUNCATE TABLE events; TRUNCATE TABLE ingest_cursors")
    closed_url = re.sub(r"@127\.0\.0\.1:\d+/", f"@127.0.0.1:{free_port()}/", mysql_url)

    filler = Collector(closed_url, WAL_DIR, "fill")
    if not filler.start():
        backend.notes.append("back end skipped: the collector did not come up with MySQL "
                             "unreachable (see var/bench-collector/fill.log)")
        return
    try:
        fill_backlog(filler, best_pipelined_rps, backend)
    finally:
        filler.stop()

    replayer = Collector(closed_url, WAL_DIR, "replay")
    if not replayer.start():
        backend.notes.append("replay: the collector did not restart with MySQL unreachable")
    else:
        try:
            replay_rate(replayer, backend)
        finally:
            replayer.stop()

    timed_drain(db, lambda: Collector(mysql_url, WAL_DIR, "drain"),
                backend.backlog_events, backend)
    if backend.replay_line is None:
        replay_rate_from_drain(backend)


def collector_backend(db, mysql_url, collector, runs, backend):
    """Phases 2 and 3. A failure here is reported, not fatal: the ceiling and the HTTP tables
    are still worth printing."""
    try:
        if not (db.has_table("events") and db.has_table("ingest_cursors")):
            backend.notes.append("collector back end skipped: the collector created no "
                                 "`events`/`ingest_cursors` tables (migrations missing?)")
            return
        acked = sum(r.wrk.acked for r in runs if r.server == "collector")
        tail_drain(db, acked, backend)
        collector.stop()
        clean_backend(db, mysql_url, best_rps(runs, "collector", "pipelined"), backend)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        log(f"collector back end failed: {e}")
        backend.notes.append(f"collector back end failed: {str(e).splitlines()[0]}")
    finally:
        collector.stop()


def ceiling_rows_files(rows):
    """SQL (5000-row INSERTs) and CSV texts of the same rows, the shape the collector writes."""
    CEILING_DIR.mkdir(parents=True, exist_ok=True)
    sql_path, csv_path = CEILING_DIR / "insert.sql", CEILING_DIR / "rows.csv"
    base = datetime.now(timezone.utc).replace(tzinfo=None)
    with open(sql_path, "w") as sql, open(csv_path, "w") as csv:
        for start in range(0, rows, INSERT_BATCH_ROWS):
            batch = range(start, min(rows, start + INSERT_BATCH_ROWS))
            stamps = {}
            tuples, lines = [], []
            for i in batch:
                ms = i // 10  # ten events per millisecond
                stamp = stamps.get(ms)
                if stamp is None:
                    stamp = (base + timedelta(milliseconds=ms)).isoformat(" ", "milliseconds")
                    stamps[ms] = stamp
                file_id = 1_000_000 + i % 1024
                # The same row the collector writes for a wrk beacon: the client IP is set
                # (127.0.0.1, as VARBINARY), the other client-context columns are NULL.
                tuples.append(f"('{stamp}','play',1,{file_id},X'7F000001',NULL,NULL,NULL)")
                lines.append(f"{stamp},play,1,{file_id},7F000001\n")
            sql.write("INSERT INTO bench_events (received_at, event, domain_id, file_id, "
                      "client_ip, ua_hash, referer_host, extra) VALUES ")
            sql.write(",".join(tuples))
            sql.write(";\n")
            csv.write("".join(lines))
    return sql_path, csv_path


def mariadb_ceiling(db, rows, backend):
    """Phase 4: plain multi-row INSERTs and LOAD DATA of the same rows into copies of events."""
    if not db.has_table("events"):
        backend.notes.append("`events` created by this script (collector absent), with the "
                             "columns and keys of migrations/001 and 002")
        db.sql(FALLBACK_EVENTS_DDL)
    db.sql("DROP TABLE IF EXISTS bench_events, bench_load; "
           "CREATE TABLE bench_events LIKE events; CREATE TABLE bench_load LIKE events")
    generated = time.monotonic()
    sql_path, csv_path = ceiling_rows_files(rows)
    log(f"ceiling: {rows:,} rows generated in {time.monotonic() - generated:.1f} s")
    backend.ceiling_rows = rows

    start = time.monotonic()
    with open(sql_path) as sql:
        subprocess.run(db.cli(), stdin=sql, check=True, timeout=900)
    insert_s = time.monotonic() - start
    inserted = db.scalar_int("SELECT COUNT(*) FROM bench_events")
    backend.insert_rows_s = inserted / insert_s
    log(f"ceiling: plain INSERT {inserted:,} rows in {insert_s:.1f} s")

    start = time.monotonic()
    db_load = ("LOAD DATA LOCAL INFILE '%s' INTO TABLE bench_load FIELDS TERMINATED BY ',' "
               "LINES TERMINATED BY '\\n' (received_at, event, domain_id, file_id, @ip) "
               "SET client_ip = UNHEX(@ip)" % csv_path)
    subprocess.run(db.cli("--local-infile=1", "-e", db_load), check=True, timeout=900)
    load_s = time.monotonic() - start
    loaded = db.scalar_int("SELECT COUNT(*) FROM bench_load")
    backend.load_data_rows_s = loaded / load_s
    log(f"ceiling: LOAD DATA {loaded:,} rows in {load_s:.1f} s")
    if inserted != rows or loaded != rows:
        backend.notes.append(f"ceiling row counts differ: INSERT {inserted:,}, "
                             f"LOAD DATA {loaded:,}, expected {rows:,}")
    db.sql("DROP TABLE bench_events, bench_load")
    for path in (sql_path, csv_path):
        path.unlink()


# ---------------------------------------------------------------- report


def median_of(runs, server, conns, mode, attr):
    values = [attr(r) for r in runs if (r.server, r.conns, r.mode) == (server, conns, mode)]
    return statistics.median(values) if values else None


def median_or_none(values):
    """Median of the rounds that have a value; None when none has (latency n/a)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summary_rows(runs):
    rows = []
    for conns in CONNECTIONS:
        for mode in MODES:
            for server in ("nginx", "collector"):
                sel = [r for r in runs if (r.server, r.conns, r.mode) == (server, conns, mode)]
                if not sel:
                    continue
                med = lambda f: statistics.median(f(r) for r in sel)  # noqa: E731
                rows.append([
                    str(conns), mode, server, f"{med(lambda r: r.wrk.rps):,.0f}",
                    str(sum(r.wrk.non2xx for r in sel)),
                    str(sum(r.wrk.socket_errors for r in sel)),
                    latency_ms(median_or_none([r.wrk.p50_us for r in sel])),
                    latency_ms(median_or_none([r.wrk.p99_us for r in sel])),
                    latency_ms(median_or_none([r.wrk.p999_us for r in sel])),
                    f"{med(lambda r: r.cpu_us_per_req):.2f}",
                    f"{max(r.rss_mib for r in sel):.1f}",
                    f"{med(lambda r: r.server_cpu_pct):.0f}",
                    f"{med(lambda r: r.wrk_cpu_pct):.0f}",
                    per_req(median_or_none([r.syscalls_per_req for r in sel])),
                    per_req(median_or_none([r.ctx_switches_per_req for r in sel])),
                ])
    return rows


def per_req(value):
    return f"{value:.3f}" if value is not None else "n/a"


SUMMARY_HEADER = ["conns", "mode", "server", "req/s (median)", "non-2xx (sum)",
                  "socket errors (sum)", "p50 ms", "p99 ms", "p99.9 ms", "CPU-µs/req",
                  "peak RSS MiB", "server CPU %", "wrk CPU %", "syscalls/req", "ctx-sw/req"]


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt_ratio(value, target, higher_is_better=True, suffix="×"):
    if value is None:
        return "n/a", "n/a"
    ok = value >= target if higher_is_better else value <= target
    return f"{value:.2f}{suffix}", "PASS" if ok else "FAIL"


def ratio_rows(runs, backend):
    rps = lambda s, c, m: median_of(runs, s, c, m, lambda r: r.wrk.rps)  # noqa: E731
    cpu = lambda s, c, m: median_of(runs, s, c, m, lambda r: r.cpu_us_per_req)  # noqa: E731
    rows = []
    for conns in CONNECTIONS:
        non2xx = sum(r.wrk.non2xx for r in runs if r.server == "collector" and r.conns == conns)
        value, verdict = fmt_ratio(ratio(rps("collector", conns, "plain"),
                                         rps("nginx", conns, "plain")), TARGET_REQ_RATIO)
        if verdict == "PASS" and non2xx:
            verdict = f"FAIL ({non2xx} non-2xx)"
        rows.append([f"req/s collector/nginx, plain, c={conns}", value,
                     f"≥ {TARGET_REQ_RATIO}× and 0 non-2xx", verdict])
    for conns in CONNECTIONS:
        for mode in MODES:
            value, verdict = fmt_ratio(ratio(cpu("collector", conns, mode),
                                             cpu("nginx", conns, mode)),
                                       TARGET_CPU_RATIO, higher_is_better=False)
            rows.append([f"CPU-µs/req collector/nginx, {mode}, c={conns}", value,
                         f"≤ {TARGET_CPU_RATIO}×", verdict])
    for conns in CONNECTIONS:
        value, verdict = fmt_ratio(ratio(rps("collector", conns, "pipelined"),
                                         rps("nginx", conns, "pipelined")),
                                   TARGET_PIPELINED_RATIO)
        rows.append([f"pipelined req/s collector/nginx (both pipelined), c={conns}", value,
                     f"≥ {TARGET_PIPELINED_RATIO}×", verdict])
        value, verdict = fmt_ratio(ratio(rps("collector", conns, "pipelined"),
                                         rps("nginx", conns, "plain")), TARGET_PIPELINED_RATIO)
        rows.append([f"pipelined collector / plain nginx, c={conns}", value,
                     f"≥ {TARGET_PIPELINED_RATIO}×", verdict])
    value, verdict = fmt_ratio(ratio(backend.drain_rows_s, backend.insert_rows_s),
                               TARGET_DRAIN_RATIO)
    rows.append(["drain rows/s collector / plain INSERT", value, f"≥ {TARGET_DRAIN_RATIO}×",
                 verdict])
    value, verdict = fmt_ratio(backend.replay_events_s, TARGET_REPLAY_EVENTS_S, suffix="")
    if backend.replay_events_s is not None:
        value = f"{backend.replay_events_s:,.0f} events/s"
    rows.append(["replay rate (WAL read + decode)", value, f"≥ {TARGET_REPLAY_EVENTS_S:,} events/s", verdict])
    rss = [r.rss_mib for r in runs if r.server == "collector"]
    value, verdict = fmt_ratio(max(rss) if rss else None, TARGET_RSS_MIB,
                               higher_is_better=False, suffix=" MiB")
    rows.append(["collector peak RSS", value, f"≤ {TARGET_RSS_MIB} MiB", verdict])
    return rows


def fmt_rate(value, unit="rows/s"):
    return f"{value:,.0f} {unit}" if value is not None else "n/a"


def backend_rows(backend):
    return [
        ["collector tail drain after the HTTP rounds", fmt_rate(backend.tail_drain_rows_s)],
        ["WAL backlog filled (MySQL unreachable)",
         f"{backend.backlog_events:,} events at {backend.fill_rps:,.0f} req/s"
         if backend.backlog_events is not None else "n/a"],
        ["collector replay (its log line)", backend.replay_line or "n/a"],
        ["collector drain, first row → last row",
         fmt_rate(backend.drain_rows_s) + (f" ({backend.drain_rows:,} rows)"
                                           if backend.drain_rows is not None else "")],
        ["collector drain, process start → last row",
         fmt_rate(backend.drain_end_to_end_rows_s)],
        [f"MariaDB plain INSERT ({INSERT_BATCH_ROWS}-row statements, mariadb CLI)",
         fmt_rate(backend.insert_rows_s) + (f" ({backend.ceiling_rows:,} rows)"
                                            if backend.ceiling_rows else "")],
        ["MariaDB LOAD DATA LOCAL INFILE", fmt_rate(backend.load_data_rows_s)],
    ]


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = lambda row: "  ".join(str(x).ljust(w) for x, w in zip(row, widths))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def machine():
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}, " \
           f"Linux {os.uname().release}"


def git_head():
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                         stdout=subprocess.PIPE, text=True, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           stdout=subprocess.PIPE, text=True, check=False).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def per_run_rows(runs):
    return [[str(r.round), str(r.conns), r.mode, r.server, f"{r.wrk.rps:,.0f}",
             str(r.wrk.non2xx), str(r.wrk.socket_errors), latency_ms(r.wrk.p50_us),
             latency_ms(r.wrk.p99_us), latency_ms(r.wrk.p999_us),
             f"{r.cpu_us_per_req:.2f}", f"{r.rss_mib:.1f}", f"{r.server_cpu_pct:.0f}",
             f"{r.wrk_cpu_pct:.0f}"] for r in runs]


PER_RUN_HEADER = ["round", "conns", "mode", "server", "req/s", "non-2xx", "socket errors",
                  "p50 ms", "p99 ms", "p99.9 ms", "CPU-µs/req", "RSS MiB", "server CPU %",
                  "wrk CPU %"]


SATURATED_CPU_PCT = 80


def saturation_notes(runs):
    """Flags req/s comparisons where no process was CPU-bound: the machine's other load, not
    the servers, then set the rates."""
    notes = []
    for conns in CONNECTIONS:
        for mode in MODES:
            medians = [median_of(runs, s, conns, mode, attr)
                       for s in ("nginx", "collector")
                       for attr in (lambda r: r.server_cpu_pct, lambda r: r.wrk_cpu_pct)]
            medians = [m for m in medians if m is not None]
            busiest = max(medians, default=None)
            if busiest is not None and busiest < SATURATED_CPU_PCT:
                notes.append(f"c={conns} {mode}: neither server nor wrk was above "
                             f"{SATURATED_CPU_PCT} % CPU (max {busiest:.0f} %): its req/s "
                             f"reflect the machine's other load; compare CPU-µs/req instead")
    return notes


@dataclass
class Front:
    open_loop: object = None
    many: object = None
    instr_per_req: float = None
    instr_note: str = None


def front_phase(mysql_url, runs, nginx):
    """Phase 5 with a fresh collector (fresh WAL, real MySQL): open loop, many connections,
    callgrind. Its connection cap is raised so that 10,000 clients fit."""
    front = Front()
    best = lambda server: median_of(runs, server, 64, "plain", lambda r: r.wrk.rps)  # noqa: E731
    subprocess.run(["rm", "-rf", str(WAL_DIR) + "-front"], check=True)
    extra = "[http]\nmax_connections_per_core = 12000\n"
    collector = Collector(mysql_url, Path(str(WAL_DIR) + "-front"), "front", extra)
    if not collector.start():
        front.instr_note = "front phase skipped: the collector did not come up"
        return front
    try:
        nginx.start()
        front.open_loop = load_front.open_loop_phase(OWNED, collector.port, best("collector"),
                                                     nginx.port, best("nginx"))
        nginx.stop()
        front.many = load_front.many_phase(collector.port, collector.measured_pid)
    finally:
        collector.stop()
        nginx.stop()
    front.instr_per_req, front.instr_note = load_front.callgrind_instr_per_req(BINARY)
    return front


def front_sections(front):
    """(title, header, rows) of the front-end tables, for stdout and BENCHMARKS.md."""
    sections = []
    if front.open_loop:
        sections.append(("Open loop (oha, --latency-correction, 64 connections)",
                         load_front.OPEN_LOOP_HEADER, load_front.open_loop_rows(front.open_loop)))
    if front.many:
        sections.append((f"{load_front.MANY_CONNS:,} keep-alive connections on one core",
                         ["measurement", "value"], load_front.many_rows(front.many)))
    instr = f"{front.instr_per_req:,.0f}" if front.instr_per_req else "n/a"
    sections.append(("User-space instructions per request (callgrind, 10,000 plain keep-alive "
                     "beacons on 64 connections, after a warm-up)", ["measurement", "value"],
                     [["instructions/request", instr], ["driver / note", front.instr_note or ""]]))
    return sections


def report(runs, backend, collector_note, started, front=None):
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    # PSC_BENCH_NOTE: a free-form line for the record, e.g. where a PSC_BENCH_BINARY came from.
    notes = [n for n in (os.environ.get("PSC_BENCH_NOTE"), collector_note) if n]
    notes += backend.notes
    notes += saturation_notes(runs)
    notes.append(f"load average (1/5/15 min) at start {LOADAVG_AT_START}, at the end "
                 f"{loadavg()}: anything else running on the 2 CPUs skews req/s more than "
                 f"CPU-µs/req")
    notes.append(f"{ROUNDS} rounds × {RUN_S} s per run; plain runs use a fixed file_id, "
                 f"pipelined runs cycle 1024 file_ids ({PIPELINE_DEPTH} requests per write); "
                 f"total wall time {time.monotonic() - started:.0f} s")
    ratios = ratio_rows(runs, backend)
    front = front or Front()
    if front.open_loop and front.many:
        ratios += load_front.target_rows(front.open_loop, front.many, fmt_ratio)
    extra = front_sections(front)
    print("\n== HTTP (medians over rounds)\n" + text_table(SUMMARY_HEADER, summary_rows(runs)))
    print("\n== Back end\n" + text_table(["measurement", "value"], backend_rows(backend)))
    for title, header, rows in extra:
        print(f"\n== {title}\n" + text_table(header, rows))
    print("\n== Ratios vs targets\n" + text_table(["ratio", "value", "target", "verdict"],
                                                  ratios))
    print("\n" + "\n".join(f"note: {n}" for n in notes))
    section = "\n".join([
        "", f"## {stamp} · commit {git_head()}", "", f"Machine: {machine()}.", "",
        f"Collector binary: `{BINARY}`.", "",
        "### HTTP (medians over rounds)", "", markdown_table(SUMMARY_HEADER, summary_rows(runs)),
        "", "### Back end", "", markdown_table(["measurement", "value"], backend_rows(backend)),
        *[part for title, header, rows in extra
          for part in ("", f"### {title}", "", markdown_table(header, rows))],
        "", "### Ratios vs targets", "",
        markdown_table(["ratio", "value", "target", "verdict"], ratios), "",
        *[f"- {n}" for n in notes], "",
        "<details><summary>Every run</summary>", "",
        markdown_table(PER_RUN_HEADER, per_run_rows(runs)), "", "</details>", "",
    ])
    with open(BENCHMARKS_MD, "a") as f:
        f.write(section)
    log(f"appended to {BENCHMARKS_MD.relative_to(REPO)}")


# ---------------------------------------------------------------- main


def best_rps(runs, server, mode):
    values = [r.wrk.rps for r in runs if r.server == server and r.mode == mode]
    return max(values) if values else None


def loadavg():
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


LOADAVG_AT_START = loadavg()


def raise_interrupted(signum, _frame):
    raise Interrupted(f"signal {signum}")


def main():
    started = time.monotonic()
    # SIGINT too: a shell may start us with SIGINT ignored, which Python would keep.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_interrupted)
    VAR.mkdir(exist_ok=True)
    (VAR / "bench-wrk.log").unlink(missing_ok=True)
    collector_note = os.environ.get("PSC_BENCH_SKIP_COLLECTOR")
    db = MariaDb()
    nginx = Nginx()
    collector = None
    runs, backend = [], Backend()
    try:
        mysql_url = db.start()
        db.reset_database()
        subprocess.run(["rm", "-rf", str(WAL_DIR), str(COLLECTOR_DIR)], check=True)
        if collector_note:
            log(f"collector skipped: {collector_note}")
        else:
            collector = Collector(mysql_url, WAL_DIR, "http")
            if not collector.start():
                collector = None
                collector_note = ("collector skipped: it did not come up (see "
                                  "var/bench-collector/http.log)")
        nginx.start()
        runs = http_phase(nginx, collector)
        nginx.stop()
        log(f"HTTP phase done at {time.monotonic() - started:.0f} s")
        if collector:
            collector_backend(db, mysql_url, collector, runs, backend)
            log(f"collector back end done at {time.monotonic() - started:.0f} s")
        front = None
        if collector:
            front = front_phase(mysql_url, runs, nginx)
            log(f"front-end phase done at {time.monotonic() - started:.0f} s")
        rows = backend.drain_rows or CEILING_ROWS_WITHOUT_COLLECTOR
        mariadb_ceiling(db, rows, backend)
        report(runs, backend, collector_note, started, front)
    except (KeyboardInterrupt, Interrupted) as e:
        log(f"interrupted ({e or 'Ctrl-C'}); stopping everything started")
        return 130
    finally:
        OWNED.stop_all()
        db.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
