#!/usr/bin/env bash
# Fetches the country database the GeoIP tests use, once, and prints its path.
#
#   scripts/geoip-test-db.sh            -> /path/to/geo-whois-asn-country.mmdb
#
# The database is ip-location-db's geo-whois-asn-country (MaxMind DB format, CC0 package of
# NRO data under CC BY 4.0), from the npm registry with `npm pack`, pinned to one version so
# the tests' known IPs keep their countries. It is cached under $PSC_GEOIP_CACHE (default
# ~/.cache/psc-geoip) and never committed.
set -euo pipefail
PACKAGE="@ip-location-db/geo-whois-asn-country-mmdb"
VERSION="2.3.2026061719"
FILE="geo-whois-asn-country.mmdb"
CACHE="${PSC_GEOIP_CACHE:-${HOME:-/tmp}/.cache/psc-geoip}/$VERSION"
die() { echo "geoip-test-db: $*" >&2; exit 1; }

if [ -s "$CACHE/$FILE" ]; then
    echo "$CACHE/$FILE"
    exit 0
fi
"$(dirname "$0")/ensure-deps.sh" npm >&2
mkdir -p "$CACHE"
work="$(mktemp -d "$CACHE/fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null) || die "npm pack $PACKAGE@$VERSION failed"
tar -xzf "$work"/*.tgz -C "$work" "package/$FILE" || die "the package has no $FILE"
# Rename into place: parallel test processes either see no file or the whole file.
mv "$work/package/$FILE" "$CACHE/$FILE"
echo "$CACHE/$FILE"
