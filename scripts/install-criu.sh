#!/usr/bin/env bash
# Installs CRIU >= 4 (checkpoint/restore of processes, used by brume's live migration) and
# nftables (CRIU's `--network-lock nftables`; these machines have no iptables), idempotently.
#
# Why trixie: Debian bookworm's criu 3.17 fails on this kernel with a vDSO error. Trixie's 4.1.x
# works, but needs libc6 >= 2.38, so installing it upgrades libc6 and about a hundred core
# packages to trixie's. Trixie is added as an apt source pinned at priority 100, so nothing else
# moves to trixie unless asked with `-t trixie` (or pulled in as a dependency, as libc6 is).
# See docs/criu.md for what was measured.
#
# Does nothing when `criu --version` already reports >= 4 and `criu check` passes. Needs root (or
# sudo) otherwise. Safe to run again.
set -euo pipefail

sudo=""
sudo_env=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
  sudo_env="sudo -E" # keeps DEBIAN_FRONTEND for apt-get
fi

# `criu check` prints "Looks good." (or "Looks good but some kernel features are missing") when
# the kernel is usable. Every criu command also logs "rlimit: Can't setup RLIMIT_NOFILE": harmless.
criu_ok() {
  command -v criu >/dev/null || return 1
  local version major
  version=$(criu --version 2>/dev/null | sed -n 's/^Version: *//p' | head -n1)
  major=${version%%.*}
  [[ "$major" =~ ^[0-9]+$ ]] && [ "$major" -ge 4 ] || return 1
  local check
  check=$($sudo criu check 2>&1 || true) # captured first: `| grep -q` could SIGPIPE criu under pipefail
  [[ "$check" == *"Looks good"* ]]
}

need_nft=0
command -v nft >/dev/null || need_nft=1

if criu_ok && [ "$need_nft" -eq 0 ]; then
  echo "criu $(criu --version | sed -n 's/^Version: *//p') is installed and 'criu check' passes; nothing to do"
  exit 0
fi

if ! grep -q 'VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null; then
  echo "warning: this script was written for Debian bookworm; found: $(. /etc/os-release && echo "${PRETTY_NAME:-unknown}")" >&2
fi

export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a
# Keep local config files on upgrade, take the package's for files never changed: no prompts.
apt_opts=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
started=$(date +%s)

if ! criu_ok; then
  sources=/etc/apt/sources.list.d/brume-trixie.sources
  prefs=/etc/apt/preferences.d/brume-trixie.pref
  if [ ! -f "$sources" ]; then
    echo "adding Debian trixie as an apt source ($sources)"
    $sudo tee "$sources" >/dev/null <<'EOF'
# Added by brume's scripts/install-criu.sh: criu 4.x comes from trixie (bookworm's 3.17 fails).
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  fi
  if [ ! -f "$prefs" ]; then
    echo "pinning trixie at priority 100 ($prefs)"
    $sudo tee "$prefs" >/dev/null <<'EOF'
# Added by brume's scripts/install-criu.sh: take trixie packages only when asked (-t trixie).
Package: *
Pin: release n=trixie
Pin-Priority: 100
EOF
  fi
  echo "apt-get update"
  $sudo apt-get update -q
  echo "installing criu from trixie (this upgrades libc6 and other core packages)"
  $sudo_env apt-get install "${apt_opts[@]}" -t trixie criu
fi

if ! command -v nft >/dev/null; then
  echo "installing nftables"
  $sudo apt-get update -q
  $sudo_env apt-get install "${apt_opts[@]}" nftables
fi

if ! command -v criu >/dev/null; then
  echo "error: criu is still not on PATH after installing it; see the apt output above" >&2
  exit 1
fi
echo "installed: $(criu --version | tr '\n' ' ')"
if ! criu_ok; then
  echo "error: criu is installed but is not >= 4 or 'criu check' fails:" >&2
  $sudo criu check >&2 || true
  exit 1
fi
echo "criu check: $($sudo criu check 2>&1 | grep 'Looks good')"
echo "install took $(($(date +%s) - started)) s"
