#!/usr/bin/env bash
# Installs CRIU >= 4.2 (checkpoint/restore of processes, used by brume's live migration) and
# nftables (CRIU's `--network-lock nftables`), idempotently, without upgrading, downgrading or
# removing any installed package.
#
#   install-criu.sh              install if needed (does nothing when criu >= 4.2 works)
#   install-criu.sh --rebuild    download and build again even if a cached build exists
#   install-criu.sh --uninstall  remove the files it put under /usr/local and its cache
#
# Why build it: bookworm's criu 3.17 fails on this kernel (vDSO error); criu 4.1.1 and older
# (trixie's) cannot dump a process with a TCP socket on Linux >= 6.16 (criu issue #2718, fixed
# in 4.2); sid's criu 4.2 package needs libc6 >= 2.38, i.e. a partial distribution upgrade. So:
#   1. the source comes from Debian's source archive: sid's criu source package (the newest,
#      refused below 4.2), read through a private, throwaway apt configuration under the cache
#      dir (its own deb-src list, lists and cache; the system's apt sources and state are not
#      touched); apt checks the .dsc and the upstream tarball against sid's signed Sources
#      index, and the script checks the tarball against the .dsc's SHA-256 again;
#   2. the build dependencies come from the machine's own (bookworm) packages through
#      scripts/apt-no-upgrade.sh, which refuses any plan that would upgrade, downgrade or remove
#      an installed package; libcap-dev's header (criu needs only <sys/capability.h>, not the
#      library) is unpacked into the cache instead of installed: bookworm's libcap-dev must be
#      the same version as the installed libcap2, which a machine's image is often behind;
#   3. brume's patches (scripts/criu-patches/*.patch, applied in order to the pristine source:
#      `dump --lazy-pages-defer-read`, which keeps a lazy dump's freeze from growing with memory;
#      a freezer cgroup polled within milliseconds, not after 100 ms (every runc dump);
#      docs/criu.md says why);
#   4. `make criu` (no docs, no GnuTLS, with nftables), `make install-criu` into a staging dir,
#      copied to /usr/local (criu at /usr/local/sbin/criu); the list of files goes to the cache
#      dir, and a later run with a cached build takes no download (nor does a rebuild for new
#      patches: the verified source in the cache is unpacked again).
# Cache: ${BRUME_CACHE_DIR:-/var/cache/brume}/criu. Mirror: $BRUME_DEBIAN_MIRROR (default
# http://deb.debian.org/debian); suite: $BRUME_CRIU_SUITE (default sid). See docs/criu.md.
#
# Does nothing when `criu --version` reports >= 4.2, `criu check` passes, criu supports
# `--network-lock nftables` and `dump --lazy-pages-defer-read`, and `nft` exists. Needs root (re-runs itself through sudo otherwise).
set -euo pipefail

want=4.2
suite=${BRUME_CRIU_SUITE:-sid}
mirror=${BRUME_DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=${BRUME_CACHE_DIR:-/var/cache/brume}/criu
prefix=/usr/local
here=$(cd "$(dirname "$0")" && pwd)
patches=("$here"/criu-patches/*.patch)
[ -f "${patches[0]}" ] || { echo "install-criu: error: no patches in $here/criu-patches" >&2; exit 1; }
# What a build is of: a cached build whose .brume-built holds another id is built again.
build_id=$(cat "${patches[@]}" | sha256sum | cut -c1-16)

mode=install
case "${1:-}" in
  "") ;;
  --rebuild) mode=rebuild ;;
  --uninstall) mode=uninstall ;;
  *) echo "usage: $0 [--rebuild | --uninstall]" >&2; exit 2 ;;
esac

say() { echo "install-criu: $*"; }
die() { echo "install-criu: error: $*" >&2; exit 1; }

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "needs root: run it as root (sudo is not installed)"
  sudo="sudo"
fi

criu_version() {
  "${1:-criu}" --version 2>/dev/null | sed -n 's/^Version: *//p' | head -n1
}

# True when criu ($1, default the one on PATH) is >= $want, `criu check` prints "Looks good"
# (also "Looks good but some kernel features are missing"), it can lock the network with
# nftables and it carries brume's patches (its --help names --lazy-pages-defer-read, and the
# build this script installed last was of the patches here now). Every criu
# command may also log "rlimit: Can't setup RLIMIT_NOFILE": harmless.
criu_ok() {
  local criu=${1:-criu} version check
  command -v "$criu" >/dev/null || return 1
  version=$(criu_version "$criu")
  [ -n "$version" ] && dpkg --compare-versions "$version" ge "$want" || return 1
  check=$($sudo "$criu" check 2>&1 || true) # captured first: `| grep -q` could SIGPIPE criu under pipefail
  [[ "$check" == *"Looks good"* ]] || return 1
  [[ "$("$criu" --help 2>&1 || true)" == *"--lazy-pages-defer-read"* ]] || return 1
  # Built from these patches (the id install writes; patches that changed since mean a rebuild).
  [ "$(cat "$cache/installed-build-id" 2>/dev/null)" = "$build_id" ] || return 1
  $sudo "$criu" check --feature network_lock_nftables >/dev/null 2>&1
}

# The apt sources an older brume added (criu from sid with trixie's libraries).
old_apt_files() {
  local f
  for f in /etc/apt/sources.list.d/brume-sid.sources /etc/apt/sources.list.d/brume-trixie.sources \
    /etc/apt/preferences.d/brume-sid.pref /etc/apt/preferences.d/brume-trixie.pref; do
    [ -e "$f" ] && echo "$f"
  done
  return 0
}
old=$(old_apt_files)
if [ -n "$old" ]; then
  echo "install-criu: warning: an older brume added Debian sid and trixie as apt sources:" >&2
  sed 's/^/  /' <<<"$old" >&2
  echo "  brume no longer needs them (criu is now built from source); remove them, then" >&2
  echo "  'apt-get update', or a later 'apt-get upgrade' may take more packages from trixie:" >&2
  echo "  rm ${old//$'\n'/ }" >&2
  echo "  (the packages they brought are left as they are)" >&2
fi

if [ "$mode" = uninstall ]; then
  [ -z "$sudo" ] || exec sudo "$0" "$@"
  if [ -f "$cache/installed-files.txt" ]; then
    say "removing the files listed in $cache/installed-files.txt"
    xargs -r -d '\n' rm -fv <"$cache/installed-files.txt"
    rmdir -p --ignore-fail-on-non-empty "$prefix/include/criu" "$prefix/libexec/criu/scripts" 2>/dev/null || true
  else
    say "no $cache/installed-files.txt: nothing of brume's criu under $prefix"
  fi
  if [ -f "$cache/packages-added.txt" ]; then
    say "packages this script added (left installed; 'apt-get remove' them if nothing else needs them):"
    tr '\n' ' ' <"$cache/packages-added.txt"
    echo
  fi
  say "removing the cache $cache"
  rm -rf "$cache"
  exit 0
fi

need_criu=1
[ "$mode" = rebuild ] || ! criu_ok || need_criu=0
need_nft=0
command -v nft >/dev/null || need_nft=1
if [ "$need_criu" -eq 0 ] && [ "$need_nft" -eq 0 ]; then
  say "criu $(criu_version) ($(command -v criu)) is installed and 'criu check' passes; nothing to do"
  exit 0
fi
[ -z "$sudo" ] || exec sudo "$0" "$@"

started=$(date +%s)
mkdir -p "$cache"
exec 9>"$cache/lock"
flock 9 # another install-criu.sh (say test.sh and demo.sh at once) waits here
if [ "$mode" != rebuild ] && command -v nft >/dev/null && criu_ok; then
  say "criu $(criu_version) was installed meanwhile (by another run); nothing to do"
  exit 0
fi

# Build dependencies, all from this machine's own apt sources. criu needs protobuf-c, libnl-3,
# libnet, libuuid and (for --network-lock nftables) libnftables; libbsd is optional
# (setproctitle). Each -dev package brings its runtime library, which criu then links to.
build_deps=(gcc make libc6-dev pkg-config xz-utils patch protobuf-c-compiler libprotobuf-c-dev
  protobuf-compiler libprotobuf-dev libnl-3-dev libnet1-dev uuid-dev libnftables-dev)
optional_deps=(libbsd-dev)
if [ "$need_nft" -eq 1 ]; then
  say "installing nftables (nft) from this machine's apt sources"
  "$here/apt-no-upgrade.sh" --no-recommends --record "$cache/packages-added.txt" nftables ||
    die "cannot install nftables without changing installed packages"
fi
if [ "$need_criu" -eq 0 ]; then
  say "done in $(($(date +%s) - started)) s"
  exit 0
fi
if command -v criu >/dev/null; then
  say "criu $(criu_version) at $(command -v criu) is not enough: brume needs >= $want (older ones cannot dump TCP sockets on Linux >= 6.16), a passing 'criu check', --network-lock nftables and brume's patches (dump --lazy-pages-defer-read)"
fi

# Unpacks the upstream tarball in $1/dl into $1/src, after checking it against the .dsc beside
# it, and applies brume's patches. Prints the tree.
unpack() {
  local dir=$1 dsc orig sum
  dsc=$(ls "$dir"/dl/*.dsc 2>/dev/null | head -n1)
  [ -f "$dsc" ] || return 1
  orig=$(awk '/^Checksums-Sha256:/ {s=1; next} /^[^ ]/ {s=0} s && $3 ~ /\.orig\.tar\./ {print $3}' "$dsc" | grep -v '\.asc$' | head -n1)
  sum=$(awk -v f="$orig" '/^Checksums-Sha256:/ {s=1; next} /^[^ ]/ {s=0} s && $3 == f {print $1}' "$dsc")
  [ -n "$orig" ] && [ -n "$sum" ] || die "no upstream tarball listed in $dsc"
  echo "$sum  $dir/dl/$orig" | sha256sum --check --quiet >/dev/null 2>&1 ||
    die "$orig does not match the SHA-256 in $dsc"
  say "verified $orig (SHA-256 $sum, as listed in the .dsc, which apt checked against the signed index)" >&2
  rm -rf "$dir/src" "$dir/stage"
  mkdir -p "$dir/src"
  tar -xf "$dir/dl/$orig" -C "$dir/src" --strip-components=1
  local p
  for p in "${patches[@]}"; do
    say "applying $(basename "$p")" >&2
    patch -d "$dir/src" -p1 --quiet --forward <"$p" >&2 || die "$(basename "$p") does not apply to $orig"
  done
  echo "$dir/src"
}

# A cached build of these patches (newest version first), unless --rebuild; else a source
# downloaded by an earlier run, unpacked and patched again.
tree=""
if [ "$mode" != rebuild ]; then
  for d in $(printf '%s\n' "$cache"/criu-*/src | sort -rV); do
    if [ "$(cat "$d/.brume-built" 2>/dev/null)" = "$build_id" ] && [ -x "$d/criu/criu" ]; then
      tree=$d
      say "using the cached build in $tree"
      break
    fi
  done
  if [ -z "$tree" ]; then
    for d in $(printf '%s\n' "$cache"/criu-*/dl | sort -rV); do
      if [ -d "$d" ] && tree=$(unpack "$(dirname "$d")"); then
        say "rebuilding from the source downloaded before, in $tree"
        break
      fi
      tree=""
    done
  fi
fi

if [ -z "$tree" ]; then
  # 1. The source, through a private apt configuration: nothing in /etc/apt or /var/lib/apt.
  apt_dir="$cache/apt"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/state"
  cat >"$apt_dir/$suite.sources" <<EOF
# Written by brume's scripts/install-criu.sh: criu's source package, read only by that script.
Types: deb-src
URIs: $mirror
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  apt_private=(-o "Dir::Etc::sourcelist=$apt_dir/$suite.sources" -o Dir::Etc::sourceparts=-
    -o "Dir::State=$apt_dir/state" -o "Dir::State::Lists=$apt_dir/lists"
    -o Dir::State::status=/var/lib/dpkg/status -o "Dir::Cache=$apt_dir/cache")
  say "reading Debian $suite's source index ($mirror, private apt lists in $apt_dir)"
  # apt-get update exits 0 when a download fails; its "W: Failed to fetch" says so.
  if ! out=$(apt-get "${apt_private[@]}" update 2>&1) || grep -qE '^(E: |W: (Failed|Some index))' <<<"$out"; then
    echo "$out" >&2
    die "could not read $suite's Sources index from $mirror (set BRUME_DEBIAN_MIRROR to another Debian mirror?)"
  fi
  version=$(apt-cache "${apt_private[@]}" showsrc --only-source criu 2>/dev/null |
    sed -n 's/^Version: *//p' | sort -V | tail -n1)
  [ -n "$version" ] || die "Debian $suite has no criu source package"
  upstream=${version#*:}
  upstream=${upstream%-*}
  if ! dpkg --compare-versions "$upstream" ge "$want"; then
    die "Debian $suite has criu $version, older than $want (criu < $want cannot dump TCP sockets on Linux >= 6.16); try BRUME_CRIU_SUITE=experimental"
  fi
  dir="$cache/criu-$upstream"
  mkdir -p "$dir/dl"
  chown _apt:root "$dir/dl" 2>/dev/null || true # apt downloads as _apt
  say "downloading criu $version's source (.dsc and upstream tarball) into $dir/dl"
  # --dsc-only, then --tar-only: the upstream tarball only; the Debian packaging (debian.tar.xz)
  # is not needed to build criu itself (and a mirror may not carry it).
  (cd "$dir/dl" &&
    apt-get "${apt_private[@]}" -q source --dsc-only "criu=$version" >/dev/null &&
    apt-get "${apt_private[@]}" -q source --tar-only "criu=$version" >/dev/null) ||
    die "could not download criu $version's source from $mirror"
  dsc="$dir/dl/criu_${version#*:}.dsc"
  [ -f "$dsc" ] || die "$dsc is missing after the download"
  tree=$(unpack "$dir") || die "could not unpack the source in $dir"
fi
dir=$(dirname "$tree")
upstream=${dir##*/criu-}

# 2. Build dependencies (also the runtime libraries of a cached build).
say "checking the build dependencies"
"$here/apt-no-upgrade.sh" --no-recommends --record "$cache/packages-added.txt" \
  "${build_deps[@]}" --optional "${optional_deps[@]}" ||
  die "cannot install criu's build dependencies without changing installed packages"
cflags=""
if [ ! -f /usr/include/sys/capability.h ]; then
  cap="$cache/libcap-dev"
  if [ ! -f "$cap/usr/include/sys/capability.h" ]; then
    say "unpacking libcap-dev's headers into $cap (criu needs only <sys/capability.h>)"
    rm -rf "$cap"
    mkdir -p "$cap/dl"
    chown _apt:root "$cap/dl" 2>/dev/null || true
    (cd "$cap/dl" && apt-get -q download libcap-dev >/dev/null) || die "could not download libcap-dev"
    dpkg-deb -x "$cap"/dl/libcap-dev_*.deb "$cap"
  fi
  cflags="-I$cap/usr/include"
fi

# 3. Build (or reuse) and install.
if [ "$(cat "$tree/.brume-built" 2>/dev/null)" != "$build_id" ] || [ ! -x "$tree/criu/criu" ]; then
  say "building criu $upstream in $tree (make -j2 criu; log: $dir/build.log)"
  build_started=$(date +%s)
  if ! make -C "$tree" -j2 PREFIX="$prefix" NO_GNUTLS=1 USERCFLAGS="$cflags" criu >"$dir/build.log" 2>&1; then
    tail -n 30 "$dir/build.log" >&2
    die "criu $upstream failed to build; full log: $dir/build.log"
  fi
  grep -E '^(Note|Warn):' "$dir/build.log" | sed 's/^/  /' || true
  say "built criu $upstream in $(($(date +%s) - build_started)) s"
  echo "$build_id" >"$tree/.brume-built"
fi
stage="$dir/stage"
rm -rf "$stage"
make -C "$tree" PREFIX="$prefix" NO_GNUTLS=1 USERCFLAGS="$cflags" DESTDIR="$stage" install-criu >>"$dir/build.log" 2>&1 ||
  die "make install-criu failed; log: $dir/build.log"
(cd "$stage" && find . -type f -o -type l) | sed 's|^\.||' | sort >"$cache/installed-files.txt"
say "installing under $prefix: $(tr '\n' ' ' <"$cache/installed-files.txt")"
cp -a --remove-destination "$stage$prefix/." "$prefix/"
echo "$build_id" >"$cache/installed-build-id"
sort -u -o "$cache/packages-added.txt" "$cache/packages-added.txt" 2>/dev/null || true

criu="$prefix/sbin/criu"
if ! criu_ok "$criu"; then
  "$criu" check >&2 || true
  die "$criu ($(criu_version "$criu")) is installed, but 'criu check' or 'criu check --feature network_lock_nftables' fails"
fi
on_path=$(command -v criu || true)
if [ "$on_path" != "$criu" ]; then
  echo "install-criu: warning: 'criu' on PATH is ${on_path:-missing}, not $criu; put $prefix/sbin first in PATH" >&2
fi
say "installed criu $(criu_version "$criu") at $criu; criu check: $("$criu" check 2>&1 | grep 'Looks good')"
say "done in $(($(date +%s) - started)) s"
