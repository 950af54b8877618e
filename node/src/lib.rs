//! The `brume` node program: the daemon and the command line every device runs.
//!
//! This crate is the only place that wires brume's parts to the world. The running node is
//! [`daemon`]: it reads its settings (defaults, file, `BRUME_*`, flags: one path), runs the
//! overlay (crate `brume_overlay`), serves a typed control socket (crate `brume_control`: one
//! request and one reply type per command) that [`client`] and the command modules speak to,
//! naming nodes the same way in every listing (`brume_control::NodeName`), and runs the services of [`deploy`]
//! and [`migrate`].
//!
//! A deploy: the initiator reads the manifest and places it on the node's neighbourhood map
//! (crate `brume_plan`), packs artifacts (crate `brume_artifact`) and asks every chosen host on
//! `/brume/deploy/3`; each host's deployer fetches what it lacks and runs the task through an
//! engine (crate `brume_engine`: Docker or plain processes), wiring its calls through tunnels
//! (crate `brume_tunnel`). A move: the node that runs an instance drives it, its decisions a
//! state machine with no I/O (`migrate::machine`) and its state captured by brume-migration.
//! The opt-in metrics endpoint is crate `brume_metrics`; the benchmarks are a program of their
//! own (`brume-bench`, in testnet/bench), which `brume bench` runs.

pub mod client;
pub mod daemon;
pub mod deploy;
pub mod gc;
pub mod heal;
pub mod mapview;
pub mod migrate;
pub mod streams;
