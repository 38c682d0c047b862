"""The ClickHouse part of `make load-test` (issue 12): one WAL backlog, drained by the
collector into a private ClickHouse and, from a copy of the same WAL, into the private
MariaDB, beside ClickHouse's own TSV insert of the same rows. stdlib only.

Entry point `clickhouse_phase(db, mysql_url, backend)`; `python3 scripts/load_clickhouse.py`
runs it alone (its own MariaDB and ClickHouse) and prints the table.

Rounds (PSC_BENCH_CH_ROUNDS, default 3) of phases 1-3, each on an empty database; medians,
and the drain over the reference per round (same noise in both):

1. Fill: a collector (`cores` = PSC_BENCH_LANES, sink.kind = clickhouse at a closed port) takes
   pipelined wrk traffic until about PSC_BENCH_CH_BACKLOG events are in its WAL.
2. ClickHouse drain: the same WAL, ClickHouse reachable. The drain rate is the rows counted in
   `events` divided by the time from the collector's start to the last new row (so startup,
   WAL replay and every INSERT are inside it).
3. Reference: the rows ClickHouse got, exported as TSV in the order they arrived (by receive
   time, as a log file holds them; a table's own order would be pre-sorted by its key, which
   spares the server the sort every real insert pays), inserted into a copy of `events` by 1
   and by N concurrent sessions of clickhouse-client (Debian's clickhouse-client package,
   native protocol; the target's reference) and of curl (`INSERT … FORMAT TabSeparated` over
   the HTTP interface the collector uses): ClickHouse's own bulk rate for the same rows.
4. MariaDB drain (once, after the rounds): round 1's WAL copy, `method = "load_data"`, N connections, an empty database;
   measured the same way. ClickHouse is stopped first, so it takes no CPU from this one.

The collector runs on CPU 0 (as everywhere in the load test); wrk on CPU 1; clickhouse-server
and mariadbd are not pinned. The collector's and the database server's CPU over each drain are
reported beside the rate.
"""

import re
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from load_common import (BENCHMARKS_MD, CLK_TCK, COLLECTOR_DIR, MYSQL_DIR, OWNED, REPO, VAR, WAL_DIR, Collector, MariaDb,
                         cpu_ticks, markdown_table,
                         env_int, fmt_rate, fmt_ratio, free_port, log, ratio, read_pid, run_wrk)
from load_cpu import CPU_GROUPS

CH_DIR = VAR / "bench-clickhouse"
WAL_COPY = VAR / "bench-wal-copy"
TSV_DIR = VAR / "bench-clickhouse-tsv"
BACKLOG = env_int("PSC_BENCH_CH_BACKLOG", 2_000_000)
LANES = env_int("PSC_BENCH_LANES", 2)
FILL_MAX_S = env_int("PSC_BENCH_FILL_MAX_S", 40)
DRAIN_MAX_S = env_int("PSC_BENCH_CH_DRAIN_MAX_S", 300)
ROUNDS = env_int("PSC_BENCH_CH_ROUNDS", 3)
WITH_MARIADB = env_int("PSC_BENCH_CH_MARIADB", 1)  # 0: no MariaDB drain (A/B runs)
BATCH_ROWS = env_int("PSC_BENCH_CH_BATCH_ROWS", 100_000)  # clickhouse.batch_rows (its default)
QUIET_S = 3  # no new row for this long: the drain is over
TARGET_VS_REFERENCE = 0.8
TARGET_VS_MARIADB = 5.0


@dataclass
class Drain:
    rows: int = 0
    seconds: float = None
    collector_cpu_pct: float = None
    server_cpu_pct: float = None

    @property
    def rate(self):
        return self.rows / self.seconds if self.seconds else None


@dataclass
class ClickhouseResult:
    notes: list = field(default_factory=list)
    backlogs: list = field(default_factory=list)  # per round
    clickhouse: list = field(default_factory=list)  # Drain per round
    mariadb: Drain = None  # of the first round's WAL
    reference: dict = field(default_factory=dict)  # (tool, sessions) -> [rows/s per round]
    version: str = None

    def ratio_per_round(self, tool, sessions):
        """Per round, the drain over that round's insert by `tool` with `sessions` sessions,
        paired: the same noise in both."""
        rates = self.reference.get((tool, sessions), [])
        return [d.rate / rates[i] for i, d in enumerate(self.clickhouse)
                if d.rate and i < len(rates) and rates[i]]


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def ch_query(url, sql, timeout_s=600):
    req = urllib.request.Request(url + "/", data=sql.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        return r.read().decode()


def ch_count(url, table="psc.events"):
    try:
        return int(ch_query(url, f"SELECT count() FROM {table}", 10).strip() or 0)
    except (OSError, ValueError, urllib.error.HTTPError):
        return 0


def ch_tail(url):
    return (f'[sink]\nkind = "clickhouse"\n[clickhouse]\nurl = "{url}"\nconnect_timeout_ms = 1000\n'
            f"batch_rows = {BATCH_ROWS}\n")


def drain(collector, count, server_pid):
    """Starts `collector` and times it until `count()` stops growing; None if it did not start."""
    started = time.monotonic()
    if not collector.start():
        return None
    pids = [collector.measured_pid, server_pid]
    ticks = [cpu_ticks(p) if p else 0 for p in pids]
    last, last_at, last_ticks = 0, started, ticks
    while time.monotonic() - last_at < QUIET_S and time.monotonic() - started < DRAIN_MAX_S:
        time.sleep(0.1)
        now = count()
        if now != last:
            last, last_at = now, time.monotonic()
            last_ticks = [cpu_ticks(p) if p else 0 for p in pids]
    wall = last_at - started
    collector.stop()
    if not last:
        return Drain()
    # CPU over the drain itself, up to the sample that saw the last rows.
    pct = [100 * (b - a) / CLK_TCK / wall for a, b in zip(ticks, last_ticks)]
    return Drain(rows=last, seconds=wall, collector_cpu_pct=pct[0], server_cpu_pct=pct[1] if server_pid else None)


def fill(mysql_url, result, keep_copy):
    """Phase 1: the WAL backlog, with ClickHouse unreachable."""
    subprocess.run(["rm", "-rf", str(WAL_DIR)], check=True)
    closed = f"http://127.0.0.1:{free_port()}"
    filler = Collector(mysql_url, WAL_DIR, "ch-fill", cores=LANES, tail_toml=ch_tail(closed))
    if not filler.start():
        return False
    try:
        duration = max(2, min(FILL_MAX_S, BACKLOG // 700_000 + 1))
        wrk = run_wrk(filler.port, 256, "pipelined", duration, COLLECTOR_DIR / "wrk.log")
        result.backlogs.append(wrk.acked)
        log(f"clickhouse backlog: {wrk.acked:,} events acked in {wrk.duration_s:.1f} s")
    finally:
        filler.stop()
    if keep_copy:
        subprocess.run(["rm", "-rf", str(WAL_COPY)], check=True)
        shutil.copytree(WAL_DIR, WAL_COPY)
    return True


def reference(url, result, rows):
    """Phase 3: the same rows as TSV, inserted by 1 and by LANES concurrent sessions of
    clickhouse-client (native protocol, as an operator would load a file) and of curl (the
    HTTP interface the collector uses)."""
    TSV_DIR.mkdir(parents=True, exist_ok=True)
    whole = TSV_DIR / "events.tsv"
    export = ("SELECT * FROM psc.events ORDER BY received_at, received_ms, core, wal_segment, wal_end "
              "FORMAT TabSeparated")
    with open(whole, "wb") as out:
        subprocess.run(["curl", "-sS", "--fail", "--data-binary", export, url + "/"], stdout=out,
                       check=True, timeout=600)
    tools = ["curl"] + (["clickhouse-client"] if shutil.which("clickhouse-client") else [])
    for sessions in sorted({1, LANES}):
        parts = split(whole, sessions)
        for tool in tools:
            ch_query(url, "DROP TABLE IF EXISTS psc.ref_events")
            ch_query(url, "CREATE TABLE psc.ref_events AS psc.events")
            start = time.monotonic()
            procs = [insert_file(tool, url, p) for p in parts]
            for p in procs:
                p.wait(900)
                OWNED.stop(p)
            seconds = time.monotonic() - start
            taken = ch_count(url, "psc.ref_events")
            result.reference.setdefault((tool, sessions), []).append(taken / seconds if seconds else None)
            log(f"clickhouse reference: {taken:,} TSV rows by {sessions} {tool} session(s) in {seconds:.2f} s")
            if taken != rows:
                result.notes.append(f"reference {tool} × {sessions}: {taken:,} of {rows:,} rows")
        for p in parts:
            if p != whole:
                p.unlink()
    ch_query(url, "DROP TABLE IF EXISTS psc.ref_events")
    shutil.rmtree(TSV_DIR, ignore_errors=True)


def insert_file(tool, url, path):
    """A process inserting the TSV file `path` into psc.ref_events with `tool`."""
    sql = "INSERT INTO psc.ref_events FORMAT TabSeparated"
    if tool == "curl":
        argv = ["curl", "-sS", "--fail", "--data-binary", f"@{path}", f"{url}/?query={urllib.parse.quote(sql)}"]
        return OWNED.spawn("curl", argv)
    return OWNED.spawn("clickhouse-client", ["clickhouse-client", "--host", "127.0.0.1", "--port",
                                             str(ch_tcp_port()), "--query", sql], stdin=open(path, "rb"))


def ch_tcp_port():
    found = re.search(r"<tcp_port>(\d+)</tcp_port>", (CH_DIR / "config.xml").read_text())
    if not found:
        raise RuntimeError(f"no tcp_port in {CH_DIR / 'config.xml'}")
    return int(found.group(1))


def split(path, n):
    """`path` cut into `n` files of whole lines (itself if n = 1)."""
    if n == 1:
        return [path]
    lines = path.read_bytes().splitlines(keepends=True)
    per = (len(lines) + n - 1) // n
    parts = []
    for i in range(n):
        part = path.with_name(f"part-{i}.tsv")
        part.write_bytes(b"".join(lines[i * per:(i + 1) * per]))
        parts.append(part)
    return parts


def start_clickhouse():
    shutil.rmtree(CH_DIR, ignore_errors=True)
    out = subprocess.run([str(REPO / "scripts" / "clickhouse.sh"), "start", str(CH_DIR)],
                         stdout=subprocess.PIPE, text=True, timeout=120, check=True)
    return out.stdout.strip().splitlines()[-1]


def stop_clickhouse():
    subprocess.run([str(REPO / "scripts" / "clickhouse.sh"), "stop", str(CH_DIR)], timeout=120,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def clickhouse_phase(db, mysql_url, backend):
    """Phases 1-4; the result goes to `backend.clickhouse`. A failure is reported, not fatal."""
    result = ClickhouseResult()
    backend.clickhouse = result
    if not shutil.which("clickhouse-server") and not shutil.which("clickhouse"):
        result.notes.append("ClickHouse phase skipped: clickhouse-server is not installed")
        return
    try:
        url = start_clickhouse()
        result.version = ch_query(url, "SELECT version()").strip()
        for round_ in range(ROUNDS):
            ch_query(url, "DROP DATABASE IF EXISTS psc")
            if not fill(mysql_url, result, keep_copy=round_ == 0):
                result.notes.append("ClickHouse phase skipped: the filling collector did not start")
                return
            ch = Collector(mysql_url, WAL_DIR, "ch-drain", cores=LANES, tail_toml=ch_tail(url))
            d = drain(ch, lambda: ch_count(url), read_pid(CH_DIR / "clickhouse.pid")) or Drain()
            result.clickhouse.append(d)
            log(f"clickhouse drain, round {round_ + 1}: {d.rows:,} rows at {fmt_rate(d.rate)}")
            if d.rows:
                reference(url, result, d.rows)
        stop_clickhouse()
        if not WITH_MARIADB:
            return
        keys = 'method = "load_data"\nconnections = 0\n'
        db.reset_database()
        my = Collector(mysql_url, WAL_COPY, "ch-mariadb-drain", cores=LANES, mysql_keys=keys)
        result.mariadb = drain(my, lambda: mariadb_count(db), read_pid(MYSQL_DIR / "mysqld.pid"))
        log(f"mariadb drain of the same WAL: {fmt_rate(result.mariadb and result.mariadb.rate)}")
    except (RuntimeError, OSError, subprocess.SubprocessError, urllib.error.URLError) as e:
        log(f"ClickHouse phase failed: {e}")
        result.notes.append(f"ClickHouse phase failed: {str(e).splitlines()[0]}")
    finally:
        stop_clickhouse()
        subprocess.run(["rm", "-rf", str(WAL_COPY), str(WAL_DIR)], check=False)


def mariadb_count(db):
    try:
        return db.scalar_int("SELECT COUNT(*) FROM events")
    except subprocess.CalledProcessError:  # before the collector's migrations ran
        return 0


def drain_text(drains, server):
    drains = [d for d in drains if d and d.rows]
    if not drains:
        return "n/a"
    rounds = " / ".join(f"{d.rate / 1000:,.0f}k" for d in drains)
    cpu = (f"collector {median(d.collector_cpu_pct for d in drains) or 0:.0f} % CPU, "
           f"{server} {median(d.server_cpu_pct for d in drains) or 0:.0f} % CPU")
    return (f"median {fmt_rate(median(d.rate for d in drains))} (rounds: {rounds}; "
            f"{median(d.rows for d in drains):,.0f} rows; {cpu})")


def clickhouse_rows(backend):
    r = getattr(backend, "clickhouse", None)
    if not r:
        return []
    rows = [["ClickHouse server", r.version or "n/a"],
            [f"ClickHouse WAL backlog per round ({LANES} lanes, ClickHouse unreachable)",
             " / ".join(f"{b:,}" for b in r.backlogs) + " events" if r.backlogs else "n/a"],
            [f"drain into ClickHouse (Native blocks, batch_rows {BATCH_ROWS})",
             drain_text(r.clickhouse, "clickhouse-server")]]
    for (tool, sessions), rates in sorted(r.reference.items()):
        rounds = " / ".join(f"{v / 1000:,.0f}k" for v in rates if v)
        rows.append([f"ClickHouse's own TSV insert of the same rows, {sessions} {tool} session(s)",
                     f"median {fmt_rate(median(rates))} (rounds: {rounds})"])
    rows.append(["drain of round 1's WAL into MariaDB (LOAD DATA, N connections)",
                 drain_text([r.mariadb], "mariadbd")])
    return rows + [[n, ""] for n in r.notes]


def clickhouse_ratio_rows(backend):
    r = getattr(backend, "clickhouse", None)
    if not r or not r.clickhouse:
        return []
    rows = []
    client = "clickhouse-client" if any(t == "clickhouse-client" for t, _ in r.reference) else "curl"
    for sessions, why in ((1, "one client loading the file"), (LANES, "as many sessions as lanes")):
        value, verdict = fmt_ratio(median(r.ratio_per_round(client, sessions)), TARGET_VS_REFERENCE)
        rows.append([f"drain into ClickHouse / {client}'s TSV insert, {sessions} session(s) ({why}), "
                     "median of per-round ratios", value, f"≥ {TARGET_VS_REFERENCE}×", verdict])
    first = r.clickhouse[0].rate if r.clickhouse else None
    value, verdict = fmt_ratio(ratio(first, r.mariadb and r.mariadb.rate), TARGET_VS_MARIADB)
    rows.append(["drain into ClickHouse / drain into MariaDB, same WAL (round 1)", value,
                 f"≥ {TARGET_VS_MARIADB}×", verdict])
    return rows


def main():
    """The phase alone: prints its tables and appends them to docs/BENCHMARKS.md."""
    @dataclass
    class Alone:
        clickhouse: ClickhouseResult = None

    db, backend = MariaDb(), Alone()
    CPU_GROUPS.setup()
    try:
        mysql_url = db.start()
        db.reset_database()
        COLLECTOR_DIR.mkdir(parents=True, exist_ok=True)
        clickhouse_phase(db, mysql_url, backend)
    finally:
        OWNED.stop_all()
        db.stop()
        CPU_GROUPS.remove()
    rows, ratios = clickhouse_rows(backend), clickhouse_ratio_rows(backend)
    for name, value in rows:
        print(f"{name}: {value}")
    for name, value, target, verdict in ratios:
        print(f"{name}: {value} (target {target}) {verdict}")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                          text=True, check=False).stdout.strip() or "unknown"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with open(BENCHMARKS_MD, "a") as f:
        f.write(f"\n## {stamp} · commit {head} · ClickHouse phase alone (scripts/load_clickhouse.py)\n\n"
                f"{ROUNDS} rounds; {LANES} lanes; collector on CPU 0, wrk on CPU 1, servers unpinned; "
                f"load average at the end {' '.join(f'{v:.2f}' for v in os.getloadavg())}.\n\n"
                + markdown_table(["measurement", "value"], rows) + "\n\n"
                + markdown_table(["ratio", "value", "target", "verdict"], ratios) + "\n")
    log(f"appended to {BENCHMARKS_MD.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
