#!/usr/bin/env bash
# Issue 16's whole story on a testnet of node containers, in one command: installs what brume
# needs (criu), builds brume, its bench and testnet tools and the example workloads, then runs
# `brume bench fedavg --testnet`: `brume testnet up` starts five node containers (each a device
# with its own network namespace; every pair's RTT, drawn in 5-40 ms, a real kernel-path delay
# through the testnet's router), the fedavg service is deployed from node 0 (aggregator and four
# trainers on the process engine inside the nodes), the aggregator is moved live with CRIU after
# round 3, the container of a trainer's node is killed after round 6 and its trainer placed again
# on another node, and training goes on to round 20. It prints the per-round timeline, the move's
# pause as the trainers saw it, rounds per minute against a baseline run without move and kill,
# the final accuracy against centralised training, and writes fedavg.svg. Each testnet is taken
# down at the end. Needs root and Docker. Arguments are passed on (`--help` lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --locked -q -p brume -p brume-bench -p brume-testnet
bash scripts/build-static.sh >/dev/null
export PATH=/usr/local/sbin:$PATH
exec ./target/release/brume bench fedavg --testnet "$@"
