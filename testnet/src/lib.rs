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

pub mod addr;
pub mod error;
pub mod netns;
pub mod pidns;
pub mod poller;
pub mod require;
pub mod router;
pub mod testbed;
pub mod tun;

pub use addr::Subnet;
pub use error::{Error, Result};
pub use netns::{cleanup, Cleanup};
pub use router::{Router, RouterConfig, RouterStats, Shaping};
pub use testbed::{Testbed, TestbedBuilder};
pub use tun::Tun;
