//! Latency-emulating testbeds for brume's tests.
//!
//! brume's latency-bounded behaviour has to be measured over real sockets with real delays, and
//! the kernel we run on has no `netem`. So the delays are made in userspace: a [`Testbed`] creates
//! one network namespace per host, each with loopback and a TUN device `brume0` holding the host's
//! address in the testbed's `10.x.0.0/16`. Every TUN file descriptor is held by one [`Router`]
//! thread in this process. A packet a host sends to another host's address is routed by the
//! host's kernel into its TUN device; the router reads it, looks up the destination address,
//! holds it for half the pair's RTT (plus serialisation time when the host's link is shaped) and
//! writes it into the destination's TUN device, whose kernel delivers it to the socket. Tests run
//! programs inside a host with [`Testbed::command`] or open sockets there with
//! [`Testbed::run_in`], and reach host `j` at [`Testbed::addr`]`(j)`.
//!
//! Everything needs root; without it building a testbed fails with [`Error::NotRoot`].
//!
//! Beside the testbed lives the rest of brume's tooling, which the `brume` daemon never links:
//! [`latency`] (latency models: a synthetic Internet-like one and N x N RTT matrix files) and
//! [`sim`] (a discrete-event simulation of thousands of overlay nodes running brume-overlay's
//! sans-IO mapping cores over such a model), [`localnet`] (a few real `brume node` processes on
//! loopback, for tests and benches), [`relay_service`] (the three-task service they deploy),
//! [`offshelf`] (Debian's redis moved live under a client counting its acknowledged writes),
//! [`taskview`] (the mounts and mapped files of a task's process), [`leftovers`] (what a daemon
//! leaves in tmpfs, removed when a test network ends) and [`require`] (how a test says what
//! system it needs).
//! The benches themselves are the `brume-bench` binary in `testnet/bench`.

pub mod addr;
pub mod containers;
pub mod error;
pub mod latency;
pub mod leftovers;
pub mod localnet;
pub mod netns;
pub mod offshelf;
pub mod pidns;
pub mod poller;
pub mod processes;
pub mod relay_service;
pub mod require;
pub mod router;
pub mod sim;
pub mod taskview;
pub mod testbed;
pub mod tun;

pub use addr::Subnet;
pub use error::{Error, Result};
pub use netns::{cleanup, Cleanup};
pub use router::{Router, RouterConfig, RouterStats, Shaping};
pub use testbed::{Testbed, TestbedBuilder};
pub use tun::Tun;
