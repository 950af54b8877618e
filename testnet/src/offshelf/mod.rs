//! An unmodified, off-the-shelf stateful server moved live by `brume migrate`, shared by the
//! test that proves no acknowledged write is lost (node/tests/offshelf.rs) and by `brume bench
//! migration`, which reports the same run's figures (`server_lost_writes`, the pause a client
//! saw).
//!
//! The server is Debian's `redis-server` (installed by scripts/install-deps.sh), not written
//! here and knowing nothing of brume, in a `FROM scratch` image made of its binary, the shared
//! libraries `ldd` lists and a shell that starts it on the port the node gives it
//! ([`image`]). It is deployed with `checkpoint = "criu"` beside a root task (the relay) that
//! calls it, on three `brume node` daemons of a [`LocalNet`](crate::localnet::LocalNet) (one
//! task per node, so one node is free). A client ([`writer`]) writes `SET k<i> <i>` over RESP
//! ([`resp`]) through the call forwarder on the root's node, which tunnels each connection to
//! wherever redis runs now, and counts the writes redis acknowledged; meanwhile redis is moved
//! live to the free node ([`scenario`]). Afterwards every acknowledged key is read back.

pub mod image;
pub mod resp;
pub mod scenario;
pub mod writer;

pub use scenario::{move_redis, RedisMove, Setup};
