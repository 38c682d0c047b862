#!/usr/bin/env python3
"""`make load-test`: the collector side by side with nginx and with MariaDB's own ceiling.

Run by scripts/load-test.sh (which installs nginx/wrk and builds the release binary); stdlib
only. Phases, all in one run, everything on 127.0.0.1:

Modules: this file (the phases in order, the report, main), scripts/load_http.py (phase 1),
scripts/load_backend.py (phases 2-4: the back end and MariaDB's ceiling),
scripts/load_clickhouse.py (the ClickHouse drain), scripts/load_front.py (phase 5),
scripts/load_common.py (processes, servers, wrk, tables), scripts/load_cpu.py (cgroups).

1. (scripts/load_http.py) HTTP: for round in 1..ROUNDS, for conns in (64, 256), for mode in (plain, pipelined,
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
import shutil
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
from load_common import (BENCHMARKS_MD, BINARY, COLLECTOR_DIR, FRONT_MYSQL_DIR, PIPELINE_DEPTH,
                         REPO, VAR, WAL_DIR, OWNED, Collector, Interrupted, MariaDb, env_int,
                         fmt_ratio, interrupt_on_signals, log, markdown_table, text_table)
from load_http import (PER_RUN_HEADER, ROUNDS, RUN_S, SUMMARY_HEADER, Nginx, best_rps,
                       http_phase, median_of, per_run_rows, ratio_rows, saturation_notes,
                       summary_rows)
from load_cpu import CPU_GROUPS, IdleDatabase

# Knobs (environment overrides, for a quick smoke run: PSC_BENCH_ROUNDS=1 PSC_BENCH_RUN_S=2).
# PSC_BENCH_FRONT_ONLY=1: phases 1 and 5 only (no back end, no MariaDB ceiling), reported to
# var/bench-front-only.md instead of docs/BENCHMARKS.md; for iterating on the front end.
FRONT_ONLY = env_int("PSC_BENCH_FRONT_ONLY", 0) == 1


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
        servers = {"collector": (collector.port, collector.measured_pid),
                   "nginx": (nginx.port, nginx.measured_pid)}
        front.open_loop = load_front.open_loop_phase(OWNED, servers, best("collector"),
                                                     best("nginx"), db)
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
        sections.append(("Open loop (pload -R -S, pload -R and oha --latency-correction; "
                         "64 connections, one request outstanding on each)",
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
    ratios = ratio_rows(runs) + backend_ratio_rows(backend)
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


def loadavg():
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


LOADAVG_AT_START = loadavg()


def main():
    started = time.monotonic()
    interrupt_on_signals()
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
