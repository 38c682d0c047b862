#!/usr/bin/env bash
# Installs what building, running and testing need, and only what is missing.
#
#   scripts/ensure-deps.sh [rust] [mariadb] [clickhouse] [prometheus] [chromium] [npm]
#   (no argument: rust, mariadb and clickhouse)
#
# rust:    cargo, rustfmt, clippy and a C compiler. The Rust toolchain cannot be installed from
#          here (rustup's servers are not reachable), so a missing one is a clear error.
# mariadb: mariadbd, mariadb-install-db, mariadb and mariadb-admin, from Debian's
#          mariadb-server-core and mariadb-client: the programs without the system service
#          (nothing is started; scripts/mariadb.sh runs private servers).
# clickhouse: clickhouse-server (Debian's package, 18.16), for the ClickHouse sink and its tests.
#          Its system service is never started by us (policy-rc.d keeps apt from starting it);
#          scripts/clickhouse.sh runs private servers with their own config.
# prometheus: prometheus and promtool, from Debian's prometheus package, for tests/ops.rs. The
#          package's system service is never started by us (policy-rc.d keeps apt from starting it).
# npm:     Node's package client, for scripts/geoip-test-db.sh (the GeoIP tests' database).
# chromium: Debian's chromium, for the real-browser test (tests/browser.rs). A browser is
#          never downloaded from anywhere else.
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

die() { echo "ensure-deps: $*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

apt_install() {
    have apt-get || die "apt-get not found; install these packages by hand: $*"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        have sudo || die "need root (or sudo) to install: $*"
        sudo="sudo"
    fi
    echo "ensure-deps: installing $*" >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
        || die "apt-get install $* failed"
}

ensure_rust() {
    have cargo || die "cargo not found. Install a Rust toolchain (rustup, or the machine image's)
and put ~/.cargo/bin on PATH; it cannot be downloaded from this script."
    cargo fmt --version >/dev/null 2>&1 || die "rustfmt missing: rustup component add rustfmt"
    cargo clippy --version >/dev/null 2>&1 || die "clippy missing: rustup component add clippy"
    have cc || apt_install gcc libc6-dev
}

ensure_mariadb() {
    local missing=""
    for tool in mariadbd mariadb-install-db mariadb mariadb-admin; do
        have "$tool" || missing=1
    done
    [ -z "$missing" ] || apt_install mariadb-server-core mariadb-client
}

# apt_install, with apt's maintainer scripts kept from starting a system service (a
# policy-rc.d that exits 101 = "not allowed").
apt_install_no_service() {
    local policy=/usr/sbin/policy-rc.d created=""
    if [ ! -e "$policy" ] && [ "$(id -u)" -eq 0 ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1
    fi
    apt_install "$@"
    [ -z "$created" ] || rm -f "$policy"
}

ensure_prometheus() {
    if have prometheus && have promtool; then
        return
    fi
    apt_install_no_service prometheus
}

ensure_clickhouse() {
    have clickhouse-server || apt_install_no_service clickhouse-server
}

ensure_npm() {
    have npm || apt_install npm
}

ensure_chromium() {
    have chromium || apt_install chromium
}

[ $# -gt 0 ] || set -- rust mariadb clickhouse
for what in "$@"; do
    case "$what" in
        rust) ensure_rust ;;
        mariadb) ensure_mariadb ;;
        clickhouse) ensure_clickhouse ;;
        prometheus) ensure_prometheus ;;
        chromium) ensure_chromium ;;
        npm) ensure_npm ;;
        *) die "unknown component '$what' (rust, mariadb, clickhouse, prometheus, chromium, npm)" ;;
    esac
done
