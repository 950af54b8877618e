#!/usr/bin/env bash
# brume's main job, as far as it goes today: builds brume, starts a small overlay of `brume node`
# processes on loopback (each joining through a different earlier member), shows one node's
# peers and its latency-bounded neighbourhood map, then places the federated-learning service
# (examples/fedavg/service.toml) on the 12-host example network. Later issues deploy it for real.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --locked -q -p brume
brume=./target/release/brume
nodes=${NODES:-5}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

addrs=()
for i in $(seq 0 $((nodes - 1))); do
  join=()
  if ((i > 0)); then join=(--join "${addrs[$(( (i - 1) / 2 ))]}"); fi
  "$brume" node --listen /ip4/127.0.0.1/tcp/0 "${join[@]}" --min-degree 2 --max-degree 4 \
    --control "$work/n$i.sock" --data-dir "$work/n$i" --log warn >"$work/n$i.out" 2>"$work/n$i.err" &
  pids+=($!)
  for _ in $(seq 50); do
    [ -s "$work/n$i.out" ] && break
    sleep 0.1
  done
  addr=$(awk '/^listening/ {print $2; exit}' "$work/n$i.out")
  [ -n "$addr" ] || { echo "node $i did not start:"; cat "$work/n$i.err"; exit 1; }
  addrs+=("$addr")
  echo "node $i  $addr"
done

echo; echo "waiting for pings to settle ..."; sleep 3
echo; echo "== brume peers (node 0)"
"$brume" peers --control "$work/n0.sock"
echo; echo "== brume map --budget 50ms (node 0)"
"$brume" map --control "$work/n0.sock" --budget 50ms
echo; echo "== brume place: the fedavg service on the example edge network"
"$brume" place --network examples/networks/edge-lab.toml --graph examples/fedavg/service.toml \
  --policy "${POLICY:-latency}" --rounds 32 --seed 1
