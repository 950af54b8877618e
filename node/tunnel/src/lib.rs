//! Relocation-transparent calls: every task reaches the tasks it calls through a port on its own
//! node, and the node tunnels each TCP connection over the overlay to wherever the callee runs now.
//!
//! The flow of one call:
//!
//! ```text
//!  caller task ──TCP──▶ Forwarder (127.0.0.1:p, in BRUME_CALL_<CALLEE>)       node A
//!                         │ looks the callee's InstanceId up in Routes, now
//!                         ├─ Route::Local { port } ──TCP──▶ 127.0.0.1:port     (same node)
//!                         └─ Route::Remote { peer } ── /brume/tunnel/2 stream ─▶ node B
//!                              Hello{endpoint} ─▶ serve(): is it running HERE?
//!                              ◀─ Reply::Ok | Reply::Refused{reason}
//!                              bytes both ways ◀──▶ TCP 127.0.0.1:port of the task on B
//! ```
//!
//! * [`Routes`] is the node's table from an [`InstanceId`] (service, task, replica) to where it runs
//!   now; the daemon updates it on deploy and after a migration. It is shared: cloning is cheap.
//! * [`Forwarder`] is the caller's end: one listener per callee endpoint. The route is read **when
//!   a connection is accepted**, so after a task moves new connections reach the new host at once;
//!   connections opened before the move keep their old far end and break when the old instance
//!   goes away (the caller reconnects, as it would after any TCP error).
//! * [`serve`] is the callee's end: it answers `/brume/tunnel/2` streams for the tasks whose route
//!   on this node is [`Route::Local`], redirects those that moved away ([`Reply::Moved`]: the
//!   caller's node updates its route and opens the tunnel to the new host), and refuses the
//!   others with a reason.
//! * While a task moves, its endpoint is held ([`Routes::hold`]): connections to the old instance
//!   are cut and new ones wait (up to [`MAX_HOLD`]) until the new instance runs, so no request
//!   reaches the old one after its checkpoint and callers see a pause rather than an error.
//! * A new remote call costs two overlay round trips before its first byte moves: opening the
//!   stream (libp2p's protocol negotiation) and the hello/reply. The reply is awaited on purpose:
//!   until it arrives nothing of the caller's has been sent, so a stream lost on the way (see
//!   [`open_tunnel`]) is retried without ever delivering a request twice.
//! * [`StreamOpener`] is the one seam to the overlay (implemented for
//!   [`brume_overlay::OverlayHandle`]); bytes are copied with [`COPY_BUFFER`]-sized buffers from
//!   the [`BufferPool`] the node's [`Routes`] carries (`splice.rs`) and half-closes are passed on (a FIN on one side becomes a FIN on the
//!   other).
//! * [`call_env`] turns forwarder addresses into the `BRUME_CALL_*` variables of the house
//!   convention.

mod env;
mod forward;
mod instance;
mod routes;
mod serve;
mod splice;
mod wire;

pub use env::{call_env, call_env_name};
pub use forward::{open_tunnel, Forwarder, StreamOpener, OPEN_ATTEMPTS};
pub use instance::InstanceId;
pub use routes::{CutSignal, Hold, Route, Routes};
pub use serve::serve;
pub use wire::{Hello, Reply, TunnelError, HELLO_LIMIT};

use std::time::Duration;

use brume_overlay::StreamProtocol;

/// The overlay stream protocol of tunnels.
pub const TUNNEL_PROTOCOL: StreamProtocol = StreamProtocol::new("/brume/tunnel/2");

/// Size of each direction's copy buffer: large, so that bulk transfers move in big writes
/// (the buffers are pooled: see [`BufferPool`]).
pub const COPY_BUFFER: usize = 256 * 1024;

/// How long opening a tunnel (stream, hello, reply) or reading a hello may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a connection waits for a move's hold on its endpoint (below
/// [`HANDSHAKE_TIMEOUT`], so a held remote caller gets its reply before it gives up).
pub const MAX_HOLD: Duration = Duration::from_secs(8);

/// How many times a call follows [`Reply::Moved`] to the task's new host.
pub const MAX_REDIRECTS: u32 = 2;

/// How long connecting to a task's port on this node may take.
pub const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) use splice::splice;
pub use splice::{BufferPool, POOL_MAX};

/// Connects to a task's port on this node's loopback, with Nagle off (calls are often small
/// request/response exchanges).
pub(crate) async fn connect_local(port: u16) -> Result<tokio::net::TcpStream, TunnelError> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let tcp = tokio::time::timeout(LOCAL_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| TunnelError::Timeout("connecting to the task's local port"))?
        .map_err(|source| TunnelError::LocalConnect { port, source })?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

#[cfg(test)]
mod tests;
