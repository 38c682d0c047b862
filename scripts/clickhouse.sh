#!/usr/bin/env bash
# A private ClickHouse server for development and tests. It never uses or touches the system
# server (/etc/clickhouse-server, /var/lib/clickhouse, ports 8123/9000): it reads only the
# config this script writes into DIR and listens on free ports of 127.0.0.1.
#
#   scripts/clickhouse.sh config DIR   write DIR's config (first use only), print the URL
#   scripts/clickhouse.sh start DIR    config, start if not running, wait until it answers, print the URL
#   scripts/clickhouse.sh stop DIR     stop it: SIGTERM, then SIGKILL after 30 s
#
# Ports: CLICKHOUSE_HTTP_PORT and CLICKHOUSE_TCP_PORT, if set when DIR is first configured
# (tests pick them first, to write a cluster definition naming several servers); otherwise
# free ones. Kept in DIR/config.xml from then on, so a restart keeps its URL.
# Extra config: any DIR/config.d/*.xml (a `remote_servers` cluster, say) is merged by the
# server itself.
#
# DIR holds everything:
#   config.xml  users.xml  config.d/   url (http://127.0.0.1:PORT, also printed)
#   data/  tmp/  user_files/  format_schemas/   log/server.log  log/error.log  log/stdout.log
#   clickhouse.pid
#
# The server runs with DIR as its working directory, as the invoking user (root included),
# bound to 127.0.0.1 only, user `default` without password (loopback only).
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

readonly SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly READY_TIMEOUT_S=60
readonly STOP_TIMEOUT_S=30

die() { echo "clickhouse.sh: $*" >&2; exit 1; }
log() { echo "clickhouse.sh: $*" >&2; }

is_gone() {
    [ ! -r "/proc/$1/status" ] || grep -q '^State:[[:space:]]*Z' "/proc/$1/status"
}

# True if PID is a live clickhouse-server started with DIR's config.
is_our_server() {
    local pid=$1
    [ -n "$pid" ] && ! is_gone "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--config-file=$DIR/config.xml"
}

recorded_pid() { cat "$DIR/clickhouse.pid" 2>/dev/null || true; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

configured() { sed -n "s:.*<$1>\([0-9]*\)</$1>.*:\1:p" "$DIR/config.xml"; }

write_config() {
    local http=$1 tcp=$2
    mkdir -p "$DIR/data" "$DIR/tmp" "$DIR/user_files" "$DIR/format_schemas" "$DIR/log" "$DIR/config.d"
    cat >"$DIR/config.xml" <<XML
<?xml version="1.0"?>
<!-- Written by scripts/clickhouse.sh; read by this server only (its config-file option). -->
<yandex>
    <logger>
        <level>information</level>
        <log>$DIR/log/server.log</log>
        <errorlog>$DIR/log/error.log</errorlog>
        <size>100M</size>
        <count>2</count>
    </logger>
    <http_port>$http</http_port>
    <tcp_port>$tcp</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <path>$DIR/data/</path>
    <tmp_path>$DIR/tmp/</tmp_path>
    <user_files_path>$DIR/user_files/</user_files_path>
    <format_schema_path>$DIR/format_schemas/</format_schema_path>
    <users_config>$DIR/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <!-- Row times are UTC (the events table says DateTime('UTC') anyway). -->
    <timezone>UTC</timezone>
    <!-- Longer than the collector's idle reuse of a connection (2 s), so the server does not
         close a connection the collector is about to send on. -->
    <keep_alive_timeout>10</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <!-- Small caches: tests run several servers on a 24 GiB machine. -->
    <mark_cache_size>268435456</mark_cache_size>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mlock_executable>false</mlock_executable>
</yandex>
XML
    cat >"$DIR/users.xml" <<XML
<?xml version="1.0"?>
<!-- Written by scripts/clickhouse.sh. -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
            <load_balancing>random</load_balancing>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries><errors>0</errors><result_rows>0</result_rows>
                <read_rows>0</read_rows><execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
XML
    echo "http://127.0.0.1:$http" >"$DIR/url"
}

config() {
    command -v clickhouse-server >/dev/null 2>&1 || "$SCRIPTS/ensure-deps.sh" clickhouse
    if [ ! -s "$DIR/config.xml" ]; then
        write_config "${CLICKHOUSE_HTTP_PORT:-$(free_port)}" "${CLICKHOUSE_TCP_PORT:-$(free_port)}"
    fi
    cat "$DIR/url"
}

answers() { python3 - "$(configured http_port)" <<'PY' >/dev/null 2>&1
import sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/ping", timeout=2) as r:
    sys.exit(0 if r.read().startswith(b"Ok.") else 1)
PY
}

start() {
    config >/dev/null
    if is_our_server "$(recorded_pid)"; then
        cat "$DIR/url"
        return
    fi
    (cd "$DIR" && exec clickhouse-server --config-file="$DIR/config.xml" \
        </dev/null >>"$DIR/log/stdout.log" 2>&1) &
    local pid=$!
    echo "$pid" >"$DIR/clickhouse.pid"
    for _ in $(seq $((READY_TIMEOUT_S * 10))); do
        if is_gone "$pid"; then
            tail -n 30 "$DIR/log/stdout.log" "$DIR/log/error.log" >&2 2>/dev/null || true
            die "clickhouse-server exited during start-up (see $DIR/log)"
        fi
        if answers; then
            cat "$DIR/url"
            return
        fi
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    die "clickhouse-server (pid $pid) not answering after ${READY_TIMEOUT_S}s (see $DIR/log)"
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
    log "clickhouse-server (pid $pid) still running after ${STOP_TIMEOUT_S}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        is_gone "$pid" && return
        sleep 0.1
    done
    die "clickhouse-server (pid $pid) did not exit"
}

[ $# -eq 2 ] || die "usage: $0 config|start|stop DIR"
[ "$1" = stop ] || mkdir -p "$2"
[ -d "$2" ] || die "no such directory: $2"
DIR="$(cd "$2" && pwd)"
readonly DIR

case "$1" in
    config) config ;;
    start) start ;;
    stop) stop ;;
    *) die "usage: $0 config|start|stop DIR" ;;
esac
