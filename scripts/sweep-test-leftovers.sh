#!/usr/bin/env bash
# Removes what earlier test runs left behind: Docker containers and images labelled `brume.test`
# (every test-made container and image carries it), testnets of test runs, runc containers under the tests' runc roots,
# network namespaces `brume-<tag>-<n>` whose owning process is gone (`brume-testnet cleanup`
# keeps those of a run still alive), and test temp dirs older than a day. scripts/test.sh runs it
# before and after the tests; nothing without the test label or prefix is touched, so a node's
# real tasks are safe. Prints one line per kind when it removed something.
set -uo pipefail
cd "$(dirname "$0")/.."

# Testnets of test runs (named t<run>-<pid> by testnet/tests/containers.rs) killed before their
# guard ran `down`: their router process, containers, attached namespaces and state.
if [ "$(id -u)" -eq 0 ] && [ -x target/debug/brume-testnet ]; then
  for d in /run/brume-testnet/nets/t*-*; do
    [ -d "$d" ] || continue
    name=$(basename "$d")
    [[ "$name" =~ ^t[a-z0-9]*-[0-9]+p?$ ]] || continue
    echo "sweep: removing leftover testnet $name"
    target/debug/brume-testnet down --name "$name" >/dev/null 2>&1 || true
  done
fi

if command -v docker >/dev/null && docker version >/dev/null 2>&1; then
  containers=$(docker ps -aq --filter label=brume.test)
  if [ -n "$containers" ]; then
    echo "sweep: removing $(wc -w <<<"$containers") leftover test container(s)"
    docker rm -f $containers >/dev/null 2>&1 || true
  fi
  images=$(docker images -q --filter label=brume.test | sort -u)
  if [ -n "$images" ]; then
    echo "sweep: removing $(wc -w <<<"$images") leftover test image(s)"
    docker rmi -f $images >/dev/null 2>&1 || true
  fi
fi

if [ "$(id -u)" -eq 0 ]; then
  testnet=target/debug/brume-testnet
  if [ -x "$testnet" ]; then
    "$testnet" cleanup 2>&1 | grep -v '^no brume-' | sed 's/^/sweep: /' || true
  fi
fi

# runc containers restored by CRIU tests under their own runc roots, and their cgroups, for test
# runs killed before their guards ran (no live run: test.sh holds one lock per machine).
if [ "$(id -u)" -eq 0 ] && command -v runc >/dev/null; then
  for r in "${TMPDIR:-/tmp}"/brume-test-*/runc-root; do
    [ -d "$r" ] || continue
    for c in $(runc --root "$r" list -q 2>/dev/null); do
      echo "sweep: removing runc container $c"
      runc --root "$r" delete -f "$c" >/dev/null 2>&1 || true
    done
  done
  find /sys/fs/cgroup -mindepth 1 -maxdepth 2 -type d -name 'brume-test-*' -exec rmdir {} + 2>/dev/null || true
fi

# Temp dirs of test runs that died before their guards ran (a day old: never a live run's).
find "${TMPDIR:-/tmp}" /dev/shm -maxdepth 1 -name 'brume-*' -mmin +1440 -exec rm -rf {} + 2>/dev/null || true
exit 0
