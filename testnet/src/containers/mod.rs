//! `brume testnet`: a local testnet of node containers.
//!
//! Each node is a container of the node image (scripts/node-image.sh: FROM scratch around the
//! static `brume`, criu and what the process engine execs) with a network namespace of its own
//! and nothing in it but loopback and a TUN device. One background router process (see
//! [`router_proc`]) holds every container's TUN device and delays each packet by the pair's RTT,
//! the same userspace router the bare [`Testbed`](crate::Testbed) uses (the kernel has no netem).
//! Tasks run inside the node containers on brume's process engine. Without Docker
//! (`up --processes`, [`procs`]) each node is a `brume node` process in a namespace instead.
//!
//! The testnet's state (containers, addresses, router pid, partition) lives in a JSON file under
//! `/run/brume-testnet/nets/<name>/`, which every command reads ([`state`]). The operations use
//! `anyhow` errors: they are the edge of a command-line tool, and each error says what to do.

pub mod ask;
pub mod caps;
pub mod docker;
pub mod image;
pub mod ops;
pub mod procs;
pub mod router_proc;
pub mod state;
pub mod test_run;
pub mod up;
