#!/usr/bin/env bash
# `make load-test`: the collector side by side with nginx and with MariaDB's own ceiling.
# Installs what is missing (Rust check, MariaDB, nginx, wrk; no system service is started),
# builds the release binary, then hands over to scripts/load_test.py, which runs every phase,
# prints the tables and appends them to docs/BENCHMARKS.md. Takes about 10 minutes (the first
# run also builds oha with `cargo install`, a few minutes more).
#
# A collector that does not build or start is skipped with a message; nginx and the MariaDB
# ceiling still run. Smoke run: PSC_BENCH_ROUNDS=1 PSC_BENCH_RUN_S=2 PSC_BENCH_BACKLOG=200000
# PSC_BENCH_OPEN_LOOP_S=2 PSC_BENCH_SWEEP_S=1 PSC_BENCH_MANY_S=5
#
# `scripts/load-test.sh floor` (`make front-floor`): the same set-up, then scripts/front_floor.py
# alone (nginx, the collector and scripts/floor204.c's bare servers; about 12 minutes).
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() { echo "load-test: $*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

# Same approach as scripts/ensure-deps.sh: policy-rc.d answering 101 keeps Debian's
# maintainer scripts from starting the system nginx during the install.
apt_install() {
    have apt-get || die "apt-get not found; install these packages by hand: $*"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        have sudo || die "need root (or sudo) to install: $*"
        sudo="sudo"
    fi
    echo "load-test: installing $*" >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    local policy=/usr/sbin/policy-rc.d added_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod +x "$policy"
        added_policy=1
    fi
    local rc=0
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o DPkg::Lock::Timeout=300 "$@" || rc=$?
    if [ -n "$added_policy" ]; then $sudo rm -f "$policy"; fi
    [ "$rc" -eq 0 ] || die "apt-get install $* failed"
}

scripts/ensure-deps.sh rust mariadb clickhouse
missing=()
have nginx || missing+=(nginx)
have wrk || missing+=(wrk)
have taskset || missing+=(util-linux)
have python3 || missing+=(python3)
have curl || missing+=(curl)
# The ClickHouse phase's reference insert (the server comes from ensure-deps.sh clickhouse).
have clickhouse-client || missing+=(clickhouse-client)
# Per-request counts of the front end: perf stat (syscalls, context switches), callgrind.
have perf || missing+=(linux-perf)
have valgrind || missing+=(valgrind)
# scripts/floor204.c (front-floor) uses liburing.
[ -e /usr/include/liburing.h ] || missing+=(liburing-dev)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
[ "$(nproc)" -ge 2 ] || die "needs 2 CPUs (servers on CPU 0, wrk on CPU 1); nproc is $(nproc)"

# The C load generator of the pipelined-pload and open-loop runs (scripts/pload.c); without
# it those runs are skipped and wrk/oha alone remain.
mkdir -p target
cc -O2 -Wall -o target/pload scripts/pload.c \
    || { echo "load-test: scripts/pload.c did not build; its runs are skipped" >&2; rm -f target/pload; }
# The machine's own stall floor beside each open-loop run (scripts/hiccup.c).
cc -O2 -Wall -pthread -o target/hiccup scripts/hiccup.c && target/hiccup -t \
    || { echo "load-test: scripts/hiccup.c did not build or failed its self-test; no floor is reported" >&2; rm -f target/hiccup; }

if [ "${1:-}" = floor ]; then
    cc -O2 -Wall -o target/floor204 scripts/floor204.c -luring
    cargo build --release
    exec python3 scripts/front_floor.py
fi

if ! cargo build --release; then
    echo "load-test: cargo build --release failed; the collector half is skipped" >&2
    export PSC_BENCH_SKIP_COLLECTOR="cargo build --release failed"
fi

exec python3 scripts/load_test.py
