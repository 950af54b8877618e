#!/usr/bin/env bash
# brume's main job, as far as it goes today: builds brume and places the federated-learning
# service (examples/fedavg/service.toml) on a 12-host edge network (examples/networks/edge-lab.toml)
# with breadth-first randomized rounding, printing the plan. Later issues replace this with a
# local overlay of `brume node` processes and a real deployment.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --locked -q -p brume
./target/release/brume place \
  --network examples/networks/edge-lab.toml \
  --graph examples/fedavg/service.toml \
  --policy "${POLICY:-latency}" --rounds 32 --seed 1
