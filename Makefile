# Entry points; each target installs what it needs (scripts/ensure-deps.sh) on a fresh
# Debian/Ubuntu machine.

.PHONY: run build test lint deps bench load-test front-floor chaos fuzz failpoints

# Build the release binary and serve with config.toml, starting a private MariaDB in
# ./var/mysql when mysql.url is empty.
run:
	scripts/run.sh

build: deps
	cargo build --release

# Lint, then every test target. Integration tests start their own private MariaDB servers.
test: deps lint
	cargo test --all-targets --features failpoints

# The fail-point suite alone (tests/failpoints.rs): every IO call of the WAL, cursor and
# compaction code fails once, in process, and the next attempt must recover. `test` runs it too.
failpoints:
	cargo test --features failpoints --test failpoints

lint: deps
	cargo fmt --check
	cargo clippy --all-targets --all-features -- -D warnings

deps:
	scripts/ensure-deps.sh

bench: deps
	cargo bench

# Side by side with nginx and MariaDB's own ceilings, the back end per delivery mode (about 20
# minutes, needs 2 CPUs); appends the results to docs/BENCHMARKS.md. Not part of `make test`.
load-test: deps
	scripts/load-test.sh

# The kernel's floor under the front end (issue 13): nginx, the collector and bare 204 servers
# in each socket shape (scripts/floor204.c), CPU per request side by side; prints a table.
front-floor: deps
	scripts/load-test.sh floor

# The fault and crash suites at full length (a 10 minute MySQL outage, longer loads), release
# build with the fail points. `make test` runs the same scenarios scaled down.
chaos: deps
	PSC_CHAOS=1 cargo test --release --features failpoints --test faults --test crash -- --test-threads=1 --nocapture

# Every fuzz target (cargo fuzz, libFuzzer) for FUZZ_SECONDS each (default 180), growing and
# minimising fuzz/corpus/; not part of `make test`, which replays that corpus
# (tests/fuzz_corpus.rs). Results are appended to fuzz/runs.log.
fuzz: deps
	FUZZ_SECONDS=$${FUZZ_SECONDS:-180} scripts/fuzz.sh
