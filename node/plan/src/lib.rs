//! brume's plans: what an operator writes, and where it would run.
//!
//! Files come in through [`manifest`] (a service: tasks, calls, and each call's latency bound)
//! and [`netfile`] (a network: hosts and links); both refuse bad input with the file, line and
//! field at fault ([`input_error`]) and with the one naming rule the deploy wire also enforces
//! ([`naming`]), and turn what they read into `brume_placement`'s `CallGraph` and `Network`.
//! From there two ways lead to a plan: `brume place` ([`place`]) runs a placer on a network
//! file and [`report`]s the plan to a person (a table that says why each task landed where it
//! did, [`verdict`]) or to a program (JSON); a deploy ([`onmap`]) turns the node's
//! neighbourhood map into a network ([`mapnet`]) and places the manifest on it with the root
//! pinned to the initiator, naming hosts by their libp2p peers. Nothing here does I/O beyond
//! reading the operator's files.

pub mod input_error;
pub mod manifest;
pub mod mapnet;
pub mod naming;
pub mod netfile;
pub mod onmap;
pub mod place;
pub mod report;
pub mod verdict;
