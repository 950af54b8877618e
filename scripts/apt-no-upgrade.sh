#!/usr/bin/env bash
# Installs Debian packages from this machine's own apt sources without upgrading, downgrading or
# removing any installed package: `dpkg-query -W` before and after differs only by added lines.
#
#   apt-no-upgrade.sh [--no-recommends] [--record FILE] REQUIRED... [--optional OPTIONAL...]
#
# Packages already installed are left as they are (not even marked manual). apt's plan is
# simulated first (`apt-get install -s`); a plan that would replace an installed version (`Inst
# pkg [old] (new ...)`, an upgrade or a downgrade) or remove a package (`Remv`) is not carried out:
#   1. packages it would newly install at the version an installed package would be upgraded to
#      (a -dev package and its runtime library come from one source package, at one version) are
#      asked for at the installed package's version instead, when the archive still has it;
#   2. then OPTIONAL packages are left out;
#   3. if the plan still changes an installed package, the script stops (exit 1), having changed
#      nothing, and prints the offending lines.
# --record FILE: appends the names of the packages it installed to FILE. Needs root (re-runs
# itself through sudo otherwise).
set -euo pipefail

recommends=()
record=""
required=()
optional=()
into=required
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  arg=${args[$i]}
  case "$arg" in
    --no-recommends) recommends=(--no-install-recommends) ;;
    --record) i=$((i + 1)); record=${args[$i]:-} ;;
    --optional) into=optional ;;
    -*) echo "apt-no-upgrade.sh: unknown option $arg" >&2; exit 2 ;;
    *) if [ "$into" = required ]; then required+=("$arg"); else optional+=("$arg"); fi ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  exec sudo "$0" "$@"
fi

installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}
candidate() {
  apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}'
}

missing_required=()
for p in ${required[@]+"${required[@]}"}; do installed "$p" || missing_required+=("$p"); done
missing_optional=()
for p in ${optional[@]+"${optional[@]}"}; do installed "$p" || missing_optional+=("$p"); done
if [ $((${#missing_required[@]} + ${#missing_optional[@]})) -eq 0 ]; then
  exit 0
fi

echo "apt-get update (this machine's own sources)"
apt-get update -q >/dev/null || echo "warning: apt-get update reported errors; going on with the lists it has" >&2

for p in ${missing_required[@]+"${missing_required[@]}"}; do
  c=$(candidate "$p")
  if [ -z "$c" ] || [ "$c" = "(none)" ]; then
    echo "error: package $p is not available from this machine's apt sources" >&2
    exit 1
  fi
done
kept_optional=()
for p in ${missing_optional[@]+"${missing_optional[@]}"}; do
  c=$(candidate "$p")
  if [ -z "$c" ] || [ "$c" = "(none)" ]; then
    echo "note: optional package $p is not available; going on without it"
  else
    kept_optional+=("$p")
  fi
done

export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a
plan_out=""
# Simulates installing $@; sets plan_out; returns 1 when apt cannot, 2 when the plan replaces or
# removes an installed package.
plan() {
  plan_out=$(apt-get install -s -q "${recommends[@]+"${recommends[@]}"}" "$@" 2>&1) || return 1
  ! grep -qE '^(Inst [^ ]+ \[|Remv )' <<<"$plan_out" || return 2
}
offending() {
  grep -E '^(Inst [^ ]+ \[|Remv )' <<<"$plan_out" || true
}

# From a plan that upgrades installed packages: pins every package the plan would newly install
# at a version some installed package would be upgraded to (a -dev package and its runtime
# library, or a library's siblings, come from one source package at one version) to that
# installed package's version, when the archive still has it. Reads plan_out and the array
# `pkgs`; sets `pkgs` (pinned) and appends to `extra` the pinned packages not asked for, which
# get marked as automatically installed afterwards. Returns 1 when it pinned nothing new.
pin_to_installed() {
  local -A to_old=() pin=()
  local p old new v unchanged=1 i base
  while read -r _ p old new _; do
    old=${old#[}; old=${old%]}; to_old[${new#(}]=$old
  done < <(grep -E '^Inst [^ ]+ \[' <<<"$plan_out")
  while read -r _ p v _; do
    v=${v#(}
    [ -n "${to_old[$v]:-}" ] || continue
    old=${to_old[$v]}
    if apt-cache madison "$p" 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}' | grep -qxF "$old"; then
      pin[$p]=$old
    fi
  done < <(grep -E '^Inst [^ ]+ \(' <<<"$plan_out")
  for i in "${!pkgs[@]}"; do
    base=${pkgs[$i]%%=*}
    if [ -n "${pin[$base]:-}" ]; then
      [ "${pkgs[$i]}" = "$base=${pin[$base]}" ] || unchanged=0
      pkgs[i]="$base=${pin[$base]}"
      unset "pin[$base]"
    fi
  done
  for p in "${!pin[@]}"; do
    pkgs+=("$p=${pin[$p]}")
    extra+=("$p")
    unchanged=0
  done
  [ "$unchanged" -eq 0 ] && echo "asking for the versions of the installed libraries: ${pkgs[*]}"
  return $unchanged
}

# Plans $@ (with pins where needed); sets plan_out, pkgs and status (0 good, 1 apt cannot, 2
# the plan changes installed packages, plan_out then shows how).
resolve() {
  pkgs=("$@")
  extra=()
  status=0
  plan "${pkgs[@]}" || status=$?
  [ "$status" -eq 2 ] || return 0
  local first_out=$plan_out first_pkgs=("${pkgs[@]}")
  for _ in 1 2 3; do
    pin_to_installed || break
    status=0
    plan "${pkgs[@]}" || status=$?
    [ "$status" -eq 2 ] || break
  done
  if [ "$status" -ne 0 ]; then # pinning did not help: report the unpinned plan
    plan_out=$first_out
    pkgs=("${first_pkgs[@]}")
    extra=()
    status=2
  fi
}

extra=()
resolve ${missing_required[@]+"${missing_required[@]}"} ${kept_optional[@]+"${kept_optional[@]}"}
if [ "$status" -eq 2 ] && [ "${#kept_optional[@]}" -gt 0 ]; then
  # Leave the optional ones out.
  echo "note: installing ${kept_optional[*]} would change installed packages; going on without them:"
  offending | sed 's/^/  /'
  if [ "${#missing_required[@]}" -gt 0 ]; then
    resolve "${missing_required[@]}"
  else
    pkgs=()
    status=0
  fi
fi
if [ "$status" -eq 1 ]; then
  echo "error: apt cannot install ${pkgs[*]}:" >&2
  echo "$plan_out" >&2
  exit 1
fi
if [ "$status" -eq 2 ]; then
  echo "error: installing ${pkgs[*]} would upgrade, downgrade or remove installed packages; nothing was changed:" >&2
  offending | sed 's/^/  /' >&2
  echo "(update the machine first, e.g. 'apt-get upgrade', if you accept that; this script never does)" >&2
  exit 1
fi
if [ "${#pkgs[@]}" -eq 0 ]; then
  exit 0
fi

added=$(awk '/^Inst / {print $2}' <<<"$plan_out" | tr '\n' ' ')
echo "installing ${pkgs[*]} (new packages: ${added% }; nothing upgraded or removed)"
apt-get install -y -q --no-remove "${recommends[@]+"${recommends[@]}"}" \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${pkgs[@]}" >/dev/null
if [ "${#extra[@]}" -gt 0 ]; then
  apt-mark auto "${extra[@]}" >/dev/null # pulled in as dependencies, only named to pin them
fi
if [ -n "$record" ]; then
  mkdir -p "$(dirname "$record")"
  tr ' ' '\n' <<<"${added% }" >>"$record"
fi
