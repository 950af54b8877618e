#!/usr/bin/env bash
# Runs brume's fuzz targets (fuzz/fuzz_targets: every wire codec, the manifest, network-file,
# Dockerfile, .dockerignore and network-key parsers, the tar and `docker save` readers, and CRIU's
# pagemap image reader) with cargo fuzz (libFuzzer, AddressSanitizer), each for a bounded time.
# A crash fails the run and leaves its input in fuzz/artifacts/<target>/; rerun it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz --target-dir target/fuzz <target> <input>
#
# Options:
#   --seconds N   how long each target runs (default 60)
#   --target T    only this target (repeatable; default all, see `cargo fuzz list`)
#   --build-only  build the targets, run none
#   --seed N      libFuzzer's seed (default 1: the same mutations in every run of a target from
#                 the same corpus; 0 lets libFuzzer pick one)
#
# Each run starts from the seeds in fuzz/seeds/<target> plus what earlier runs on this machine
# found (target/fuzz-corpus/<target>, never committed). cargo-fuzz is installed on first use.
# The targets build on the pinned stable toolchain: RUSTC_BOOTSTRAP=1 lets it take the -Z flags
# cargo fuzz passes (the sanitizer), as nightly would.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
targets=()
build_only=0
seed=1
while (($#)); do
  case "$1" in
    --seconds) seconds=$2; shift ;;
    --target) targets+=("$2"); shift ;;
    --build-only) build_only=1 ;;
    --seed) seed=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "fuzz.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ "$seconds" =~ ^[0-9]+$ ]] && ((seconds > 0)) || { echo "fuzz.sh: --seconds wants a positive number" >&2; exit 2; }

command -v cargo-fuzz >/dev/null || {
  echo "fuzz.sh: installing cargo-fuzz (cargo install, once)"
  cargo install --locked cargo-fuzz --version 0.13.2
}
export RUSTC_BOOTSTRAP=1
fuzz=(cargo fuzz)
common=(--fuzz-dir fuzz --target-dir target/fuzz)
((${#targets[@]})) || mapfile -t targets < <("${fuzz[@]}" list --fuzz-dir fuzz)

"${fuzz[@]}" build "${common[@]}" --debug-assertions
((build_only)) && exit 0

failed=()
for t in "${targets[@]}"; do
  corpus="target/fuzz-corpus/$t"
  mkdir -p "$corpus" "fuzz/artifacts/$t"
  seeds=()
  [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
  echo "== fuzz $t (${seconds} s)"
  # -rss_limit_mb: a decoder that allocates from a length header fails here, not in production.
  if "${fuzz[@]}" run "${common[@]}" --debug-assertions "$t" "$corpus" "${seeds[@]}" -- \
    -max_total_time="$seconds" -seed="$seed" -rss_limit_mb=1024 -timeout=20 -print_final_stats=1 \
    >"target/fuzz-$t.log" 2>&1; then
    grep -E '^stat::(number_of_executed_units|new_units_added)' "target/fuzz-$t.log" | tr '\n' ' '
    echo
  else
    echo "fuzz $t: FAILED (log target/fuzz-$t.log, input in fuzz/artifacts/$t/)"
    tail -n 40 "target/fuzz-$t.log"
    failed+=("$t")
  fi
done
if ((${#failed[@]})); then
  echo "fuzz: ${#failed[@]} of ${#targets[@]} targets failed: ${failed[*]}"
  exit 1
fi
echo "fuzz: ${#targets[@]} targets ran ${seconds} s each without a crash"
