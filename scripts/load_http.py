"""Phase 1 of `make load-test` (scripts/load_test.py's docstring): the HTTP runs, nginx and
the collector side by side, each pinned to CPU 0 with wrk or pload on CPU 1; their tables and
the HTTP rows of the targets. Stdlib only.
"""

import signal
import statistics
import subprocess
from dataclasses import dataclass

import load_front
from load_common import (CLK_TCK, NGINX_DIR, NGINX_TEMPLATE, OWNED, PLOAD, SERVER_CPU,
                         START_TIMEOUT_S, VAR, WrkResult, children_cpu_s, children_of,
                         cpu_split, env_int, fmt_ratio, free_port, log, peak_rss_kib,
                         port_open, ratio, run_wrk, tail, thread_ticks, wait_until)

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


def ratio_rows(runs):
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
    rss = [r.rss_mib for r in runs if r.server == "collector"]
    value, verdict = fmt_ratio(max(rss) if rss else None, TARGET_RSS_MIB,
                               higher_is_better=False, suffix=" MiB")
    rows.append(["collector peak RSS", value, f"≤ {TARGET_RSS_MIB} MiB", verdict])
    return rows


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


def best_rps(runs, server, mode):
    values = [r.wrk.rps for r in runs if r.server == server and r.mode == mode]
    return max(values) if values else None
