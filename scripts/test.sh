#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, then runs it in tiers and
# stops at the first tier that fails. `.ci/run` calls exactly this.
#
#   1. format and lints      cargo fmt --check, clippy -D warnings (toolchain: rust-toolchain.toml)
#   2. build                 every workload binary the tests read (scripts/build-static.sh), every
#                            test binary, and a smoke run of `brume bench`
#   3. deterministic tests   unit tests and pure simulations: no root, Docker, network or clock
#   4. real-system tests     Docker, CRIU, runc, namespaces and daemons, each killed after 5 minutes
#                            (.config/nextest.toml), never retried
#   5. fuzzing               every fuzz target (fuzz/, cargo fuzz) for --fuzz-seconds each, from the
#                            committed seeds (scripts/fuzz.sh); a crash fails the suite
#
# Tests that need a system which is missing skip; BRUME_REQUIRE (a comma list of docker, criu, tracking,
# runc, root, or all) turns those skips into failures. CI (CI=true) and --ci-like require all.
# The closing line counts every test and names every skip.
#
# Options:
#   --ci-like    reproduce CI's conditions: two cores (taskset -c 0,1), two test threads, a
#                background CPU load (one busy loop per --load, default 1), BRUME_REQUIRE=all
#   --load N     busy loops for --ci-like (0 for none)
#   --fast       skip format, lints, the bench smoke run and fuzzing (for iterating on tests)
#   --fuzz-seconds N  how long each fuzz target runs (default 10; 0 skips fuzzing)
#   -E FILTER    run only the tests a nextest filterset selects (in both test tiers)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

ci_like=0
load=1
fast=0
filter=""
fuzz_seconds=10
while (($#)); do
  case "$1" in
    --ci-like) ci_like=1 ;;
    --load) load=$2; shift ;;
    --fast) fast=1 ;;
    --fuzz-seconds) fuzz_seconds=$2; shift ;;
    -E) filter=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "test.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "${CI:-}" = "true" ] || ((ci_like)); then
  export BRUME_REQUIRE=${BRUME_REQUIRE:-all}
fi
profile=default
if ((ci_like)) || [ "${CI:-}" = "true" ]; then
  profile=ci
fi

# Each run's resources carry this id (tests name their containers, images, namespaces and temp
# dirs with it where they can), and the skip log lives beside it.
export BRUME_TEST_RUN=${BRUME_TEST_RUN:-$$}
export BRUME_SKIP_LOG="$root/target/test-skips.log"
# A pinned seed for every property test (proptest reads it); printed so a failure can be rerun.
export PROPTEST_RNG_SEED=${PROPTEST_RNG_SEED:-20261203}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
# No incremental cache: the suite builds once per clone, and the cache was a third of the test
# build's disk (4.0 of 12.3 GB, before line tables only in Cargo.toml's dev profile).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

# One run at a time on a machine: runs share Docker, /run/netns and the leftover sweep.
exec 9>"${TMPDIR:-/tmp}/.brume-test.lock"
flock -n 9 || { echo "test.sh: another run of the suite holds ${TMPDIR:-/tmp}/.brume-test.lock; wait for it" >&2; exit 1; }

# The suite runs with fd 9 closed for every command it starts: bash keeps the lock open on a
# close-on-exec copy meanwhile. A test's workload must not inherit the lock: CRIU refuses to dump
# a task holding a file lock.
suite() {

  started=$(date +%s)
  stamp() { echo "== $1 ($(($(date +%s) - started)) s)"; }

  # The build, the test binaries and the fuzz targets take about 7 GB under target/ (6.9 GB at
  # most in a --ci-like run from a fresh clone); a disk that fills mid-build fails with a
  # linker's bus error, so say it first.
  free_mb=$(df -Pm "$root" | awk 'NR == 2 { print $4 }')
  echo "disk: ${free_mb} MB free under $root"
  if [ -n "$free_mb" ] && ((free_mb < 8000)); then
    echo "test.sh: warning: the suite needs about 8 GB of free disk under $root/target; the build may fail for lack of space" >&2
  fi

  bash scripts/install-deps.sh
  # install-criu.sh puts criu in /usr/local/sbin, which a non-login environment may lack.
  case ":$PATH:" in
    *:/usr/local/sbin:*) ;;
    *) export PATH="/usr/local/sbin:$PATH" ;;
  esac
  command -v cargo-nextest >/dev/null || {
    stamp "installing cargo-nextest (cargo install, once)"
    cargo install --locked cargo-nextest
  }

  bash scripts/sweep-test-leftovers.sh

  run=()
  busy=()
  stop_load() { for p in "${busy[@]}"; do kill "$p" 2>/dev/null || true; done; }
  trap 'stop_load; bash "$root/scripts/sweep-test-leftovers.sh" || true' EXIT
  if ((ci_like)); then
    run=(taskset -c 0,1)
    for _ in $(seq 1 "$load"); do
      # Bounded: never outlives the longest CI run.
      timeout 5400 sh -c 'while :; do :; done' &
      busy+=($!)
    done
    echo "ci-like: taskset -c 0,1, 2 test threads, $load busy loop(s) in the background, BRUME_REQUIRE=$BRUME_REQUIRE"
  fi

  if ! ((fast)); then
    stamp "format"
    cargo fmt --all -- --check
    stamp "clippy"
    "${run[@]}" cargo clippy --workspace --all-targets --locked -- -D warnings
  fi

  stamp "build: workloads (scripts/build-static.sh)"
  "${run[@]}" bash scripts/build-static.sh >/dev/null
  stamp "build: tests"
  "${run[@]}" cargo nextest run --workspace --locked --no-run --cargo-quiet
  if ! ((fast)); then
    # The debug build the tests use: this checks the bench runs and ends with its BENCH line;
    # its timings mean nothing (a release build just for this took minutes on CI's two cores).
    stamp "bench smoke: brume bench placement --quick"
    # `brume bench` runs the brume-bench program beside it: build both.
    "${run[@]}" cargo build --locked -q -p brume -p brume-bench
    "${run[@]}" target/debug/brume bench placement --quick --instances 20 --reps 3 2>/dev/null |
      tee target/bench-smoke.txt | tail -n 1
    grep -q '^BENCH placement ' target/bench-smoke.txt || { echo "bench smoke: no BENCH line"; return 1; }
  fi

  # The deterministic tier: unit tests and the pure simulations. Everything else is a real-system
  # test. A new test binary is real-system until it is listed here.
  deterministic='kind(lib) | kind(bin) | binary(sim) | binary(placers) | binary(properties) | binary(precopy_sim) | binary(place_cli)'
  rm -f "$BRUME_SKIP_LOG"
  results=()
  status=0
  tier() { # name filterset
    local name=$1 set=$2
    [ -n "$filter" ] && set="($set) & ($filter)"
    stamp "tests: $name"
    local junit="target/nextest/$profile/junit.xml"
    rm -f "$junit"
    "${run[@]}" cargo nextest run --workspace --locked --cargo-quiet --profile "$profile" \
      --no-tests=pass -E "$set" || status=1
    [ -f "$junit" ] && results+=("$(cat "$junit")")
    return 0
  }
  tier "deterministic" "$deterministic"
  if ((status == 0)); then
    tier "real systems" "not ($deterministic)"
  else
    echo "deterministic tests failed: the real-system tier does not run"
  fi
  if ((status == 0)) && [ -z "$filter" ]; then
    stamp "doc tests"
    "${run[@]}" cargo test --workspace --locked --doc -q 2>&1 | tail -n 3 || status=1
  fi
  if ((status == 0)) && [ -z "$filter" ] && ! ((fast)) && ((fuzz_seconds > 0)); then
    stamp "fuzz: every target for ${fuzz_seconds} s (scripts/fuzz.sh)"
    "${run[@]}" bash scripts/fuzz.sh --seconds "$fuzz_seconds" || status=1
  fi

  # Counts over every test (nextest's own summary is per tier); ignored tests and tests that
  # skipped for a missing system are counted as skipped, and named.
  passed=0 failed=0 ignored=0
  for r in "${results[@]}"; do
    t=$(grep -o '<testsuites [^>]*' <<<"$r" | grep -o ' tests="[0-9]*"' | grep -o '[0-9]*' || echo 0)
    f=$(grep -o '<testsuites [^>]*' <<<"$r" | grep -o ' failures="[0-9]*"' | grep -o '[0-9]*' || echo 0)
    e=$(grep -o '<testsuites [^>]*' <<<"$r" | grep -o ' errors="[0-9]*"' | grep -o '[0-9]*' || echo 0)
    passed=$((passed + t - f - e))
    failed=$((failed + f + e))
  done
  ignored_tests=$(cargo nextest list --workspace --locked --cargo-quiet --run-ignored only \
    --message-format oneline ${filter:+-E "$filter"} 2>/dev/null || true)
  ignored=$(grep -c . <<<"$ignored_tests" || true)
  skips=0
  [ -f "$BRUME_SKIP_LOG" ] && skips=$(grep -c . "$BRUME_SKIP_LOG" || true)
  if ((ignored)); then
    echo "ignored (run by hand, see each test's reason):"
    sed 's/^/  /' <<<"$ignored_tests"
  fi
  if ((skips)); then
    echo "skipped for a missing system (BRUME_REQUIRE=all makes these failures):"
    sed 's/^/  /' "$BRUME_SKIP_LOG"
  fi
  echo "took $(($(date +%s) - started)) s"
  # A test that skipped for a missing system returned early and counts as passed in the report.
  echo "tests: $((passed - skips)) passed, $failed failed, $((ignored + skips)) skipped"
  return "$status"
}
suite 9>&-
