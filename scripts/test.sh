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
cargo test --workspace --locked
