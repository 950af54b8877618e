#!/usr/bin/env bash
# What a Docker container's final runc step costs as a full checkpoint against a lazy one, on
# this machine (docs/criu.md, "Post-copy of a Docker container through runc"). For each size the
# CRIU tests' workload fills that much memory in a `FROM scratch` container on the host network;
# then, RUNS times, alternating on fresh containers:
#   full: `runc checkpoint` (every page written into the images; the container stops);
#   lazy: `runc checkpoint --lazy-pages --page-server 127.0.0.1:PORT --status-fd`, timed to its
#         ready byte, then failed on purpose with an unknown page-server command so that CRIU
#         thaws the container (checked: it must still be running);
#   lazy+conf: the same with CRIU_CONFIG_FILE naming a file with `address 127.0.0.1` and
#         `lazy-pages-defer-read` (runc's criu reads it at its start; over RPC the page server
#         gets only the port, so without it the page server listens on every address).
# Prints one line per checkpoint: wall time of the runc command (to ready for lazy), image size,
# and the address the page server listened on.
#
#   bash scripts/runc-lazy-probe.sh [SIZES_MIB] [RUNS]   e.g. "32 256 512" 3 (root, Docker, runc,
#                                                         criu >= 4.2, bash scripts/build-static.sh)
# CRIU=path runs runc with that criu (`runc --criu`; default: criu on PATH, /usr/local/sbin first).
# Everything it makes is named brume-probe-runc-lazy-<pid> and labelled brume.test=probe.
set -euo pipefail
SIZES=${1:-"32 256 512"}
RUNS=${2:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
workload=$here/target/static/x86_64-unknown-linux-gnu/release/criu-workload
[ -x "$workload" ] || { echo "missing $workload: bash scripts/build-static.sh" >&2; exit 1; }
export PATH=/usr/local/sbin:$PATH
name=brume-probe-runc-lazy-$$
dir=$(mktemp -d /dev/shm/$name.XXXX)
moby=/run/docker/runtime-runc/moby
criu=${CRIU:-$(command -v criu)}
cleanup() {
  docker rm -f "$name" >/dev/null 2>&1 || true
  docker rmi -f "$name:probe" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

# Starts the container filled with $1 MiB; sets id.
start() {
  docker rm -f "$name" >/dev/null 2>&1 || true
  docker run -d --label brume.test=probe --name "$name" --network host "$name:probe" >/dev/null
  local pid rss
  pid=$(docker inspect -f '{{.State.Pid}}' "$name")
  for _ in $(seq 1 600); do
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    ((rss >= $1 * 1000)) && [ -S "/proc/$pid/root/w.sock" ] && break
    sleep 0.1
  done
  ((rss >= $1 * 1000)) || { echo "the workload never filled $1 MiB" >&2; exit 1; }
  id=$(docker inspect -f '{{.Id}}' "$name")
}

ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }

main() {
for mib in $SIZES; do
  rm -rf "$dir/ctx" && mkdir -p "$dir/ctx"
  cp "$workload" "$dir/ctx/workload"
  echo "$name" >"$dir/ctx/unique"
  printf 'FROM scratch\nCOPY workload unique /\nENTRYPOINT ["/workload", "/w.sock", "%s", "1"]\n' "$mib" >"$dir/ctx/Dockerfile"
  docker build -q --label brume.test=probe -t "$name:probe" "$dir/ctx" >/dev/null 2>&1
  for run in $(seq 1 "$RUNS"); do
    start "$mib"
    rm -rf "$dir/full" && mkdir "$dir/full"
    t=$(date +%s%N)
    runc --criu "$criu" --root "$moby" checkpoint --image-path "$dir/full" --work-path "$dir/full" "$id"
    echo "mib=$mib run=$run full ms=$(ms_since "$t") images_kib=$(du -sk "$dir/full" | cut -f1)"

    lazy "$mib" "$run" lazy
    lazy "$mib" "$run" lazy+conf
  done
done
}

# One lazy checkpoint of a fresh container, timed to ready and then failed: $1 MiB, run $2,
# variant $3 (lazy or lazy+conf).
lazy() {
    local mib=$1 run=$2 variant=$3 conf=""
    start "$mib"
    rm -rf "$dir/lazy" "$dir/status" && mkdir "$dir/lazy" && mkfifo "$dir/status"
    if [ "$variant" = lazy+conf ]; then
      conf=$dir/criu.conf
      printf 'address 127.0.0.1\nlazy-pages-defer-read\n' >"$conf"
    fi
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    t=$(date +%s%N)
    env ${conf:+CRIU_CONFIG_FILE="$conf"} runc --criu "$criu" --root "$moby" checkpoint --lazy-pages --page-server "127.0.0.1:$port" \
      --status-fd 3 --image-path "$dir/lazy" --work-path "$dir/lazy" "$id" 3>"$dir/status" 2>/dev/null &
    runc_pid=$!
    head -c1 "$dir/status" >/dev/null
    ready=$(ms_since "$t")
    listen=$(ss -ltnH "sport = :$port" | awk '{print $4}' | head -n1)
    python3 - "$port" <<'PY'
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(struct.pack("<I", 0x7777) + bytes(28))  # a command CRIU does not know: transfer failed
s.settimeout(30)
try:
    while s.recv(65536):
        pass
except OSError:
    pass
PY
    wait "$runc_pid" 2>/dev/null || true
    state=$(docker inspect -f '{{.State.Status}}' "$name")
    echo "mib=$mib run=$run $variant ms=$ready images_kib=$(du -sk "$dir/lazy" | cut -f1) listen=$listen after_abort=$state"
    [ "$state" = running ] || { echo "the container did not thaw" >&2; exit 1; }
}

main
