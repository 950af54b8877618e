#!/bin/bash
# Moves Debian's redis-server, holding MIB MiB of keys, live between brume nodes that each have
# a network namespace of their own (brume-testnet up --processes: what separate devices look
# like to brume), once with the nodes' default live_migration (auto: tracked between namespaces)
# and once with live_migration = pre-copy (full dumps), MOVES moves each, alternating the two
# testnets move by move so that both see the same machine. Prints, per move: the mode brume
# reports, the callers' pause (held_ms), the downtime the source logged, the move's elapsed time,
# and whether redis still held every key (a move the node refuses or defers is printed with
# its reason and not counted); then the medians.
#
#   bash scripts/bench-namespace-moves.sh [MIB] [MOVES]      (root; criu; cargo build -p brume
#                                                              -p brume-testnet first)
#
# Needs root, criu >= 4.2 (scripts/install-criu.sh), redis-server and redis-cli
# (scripts/install-deps.sh). Leaves nothing behind: both testnets are taken down on exit.
set -euo pipefail
MIB=${1:-128}
MOVES=${2:-6}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${BRUME_BIN_DIR:-$here/target/debug}
tn=$bin/brume-testnet
brume=$bin/brume
for b in "$tn" "$brume"; do
  [ -x "$b" ] || { echo "missing $b: cargo build -p brume -p brume-testnet" >&2; exit 1; }
done
command -v redis-cli >/dev/null || { echo "redis-cli is missing: bash scripts/install-deps.sh" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root (namespaces, CRIU)" >&2; exit 1; }

work=$(mktemp -d /tmp/brume-nsmoves.XXXXXX)
nets=()
cleanup() {
  for n in "${nets[@]}"; do
    # BENCH_LOGS=DIR keeps every node's log (DIR/<testnet>-node-<i>.log).
    if [ -n "${BENCH_LOGS:-}" ]; then
      mkdir -p "$BENCH_LOGS"
      for i in 0 1 2; do
        cp "/run/brume-testnet/nets/$n/node-$i/node.log" "$BENCH_LOGS/$n-node-$i.log" 2>/dev/null || true
      done
    fi
    "$tn" down --name "$n" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# redis's image: the server, /bin/sh and their libraries in a FROM scratch rootfs (as
# brume_testnet::offshelf does), listening on the node's $PORT on loopback, no persistence.
ctx=$work/kv
mkdir -p "$ctx/rootfs"
add() { # add PROGRAM PATH-IN-IMAGE
  local src=$1 at=$2
  mkdir -p "$ctx/rootfs$(dirname "$at")"; cp "$src" "$ctx/rootfs$at"
  ldd "$src" | awk '/=>/ {print $3} !/=>/ && $1 ~ /^\// {print $1}' | while read -r lib; do
    [ -n "$lib" ] || continue
    mkdir -p "$ctx/rootfs$(dirname "$lib")"; cp "$lib" "$ctx/rootfs$lib"
  done
}
add "$(readlink -f /usr/bin/redis-server)" /usr/bin/redis-server
add "$(readlink -f /bin/sh)" /bin/sh
cat > "$ctx/Dockerfile" <<'EOF'
FROM scratch
COPY rootfs/ /
WORKDIR /
ENTRYPOINT ["/bin/sh", "-c", "exec ./usr/bin/redis-server --port \"$PORT\" --bind 127.0.0.1 --protected-mode no --save '' --appendonly no"]
EOF
cat > "$work/service.toml" <<EOF
[service]
name = "nsmoves"
root = "kv"

[[task]]
name = "kv"
build = "kv"
cpu_millis = 100
memory_mb = $((MIB * 3 + 256))
stateful = true
checkpoint = "criu"
user = "root"
EOF

state() { cat "/run/brume-testnet/nets/$1/state.json"; }
ctl() { echo "/run/brume-testnet/nets/$1/node-$2/control.sock"; }
peer() { "$brume" status --control "$(ctl "$1" "$2")" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["peer_id"])'; }
# kv's host index and port, from node 0's listing.
where() {
  local ps; ps=$("$brume" ps --control "$(ctl "$1" 0)" --json)
  for i in 0 1 2; do
    local p; p=$(peer "$1" "$i")
    local port; port=$(echo "$ps" | python3 -c "import json,sys
for r in json.load(sys.stdin):
    if r['task']=='kv' and r['peer']=='$p': print(r['address'].rsplit(':',1)[1])")
    [ -n "$port" ] && { echo "$i $port"; return; }
  done
  echo "kv is nowhere" >&2; exit 1
}
ns() { python3 -c "import json,sys; print('brume-'+json.load(sys.stdin)['tag']+'-$2')" < "/run/brume-testnet/nets/$1/state.json"; }
rcli() { ip netns exec "$(ns "$1" "$2")" redis-cli -p "$3" "${@:4}"; }

keys=$((MIB * 1024 / 2))   # values of 1 KiB: about 2 KiB of redis memory each
for mode in auto pre-copy; do
  name=nsm-${mode%%-*}-$$
  nets+=("$name")
  "$tn" up --nodes 3 --processes --latency 2ms --name "$name" --wait-s 180 \
    --node-arg=--live-migration="$mode" >/dev/null
  "$brume" deploy "$work/service.toml" --control "$(ctl "$name" 0)" --budget 5s --json >/dev/null
  read -r host port < <(where "$name")
  # Fill redis: KEYS keys of 1 KiB each, pipelined.
  python3 -c "
import sys
v = 'x' * 1024
for i in range($keys):
    k = 'k%d' % i
    sys.stdout.write('*3\r\n\$3\r\nSET\r\n\$%d\r\n%s\r\n\$%d\r\n%s\r\n' % (len(k), k, len(v), v))
" | ip netns exec "$(ns "$name" "$host")" redis-cli -p "$port" --pipe >/dev/null
  echo "$mode: redis on node $host holds $(rcli "$name" "$host" "$port" DBSIZE) keys, $(rcli "$name" "$host" "$port" INFO memory | awk -F: '/^used_memory_rss_human/ {print $2}' | tr -d '\r') resident" >&2
done

printf '%-9s %4s %-8s %8s %11s %10s %s\n' setting move mode held_ms downtime_ms elapsed_ms keys
results=$work/results
for m in $(seq 1 "$MOVES"); do
  for idx in 0 1; do
    name=${nets[$idx]}
    mode=$([ "$idx" = 0 ] && echo auto || echo pre-copy)
    read -r host port < <(where "$name")
    to=$(( (host + 1) % 3 ))
    if ! out=$("$brume" migrate kv --to "$(peer "$name" "$to")" --control "$(ctl "$name" 0)" \
        --max-downtime 60s --json 2>"$work/err"); then
      # Refused or deferred (the planner's prediction, say): the task stays; say why, go on.
      printf '%-9s %4d %-8s %s\n' "$mode" "$m" refused "$(tail -c 300 "$work/err")" | tee -a "$work/refused"
      n=$(rcli "$name" "$host" "$port" DBSIZE)
      [ "$n" = "$keys" ] || { echo "redis lost keys: $n of $keys" >&2; exit 1; }
      continue
    fi
    log=/run/brume-testnet/nets/$name/node-$host/node.log
    # The source's line for the finished move: `... held_ms=.. downtime_ms=.. rounds=..`.
    downtime=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -a " held_ms=.* downtime_ms=" | tail -1 |
      sed -E 's/.* downtime_ms=([0-9]+).*/\1/')
    read -r nhost nport < <(where "$name")
    n=$(rcli "$name" "$nhost" "$nport" DBSIZE)
    echo "$out" | python3 -c "import json,sys
m = json.load(sys.stdin)
print('%-9s %4d %-8s %8d %11s %10d %s' % ('$mode', $m, m['mode'], m['held_ms'], '$downtime', m['elapsed_ms'], '$n'))" | tee -a "$results"
    [ "$n" = "$keys" ] || { echo "redis lost keys: $n of $keys" >&2; exit 1; }
  done
done
[ -f "$work/refused" ] && echo "refused moves: $(wc -l < "$work/refused")"
python3 - "$results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for setting in ("auto", "pre-copy"):
    r = [x for x in rows if x[0] == setting]
    held = statistics.median(int(x[3]) for x in r)
    down = statistics.median(int(x[4]) for x in r if x[4].isdigit())
    el = statistics.median(int(x[5]) for x in r)
    print(f"median {setting:9s} held_ms={held} downtime_ms={down} elapsed_ms={el} modes={sorted(set(x[2] for x in r))}")
EOF
