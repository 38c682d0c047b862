"""Shared pieces of `make load-test` (scripts/load_test.py, scripts/load_backend.py): paths,
processes this run owns (stopped by PID), the private MariaDB, the collector under test, wrk,
and the table/ratio formatting. Stdlib only.
"""

import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VAR = REPO / "var"
MYSQL_DIR = VAR / "bench-mysql"
# The HTTP and front-end phases' own MariaDB, on tmpfs: its writes then never meet the WAL's
# in one ext4 journal (see scripts/load_test.py), as a database on its own machine would not.
FRONT_MYSQL_DIR = (Path("/dev/shm/psc-bench-mysql-front") if Path("/dev/shm").is_dir()
                   else VAR / "bench-mysql-front")
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
# scripts/pload.c, built by scripts/load-test.sh: the generator of the runs one wrk thread
# cannot drive (pipelined at the collector's rate) or skews (open loop).
PLOAD = REPO / "target" / "pload"
# scripts/hiccup.c, built by scripts/load-test.sh: the machine's own stalls on the two CPUs.
HICCUP = REPO / "target" / "hiccup"


def env_int(name, default):
    return int(os.environ.get(name, default))


PIPELINE_DEPTH = 16
START_TIMEOUT_S = 20
STOP_TIMEOUT_S = 30
POLL_S = 0.2
SERVER_CPU = "0"
WRK_CPU = "1"
URL_PATH = "/log?event=play&domain=piratka.biz&file_id=109454"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Interrupted(Exception):
    """SIGINT/SIGTERM/SIGHUP as an exception, so that `finally` blocks stop our processes."""


def raise_interrupted(signum, _frame):
    raise Interrupted(f"signal {signum}")


def interrupt_on_signals():
    """SIGINT, SIGTERM and SIGHUP raise `Interrupted`. SIGINT too: a shell may start us with
    SIGINT ignored, which Python would keep."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_interrupted)


def log(msg):
    print(f"load-test: {msg}", file=sys.stderr, flush=True)


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


def user_sys_ticks(pid):
    """(utime, stime) of the whole process (the kernel sums all its threads), in clock ticks."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(fields[11]), int(fields[12])


def cpu_ticks(pid):
    """utime + stime of the whole process, in clock ticks."""
    return sum(user_sys_ticks(pid))


# Thread groups of the collector, by the start of the thread's name (`comm`, 15 bytes at most):
# the HTTP cores; the io-wq workers io_uring punts blocking work to (buffered WAL writes on
# ext4 with `wal.write_mode = "uring"`); the flusher and its WAL-read threads (tokio's blocking
# pool). Anything else (the main thread, the GeoIP watcher, threads that exited during the run,
# whose time the kernel keeps in the process total) is "other".
THREAD_GROUPS = (("core", ("core-",)), ("io-wq", ("iou-wrk",)),
                 ("flusher", ("flusher", "tokio-rt-worker", "tokio-runtime-w")))


def thread_ticks(pid):
    """(whole-process ticks, {tid: (comm, utime + stime ticks)}) of the live threads."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # exited while listed
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        threads[int(task.name)] = (comm, int(fields[11]) + int(fields[12]))
    return cpu_ticks(pid), threads


def cpu_split(before, after):
    """CPU ticks between two `thread_ticks` snapshots, by THREAD_GROUPS plus "other" (the
    process total minus the groups) and "total"."""
    split = {name: 0 for name, _ in THREAD_GROUPS}
    for tid, (comm, ticks) in after[1].items():
        delta = ticks - before[1].get(tid, (comm, 0))[1]
        group = next((name for name, prefixes in THREAD_GROUPS if comm.startswith(prefixes)), None)
        if group:
            split[group] += delta
    split["total"] = after[0] - before[0]
    split["other"] = max(0, split["total"] - sum(split[name] for name, _ in THREAD_GROUPS))
    return split


def read_pid(path):
    """The process id in a pid file, or None."""
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


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


def children_cpu_s():
    """CPU seconds of every reaped child; wrk, pload or oha: the one reaped during a run."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tail(path, lines=20):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class MariaDb:
    """A private server of scripts/mariadb.sh (in ./var/bench-mysql unless told), used
    through the CLI."""

    def __init__(self, directory=MYSQL_DIR):
        self.url = None
        self.dir = Path(directory)
        self.client_cnf = self.dir / "client.cnf"

    @property
    def pid(self):
        return read_pid(self.dir / "mysqld.pid")

    def start(self):
        out = subprocess.run(
            [str(REPO / "scripts" / "mariadb.sh"), "start", str(self.dir)],
            stdout=subprocess.PIPE, text=True, check=True, timeout=180,
            start_new_session=True,
        )
        self.url = out.stdout.strip().splitlines()[-1]
        return self.url

    def stop(self):
        subprocess.run([str(REPO / "scripts" / "mariadb.sh"), "stop", str(self.dir)],
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


class Collector:
    """target/release/player-stat-collector with a generated config, pinned to CPU 0."""

    def __init__(self, mysql_url, wal_dir, tag, cores=1, mysql_keys="", tail_toml="",
                 server_keys="", binary=BINARY):
        """`mysql_keys`, `server_keys`: extra lines of the [mysql] and [server] tables;
        `tail_toml`: more tables; `binary`: another build to run."""
        self.binary = binary
        self.mysql_url = mysql_url
        self.server_keys = server_keys
        self.wal_dir = wal_dir
        self.tag = tag
        self.cores = cores
        self.mysql_keys = mysql_keys
        self.tail_toml = tail_toml
        self.proc = None
        self.port = None
        self.log_path = COLLECTOR_DIR / f"{tag}.log"

    def write_config(self):
        config = COLLECTOR_DIR / f"{self.tag}.toml"
        config.write_text(
            "# Generated by scripts/load_test.py\n"
            "[server]\n"
            'listen = "127.0.0.1:0"\n'
            f"cores = {self.cores}\n"
            f"{self.server_keys}"
            "[wal]\n"
            f'dir = "{self.wal_dir}"\n'
            "[mysql]\n"
            f'url = "{self.mysql_url}"\n'
            f"{self.mysql_keys}"
            f"{self.tail_toml}"
        )
        return config

    def start(self):
        """Starts it and waits for its port file; returns False (logged) if it does not come up."""
        COLLECTOR_DIR.mkdir(parents=True, exist_ok=True)
        if not self.binary.exists():
            log(f"collector skipped: {self.binary} does not exist")
            return False
        port_file = COLLECTOR_DIR / f"{self.tag}.port"
        port_file.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PSC_")}
        env["PSC_PORT_FILE"] = str(port_file)
        out = open(self.log_path, "a")
        self.proc = OWNED.spawn(
            f"collector[{self.tag}]",
            ["taskset", "-c", SERVER_CPU, str(self.binary), "--config", str(self.write_config())],
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


def tool_line(tag, output):
    """The first `TAG k=v k=v ...` line in `output` (what wrk's report.lua, pload and hiccup
    print) as a dict of ints, or None if there is none."""
    match = re.search(rf"^{tag} (.*)$", output, re.M)
    if not match:
        return None
    return {k: int(x) for k, x in (kv.split("=") for kv in match.group(1).split())}


def run_wrk(port, conns, mode, duration_s, log_path):
    """One closed-loop run; mode `pipelined-pload` is scripts/pload.c with the same depth."""
    if mode == "pipelined-pload":
        doc = run_pload(port, conns, duration_s, log_path, depth=PIPELINE_DEPTH)
        return WrkResult(requests=doc["requests"], duration_s=doc["duration_us"] / 1e6,
                         non2xx=doc["non2xx"], socket_errors=doc["errors"],
                         p50_us=doc["p50_us"] or None, p99_us=doc["p99_us"] or None,
                         p999_us=doc["p999_us"] or None)
    script = PIPELINE_LUA if mode == "pipelined" else REPORT_LUA
    argv = ["taskset", "-c", WRK_CPU, "wrk", "-t1", f"-c{conns}", f"-d{duration_s}s",
            "--latency", "--timeout", "5s", "-s", str(script),
            f"http://127.0.0.1:{port}{URL_PATH}"]
    if mode == "pipelined":
        argv += ["--", str(PIPELINE_DEPTH)]
    return parse_wrk(run_client("wrk", argv, duration_s, log_path))


def run_client(name, argv, duration_s, log_path):
    """Runs a load generator to its end (stopped by PID after `duration_s` + 60 s at most),
    logs its command and output to `log_path`, and returns the output."""
    proc = OWNED.spawn(name, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=duration_s + 60)
    finally:
        OWNED.stop(proc)
    with open(log_path, "a") as f:
        f.write(f"$ {' '.join(argv)}\n{output}\n")
    return output


def run_pload(port, conns, duration_s, log_path, depth=None, rate=None, spin=False):
    """scripts/pload.c on the client CPU: pipelined closed loop (`depth`) or open loop
    (`rate`, one request outstanding per connection, latency from the scheduled time; `spin`:
    poll instead of sleeping, pload's -S). Returns its PLOAD line as a dict of ints (latencies
    in µs, its own CPU in `cpu_us`)."""
    prefix = URL_PATH.rsplit("=", 1)[0] + "="  # pload appends a cycling file_id
    argv = ["taskset", "-c", WRK_CPU, str(PLOAD), "-p", str(port), "-c", str(conns),
            "-d", str(duration_s), "-u", prefix]
    argv += ["-P", str(depth)] if depth else ["-R", str(int(rate))] + (["-S"] if spin else [])
    output = run_client("pload", argv, duration_s, log_path)
    doc = tool_line("PLOAD", output)
    if doc is None:
        raise RuntimeError(f"pload printed no PLOAD line:\n{output}")
    return doc


def run_hiccup(duration_s, log_path, util):
    """scripts/hiccup.c on the server's and the client's CPU, nothing else running there: the
    time the machine itself took them away, and the p99/p99.9 that alone gives a server busy a
    share `util` of the time. Returns its HICCUP line as a dict of ints (µs), or None without
    the tool."""
    if not HICCUP.exists():
        return None
    argv = [str(HICCUP), "-d", str(duration_s), "-c", f"{SERVER_CPU},{WRK_CPU}", "-u", str(util)]
    return tool_line("HICCUP", run_client("hiccup", argv, duration_s, log_path))


def parse_wrk(output):
    v = tool_line("PSC_WRK", output)
    if v is None:
        raise RuntimeError(f"wrk printed no PSC_WRK line:\n{output}")
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


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt_ratio(value, target, higher_is_better=True, suffix="×"):
    if value is None:
        return "n/a", "n/a"
    ok = value >= target if higher_is_better else value <= target
    return f"{value:.2f}{suffix}", "PASS" if ok else "FAIL"


def fmt_rate(value, unit="rows/s"):
    return f"{value:,.0f} {unit}" if value is not None else "n/a"


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = lambda row: "  ".join(str(x).ljust(w) for x, w in zip(row, widths))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])
