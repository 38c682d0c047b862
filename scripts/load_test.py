#!/usr/bin/env python3
"""`make load-test`: the collector side by side with nginx and with MariaDB's own ceiling.

Run by scripts/load-test.sh (which installs nginx/wrk and builds the release binary); stdlib
only. Phases, all in one run, everything on 127.0.0.1:

Modules: this file (the HTTP phase, the report, main), scripts/load_backend.py (phases 2-4:
the back end and MariaDB's ceiling), scripts/load_clickhouse.py (the ClickHouse drain),
scripts/load_common.py (processes, servers, wrk, tables).

1. HTTP: for round in 1..ROUNDS, for conns in (64, 256), for mode in (plain, pipelined,
   pipelined-pload): nginx, then the collector. Both servers are pinned to CPU 0, the
   generator to CPU 1: wrk (1 thread), and for `pipelined-pload` scripts/pload.c, the same
   16-deep batches from a C loop that one wrk thread's Lua cannot match (wrk caps the
   collector's pipelined rate; pload leaves the server CPU-bound). Each collector run starts
   a fresh collector on a fresh WAL and an empty database and stops it afterwards, so that no
   run's delivery backlog keeps mariadbd busy during the next. The HTTP and front-end phases
   use their own MariaDB on tmpfs (load_common.FRONT_MYSQL_DIR), so that its writes never
   share the WAL's disk and ext4 journal, as a database on its own machine would not. That
   mariadbd is idle for the whole phase (load_cpu.IdleDatabase: a cgroup with cpu.idle):
   its LOAD DATA work uses only time the servers and the generator leave idle. Servers and
   generators share one cgroup of the largest weight (load_cpu.CpuGroups), so that neither
   sessions (autogroups) nor other work on the machine decide their share of the CPUs.
   Per run: req/s, non-2xx, socket errors, p50/p99/p99.9 (wrk, closed loop: coordinated
   omission makes tails optimistic), server CPU-us/request (/proc/PID/stat utime+stime,
   all threads; nginx: the worker) and peak RSS (VmHWM; nginx: the worker). The collector's
   CPU is also split by thread (/proc/PID/task/*/stat): its HTTP core against nginx's worker,
   with the flusher's delivery to MySQL and everything else shown apart.
2. (scripts/load_backend.py) Tail drain: the collector's WAL backlog left by phase 1, delivered into MySQL (rows/s over
   a bounded window).
3. Clean back end: fresh WAL, MySQL unreachable, pipelined fill of BACKLOG events; restart
   still unreachable -> the collector's logged replay rate; restart with the real URL ->
   drain rate from 0 to N rows.
4. MariaDB ceiling for the same N rows: 5000-row multi-row INSERTs through the mariadb CLI,
   and LOAD DATA LOCAL INFILE, each into a scratch copy of `events`.
4b. (scripts/load_clickhouse.py) ClickHouse: one WAL backlog drained into a private
   ClickHouse and, from a copy, into MariaDB, beside ClickHouse's own TSV insert of the
   same rows (curl, 1 and N sessions).
5. (scripts/load_front.py) Front end, a fresh collector with the real MySQL: open-loop
   latency with pload and oha at fixed rates (50 % of the collector's best plain rate, and a sweep to the
   rate where p99 passes 10 ms; nginx at 50 % of its own), 10,000 keep-alive connections on
   one core, and user-space instructions per request under callgrind. Phase 1 also attaches
   `perf stat` to each measured process: syscalls and context switches per request.

Every process started here runs in its own session (Ctrl-C reaches only this script), in the
`psc-bench` cpu cgroup where the machine allows it (removed at the end), and is
stopped by its PID in a `finally`, also on SIGINT/SIGTERM/SIGHUP. Results go to stdout and
are appended to docs/BENCHMARKS.md. The collector half is skipped with a message when the
binary is missing or does not come up; the rest still runs.
"""

import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import load_front
from load_clickhouse import clickhouse_phase
from load_backend import (CEILING_ROWS_WITHOUT_COLLECTOR, Backend, backend_ratio_rows,
                          backend_rows, collector_backend, mariadb_ceiling)
from load_common import (BENCHMARKS_MD, BINARY, CLK_TCK, COLLECTOR_DIR, FRONT_MYSQL_DIR,
                         NGINX_DIR, NGINX_TEMPLATE, PIPELINE_DEPTH, PLOAD, REPO, SERVER_CPU,
                         START_TIMEOUT_S, VAR,
                         WAL_DIR, OWNED, Collector, Interrupted, MariaDb,
                         WrkResult,
                         children_of, cpu_split, env_int, fmt_ratio, free_port, log,
                         markdown_table, peak_rss_kib, port_open, ratio, run_wrk, tail,
                         text_table, thread_ticks, wait_until)
from load_cpu import CPU_GROUPS, IdleDatabase

# Knobs (environment overrides, for a quick smoke run: PSC_BENCH_ROUNDS=1 PSC_BENCH_RUN_S=2).
# PSC_BENCH_FRONT_ONLY=1: phases 1 and 5 only (no back end, no MariaDB ceiling), reported to
# var/bench-front-only.md instead of docs/BENCHMARKS.md; for iterating on the front end.
FRONT_ONLY = env_int("PSC_BENCH_FRONT_ONLY", 0) == 1
ROUNDS = env_int("PSC_BENCH_ROUNDS", 3)
RUN_S = env_int("PSC_BENCH_RUN_S", 8)
CONNECTIONS = (64, 256)
# `pipelined-pload` needs target/pload (scripts/load-test.sh builds it with cc).
MODES = ("plain", "pipelined") + (("pipelined-pload",) if PLOAD.exists() else ())
PIPELINED = [m for m in MODES if m.startswith("pipelined")]
# Targets of the issue, printed next to the measured ratios.
TARGET_REQ_RATIO = 1.0
TARGET_CPU_RATIO = 0.70
TARGET_PIPELINED_RATIO = 10.0
TARGET_RSS_MIB = 64


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
    # CPU-us/request by thread group (load_common.THREAD_GROUPS, "other", "total").
    cpu_split_us_per_req: dict = None


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
    threads_before, wrk_before = thread_ticks(pid), children_cpu_s()
    result = run_wrk(server.port, conns, mode, RUN_S, VAR / "bench-wrk.log")
    threads_after, wrk_after = thread_ticks(pid), children_cpu_s()
    syscalls, switches = perf.finish()
    split = cpu_split(threads_before, threads_after)
    cpu_us = split["total"] * 1e6 / CLK_TCK
    wall_us = result.duration_s * 1e6
    run = Run(rnd, conns, mode, name, result,
              cpu_us / result.requests if result.requests else float("nan"),
              peak_rss_kib(pid) / 1024,
              100 * cpu_us / wall_us if wall_us else float("nan"),
              100 * (wrk_after - wrk_before) * 1e6 / wall_us if wall_us else float("nan"),
              syscalls / result.requests if syscalls is not None and result.requests else None,
              switches / result.requests if switches is not None and result.requests else None,
              {k: v * 1e6 / CLK_TCK / result.requests for k, v in split.items()}
              if result.requests else None)
    log(f"round {rnd} c={conns:<3} {mode:<9} {name:<9} {result.rps:>11,.0f} req/s  "
        f"non2xx={result.non2xx} sockerr={result.socket_errors} "
        f"p50/p99/p99.9={latency_ms(result.p50_us)}/{latency_ms(result.p99_us)}/"
        f"{latency_ms(result.p999_us)} ms "
        f"cpu={run.cpu_us_per_req:.2f}us/req rss={run.rss_mib:.1f}MiB "
        f"busy server/wrk={run.server_cpu_pct:.0f}%/{run.wrk_cpu_pct:.0f}%"
        + (f" threads={split_text(run)}" if name == "collector" else ""))
    return run


def split_text(run):
    """`core/io-wq/flusher/other` CPU-us per request of one collector run."""
    s = run.cpu_split_us_per_req
    return "/".join(f"{s[k]:.2f}" for k in SPLIT_KEYS) if s else "n/a"


SPLIT_KEYS = ("core", "io-wq", "flusher", "other")


def split_median(sel):
    """Median per thread group over the runs `sel`, as `split_text` shows one run."""
    if not all(r.cpu_split_us_per_req for r in sel):
        return "n/a"
    return "/".join(f"{statistics.median(r.cpu_split_us_per_req[k] for r in sel):.2f}"
                    for k in SPLIT_KEYS)


def http_phase(nginx, collector, db):
    runs = []
    for rnd in range(1, ROUNDS + 1):
        for conns in CONNECTIONS:
            for mode in MODES:
                runs.append(measure(nginx, "nginx", rnd, conns, mode))
                if collector and fresh_start(collector, db):
                    runs.append(measure(collector, "collector", rnd, conns, mode))
                    collector.stop()
    return runs


def fresh_start(collector, db):
    """Every collector run starts on a fresh WAL and an empty database, and the collector is
    stopped after it: a pipelined run leaves millions of events to deliver, and their delivery
    would keep mariadbd (not pinned) busy on both CPUs through the next runs, nginx's too."""
    collector.stop()
    db.reset_database()
    subprocess.run(["rm", "-rf", str(collector.wal_dir)], check=True)
    return collector.start()


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
                    split_median(sel) if server == "collector" else "-",
                ])
    return rows


def per_req(value):
    return f"{value:.3f}" if value is not None else "n/a"


SUMMARY_HEADER = ["conns", "mode", "server", "req/s (median)", "non-2xx (sum)",
                  "socket errors (sum)", "p50 ms", "p99 ms", "p99.9 ms", "CPU-µs/req",
                  "peak RSS MiB", "server CPU %", "wrk CPU %", "syscalls/req", "ctx-sw/req",
                  "CPU-µs/req by thread: core/io-wq/flusher/other"]


def ratio_rows(runs, backend):
    rps = lambda s, c, m: median_of(runs, s, c, m, lambda r: r.wrk.rps)  # noqa: E731
    cpu = lambda s, c, m: median_of(runs, s, c, m, lambda r: r.cpu_us_per_req)  # noqa: E731
    core_cpu = lambda c, m: median_of(  # noqa: E731
        runs, "collector", c, m,
        lambda r: r.cpu_split_us_per_req["core"] if r.cpu_split_us_per_req else float("nan"))
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
        # The same with only the collector's HTTP core thread: what nginx's worker does, without
        # the delivery to MySQL (which nginx never does). The row above stays the target.
        value, verdict = fmt_ratio(ratio(core_cpu(conns, "plain"), cpu("nginx", conns, "plain")),
                                   TARGET_CPU_RATIO, higher_is_better=False)
        rows.append([f"CPU-µs/req collector core thread only/nginx, plain, c={conns}", value,
                     f"≤ {TARGET_CPU_RATIO}× (whole process is the target)", verdict])
    for conns in CONNECTIONS:
        for mode in PIPELINED:
            value, verdict = fmt_ratio(ratio(rps("collector", conns, mode),
                                             rps("nginx", conns, mode)), TARGET_PIPELINED_RATIO)
            rows.append([f"{mode} req/s collector/nginx (both pipelined), c={conns}", value,
                         f"≥ {TARGET_PIPELINED_RATIO}×", verdict])
            value, verdict = fmt_ratio(ratio(rps("collector", conns, mode),
                                             rps("nginx", conns, "plain")),
                                       TARGET_PIPELINED_RATIO)
            rows.append([f"{mode} collector / plain nginx, c={conns}", value,
                         f"≥ {TARGET_PIPELINED_RATIO}×", verdict])
    rows += backend_ratio_rows(backend)
    rss = [r.rss_mib for r in runs if r.server == "collector"]
    value, verdict = fmt_ratio(max(rss) if rss else None, TARGET_RSS_MIB,
                               higher_is_better=False, suffix=" MiB")
    rows.append(["collector peak RSS", value, f"≤ {TARGET_RSS_MIB} MiB", verdict])
    return rows


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
             f"{r.wrk_cpu_pct:.0f}", split_text(r) if r.server == "collector" else "-"]
            for r in runs]


PER_RUN_HEADER = ["round", "conns", "mode", "server", "req/s", "non-2xx", "socket errors",
                  "p50 ms", "p99 ms", "p99.9 ms", "CPU-µs/req", "RSS MiB", "server CPU %",
                  "wrk CPU %", "CPU-µs/req by thread: core/io-wq/flusher/other"]
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
    instr_core_per_req: float = None
    instr_note: str = None


def front_phase(mysql_url, runs, nginx, db):
    """Phase 5 with a fresh collector (fresh WAL, real MySQL): open loop, many connections,
    callgrind. Its connection cap is raised so that 10,000 clients fit."""
    front = Front()
    best = lambda server: median_of(runs, server, 64, "plain", lambda r: r.wrk.rps)  # noqa: E731
    wal_dir = Path(str(WAL_DIR) + "-front")
    subprocess.run(["rm", "-rf", str(wal_dir)], check=True)
    collector = Collector(mysql_url, wal_dir, "front",
                          tail_toml="[http]\nmax_connections_per_core = 12000\n")
    if not collector.start():
        front.instr_note = "front phase skipped: the collector did not come up"
        return front
    try:
        nginx.start()
        front.open_loop = load_front.open_loop_phase(OWNED, collector.port, best("collector"),
                                                     nginx.port, best("nginx"), db)
        nginx.stop()
        front.many = load_front.many_phase(collector.port, collector.measured_pid)
    finally:
        collector.stop()
        nginx.stop()
    front.instr_per_req, front.instr_core_per_req, front.instr_note = \
        load_front.callgrind_instr_per_req(BINARY)
    return front


def front_sections(front):
    """(title, header, rows) of the front-end tables, for stdout and BENCHMARKS.md."""
    sections = []
    if front.open_loop:
        sections.append(("Open loop (pload -R and oha --latency-correction; 64 connections, "
                         "one request outstanding on each)",
                         load_front.OPEN_LOOP_HEADER, load_front.open_loop_rows(front.open_loop)))
    if front.many:
        sections.append((f"{load_front.MANY_CONNS:,} keep-alive connections on one core",
                         ["measurement", "value"], load_front.many_rows(front.many)))
    instr = lambda v: f"{v:,.0f}" if v else "n/a"  # noqa: E731
    sections.append(("User-space instructions per request (callgrind, 10,000 plain keep-alive "
                     "beacons on 64 connections, after a warm-up)", ["measurement", "value"],
                     [["instructions/request, all threads", instr(front.instr_per_req)],
                      ["instructions/request, core thread (the stable figure)",
                       instr(front.instr_core_per_req)],
                      ["driver / note", front.instr_note or ""]]))
    return sections


def report(runs, backend, collector_note, started, front=None):
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    # PSC_BENCH_NOTE: a free-form line for the record, e.g. where a PSC_BENCH_BINARY came from.
    notes = [n for n in (os.environ.get("PSC_BENCH_NOTE"), collector_note) if n]
    notes += backend.notes
    notes += saturation_notes(runs)
    notes.append(f"scheduling: every server and generator in {CPU_GROUPS.mode} "
                 "(scripts/load_cpu.py CpuGroups)")
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
    target = VAR / "bench-front-only.md" if FRONT_ONLY else BENCHMARKS_MD
    with open(target, "a") as f:
        f.write(section)
    log(f"appended to {target.relative_to(REPO)}")


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
    front_db = MariaDb(FRONT_MYSQL_DIR)
    nginx = Nginx()
    collector = None
    runs, backend = [], Backend()
    CPU_GROUPS.setup()
    log(f"processes are weighed by {CPU_GROUPS.mode}")
    try:
        mysql_url = db.start()
        db.reset_database()
        front_url = front_db.start()
        front_db.reset_database()
        subprocess.run(["rm", "-rf", str(WAL_DIR), str(COLLECTOR_DIR)], check=True)
        if collector_note:
            log(f"collector skipped: {collector_note}")
        else:
            # A short drain on stop: each run's backlog is thrown away (see fresh_start).
            collector = Collector(front_url, WAL_DIR, "http",
                                  server_keys="shutdown_timeout_ms = 1000\n")
            if not collector.start():
                collector = None
                collector_note = ("collector skipped: it did not come up (see "
                                  "var/bench-collector/http.log)")
        nginx.start()
        # mariadbd shares the 2 CPUs; idle, its delivery work stays off the measured servers'
        # and the generator's CPU time, as a database on its own machine would.
        with IdleDatabase(front_db):
            runs = http_phase(nginx, collector, front_db)
        nginx.stop()
        log(f"HTTP phase done at {time.monotonic() - started:.0f} s")
        if collector and FRONT_ONLY:
            backend.notes.append("PSC_BENCH_FRONT_ONLY=1: no back-end phases")
        elif collector:
            acked = sum(r.wrk.acked for r in runs if r.server == "collector")
            collector_backend(db, mysql_url, collector, acked,
                              best_rps(runs, "collector", "pipelined"), backend, front_db)
            log(f"collector back end done at {time.monotonic() - started:.0f} s")
            clickhouse_phase(db, mysql_url, backend)
            log(f"ClickHouse phase done at {time.monotonic() - started:.0f} s")
        front = None
        if collector:
            # The back-end phases leave their MariaDB purging and flushing for minutes.
            with IdleDatabase(db):
                front = front_phase(front_url, runs, nginx, front_db)
            log(f"front-end phase done at {time.monotonic() - started:.0f} s")
        if not FRONT_ONLY:
            mariadb_ceiling(db, backend.drain_rows or CEILING_ROWS_WITHOUT_COLLECTOR, backend)
        report(runs, backend, collector_note, started, front)
    except (KeyboardInterrupt, Interrupted) as e:
        log(f"interrupted ({e or 'Ctrl-C'}); stopping everything started")
        return 130
    finally:
        OWNED.stop_all()
        db.stop()
        front_db.stop()
        shutil.rmtree(FRONT_MYSQL_DIR, ignore_errors=True)  # tmpfs: it holds RAM
        CPU_GROUPS.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
