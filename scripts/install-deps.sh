#!/usr/bin/env bash
# Installs what brume's build and tests need, idempotently. Needs root (or sudo) only when
# something is missing: a Rust toolchain with rustfmt and clippy, a C compiler, Graphviz (the
# tests render `brume map --dot`), iproute2 and ping (the testbed's network namespaces; its tests
# need root, which CI has), redis-server (an unmodified server the live-migration tests move),
# CRIU, and fs.pipe-max-size >= 4 MiB for post-copy migration.
set -euo pipefail

need=()
command -v cc >/dev/null || need+=(build-essential)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v dot >/dev/null || need+=(graphviz)
command -v ip >/dev/null || need+=(iproute2)        # network namespaces for the testbed
command -v ping >/dev/null || need+=(iputils-ping)
# The off-the-shelf stateful server the live-migration tests move (node/tests/offshelf.rs); the
# tests copy the binary into their own images and never use the package's system service.
command -v redis-server >/dev/null || need+=(redis-server)
if ((${#need[@]})); then
  # From this machine's own apt sources, refusing any plan that upgrades, downgrades or removes
  # an installed package.
  echo "installing: ${need[*]}"
  "$(dirname "$0")/apt-no-upgrade.sh" "${need[@]}"
fi

if ! command -v cargo >/dev/null; then
  echo "error: cargo not found. Install Rust (https://rustup.rs), then run this again." >&2
  exit 1
fi
if command -v rustup >/dev/null; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi
"$(dirname "$0")/install-criu.sh"   # CRIU >= 4.2 built from Debian's source under /usr/local, nftables (live migration)

# Post-copy (CRIU lazy pages): the page server grows a pipe to 4 MiB, and root here lacks
# CAP_SYS_RESOURCE, so fs.pipe-max-size must allow it (docs/criu.md). Raised, never lowered.
want=4194304
have=$(cat /proc/sys/fs/pipe-max-size 2>/dev/null || echo 0)
if [ "$have" -lt "$want" ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setting fs.pipe-max-size=$want (was $have) for CRIU lazy pages; kept in /etc/sysctl.d/60-brume-lazy-pages.conf"
  echo "fs.pipe-max-size = $want" | $sudo tee /etc/sysctl.d/60-brume-lazy-pages.conf >/dev/null ||
    echo "warning: could not write /etc/sysctl.d/60-brume-lazy-pages.conf" >&2
  $sudo sysctl -q -w fs.pipe-max-size=$want ||
    echo "warning: could not set fs.pipe-max-size; post-copy migration will refuse to start" >&2
fi
