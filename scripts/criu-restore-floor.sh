#!/bin/bash
# What a restore from written memory images costs against a lazy restore, on this machine:
# the floor under the alternative to tracked post-copy that writes CRIU's pagemap/pages images
# from the replica and restores them without lazy pages (docs/criu.md, "Can CRIU be told to skip
# memory"). For each size the dirtier (its memory filled, not dirtying) is dumped in full to
# tmpfs, then restored from those images RUNS times each way, alternating:
#   full: `criu restore` (every page copied into the task before it runs);
#   lazy: `criu restore --lazy-pages` beside `criu lazy-pages` serving the same local images (the
#         task runs at once, its pages copied in after); reported: the restore command, and the
#         time until the daemon had every page.
# Prints one line per restore, then the medians.
#
#   bash scripts/criu-restore-floor.sh [SIZES_MIB] [RUNS]     e.g. "128 512" 3 (root, criu >= 4.2,
#                                                               bash scripts/build-static.sh)
set -euo pipefail
SIZES=${1:-"32 128 512"}
RUNS=${2:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
dirtier=$here/target/static/x86_64-unknown-linux-gnu/release/dirtier
[ -x "$dirtier" ] || { echo "missing $dirtier: bash scripts/build-static.sh" >&2; exit 1; }
command -v criu >/dev/null || { echo "criu is missing: bash scripts/install-criu.sh" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root (CRIU)" >&2; exit 1; }

work=$(mktemp -d /dev/shm/brume-restore-floor.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

ms() { echo $(( ($2 - $1) / 1000000 )); }
# The restored task answers on its socket: proof it runs with its memory (SUM is its checksum).
ask() { python3 -c "
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(60); s.connect(sys.argv[1])
s.sendall(b'SUM\n'); print(s.makefile().readline().strip())" "$1"; }

results=$work/results
for mib in $SIZES; do
  dir=$work/$mib
  mkdir -p "$dir/img"
  sock=$dir/s.sock
  unshare --pid --fork "$dirtier" serve "$sock" "$mib" 7 0 </dev/null >/dev/null 2>&1 &
  outer=$!
  for _ in $(seq 1 600); do [ -S "$sock" ] && break; sleep 0.1; done
  pid=$(pgrep -P "$outer")
  sum=$(ask "$sock")
  criu dump -t "$pid" -D "$dir/img" --network-lock skip -o dump.log
  wait "$outer" 2>/dev/null || true
  for run in $(seq 1 "$RUNS"); do
    for how in full lazy; do
      rm -f "$sock" "$dir/pid"
      if [ "$how" = full ]; then
        t0=$(date +%s%N)
        criu restore -D "$dir/img" --restore-detached --pidfile "$dir/pid" --network-lock skip -o restore.log
        t1=$(date +%s%N); t2=$t1
      else
        rm -f "$dir/img/lazy-pages.socket"
        criu lazy-pages -D "$dir/img" -o lazy.log &
        daemon=$!
        # The daemon is ready once its socket exists (not part of what is timed).
        for _ in $(seq 1 600); do [ -S "$dir/img/lazy-pages.socket" ] && break; sleep 0.05; done
        t0=$(date +%s%N)
        criu restore -D "$dir/img" --restore-detached --pidfile "$dir/pid" --network-lock skip \
          --lazy-pages -o restore.log
        t1=$(date +%s%N)
        wait "$daemon"
        t2=$(date +%s%N)
      fi
      p=$(cat "$dir/pid"); pids+=("$p")
      got=$(ask "$sock")
      [ "$got" = "$sum" ] || { echo "$how restore of $mib MiB answered $got, not $sum" >&2; exit 1; }
      echo "$mib $how $(ms "$t0" "$t1") $(ms "$t0" "$t2")" | tee -a "$results"
      kill -9 "$p"; while kill -0 "$p" 2>/dev/null; do sleep 0.05; done
    done
  done
done
python3 - "$results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
print("MiB  full_restore_ms  lazy_restore_ms  lazy_all_pages_ms   (medians)")
for mib in sorted({int(r[0]) for r in rows}):
    f = [int(r[2]) for r in rows if int(r[0]) == mib and r[1] == "full"]
    l = [int(r[2]) for r in rows if int(r[0]) == mib and r[1] == "lazy"]
    a = [int(r[3]) for r in rows if int(r[0]) == mib and r[1] == "lazy"]
    print(f"{mib:4d} {statistics.median(f):16.0f} {statistics.median(l):16.0f} {statistics.median(a):18.0f}")
EOF
