"""`make front-floor` (issue 13): the kernel's floor under the front end. Stdlib only.

The plain CPU target (collector ≤ 0.70× nginx's CPU-µs per request) asks how much of a
request's cost the server's own code can remove at all. This runs, side by side and alternated
in every round, nginx (`return 204`), the collector (`cores = 1`, MySQL unreachable, a fresh WAL
each round) and scripts/floor204.c, a bare 204 server that parses nothing, in each socket shape
a front end can have (see its header): nginx's epoll loop, monoio's single-shot recv/send with
COOP_TASKRUN, the same with DEFER_TASKRUN, multishot recv into a provided buffer ring, and the
io_uring shapes again with the collector's ack rule (each loop turn's requests written to a
file, answered when the write completes). Each server on CPU 0 (`taskset`), wrk on CPU 1, the
same wrk runs as phase 1 of `make load-test` (scripts/load_http.py `measure`: CPU-µs per
request from /proc, syscalls and context switches from `perf stat`).

Prints a markdown table of medians per server and connection count, with each one's ratio to
nginx's CPU-µs per request in the same rounds, and its user/system split. PSC_FLOOR_ROUNDS
(default 5), PSC_BENCH_RUN_S (default 8), PSC_FLOOR_CONNS (default "64 256");
PSC_FLOOR_ALT_BINARY: a second collector build, measured as "collector alt" in every round
(an A/B of a front-end change in the same rounds); PSC_FLOOR_MODE: `plain` (default) or
`pipelined` (phase 1's 16-deep wrk pipeline); PSC_FLOOR_SHAPES: the floor204 shapes to run,
comma-separated names as in the table (default all; `none` for nginx and the collectors only).
"""

import os
import statistics
import subprocess
import sys
from pathlib import Path

from load_common import (BINARY, COLLECTOR_DIR, OWNED, REPO, SERVER_CPU, START_TIMEOUT_S,
                         VAR, Collector, Interrupted, env_int, free_port, interrupt_on_signals,
                         log, markdown_table, port_open, tail, user_sys_ticks, wait_until)
from load_cpu import CPU_GROUPS
from load_http import Nginx, measure, median_or_none

FLOOR = REPO / "target" / "floor204"
FLOOR_DIR = VAR / "bench-floor"
ROUNDS = env_int("PSC_FLOOR_ROUNDS", 5)
CONNS = [int(c) for c in os.environ.get("PSC_FLOOR_CONNS", "64 256").split()]
# Nothing listens on port 9 (discard): the flusher retries in the background, as in phase 1's
# backlog runs, and no database shares the CPUs.
UNREACHABLE_MYSQL = "mysql://root@127.0.0.1:9/psc"
WAL_FILE = FLOOR_DIR / "floor.wal"
ALT_BINARY = os.environ.get("PSC_FLOOR_ALT_BINARY")
MODE = os.environ.get("PSC_FLOOR_MODE", "plain")
ALL_SHAPES = (
    ("floor epoll", ["-m", "epoll"]),
    ("floor uring", ["-m", "uring"]),
    ("floor uring defer", ["-m", "uring", "-d"]),
    ("floor multishot", ["-m", "multishot"]),
    ("floor multishot defer", ["-m", "multishot", "-d"]),
    ("floor uring +wal", ["-m", "uring", "-w", str(WAL_FILE)]),
    ("floor multishot defer +wal", ["-m", "multishot", "-d", "-w", str(WAL_FILE)]),
)
SHAPE_NAMES = os.environ.get("PSC_FLOOR_SHAPES")
SHAPES = ALL_SHAPES if SHAPE_NAMES is None else tuple(
    shape for shape in ALL_SHAPES if shape[0] in SHAPE_NAMES.split(","))
if MODE not in ("plain", "pipelined"):
    sys.exit(f"PSC_FLOOR_MODE={MODE!r}: plain or pipelined")
if SHAPE_NAMES is not None and set(SHAPE_NAMES.split(",")) - dict(ALL_SHAPES).keys() - {"none"}:
    sys.exit(f"PSC_FLOOR_SHAPES={SHAPE_NAMES!r}: a name that is not a shape")


class Floor:
    """target/floor204 in one shape, pinned to the server CPU."""

    def __init__(self, args):
        self.args = args
        self.proc = None
        self.port = None

    def start(self):
        self.port = free_port()
        out = open(FLOOR_DIR / "floor204.log", "a")
        self.proc = OWNED.spawn("floor204", ["taskset", "-c", SERVER_CPU, str(FLOOR), "-p",
                                             str(self.port)] + self.args, stdout=out, stderr=out)
        if not wait_until(lambda: port_open(self.port), START_TIMEOUT_S):
            raise RuntimeError(f"floor204 {self.args} did not listen:\n"
                               f"{tail(FLOOR_DIR / 'floor204.log')}")

    @property
    def measured_pid(self):
        return self.proc.pid

    def stop(self):
        OWNED.stop(self.proc)
        WAL_FILE.unlink(missing_ok=True)


def one_run(name, server, rnd, conns):
    """measure() plus the user/system split of the same window."""
    before = user_sys_ticks(server.measured_pid)
    run = measure(server, name, rnd, conns, MODE)
    after = user_sys_ticks(server.measured_pid)
    user, system = after[0] - before[0], after[1] - before[1]
    run.sys_pct = 100 * system / (user + system) if user + system else float("nan")
    return run


def fresh_collector(binary):
    subprocess.run(["rm", "-rf", str(FLOOR_DIR / "wal")], check=True)
    collector = Collector(UNREACHABLE_MYSQL, FLOOR_DIR / "wal", "floor",
                          server_keys="shutdown_timeout_ms = 1000\n", binary=Path(binary))
    if not collector.start():
        raise RuntimeError(f"the collector did not start; see {collector.log_path}")
    return collector


def round_of(rnd):
    """One round: every server once per connection count, in an order rotated per round."""
    names = (["nginx", "collector"] + (["collector alt"] if ALT_BINARY else [])
             + [name for name, _ in SHAPES])
    shift = rnd % len(names)
    runs = []
    for name in names[shift:] + names[:shift]:
        if name == "nginx":
            server = Nginx()
            server.start()
        elif name.startswith("collector"):
            server = fresh_collector(ALT_BINARY if name == "collector alt" else BINARY)
        else:
            server = Floor(dict(SHAPES)[name])
            server.start()
        try:
            runs += [one_run(name, server, rnd, conns) for conns in CONNS]
        finally:
            server.stop()
    return runs


def median_text(runs, attr, spec):
    """The median of `attr` over `runs` formatted with `spec`, or n/a when no run has one."""
    value = median_or_none([getattr(r, attr) for r in runs])
    return "n/a" if value is None else format(value, spec)


def table(runs):
    rows = []
    for conns in CONNS:
        at = [r for r in runs if r.conns == conns]
        nginx = {r.round: r.cpu_us_per_req for r in at if r.server == "nginx"}
        for name in dict.fromkeys(r.server for r in at):
            mine = [r for r in at if r.server == name]
            # The ratio per round, then the median: each round's pair ran minutes apart at most.
            ratio = statistics.median(r.cpu_us_per_req / nginx[r.round] for r in mine)
            rows.append([str(conns), name, median_text(mine, "cpu_us_per_req", ".2f"),
                         f"{ratio:.2f}×", " / ".join(f"{r.cpu_us_per_req:.2f}" for r in mine),
                         median_text([r.wrk for r in mine], "rps", ",.0f"),
                         median_text(mine, "sys_pct", ".0f") + " %",
                         median_text(mine, "syscalls_per_req", ".3f"),
                         median_text(mine, "ctx_switches_per_req", ".3f"),
                         median_text(mine, "server_cpu_pct", ".0f") + " / "
                         + median_text(mine, "wrk_cpu_pct", ".0f")])
    return markdown_table(["conns", "server", "CPU-µs/req (median)", "÷ nginx (median of rounds)",
                           "CPU-µs/req by round", "req/s", "system share", "syscalls/req",
                           "ctx-sw/req", "busy % server / wrk"], rows)


def main():
    interrupt_on_signals()
    FLOOR_DIR.mkdir(parents=True, exist_ok=True)
    COLLECTOR_DIR.mkdir(parents=True, exist_ok=True)
    CPU_GROUPS.setup()
    runs = []
    try:
        for rnd in range(1, ROUNDS + 1):
            runs += round_of(rnd)
        print(table(runs))
    except (KeyboardInterrupt, Interrupted) as e:
        log(f"interrupted ({e}); stopping everything started")
        return 130
    finally:
        OWNED.stop_all()
        CPU_GROUPS.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
