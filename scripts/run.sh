#!/usr/bin/env bash
# `make run`: install what is missing, start a private MariaDB if no MySQL is configured,
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

cargo build --release
# Creates the tables if they are missing; every migration statement is idempotent.
target/release/player-stat-collector migrate --config "$CONFIG"
exec target/release/player-stat-collector --config "$CONFIG"
