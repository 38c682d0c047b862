#!/usr/bin/env bash
# A private MariaDB server for development and tests. It never uses or touches the system
# server (port 3306, /run/mysqld): it reads only its own option file and listens on a free port
# of 127.0.0.1 chosen at creation.
#
#   scripts/mariadb.sh start DIR   create on first use, start if not running, print the URL
#   scripts/mariadb.sh stop DIR    stop it: SIGTERM, then SIGKILL after 30 s
#
# DIR holds everything:
#   data/        the datadir                     my.cnf      server options (port included)
#   client.cnf   `mariadb --defaults-file=DIR/client.cnf` logs in as psc over TCP
#   url          mysql://psc:PASSWORD@127.0.0.1:PORT/psc (also printed by start)
#   mysqld.pid   mysqld.sock   error.log
#
# `start` is idempotent: with a live server it only prints the URL; with a stopped (or killed)
# one it starts it again on the same datadir and port.
#
# Server options are tuned for ingest (the collector's batches, several lanes at once) and fast
# tests, not for production; each option in write_server_cnf says why it is there. The one
# durability trade: innodb_flush_log_at_trx_commit=2 writes the redo log to the OS at every
# commit and syncs it about once a second, so a killed mariadbd loses no committed transaction,
# but a power cut can lose the last second.
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

readonly SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly READY_TIMEOUT_S=60
readonly STOP_TIMEOUT_S=30
readonly BIND_ATTEMPTS=3

die() { echo "mariadb.sh: $*" >&2; exit 1; }
log() { echo "mariadb.sh: $*" >&2; }

# True if PID is a live (not zombie) mariadbd started with DIR's option file.
is_our_server() {
    local pid=$1
    [ -n "$pid" ] && [ -r "/proc/$pid/status" ] || return 1
    grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" && return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--defaults-file=$DIR/my.cnf"
}

is_gone() {
    [ ! -r "/proc/$1/status" ] || grep -q '^State:[[:space:]]*Z' "/proc/$1/status"
}

recorded_pid() { cat "$DIR/mysqld.pid" 2>/dev/null || true; }

free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
        return
    fi
    local port
    for _ in $(seq 100); do
        port=$((20000 + RANDOM % 30000))
        # A refused connection means nothing listens there.
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
    done
    die "no free port found on 127.0.0.1"
}

write_server_cnf() {
    local port=$1
    cat >"$DIR/my.cnf" <<CNF
# Written by scripts/mariadb.sh; read by this server only (--defaults-file).
[mysqld]
datadir=$DIR/data
port=$port
bind-address=127.0.0.1
skip-networking=0
socket=$DIR/mysqld.sock
pid-file=$DIR/mysqld.pid
log-error=$DIR/error.log
# A private tmpdir: concurrent bootstraps sharing /tmp collide on temporary table names.
tmpdir=$DIR/tmp
skip-name-resolve
# No binary log: no replica reads it, and it would write every row a second time.
skip-log-bin
# Its instrumentation costs CPU on every statement; the tests and benchmarks do not read it.
performance_schema=OFF
character-set-server=utf8mb4
collation-server=utf8mb4_unicode_ci
# The packet limit the collector sizes its statements by (its own cap is 8 MiB).
max_allowed_packet=16M
# The collector's default method streams batches with LOAD DATA LOCAL (MariaDB's default, said
# explicitly: tests switch it off at run time to check the INSERT fallback).
local_infile=1
# Room for the events table's indexes and the rollup tables of a benchmark run.
innodb_buffer_pool_size=256M
# See the header: the redo log is synced once a second, not at every commit.
innodb_flush_log_at_trx_commit=2
# A batch's redo (a 5000-row LOAD DATA is a few MB) fits the log buffer: no wait for a flush
# of the buffer in the middle of a transaction.
innodb_log_buffer_size=64M
# A larger redo log checkpoints less often under a sustained insert rate (default 96M).
innodb_log_file_size=256M
# Interleaved auto-increment: concurrent LOAD DATA / multi-row INSERTs of several lanes into
# events do not queue on a table-level AUTO-INC lock (safe: no statement-based binlog).
innodb_autoinc_lock_mode=2
# Background flushing sized for an SSD, so dirty pages of a long load do not pile up until a
# sharp checkpoint stalls the inserts (default 200).
innodb_io_capacity=1000
# A lock wait ends with an error (1205, retried by the collector) before the collector's own
# statement timeout (mysql.query_timeout_ms, 30 s) cuts the connection in an unknown state.
innodb_lock_wait_timeout=20
$([ "$(id -u)" -eq 0 ] && echo "user=root")
CNF
}

write_client_files() {
    local port=$1 password=$2
    cat >"$DIR/client.cnf" <<CNF
# Written by scripts/mariadb.sh: mariadb --defaults-file=$DIR/client.cnf
[client]
protocol=tcp
host=127.0.0.1
port=$port
user=psc
password=$password
[mysql]
database=psc
CNF
    chmod 600 "$DIR/client.cnf"
    echo "mysql://psc:$password@127.0.0.1:$port/psc" >"$DIR/url"
}

configured_port() { sed -n 's/^port=//p' "$DIR/my.cnf"; }

root_sql() { mariadb --no-defaults --protocol=socket --socket="$DIR/mysqld.sock" -uroot "$@"; }

# Starts mariadbd in the background and waits until it answers on its socket.
# Returns 2 if the port was taken, 1 on any other failure.
launch() {
    local error_log_lines pid
    error_log_lines=$(wc -l <"$DIR/error.log" 2>/dev/null || echo 0)
    # Detached from the caller's stdout/stderr so that callers waiting for EOF do not hang.
    mariadbd --defaults-file="$DIR/my.cnf" </dev/null >>"$DIR/error.log" 2>&1 &
    pid=$!
    for _ in $(seq $((READY_TIMEOUT_S * 5))); do
        if is_gone "$pid"; then
            local new_lines
            new_lines=$(tail -n +"$((error_log_lines + 1))" "$DIR/error.log" 2>/dev/null || true)
            echo "$new_lines" | tail -n 30 >&2
            if echo "$new_lines" | grep -qiE 'bind on tcp/ip port|address already in use'; then
                return 2
            fi
            return 1
        fi
        if root_sql -e 'SELECT 1' >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    log "mariadbd (pid $pid) not ready after ${READY_TIMEOUT_S}s; last lines of $DIR/error.log:"
    tail -n 30 "$DIR/error.log" >&2
    kill -KILL "$pid" 2>/dev/null || true
    return 1
}

create_server() {
    log "creating a private MariaDB in $DIR"
    mkdir -p "$DIR/data" "$DIR/tmp"
    write_server_cnf "$(free_port)"
    mariadb-install-db --defaults-file="$DIR/my.cnf" --datadir="$DIR/data" \
        --auth-root-authentication-method=normal --skip-test-db \
        $([ "$(id -u)" -eq 0 ] && echo "--user=root") >"$DIR/install.log" 2>&1 \
        || { tail -n 30 "$DIR/install.log" "$DIR/error.log" >&2; die "mariadb-install-db failed (see $DIR/install.log)"; }
    local attempt rc
    for attempt in $(seq "$BIND_ATTEMPTS"); do
        rc=0
        launch || rc=$?
        [ "$rc" -eq 2 ] || break
        log "port $(configured_port) was taken (attempt $attempt); picking another"
        write_server_cnf "$(free_port)"
    done
    [ "$rc" -eq 0 ] || die "mariadbd failed to start (see $DIR/error.log)"

    local password
    password=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
    # The server is private and bound to 127.0.0.1, so psc may do anything on it (tests inject
    # faults with KILL, LOCK TABLES, SET GLOBAL).
    root_sql <<SQL
CREATE DATABASE IF NOT EXISTS psc CHARACTER SET utf8mb4;
CREATE USER 'psc'@'127.0.0.1' IDENTIFIED BY '$password';
CREATE USER 'psc'@'localhost' IDENTIFIED BY '$password';
GRANT ALL PRIVILEGES ON *.* TO 'psc'@'127.0.0.1' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO 'psc'@'localhost' WITH GRANT OPTION;
SQL
    write_client_files "$(configured_port)" "$password"
}

start() {
    command -v mariadbd >/dev/null 2>&1 || "$SCRIPTS/ensure-deps.sh" mariadb
    if is_our_server "$(recorded_pid)" && [ -s "$DIR/url" ]; then
        cat "$DIR/url"
        return
    fi
    if [ -s "$DIR/url" ] && [ -d "$DIR/data/mysql" ]; then
        launch || die "mariadbd failed to restart on port $(configured_port) (see $DIR/error.log)"
    else
        [ ! -e "$DIR/data" ] || [ -z "$(ls -A "$DIR/data")" ] \
            || die "$DIR/data exists but was not made by this script; remove it or pick another DIR"
        create_server
    fi
    # The check that matters: the psc user over TCP, exactly as the collector will connect.
    mariadb --defaults-file="$DIR/client.cnf" -N -B -e 'SELECT 1' >/dev/null \
        || die "server started but psc cannot log in over TCP (see $DIR/error.log)"
    cat "$DIR/url"
}

stop() {
    local pid
    pid=$(recorded_pid)
    if ! is_our_server "$pid"; then
        log "no server running for $DIR"
        return
    fi
    kill -TERM "$pid"
    for _ in $(seq $((STOP_TIMEOUT_S * 10))); do
        is_gone "$pid" && return
        sleep 0.1
    done
    log "mariadbd (pid $pid) still running after ${STOP_TIMEOUT_S}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        is_gone "$pid" && return
        sleep 0.1
    done
    die "mariadbd (pid $pid) did not exit"
}

[ $# -eq 2 ] || die "usage: $0 start|stop DIR"
[ "$1" != start ] || mkdir -p "$2"
[ -d "$2" ] || die "no such directory: $2"
DIR="$(cd "$2" && pwd)"
readonly DIR
# A unix socket path must fit in sun_path (108 bytes).
[ "${#DIR}" -le 90 ] || die "DIR path too long for a unix socket: $DIR"

case "$1" in
    start) start ;;
    stop) stop ;;
    *) die "usage: $0 start|stop DIR" ;;
esac
