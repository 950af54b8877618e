#!/usr/bin/env bash
# Installs CRIU >= 4.2 (checkpoint/restore of processes, used by brume's live migration) and
# nftables (CRIU's `--network-lock nftables`; these machines have no iptables), idempotently.
#
# Why not bookworm's criu: 3.17 fails on this kernel with a vDSO error. Why not trixie's: 4.1.1
# cannot dump any process with a TCP/UDP socket on Linux >= 6.16 (`Can't get 1:16 opt`, criu
# issue #2718, fixed in 4.2), and every brume task listens on a TCP port. So criu comes from sid
# (4.2.1 when this was written), and the libraries it needs from trixie:
#   - trixie is an apt source pinned at 100: sid's criu needs libc6 >= 2.38, and trixie's libc6
#     (2.41) and the core packages around it are the stable way to get that. On a fresh bookworm
#     the script installs trixie's criu first, which moves libc6 and the core packages around it
#     to trixie's (12 upgraded and 45 new on a minimal bookworm, 100 upgraded on a full one), then
#     replaces it with sid's (bookworm's apt cannot do both in one step);
#   - sid is an apt source pinned at 50 (below trixie): only what is named (`criu/sid`) and what
#     it strictly needs at a version trixie lacks (libcompel1, libnl-3-200, libnet9) comes from
#     sid. The script refuses to go on if sid would also bring libc6.
# See docs/criu.md for what was measured.
#
# Does nothing when `criu --version` already reports >= 4.2, `criu check` passes and `nft`
# exists. Needs root (or sudo) otherwise. Safe to run again.
set -euo pipefail

want_major=4
want_minor=2

sudo=""
sudo_env=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
  sudo_env="sudo -E" # keeps DEBIAN_FRONTEND for apt-get
fi

criu_version() {
  criu --version 2>/dev/null | sed -n 's/^Version: *//p' | head -n1
}

# True when the installed criu is >= $want_major.$want_minor and `criu check` prints "Looks good."
# (or "Looks good but some kernel features are missing"). Every criu command may also log
# "rlimit: Can't setup RLIMIT_NOFILE": harmless.
criu_ok() {
  command -v criu >/dev/null || return 1
  local version major minor rest
  version=$(criu_version)
  major=${version%%.*}
  rest=${version#*.}
  minor=${rest%%[.-]*}
  [[ "$major" =~ ^[0-9]+$ && "$minor" =~ ^[0-9]+$ ]] || return 1
  if [ "$major" -lt "$want_major" ] || { [ "$major" -eq "$want_major" ] && [ "$minor" -lt "$want_minor" ]; }; then
    return 1
  fi
  local check
  check=$($sudo criu check 2>&1 || true) # captured first: `| grep -q` could SIGPIPE criu under pipefail
  [[ "$check" == *"Looks good"* ]]
}

# Writes $1 with the contents of stdin unless it exists; $2 says what it is.
add_file() {
  local path=$1 what=$2
  if [ ! -f "$path" ]; then
    echo "$what ($path)"
    $sudo tee "$path" >/dev/null
  else
    cat >/dev/null
  fi
}

# The installed version of package $1, empty when it is not (fully) installed.
installed_version() {
  local line
  line=$(dpkg-query -W -f='${Status}|${Version}' "$1" 2>/dev/null || true)
  [[ "$line" == "install ok installed|"* ]] && echo "${line#*|}"
  return 0
}

need_criu=0
criu_ok || need_criu=1
need_nft=0
command -v nft >/dev/null || need_nft=1

if [ "$need_criu" -eq 0 ] && [ "$need_nft" -eq 0 ]; then
  echo "criu $(criu_version) is installed and 'criu check' passes; nothing to do"
  exit 0
fi

# A bookworm machine this script (or its 4.1.1 predecessor) ran on reports trixie: base-files
# comes along with trixie's libc6.
if ! grep -qE 'VERSION_CODENAME=(bookworm|trixie)' /etc/os-release 2>/dev/null; then
  echo "warning: this script was written for Debian bookworm; found: $(. /etc/os-release && echo "${PRETTY_NAME:-unknown}")" >&2
fi

export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a
# Keep local config files on upgrade, take the package's for files never changed: no prompts.
apt_opts=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
started=$(date +%s)

if [ "$need_criu" -eq 1 ]; then
  if command -v criu >/dev/null; then
    echo "criu $(criu_version) is installed, but brume needs >= $want_major.$want_minor (older ones cannot dump TCP sockets on Linux >= 6.16) and a passing 'criu check'"
  fi
  add_file /etc/apt/sources.list.d/brume-trixie.sources "adding Debian trixie as an apt source" <<'EOF'
# Added by brume's scripts/install-criu.sh: criu's libraries (libc6 >= 2.38) come from trixie.
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  add_file /etc/apt/preferences.d/brume-trixie.pref "pinning trixie at priority 100" <<'EOF'
# Added by brume's scripts/install-criu.sh: take trixie packages only when asked (-t trixie).
Package: *
Pin: release n=trixie
Pin-Priority: 100
EOF
  add_file /etc/apt/sources.list.d/brume-sid.sources "adding Debian sid as an apt source" <<'EOF'
# Added by brume's scripts/install-criu.sh: criu >= 4.2 comes from sid (4.1.1 cannot dump TCP
# sockets on Linux >= 6.16).
Types: deb
URIs: http://deb.debian.org/debian
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  add_file /etc/apt/preferences.d/brume-sid.pref "pinning sid at priority 50 (below trixie)" <<'EOF'
# Added by brume's scripts/install-criu.sh: take sid packages only when named (criu/sid) or
# needed by one at a version trixie lacks.
Package: *
Pin: release n=sid
Pin-Priority: 50
EOF
fi

echo "apt-get update"
$sudo apt-get update -q

if [ "$need_nft" -eq 1 ]; then
  # nftables and libnftables1 must be the same version, and criu needs libnftables1 too. Where
  # criu's install already brought trixie's libnftables1, bookworm's nftables cannot go beside
  # it, so take the nftables of the installed libnftables1; otherwise the default release's
  # (installed before criu, whose libnftables1 (>= 1.0.2) it then also satisfies).
  nft_lib=$(installed_version libnftables1)
  echo "installing nftables${nft_lib:+ $nft_lib (the version of the installed libnftables1)}"
  $sudo_env apt-get install "${apt_opts[@]}" "nftables${nft_lib:+=$nft_lib}"
fi

if [ "$need_criu" -eq 1 ]; then
  # Two steps, because bookworm's apt (2.6) cannot do it in one: asked for `-t trixie criu/sid`
  # on a fresh bookworm, it takes sid's libc6 for criu's `libc6 (>= 2.38)` (the installed 2.36 is
  # too old) and then gives up on broken dependencies. So, while libc6 is older than 2.38, first
  # trixie's criu, which brings libc6 and criu's libraries to trixie's versions; then sid's.
  libc_version=$(installed_version libc6)
  if [ -z "$libc_version" ] || ! dpkg --compare-versions "$libc_version" ge 2.38; then
    echo "installing criu from trixie first (this upgrades libc6 and other core packages to trixie's)"
    $sudo_env apt-get install "${apt_opts[@]}" -t trixie criu
  fi
  # criu/sid: criu from sid, and its dependencies from sid only where trixie's are too old;
  # -t trixie: anything else it needs from trixie, not sid.
  install=(-t trixie criu/sid)
  plan=$($sudo apt-get install -s "${apt_opts[@]}" "${install[@]}" 2>&1) || {
    echo "error: apt cannot install criu from sid here:" >&2
    echo "$plan" >&2
    exit 1
  }
  from_sid=$(awk '/^Inst / && /Debian:unstable/ {print $2}' <<<"$plan" | tr '\n' ' ')
  echo "plan: $(grep -E '^[0-9]+ upgraded' <<<"$plan")"
  echo "from sid: ${from_sid:-nothing}"
  if [[ " $from_sid " == *" libc6 "* ]]; then
    echo "error: sid's criu now needs sid's libc6; not moving this machine's libc to unstable." >&2
    echo "Check 'apt-cache show criu/sid' and update this script (or build criu >= $want_major.$want_minor from source)." >&2
    exit 1
  fi
  echo "installing criu from sid"
  $sudo_env apt-get install "${apt_opts[@]}" "${install[@]}"
fi

if ! command -v criu >/dev/null; then
  echo "error: criu is still not on PATH after installing it; see the apt output above" >&2
  exit 1
fi
echo "installed: criu $(criu_version)"
if ! criu_ok; then
  echo "error: criu is installed but is not >= $want_major.$want_minor or 'criu check' fails:" >&2
  $sudo criu check >&2 || true
  exit 1
fi
echo "criu check: $($sudo criu check 2>&1 | grep 'Looks good')"
echo "install took $(($(date +%s) - started)) s"
