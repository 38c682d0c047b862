"""Front-end phases of `make load-test` (issue 13), run by scripts/load_test.py after its
closed-loop wrk rounds; stdlib only.

- Open loop, with generators that all charge a stall to every request scheduled during it
  (no coordinated omission): scripts/pload.c (`-R`: a fixed schedule per connection, one
  request outstanding, latency from the scheduled time, wrk2's model; one C thread on epoll),
  the same with `-S` ("pload-spin": it polls instead of sleeping, so no request waits for the
  generator's own wake-up), and oha (`cargo install oha`, cached in ~/.cargo/bin) with
  `--latency-correction`. p50/p99/p99.9 at 50 % of the collector's own best plain rate, and
  a sweep of rates (pload-spin, or oha without pload) to find where p99 passes 10 ms (twice
  in a row at one rate). nginx at 50 % of its own rate, for scale.
  Each generator's own CPU share is reported with each run: oha, a multi-threaded tokio
  program, used 17-47 % of its CPU at these rates and its p99 showed milliseconds that nginx's
  `return 204` showed too; sleeping pload used 85-90 % of its CPU at 80k req/s, most of it in
  the kernel waking the server's CPU and its own. So the target is read from pload-spin, with
  the others beside it. pload also counts stall episodes (answers 1 ms or more late, each
  episode once): on this VM they come from the platform (docs/BENCHMARKS.md, Method) as often
  for nginx as for the collector.
  The private MariaDB shares the 2 CPUs: its bursts of LOAD DATA work preempt the collector
  or the generator for milliseconds (pload's p99 at 25k req/s: 4.7 ms with it at normal
  priority, 0.43 ms with it SCHED_IDLE). So the first run at 50 % has mariadbd at normal
  priority; then mariadbd is made idle (`IdleDatabase`: the cpu.idle cgroup; it still
  delivers, on CPU time nobody else wants, as a database on its own machine would) for the
  other runs and put back afterwards. The target is read with
  mariadbd idle. Next to
  oha's percentiles: the collector's own, from its `ingest_http_answer_seconds` histogram
  (a read's completion to the write of its answers) scraped before and after the run, as the
  bucket bound they fall under; what oha sees above them happens outside the core loop
  (kernel, scheduler, the generator). Beside each run at 50 %: the machine's own floor,
  scripts/hiccup.c on both CPUs just before it (the p99 a server costing nothing would show at
  50 % load from the stalls the machine alone imposes), and the host's steal time on both CPUs
  during it (/proc/stat); the target rows add p99 ÷ floor per server.
- Many connections: 10,000 keep-alive connections on one core, each sending a beacon every
  PSC_BENCH_IDLE_S seconds (default 3) at a random phase, for PSC_BENCH_MANY_S seconds:
  every answer must be a 204, no connection may fail; the collector's RSS is reported.
- Per-request counts of the HTTP runs: `perf stat -e raw_syscalls:sys_enter,context-switches`
  attached to the measured process (see `PerfStat`), and user-space instructions per request
  over a fixed request stream under callgrind (scripts/front_counts.py).

Every process started here is stopped by its PID (the caller's `Owned` registry).
"""

import asyncio
import functools
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from load_common import (CLK_TCK, PLOAD, SERVER_CPU, VAR, children_cpu_s, cpu_ticks,
                         run_hiccup, run_pload)
from load_cpu import IdleDatabase

URL_PATH = "/log?event=play&domain=piratka.biz&file_id=109454"
CLIENT_CPU = "1"
OPEN_LOOP_S = int(os.environ.get("PSC_BENCH_OPEN_LOOP_S", 8))
# Runs of the target's generator at 50 % with mariadbd idle, collector and nginx in turn: the
# target reads the median p99 (one run's p99 moved 0.4-2.5 ms from run to run, nginx's too).
OPEN_LOOP_ROUNDS = int(os.environ.get("PSC_BENCH_OPEN_LOOP_ROUNDS", 3))
SWEEP_S = int(os.environ.get("PSC_BENCH_SWEEP_S", 4))
SWEEP_FRACTIONS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25)
OPEN_LOOP_CONNS = 64
# Seconds of scripts/hiccup.c on both CPUs just before each run at 50 % (0: none).
FLOOR_S = int(os.environ.get("PSC_BENCH_FLOOR_S", 3))
P99_KNEE_MS = 10.0
MANY_CONNS = int(os.environ.get("PSC_BENCH_MANY_CONNS", 10_000))
MANY_IDLE_S = float(os.environ.get("PSC_BENCH_IDLE_S", 3))
MANY_S = int(os.environ.get("PSC_BENCH_MANY_S", 30))
TARGET_OPEN_P99_MS = 1.0
TARGET_MANY_RSS_MIB = 128


def log(msg):
    print(f"load-test: {msg}", flush=True, file=__import__("sys").stderr)


# ---------------------------------------------------------------- perf stat per run


class PerfStat:
    """`perf stat` attached to a process for the length of one run; counts or None."""

    EVENTS = "raw_syscalls:sys_enter,context-switches"

    def __init__(self, owned, pid, out_path):
        self.proc = None
        self.out = out_path
        if shutil.which("perf"):
            self.proc = owned.spawn("perf", ["perf", "stat", "-x", ",", "-o", str(out_path),
                                             "-e", self.EVENTS, "-p", str(pid)],
                                    stop_signal=signal.SIGINT, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        self.owned = owned

    def finish(self):
        """(syscalls, context switches) since the start, or (None, None)."""
        if not self.proc:
            return None, None
        self.owned.stop(self.proc)
        counts = {}
        try:
            for line in Path(self.out).read_text().splitlines():
                parts = line.split(",")
                if len(parts) > 3 and parts[0].replace(".", "").isdigit():
                    counts[parts[2]] = float(parts[0])
        except OSError:
            return None, None
        return counts.get("raw_syscalls:sys_enter"), counts.get("context-switches")


# ---------------------------------------------------------------- open loop (oha)


@dataclass
class OpenLoop:
    server: str
    rate: float
    achieved: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    errors: int
    non2xx: int
    gen_cpu_pct: float = None  # the generator's CPU time over the run's wall time
    generator: str = "oha"  # "pload-spin", "pload" or "oha"
    stalls_per_s: float = None  # pload: episodes of answers >= 1 ms late, per second
    idle_polls_per_s: float = None  # pload-spin: empty polls per second (0: it was saturated)
    server_p99_ms: float = None  # bucket bound of the collector's own p99 (None: not scraped)
    server_p999_ms: float = None
    db_idle: bool = False  # mariadbd was idle during the run (set by `open_run`)
    floor: dict = None  # scripts/hiccup.c's line just before the run (None: not measured)
    steal_ms: tuple = None  # the host's steal time on (server CPU, client CPU) during the run


def oha_binary():
    found = shutil.which("oha") or str(Path.home() / ".cargo" / "bin" / "oha")
    return found if Path(found).exists() else None


def ensure_oha():
    """oha from crates.io, built once into ~/.cargo/bin (a few minutes the first time)."""
    if oha_binary():
        return oha_binary()
    log("installing oha with `cargo install oha` (cached afterwards)")
    rc = subprocess.run(["cargo", "install", "--locked", "oha"], check=False).returncode
    return oha_binary() if rc == 0 else None


ANSWER_BUCKET = re.compile(rb'^ingest_http_answer_seconds_bucket\{le="([^"]+)"\} (\d+)', re.M)


def answer_buckets(port):
    """Cumulative `(le seconds, count)` of the collector's answer histogram, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /metrics?format=prometheus HTTP/1.1\r\nHost: x\r\n"
                      b"Connection: close\r\n\r\n")
            text = b""
            while chunk := s.recv(65536):
                text += chunk
    except OSError:
        return None
    found = [(float(le), int(n)) for le, n in ANSWER_BUCKET.findall(text)]
    return found or None


def bucket_quantile_ms(before, after, q):
    """Upper bound (ms) of the bucket holding quantile `q` of what was observed in between."""
    if not before or not after or len(before) != len(after):
        return None
    counts = [(le, n - m) for (le, n), (_, m) in zip(after, before)]
    total = counts[-1][1]
    if total <= 0:
        return None
    return next(le * 1000 for le, n in counts if n >= q * total)


def run_oha(owned, oha, port, rate, duration_s, server):
    argv = ["taskset", "-c", CLIENT_CPU, oha, "-z", f"{duration_s}s", "-q", str(int(rate)),
            "-c", str(OPEN_LOOP_CONNS), "--latency-correction", "--no-tui",
            "--output-format", "json", f"http://127.0.0.1:{port}{URL_PATH}"]
    cpu_before, started = children_cpu_s(), time.monotonic()
    proc = owned.spawn("oha", argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=duration_s + 60)
    finally:
        owned.stop(proc)
    oha_cpu_pct = 100 * (children_cpu_s() - cpu_before) / (time.monotonic() - started)
    try:
        doc = json.loads(out)
    except json.JSONDecodeError as e:
        raise RuntimeError(f"oha printed no JSON ({e}): {err[-2000:]}")
    pct = doc.get("latencyPercentiles", {})
    codes = doc.get("statusCodeDistribution", {})
    summary = doc.get("summary", {})
    ms = lambda key: (pct.get(key) or 0) * 1000  # noqa: E731
    return OpenLoop(server, rate, summary.get("requestsPerSec", 0.0), ms("p50"), ms("p99"),
                    ms("p99.9"), sum(doc.get("errorDistribution", {}).values()),
                    sum(n for c, n in codes.items() if not str(c).startswith("2")), oha_cpu_pct,
                    "oha")


def run_pload_open(port, rate, duration_s, server, spin=False):
    """One open-loop run of scripts/pload.c (see load_common.run_pload); `spin`: pload -S."""
    doc = run_pload(port, OPEN_LOOP_CONNS, duration_s, VAR / "bench-pload.log", rate=rate,
                    spin=spin)
    ms = lambda key: doc[key] / 1000  # noqa: E731
    per_s = lambda key: doc[key] * 1e6 / doc["duration_us"]  # noqa: E731
    return OpenLoop(server, rate, per_s("requests"), ms("p50_us"), ms("p99_us"), ms("p999_us"),
                    doc["errors"], doc["non2xx"], 100 * doc["cpu_us"] / doc["duration_us"],
                    "pload-spin" if spin else "pload", per_s("stalls"),
                    per_s("idle_polls") if spin else None)


def open_run(generator, port, rate, duration_s, server, db_idle=False, quiet_pid=None):
    """One open-loop run by `generator` (`run_pload_open`'s signature), with the collector's
    own p99/p99.9 read from its answer histogram, scraped before and after. With `quiet_pid`
    (the server's process), the machine's own floor at 50 % load comes first: hiccup on both
    CPUs once that process has gone quiet (a collector still delivering the last run's events
    would count as the machine's)."""
    floor = None
    if quiet_pid and FLOOR_S > 0:
        wait_quiet(quiet_pid)
        floor = run_hiccup(FLOOR_S, VAR / "bench-hiccup.log", 0.5)
    before = answer_buckets(port) if server == "collector" else None
    steal_before = steal_ticks()
    run = generator(port, rate, duration_s, server)
    steal_after = steal_ticks()
    after = answer_buckets(port) if before else None
    if steal_before and steal_after:
        run.steal_ms = tuple(1000 * (steal_after[cpu] - steal_before[cpu]) / CLK_TCK
                             for cpu in (SERVER_CPU, CLIENT_CPU))
    run.server_p99_ms = bucket_quantile_ms(before, after, 0.99)
    run.server_p999_ms = bucket_quantile_ms(before, after, 0.999)
    run.db_idle = db_idle
    run.floor = floor
    return run


def steal_ticks():
    """{cpu number as a string: steal clock ticks} from /proc/stat (the 8th value of each
    `cpuN` line: time the host ran something else while this vCPU wanted to run), or None."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    rows = (line.split() for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    found = {row[0][3:]: int(row[8]) for row in rows if len(row) > 8}
    return found if SERVER_CPU in found and CLIENT_CPU in found else None


def wait_quiet(pid, timeout_s=10.0, step_s=0.25):
    """Until `pid` uses at most one clock tick of CPU in `step_s`, for `timeout_s` at most."""
    deadline = time.monotonic() + timeout_s
    last = cpu_ticks(pid)
    while time.monotonic() < deadline:
        time.sleep(step_s)
        now = cpu_ticks(pid)
        if now - last <= 1:
            return
        last = now


@dataclass
class OpenLoopResult:
    at_half: list = field(default_factory=list)  # OpenLoop at 50 % (collector, nginx)
    sweep: list = field(default_factory=list)  # collector at each fraction
    knee_rate: float = None  # first swept rate where p99 > 10 ms twice (None: none did)
    note: str = None


def open_loop_phase(owned, servers, collector_max, nginx_max, db):
    """pload -S at 50 % with mariadbd at normal priority; then, with mariadbd idle, pload -S
    (OPEN_LOOP_ROUNDS times), pload and oha at 50 % for each server and the sweep with the
    first of them. `servers`: {"collector": (port, pid), "nginx": (port, pid)}; each
    run at 50 % has the machine's floor measured just before it."""
    result = OpenLoopResult()
    oha = ensure_oha()
    runners = []
    if PLOAD.exists():
        runners += [functools.partial(run_pload_open, spin=True), run_pload_open]
    if oha:
        runners.append(lambda port, rate, secs, server: run_oha(owned, oha, port, rate, secs,
                                                                server))
    if not runners or not collector_max:
        result.note = "open-loop phase skipped: " + ("neither pload nor oha is there"
                                                     if not runners else
                                                     "no collector rate measured")
        return result
    collector_port, collector_pid = servers["collector"]
    nginx_port, nginx_pid = servers["nginx"]
    half = functools.partial(open_run, duration_s=OPEN_LOOP_S)
    result.at_half.append(half(runners[0], collector_port, collector_max / 2, server="collector",
                               quiet_pid=collector_pid))
    with IdleDatabase(db) as idle:
        for gen in runners:
            for _ in range(OPEN_LOOP_ROUNDS if gen is runners[0] else 1):
                result.at_half.append(half(gen, collector_port, collector_max / 2,
                                           server="collector", db_idle=idle,
                                           quiet_pid=collector_pid))
                if nginx_max:
                    result.at_half.append(half(gen, nginx_port, nginx_max / 2, server="nginx",
                                               db_idle=idle, quiet_pid=nginx_pid))
        sweep(runners[0], collector_port, collector_max, idle, result)
    return result


def sweep(runner, port, collector_max, idle, result):
    """`runner` at each of SWEEP_FRACTIONS of `collector_max`, until p99 passes 10 ms in two
    runs in a row at one rate: that rate is the knee. One run is not enough here: at 50 % one
    sweep run gave 21.7 ms where the three runs just before it at the same rate gave 1.6-2.3."""
    for fraction in SWEEP_FRACTIONS:
        for _ in range(2):
            run = open_run(runner, port, collector_max * fraction, SWEEP_S, "collector", idle)
            result.sweep.append(run)
            log(f"open loop ({run.generator}) {fraction:.0%} of {collector_max:,.0f}: "
                f"{run.achieved:,.0f} req/s p99 {run.p99_ms:.2f} ms p99.9 {run.p999_ms:.2f} ms "
                f"generator CPU {run.gen_cpu_pct:.0f} % stalls {run.stalls_per_s or 0:.1f}/s "
                f"server p99/p99.9 ≤ "
                f"{bound_ms(run.server_p99_ms)}/{bound_ms(run.server_p999_ms)} ms")
            if run.p99_ms <= P99_KNEE_MS:
                break
        else:
            result.knee_rate = run.rate
            return


def bound_ms(value):
    return "n/a" if value is None else "+Inf" if value == float("inf") else f"{value:g}"


def open_loop_rows(result):
    row = lambda r, asked: [  # noqa: E731
        r.generator, "idle" if r.db_idle else "normal", r.server, asked, f"{r.achieved:,.0f}", f"{r.p50_ms:.3f}", f"{r.p99_ms:.3f}",
        f"{r.p999_ms:.3f}", floor_cell(r.floor),
        "-" if r.steal_ms is None else f"{r.steal_ms[0]:.0f} / {r.steal_ms[1]:.0f}",
        str(r.errors), str(r.non2xx), generator_cpu(r),
        "-" if r.stalls_per_s is None else f"{r.stalls_per_s:.1f}",
        f"≤ {bound_ms(r.server_p99_ms)} / ≤ {bound_ms(r.server_p999_ms)}"
        if r.server == "collector" else "-"]
    return ([row(r, f"50 % = {r.rate:,.0f}") for r in result.at_half]
            + [row(r, f"sweep {r.rate:,.0f}") for r in result.sweep])


def floor_cell(floor):
    """hiccup's floor p99 / p99.9 (ms), and how long the CPUs were taken away in all."""
    if not floor:
        return "-"
    return (f"{floor['floor_p99_us'] / 1000:.2f} / {floor['floor_p999_us'] / 1000:.2f} "
            f"({floor['stalled_us'] / 1000:.0f} ms stalled in {floor['duration_us'] / 1e6:.0f} s, "
            f"longest {floor['max_gap_us'] / 1000:.1f} ms)")


def generator_cpu(r):
    """pload -S takes its whole CPU by design: its spare capacity is its empty polls."""
    if r.idle_polls_per_s is None:
        return f"{r.gen_cpu_pct:.0f}"
    return f"{r.gen_cpu_pct:.0f} (spins; {r.idle_polls_per_s / 1e6:.2f}M empty polls/s)"


OPEN_LOOP_HEADER = ["generator", "mariadbd", "server", "rate asked (req/s)", "req/s done", "p50 ms",
                    "p99 ms", "p99.9 ms",
                    "machine floor p99 / p99.9 ms at 50 % load (hiccup, just before)",
                    "host steal during the run, ms (server CPU / client CPU)",
                    "errors", "non-2xx", "generator CPU %",
                    "stalls ≥ 1 ms per s",
                    "collector's own p99 / p99.9 ms (answer histogram bucket)"]


# ---------------------------------------------------------------- many connections


@dataclass
class ManyResult:
    conns: int = 0
    connected: int = 0
    requests: int = 0
    ok: int = 0
    failures: int = 0
    rss_mib: float = None
    peak_rss_mib: float = None
    note: str = None


REQUEST = (f"GET {URL_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: many\r\n\r\n").encode()


async def one_client(port, stop_at, result, idle_s):
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        result.failures += 1
        return
    result.connected += 1
    await asyncio.sleep(random.uniform(0, idle_s))
    try:
        while time.monotonic() < stop_at:
            writer.write(REQUEST)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            result.requests += 1
            if head.startswith(b"HTTP/1.1 204"):
                result.ok += 1
            else:
                result.failures += 1
            await asyncio.sleep(idle_s)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        result.failures += 1
    finally:
        writer.close()


async def many_clients(port, conns, duration_s, idle_s, result):
    stop_at = time.monotonic() + duration_s
    tasks = []
    for _ in range(conns):
        tasks.append(asyncio.create_task(one_client(port, stop_at, result, idle_s)))
        if len(tasks) % 500 == 0:
            await asyncio.sleep(0.05)  # let the backlog drain while connecting
    await asyncio.gather(*tasks)


def rss_mib(pid, key):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return None


def many_phase(port, pid):
    """MANY_CONNS keep-alive connections from this process (pinned to CPU 1 meanwhile)."""
    result = ManyResult(conns=MANY_CONNS)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < MANY_CONNS + 100:
        result.note = f"skipped: RLIMIT_NOFILE hard limit {hard} < {MANY_CONNS + 100}"
        return result
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    try:
        asyncio.run(many_clients(port, MANY_CONNS, MANY_S, MANY_IDLE_S, result))
        result.rss_mib, result.peak_rss_mib = rss_mib(pid, "VmRSS:"), rss_mib(pid, "VmHWM:")
    finally:
        os.sched_setaffinity(0, affinity)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    log(f"{result.connected:,}/{MANY_CONNS:,} connections, {result.ok:,}/{result.requests:,} "
        f"answered 204, {result.failures} failures, RSS {result.rss_mib:.1f} MiB")
    return result


def many_rows(m):
    if m.note:
        return [["10,000 connections", m.note]]
    return [
        ["connections (asked / connected)", f"{m.conns:,} / {m.connected:,}"],
        ["beacons sent / answered 204", f"{m.requests:,} / {m.ok:,}"],
        ["failures (connect, read, non-204, timeout)", str(m.failures)],
        ["collector RSS at the end / peak", f"{m.rss_mib:.1f} / {m.peak_rss_mib:.1f} MiB"],
        ["load", f"one beacon per connection every {MANY_IDLE_S:g} s for {MANY_S} s, cores = 1"],
    ]


def target_rows(open_loop, many, fmt_ratio):
    # The target: the median p99 of the first generator's (pload-spin's) runs with mariadbd idle,
    # nginx's beside it; every other collector run at 50 % is a cross-check.
    first_gen = open_loop.at_half[0].generator if open_loop.at_half else None
    target = lambda r: r.db_idle and r.generator == first_gen  # noqa: E731
    of = lambda server: [r for r in open_loop.at_half  # noqa: E731
                         if target(r) and r.server == server]
    runs = [r.p99_ms for r in of("collector")]
    nginx = [r.p99_ms for r in of("nginx")]
    value, verdict = fmt_ratio(statistics.median(runs) if runs else None, TARGET_OPEN_P99_MS,
                               higher_is_better=False, suffix=" ms")
    each = ", ".join(f"{p:.2f}" for p in runs)
    beside = f"; nginx at 50 % of its max: {statistics.median(nginx):.2f} ms" if nginx else ""
    floors = [r.floor["floor_p99_us"] / 1000 for r in of("collector") if r.floor]
    beside += (f"; the machine's own floor just before each: "
               f"{', '.join(f'{f:.2f}' for f in floors)} ms" if floors else "")
    rows = [[f"open-loop p99 at 50 % of the collector's max ({first_gen}, mariadbd idle; "
             f"median of {len(runs)} runs: {each} ms{beside})", value,
             f"≤ {TARGET_OPEN_P99_MS} ms", verdict]]
    rows += [floor_row(server, of(server)) for server in ("collector", "nginx") if of(server)]
    for half in (r for r in open_loop.at_half if r.server == "collector" and not target(r)):
        value, _ = fmt_ratio(half.p99_ms, TARGET_OPEN_P99_MS, higher_is_better=False,
                             suffix=" ms")
        rows.append([f"open-loop p99 at 50 % of the collector's max ({half.generator}, "
                     f"mariadbd {'idle' if half.db_idle else 'normal'})", value,
                     "cross-check", "-"])
    first = open_loop.sweep[0].rate if open_loop.sweep else None
    knee = (f"≤ {first:,.0f} req/s (already at the sweep's lowest rate)"
            if open_loop.knee_rate and open_loop.knee_rate == first
            else f"{open_loop.knee_rate:,.0f} req/s" if open_loop.knee_rate
            else "not reached in the sweep" if open_loop.sweep else "n/a")
    rows.append(["rate where the collector's p99 passes 10 ms", knee, "reported", "-"])
    all_served = many.conns and many.connected == many.conns and many.failures == 0 \
        and many.ok == many.requests and many.requests > 0
    rows.append(["10,000 connections on one core: all served, no errors",
                 f"{many.ok:,}/{many.requests:,} ok, {many.failures} failures" if not many.note
                 else many.note, "all, 0", "PASS" if all_served else "FAIL"])
    value, verdict = fmt_ratio(many.peak_rss_mib, TARGET_MANY_RSS_MIB, higher_is_better=False,
                               suffix=" MiB")
    rows.append(["collector peak RSS with 10,000 connections", value,
                 f"≤ {TARGET_MANY_RSS_MIB} MiB", verdict])
    return rows


def floor_row(server, runs):
    """The median over `runs` of p99 ÷ the machine's floor p99 measured just before each: near
    1, the server adds little to what the machine alone does to the tail."""
    ratios = [r.p99_ms / (r.floor["floor_p99_us"] / 1000) for r in runs
              if r.floor and r.floor["floor_p99_us"] > 0]
    value = f"{statistics.median(ratios):.2f}×" if ratios else "n/a (no floor measured)"
    return [f"{server}'s open-loop p99 ÷ the machine's floor p99 (scripts/hiccup.c, both CPUs, "
            f"50 % load; median over {len(ratios)} runs)", value, "reported", "-"]


def callgrind_instr_per_req(binary, requests=10_000):
    """User-space instructions per request (plain keep-alive, 64 connections): (all threads,
    the core thread alone, driver or why not); None where not measured."""
    if not shutil.which("valgrind"):
        return None, None, "valgrind not installed"
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "front_counts", Path(__file__).with_name("front_counts.py"))
    counts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(counts)
    try:
        return counts.callgrind(binary, requests, 64, 1)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        return None, None, str(e)[:200]
