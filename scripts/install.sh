#!/usr/bin/env bash
# Installs player-stat-collector: binary, config (kept if present) and systemd unit.
# Idempotent: running it again upgrades the binary and unit and never touches an existing
# config or the WAL.
#
#   scripts/install.sh [--binary PATH]
#
# Environment:
#   PREFIX   where the binary goes (PREFIX/bin). Default /usr/local.
#   DESTDIR  staging root (packaging, tests): files go under it and nothing is started,
#            no user is created and systemd is not reloaded. Default empty = the live system.
#   BINARY   the binary to install. Default target/release/player-stat-collector (built if missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
BINARY=${BINARY:-target/release/player-stat-collector}
NAME=player-stat-collector
if [ "${1:-}" = "--binary" ]; then
    BINARY=${2:?--binary needs a path}
fi

die() { echo "install.sh: $*" >&2; exit 1; }

if [ ! -x "$BINARY" ]; then
    [ "$BINARY" = target/release/$NAME ] || die "$BINARY is not an executable"
    cargo build --release
fi
if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
    die "installing on the live system needs root (or set DESTDIR to stage the files)"
fi

bin_dir="$DESTDIR$PREFIX/bin"
conf_dir="$DESTDIR/etc/$NAME"
unit_dir="$DESTDIR/etc/systemd/system"
doc_dir="$DESTDIR$PREFIX/share/doc/$NAME"
install -d -m 0755 "$bin_dir" "$conf_dir" "$unit_dir" "$doc_dir"

# The binary: copy then rename, so a running service keeps its old inode.
install -m 0755 "$BINARY" "$bin_dir/.$NAME.new"
mv -f "$bin_dir/.$NAME.new" "$bin_dir/$NAME"

# The config: the repository's config.toml once; an operator's edits are never overwritten.
if [ ! -e "$conf_dir/config.toml" ]; then
    install -m 0640 config.toml "$conf_dir/config.toml"
    echo "install.sh: installed $conf_dir/config.toml (edit mysql.url)"
else
    echo "install.sh: kept existing $conf_dir/config.toml"
fi

# The unit, pointed at PREFIX.
sed "s#/usr/local#$PREFIX#g" scripts/$NAME.service >"$unit_dir/.$NAME.service.new"
chmod 0644 "$unit_dir/.$NAME.service.new"
mv -f "$unit_dir/.$NAME.service.new" "$unit_dir/$NAME.service"
install -m 0644 README.md "$doc_dir/README.md"

if [ -n "$DESTDIR" ]; then
    echo "install.sh: staged under $DESTDIR"
    exit 0
fi

# Live system: the service user, config readable by it, systemd told about the unit.
if ! getent passwd "$NAME" >/dev/null; then
    useradd --system --no-create-home --home-dir /var/lib/$NAME --shell /usr/sbin/nologin "$NAME"
fi
chgrp "$NAME" "$conf_dir/config.toml"
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    echo "install.sh: done. Start with: systemctl enable --now $NAME"
else
    echo "install.sh: done (systemd is not running here; the unit is in $unit_dir)"
fi
