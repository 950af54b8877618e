//! The `brume` node program: the daemon and the command line every device runs.
//!
//! This crate is the only place that wires brume's parts to the world. Files the operator
//! writes come in through [`manifest`] (a service: tasks and calls) and [`netfile`] (a network:
//! hosts and links); both refuse bad input with the file, line and field at fault, and turn what
//! they read into `brume_placement`'s `CallGraph` and `Network`. [`place`] runs a placer on
//! those and [`report`] shows the plan to a person (a table that says why each task landed where
//! it did) or to a program (JSON).
//!
//! The running node is [`daemon`]: the overlay (crate `brume_overlay`), a typed control socket
//! (`daemon::control`: one request and one reply type per command) that [`client`] and the
//! command modules speak to, naming nodes the same way in every listing ([`names`]), and the
//! services of [`deploy`]: an initiator that packs artifacts (crate `brume_artifact`) and places
//! a service on its map, and an agent that fetches them and runs tasks through an engine (crate
//! `brume_engine`: Docker or plain processes), wiring their calls through tunnels (crate
//! `brume_tunnel`). [`migrate`] moves a
//! running instance to another node, holding its callers while its state goes across. The
//! benchmarks are a program of their own (`brume-bench`, in testnet/bench), which `brume bench`
//! runs.

pub mod client;
pub mod daemon;
pub mod deploy;
pub mod input_error;
pub mod manifest;
pub mod mapnet;
pub mod mapview;
pub mod migrate;
pub mod names;
pub mod netfile;
pub mod place;
pub mod report;
