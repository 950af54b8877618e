//! brume's overlay: the libp2p node every device runs.
//!
//! Joining through any member, per-peer RTT sensing, Vivaldi coordinates and the latency-bounded
//! neighbourhood mapping protocol of seed 004 will live here (issue 4). The protocol logic is kept
//! sans-IO so it can be simulated over thousands of nodes; the libp2p swarm is a thin shell around it.
//! Nothing is implemented yet: this crate only reserves its place in the workspace.
