#!/usr/bin/env bash
# `make run`: install what is missing, start a private MariaDB if no MySQL is configured (or,
# with sink.kind = "clickhouse", a private ClickHouse if none is configured or running),
# build the release binary, create the tables and serve with config.toml (CONFIG=... to change).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CONFIG=${CONFIG:-config.toml}

scripts/ensure-deps.sh rust

# An empty mysql.url (and no PSC_MYSQL_URL) means: use the private MariaDB in ./var/mysql.
configured_url=$(awk -F'"' '/^\[/ { section = $0 }
    section == "[mysql]" && /^[[:space:]]*url[[:space:]]*=/ { print $2; exit }' "$CONFIG")
if [ -z "${PSC_MYSQL_URL:-}" ] && [ -z "$configured_url" ]; then
    scripts/ensure-deps.sh mariadb
    PSC_MYSQL_URL=$(scripts/mariadb.sh start ./var/mysql)
    export PSC_MYSQL_URL
    echo "run.sh: MySQL is the private MariaDB in ./var/mysql (stop: scripts/mariadb.sh stop var/mysql)" >&2
fi

# sink.kind = "clickhouse" with the default clickhouse.url, no shards and no PSC_CLICKHOUSE_URL:
# a ClickHouse already answering on 127.0.0.1:8123 is used; otherwise a private one in
# ./var/clickhouse (Debian's package, installed when missing; its own config and ports).
kind=$(awk -F'"' '/^\[/ { section = $0 }
    section == "[sink]" && /^[[:space:]]*kind[[:space:]]*=/ { print $2; exit }' "$CONFIG")
ch_setting() {
    awk -v key="$1" '/^\[/ { section = $0 }
        section == "[clickhouse]" && $0 ~ "^[[:space:]]*" key "[[:space:]]*=" { sub(/^[^=]*=[[:space:]]*/, ""); print; exit }' "$CONFIG"
}
ch_url=$(ch_setting url); ch_shards=$(ch_setting shards)
if [ "$kind" = clickhouse ] && [ -z "${PSC_CLICKHOUSE_URL:-}" ] \
    && { [ -z "$ch_url" ] || [ "$ch_url" = '"http://127.0.0.1:8123"' ]; } \
    && { [ -z "$ch_shards" ] || [ "$ch_shards" = "[]" ]; } \
    && ! (exec 3<>/dev/tcp/127.0.0.1/8123) 2>/dev/null; then
    scripts/ensure-deps.sh clickhouse
    PSC_CLICKHOUSE_URL=$(scripts/clickhouse.sh start ./var/clickhouse)
    export PSC_CLICKHOUSE_URL
    echo "run.sh: ClickHouse is the private server in ./var/clickhouse (stop: scripts/clickhouse.sh stop var/clickhouse)" >&2
fi

cargo build --release
# Creates the tables if they are missing; every migration statement is idempotent.
target/release/player-stat-collector migrate --config "$CONFIG"
exec target/release/player-stat-collector --config "$CONFIG"
