//! The `brume` node program: the daemon and the command line every device runs.
//!
//! This crate is the only place that wires brume's pure parts to the world. Files the operator
//! writes come in through [`manifest`] (a service: tasks and calls) and [`netfile`] (a network:
//! hosts and links); both refuse bad input with the file, line and field at fault, and turn what
//! they read into `brume_placement`'s `CallGraph` and `Network`. [`place`] runs a placer on
//! those and [`report`] shows the plan to a person (a table that says why each task landed where
//! it did) or to a program (JSON). [`bench`] holds the benchmark families of `brume bench`.
//!
//! The running node is [`daemon`]: the overlay (crate `brume_overlay`), a control socket that
//! [`client`] and the command modules speak to, and the services of [`deploy`]: an initiator
//! that packs [`artifact`]s and places a service on its map, and an agent that fetches them and
//! runs tasks through an [`engine`] (Docker or plain processes), wiring their calls through
//! [`tunnel`]s. [`migrate`] moves a running instance to another node, holding its callers while
//! its state goes across.

pub mod artifact;
pub mod bench;
pub mod client;
pub mod daemon;
pub mod deploy;
pub mod engine;
pub mod frames;
pub mod input_error;
pub mod localnet;
pub mod manifest;
pub mod mapnet;
pub mod mapview;
pub mod migrate;
pub mod netfile;
pub mod place;
pub mod report;
pub mod tunnel;
