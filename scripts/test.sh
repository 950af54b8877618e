#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, checks formatting and lints,
# smoke-runs the benchmark command, then runs every test. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

echo "== format"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== bench smoke (release): brume bench placement --quick"
cargo run --release --locked -q -p brume -- bench placement --quick --instances 20 --reps 3 | tail -n 3
echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# Every test binary runs even when one fails, so a run shows every failure at once.
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log" || status=$?
# One closing line over every test binary (cargo's own last lines are per binary).
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
exit "$status"
