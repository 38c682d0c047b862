#!/usr/bin/env python3
"""Stable per-request figures of the collector's front end, for a noisy machine.

Counts, not times, so they hold while other work shares the CPUs:

1. `instr/req` (all threads) and `core instr/req` (the core thread alone, the stable one):
   user-space instructions per request, from `valgrind --tool=callgrind` over a
   fixed request stream (instrumentation switched on after a warm-up with `callgrind_control`, so
   start-up and replay are not counted). The stream is N keep-alive GET /log beacons on C
   connections, each connection sending its next request when the answer arrived ("plain"),
   or 16 requests per write ("pipelined").
2. `syscalls/req`, `ctx-sw/req`: `perf stat -e raw_syscalls:sys_enter,context-switches` on
   the collector process during a wrk run of fixed length (wrk on another CPU); plus the CPU
   time per request of each group of threads (`load_common.THREAD_GROUPS`: the core, the
   io-wq workers that run the buffered writes the filesystem makes io_uring punt, the
   flusher, and the rest), from /proc/PID/task/*/stat.

The collector runs with `cores = 1`, a fresh WAL under var/front-counts/ (or PSC_COUNTS_WAL_DIR,
e.g. on an XFS mount), and a MySQL URL pointing at a closed port: only the front end works.

    scripts/front_counts.py [--binary PATH] [--requests N] [--skip-callgrind] [--skip-perf]
                            [--modes plain,pipelined]

Prints one line per figure and a Markdown table; every process started is stopped by PID.
"""

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from load_common import cpu_split, thread_ticks

REPO = Path(__file__).resolve().parent.parent
VAR = REPO / "var" / "front-counts"
REQUEST = (b"GET /log?event=play&domain=piratka.biz&file_id=109454 HTTP/1.1\r\n"
           b"Host: 127.0.0.1\r\nUser-Agent: front-counts\r\n\r\n")
SERVER_CPU, CLIENT_CPU = "0", "1"


def log(msg):
    print(f"front-counts: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_collector(binary, tag, wrapper=()):
    VAR.mkdir(parents=True, exist_ok=True)
    wal = Path(os.environ.get("PSC_COUNTS_WAL_DIR", VAR / f"wal-{tag}"))
    subprocess.run(["rm", "-rf", str(wal)], check=True)
    config = VAR / f"{tag}.toml"
    config.write_text(
        '[server]\nlisten = "127.0.0.1:0"\ncores = 1\n'
        f'[wal]\ndir = "{wal}"\n'
        f'[mysql]\nurl = "mysql://psc:x@127.0.0.1:{free_port()}/psc"\n'
        '[log]\nlevel = "warn"\n')
    port_file = VAR / f"{tag}.port"
    port_file.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSC_") or k.startswith("PSC_EXP_")}
    env["PSC_PORT_FILE"] = str(port_file)
    out = open(VAR / f"{tag}.log", "w")
    argv = ["taskset", "-c", SERVER_CPU, *wrapper, str(binary), "--config", str(config)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"collector exited: {(VAR / f'{tag}.log').read_text()[-2000:]}")
        text = port_file.read_text().strip() if port_file.exists() else ""
        if text.endswith(tuple("0123456789")):
            return proc, int(text.rsplit(":", 1)[1])
        time.sleep(0.2)
    stop(proc)
    raise RuntimeError("collector wrote no port file within 300 s")


def stop(proc, timeout_s=60):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def fixed_stream(port, requests, conns, depth):
    """Sends `requests` beacons over `conns` keep-alive connections, `depth` per write, each
    connection waiting for all answers of a write before the next; returns answers seen."""
    import selectors
    sel = selectors.DefaultSelector()
    per_conn = requests // conns
    state = {}
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        state[s] = {"left": per_conn, "waiting": 0, "buf": b""}
        sel.register(s, selectors.EVENT_READ)
    answered = 0

    def send(s):
        st = state[s]
        n = min(depth, st["left"])
        if n == 0:
            return
        s.setblocking(True)
        s.sendall(REQUEST * n)
        s.setblocking(False)
        st["left"] -= n
        st["waiting"] = n

    for s in state:
        send(s)
    deadline = time.monotonic() + 600
    while any(st["waiting"] for st in state.values()):
        if time.monotonic() > deadline:
            raise RuntimeError("fixed stream did not finish within 600 s")
        for key, _ in sel.select(timeout=5):
            s = key.fileobj
            st = state[s]
            data = s.recv(65536)
            if not data:
                raise RuntimeError("the collector closed a connection")
            st["buf"] += data
            done = st["buf"].count(b"\r\n\r\n")
            if done:
                if not st["buf"].startswith(b"HTTP/1.1 204"):
                    raise RuntimeError(f"unexpected answer {st['buf'][:80]!r}")
                st["buf"] = st["buf"][st["buf"].rindex(b"\r\n\r\n") + 4:]
                st["waiting"] -= done
                answered += done
                if st["waiting"] == 0:
                    send(s)
    for s in state:
        s.close()
    return answered


def callgrind_totals(path):
    # `totals:` sums every cost line; `summary:` can stay 0 with a dump on request.
    for line in Path(path).read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def callgrind(binary, requests, conns, depth):
    """User-space instructions per request, start-up excluded: (all threads, the core thread
    alone, driver). The core thread's figure is the stable one: the flusher's share (decoding
    what the core queued, with MySQL unreachable) moved the whole by about 1,400 instr/req
    between runs of one binary. Each thread is dumped apart (`--separate-threads`); the core's
    dump is the one that ran `psc::http::conn`."""
    out = VAR / f"callgrind.{depth}.out"
    for old in VAR.glob(f"callgrind.{depth}.out*"):
        old.unlink()
    wrapper = ("valgrind", "--tool=callgrind", "--instr-atstart=no", "--trace-children=no",
               "--separate-threads=yes", f"--callgrind-out-file={out}")
    proc, port = start_collector(binary, f"callgrind-{depth}", wrapper)
    try:
        fixed_stream(port, 2000, conns, depth)  # warm-up: buffers grown, caches filled
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True,
                       stdout=subprocess.DEVNULL, timeout=60)
        answered = fixed_stream(port, requests, conns, depth)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True,
                       stdout=subprocess.DEVNULL, timeout=60)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                       stdout=subprocess.DEVNULL, timeout=120)
    finally:
        stop(proc)
    dumps = [p for p in VAR.glob(f"callgrind.{depth}.out.*") if p.stat().st_size]
    if not dumps:
        raise RuntimeError("callgrind_control -d wrote no dump")
    total = sum(callgrind_totals(p) for p in dumps)
    core = sum(callgrind_totals(p) for p in dumps if "psc::http::conn" in p.read_text())
    driver = "epoll (io_uring unavailable under valgrind)" if "io_uring is not available" in \
        (VAR / f"callgrind-{depth}.log").read_text() else "io_uring"
    return total / answered, core / answered, driver


def wal_writes(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /metrics?format=prometheus HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        text = b""
        while chunk := s.recv(65536):
            text += chunk
    found = re.search(rb"^ingest_wal_writes_total (\d+)", text, re.M)
    return int(found.group(1)) if found else 0


def perf_counts(binary, conns, mode, duration_s):
    """Syscalls, context switches and io-wq CPU per request over one wrk run."""
    proc, port = start_collector(binary, f"perf-{mode}")
    try:
        wrk = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{conns}", f"-d{duration_s}s",
               "-s", str(REPO / "scripts" / "wrk" / ("pipeline.lua" if mode == "pipelined"
                                                      else "report.lua")),
               f"http://127.0.0.1:{port}/log?event=play&domain=piratka.biz&file_id=109454"]
        if mode == "pipelined":
            wrk += ["--", "16"]
        perf_out = VAR / f"perf-{mode}.csv"
        threads_before, writes_before = thread_ticks(proc.pid), wal_writes(port)
        perf = subprocess.Popen(["perf", "stat", "-x", ",", "-o", str(perf_out), "-e",
                                 "raw_syscalls:sys_enter,context-switches,task-clock",
                                 "-p", str(proc.pid)], start_new_session=True)
        time.sleep(0.3)
        out = subprocess.run(wrk, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             timeout=duration_s + 60).stdout
        perf.send_signal(signal.SIGINT)
        perf.wait(30)
        split = cpu_split(threads_before, thread_ticks(proc.pid))
        writes = wal_writes(port) - writes_before
    finally:
        stop(proc)
    found = re.search(r"PSC_WRK requests=(\d+)", out)
    if not found:
        raise RuntimeError(f"wrk printed no PSC_WRK line:\n{out}")
    requests = int(found.group(1))
    counts = {}
    for line in perf_out.read_text().splitlines():
        parts = line.split(",")
        if len(parts) > 3 and parts[0].replace(".", "").isdigit():
            counts[parts[2]] = float(parts[0])
    tck = os.sysconf("SC_CLK_TCK")
    return {
        "requests": requests,
        "syscalls/req": counts.get("raw_syscalls:sys_enter", 0) / requests,
        "ctx-sw/req": counts.get("context-switches", 0) / requests,
        "cpu-us/req": counts.get("task-clock", 0) * 1e3 / requests,
        **{f"{group} cpu-us/req": ticks * 1e6 / tck / requests
           for group, ticks in split.items() if group != "total"},
        "req/WAL write": requests / writes if writes else float("nan"),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(REPO / "target" / "release" / "player-stat-collector"))
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--perf-seconds", type=int, default=5)
    ap.add_argument("--skip-callgrind", action="store_true")
    ap.add_argument("--skip-perf", action="store_true")
    ap.add_argument("--modes", default="plain,pipelined", help="comma-separated: plain, pipelined")
    args = ap.parse_args()
    depths = {"plain": 1, "pipelined": 16}
    modes = args.modes.split(",")
    if set(modes) - depths.keys():
        ap.error(f"--modes {args.modes}: each one plain or pipelined")
    rows = []
    for mode, depth in ((m, d) for m, d in depths.items() if m in modes):
        row = {"mode": mode}
        if not args.skip_callgrind:
            row["instr/req"], row["core instr/req"], row["driver"] = callgrind(
                args.binary, args.requests, args.conns, depth)
            log(f"{mode}: {row['instr/req']:,.0f} instructions/request, core thread "
                f"{row['core instr/req']:,.0f} ({row['driver']})")
        if not args.skip_perf:
            row.update(perf_counts(args.binary, args.conns, mode, args.perf_seconds))
            log(f"{mode}: " + " ".join(f"{k}={v:.3f}" for k, v in row.items()
                                        if isinstance(v, float) and "instr" not in k))
        rows.append(row)
    keys = ["mode", "instr/req", "core instr/req", "syscalls/req", "ctx-sw/req", "cpu-us/req", "core cpu-us/req",
            "io-wq cpu-us/req", "flusher cpu-us/req", "other cpu-us/req", "req/WAL write"]
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        cells = [row["mode"]] + [
            (f"{row[k]:,.0f}" if "instr" in k else f"{row[k]:.3f}")
            if isinstance(row.get(k), float) else "n/a" for k in keys[1:]]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
