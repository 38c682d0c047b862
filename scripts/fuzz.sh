#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for a bounded time, growing its committed corpus.
#
#   scripts/fuzz.sh [TARGET...]            (make fuzz; FUZZ_SECONDS per target, default 180)
#
# cargo fuzz needs nightly-only rustc flags (sanitizers, coverage instrumentation); the one
# stable toolchain here accepts them with RUSTC_BOOTSTRAP=1, and ships the ASan runtime.
# Limits: inputs up to 8 KiB (twice the checks' 4 KiB body cap), 10 s per input (a hang), no
# single allocation above 64 MiB and 1 GiB RSS (an allocation past the body cap shows as a
# crash). New corpus entries land in fuzz/corpus/TARGET, then the corpus is minimised
# (cmin) so what is committed stays small; crashes go to fuzz/artifacts/TARGET.
# Each target's last libFuzzer status line (execs, cov, ft, corp) is appended to
# fuzz/runs.log with the date, the commit and the seconds it ran.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${FUZZ_SECONDS:-180}"
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(request_head query chunked body wal_record)
export RUSTC_BOOTSTRAP=1

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cd fuzz
cargo fuzz build -O
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
status=0
for target in "${TARGETS[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    log="$(mktemp)"
    echo "fuzz: $target for ${SECONDS_PER_TARGET}s" >&2
    if ! cargo fuzz run -O "$target" "corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -max_len=8192 -timeout=10 \
        -rss_limit_mb=1024 -malloc_limit_mb=64 -print_final_stats=1 \
        -artifact_prefix="artifacts/$target/" >"$log" 2>&1; then
        echo "fuzz: $target FAILED; see $log and fuzz/artifacts/$target/" >&2
        tail -40 "$log" >&2
        status=1
        continue
    fi
    last="$(grep -E '^#[0-9]+' "$log" | tail -1)"
    execs="$(grep -E 'stat::number_of_executed_units' "$log" | awk '{print $2}')"
    printf '%s %s %-13s %5ss execs=%s %s\n' "$(date -u +%FT%TZ)" "$commit" "$target" \
        "$SECONDS_PER_TARGET" "$execs" "$last" >>runs.log
    cargo fuzz cmin -O "$target" "corpus/$target" -- -max_len=8192 >/dev/null 2>&1 || true
    rm -f "$log"
done
tail -n "${#TARGETS[@]}" runs.log >&2
exit "$status"
