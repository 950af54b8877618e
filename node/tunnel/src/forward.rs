//! The caller's end of a tunnel: a [`Forwarder`] listens on 127.0.0.1 for one callee endpoint and
//! carries every accepted connection to wherever the callee runs at that moment.
//!
//! Per connection: read the route from [`Routes`]; for [`Route::Local`] connect straight to the
//! task's port; for [`Route::Remote`] open a `/brume/tunnel/2` stream through the
//! [`StreamOpener`] ([`open_tunnel`]: hello, reply, retried if the stream is lost before the
//! reply), then [`super::splice`] the two until both directions end. The caller's bytes wait in
//! its socket until the reply, so a lost stream can be retried without losing or repeating any. A connection that cannot be carried (no route, unreachable peer, refusal) is
//! closed at once and logged; the listener goes on serving the others.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use brume_overlay::{Multiaddr, OverlayHandle, PeerId};
use futures::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::{debug, warn};

use super::routes::{Route, Routes};
use super::wire::{Hello, Reply, TunnelError, HELLO_LIMIT};
use super::{connect_local, splice, HANDSHAKE_TIMEOUT, MAX_HOLD, MAX_REDIRECTS, TUNNEL_PROTOCOL};
use crate::InstanceId;
use brume_overlay::frames::{read_frame, write_frame, FrameError};

/// Opens raw `/brume/tunnel/2` streams to peers: the overlay in the daemon, a fake in unit tests.
pub trait StreamOpener: Send + Sync + 'static {
    /// A futures-io byte stream.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Opens a tunnel stream to `peer`.
    fn open(&self, peer: PeerId) -> impl Future<Output = Result<Self::Stream, TunnelError>> + Send;

    /// Learns where `peer` can be dialled (a redirect named a host this node may never have
    /// met). Nothing by default.
    fn learn(&self, _peer: PeerId, _addrs: Vec<Multiaddr>) -> impl Future<Output = ()> + Send {
        async {}
    }
}

impl StreamOpener for OverlayHandle {
    type Stream = brume_overlay::Stream;

    async fn open(&self, peer: PeerId) -> Result<Self::Stream, TunnelError> {
        self.open_stream(peer, TUNNEL_PROTOCOL)
            .await
            .map_err(|e| TunnelError::Open {
                peer,
                reason: e.to_string(),
            })
    }

    async fn learn(&self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if let Err(e) = self.add_addresses(peer, addrs).await {
            debug!(%peer, error = %e, "cannot note a redirect's addresses");
        }
    }
}

/// How many times a tunnel is tried before the call is given up (see [`open_tunnel`]).
pub const OPEN_ATTEMPTS: u32 = 4;

/// Opens a tunnel to `endpoint` on `peer`: stream, hello, reply, all within
/// [`HANDSHAKE_TIMEOUT`]. On success the stream carries the call's bytes.
///
/// A stream that cannot be opened, or that ends before any reply, is tried again (up to
/// [`OPEN_ATTEMPTS`] times, 5, 20 then 80 ms apart): an overlay node drops inbound streams that
/// arrive faster than its acceptor takes them (libp2p-stream hands them over through a channel
/// with one slot), so a burst of new calls loses some streams. Retrying is safe because nothing
/// of the caller's has been sent yet: the forwarder reads from the caller only after the reply.
/// A refusal or a malformed reply is final.
pub async fn open_tunnel<O: StreamOpener>(
    opener: &O,
    peer: PeerId,
    endpoint: &InstanceId,
) -> Result<O::Stream, TunnelError> {
    let hello = Hello {
        endpoint: endpoint.clone(),
    };
    let attempts = async {
        let mut attempt = 1;
        loop {
            match handshake(opener, peer, &hello).await {
                Err(e) if attempt < OPEN_ATTEMPTS && retryable(&e) => {
                    debug!(%peer, %endpoint, attempt, error = %e, "tunnel not opened; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(5 << (2 * (attempt - 1))))
                        .await;
                    attempt += 1;
                }
                done => return done,
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, attempts)
        .await
        .map_err(|_| TunnelError::Timeout("opening the tunnel (stream, hello and reply)"))?
}

/// One attempt: stream, hello, reply.
async fn handshake<O: StreamOpener>(
    opener: &O,
    peer: PeerId,
    hello: &Hello,
) -> Result<O::Stream, TunnelError> {
    let mut stream = opener.open(peer).await?;
    write_frame(&mut stream, hello).await?;
    match read_frame::<_, Reply>(&mut stream, HELLO_LIMIT).await? {
        Reply::Ok => Ok(stream),
        Reply::Refused { reason } => Err(TunnelError::Refused(reason)),
        Reply::Moved { peer: to, addrs } if to != peer => Err(TunnelError::Moved {
            endpoint: hello.endpoint.clone(),
            peer: to,
            addrs,
        }),
        Reply::Moved { .. } => Err(TunnelError::Refused(format!(
            "{peer} redirected the call to itself"
        ))),
    }
}

/// Whether a failed attempt may be tried again: the stream did not open, or broke before the far
/// node said anything.
fn retryable(e: &TunnelError) -> bool {
    matches!(
        e,
        TunnelError::Open { .. } | TunnelError::Handshake(FrameError::Io(_))
    )
}

/// A local listener for calls to one endpoint. Dropping it (or [`Forwarder::close`]) stops
/// listening and ends every connection it carries.
#[derive(Debug)]
pub struct Forwarder {
    endpoint: InstanceId,
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Forwarder {
    /// Listens on 127.0.0.1 on a free port for calls to `endpoint`, routed by `routes`, remote
    /// ones through `opener`.
    pub async fn bind<O: StreamOpener>(
        endpoint: InstanceId,
        routes: Routes,
        opener: O,
    ) -> Result<Forwarder, TunnelError> {
        Self::bind_at(endpoint, routes, opener, 0).await
    }

    /// [`Forwarder::bind`] on a given port (0: any): a task CRIU restored here still calls the
    /// addresses its environment named on the node it came from.
    pub async fn bind_at<O: StreamOpener>(
        endpoint: InstanceId,
        routes: Routes,
        opener: O,
        port: u16,
    ) -> Result<Forwarder, TunnelError> {
        let bind_err = |source| TunnelError::Bind {
            endpoint: endpoint.clone(),
            source,
        };
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        debug!(%endpoint, %addr, "forwarder listening");
        let task = tokio::spawn(accept_loop(
            listener,
            endpoint.clone(),
            routes,
            Arc::new(opener),
        ));
        Ok(Forwarder {
            endpoint,
            addr,
            task: Some(task),
        })
    }

    /// The address callers connect to (what goes into `BRUME_CALL_*`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn endpoint(&self) -> &InstanceId {
        &self.endpoint
    }

    /// Stops listening and ends every connection; returns once the listener is closed.
    pub async fn close(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Accepts connections and carries each on its own task; the tasks live in a `JoinSet`, so
/// aborting this loop aborts them all.
async fn accept_loop<O: StreamOpener>(
    listener: TcpListener,
    endpoint: InstanceId,
    routes: Routes,
    opener: Arc<O>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, from)) => {
                    let (endpoint, routes, opener) = (endpoint.clone(), routes.clone(), opener.clone());
                    conns.spawn(async move {
                        if let Err(e) = carry(tcp, &endpoint, &routes, &*opener).await {
                            warn!(%endpoint, %from, error = %e, "call not carried; connection closed");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(%endpoint, error = %e, "cannot accept a call");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Opens the tunnel to `peer`; when it answers that the task moved, records the new host in
/// `routes` (unless the route changed meanwhile) and opens the tunnel there instead.
async fn open_following_moves<O: StreamOpener>(
    opener: &O,
    routes: &Routes,
    mut peer: PeerId,
    endpoint: &InstanceId,
) -> Result<O::Stream, TunnelError> {
    let mut redirects = 0;
    loop {
        match open_tunnel(opener, peer, endpoint).await {
            Err(TunnelError::Moved {
                peer: to, addrs, ..
            }) if redirects < MAX_REDIRECTS => {
                debug!(%endpoint, from = %peer, %to, "the task moved; following it");
                if !addrs.is_empty() {
                    routes.set_host_addrs(to, addrs.clone());
                    opener.learn(to, addrs).await;
                }
                if routes.get(endpoint) == Some(Route::Remote { peer }) {
                    routes.set(endpoint.clone(), Route::Remote { peer: to });
                }
                peer = to;
                redirects += 1;
            }
            other => return other,
        }
    }
}

/// Carries one accepted connection to the endpoint's current host.
async fn carry<O: StreamOpener>(
    mut tcp: TcpStream,
    endpoint: &InstanceId,
    routes: &Routes,
    opener: &O,
) -> Result<(), TunnelError> {
    let _ = tcp.set_nodelay(true);
    // A move may hold the endpoint here: wait for it, then go where the route says.
    let route = routes
        .resolve(endpoint, MAX_HOLD)
        .await
        .ok_or_else(|| TunnelError::NoRoute(endpoint.clone()))?;
    let moved = match route {
        Route::Local { port } => {
            let cut = routes.cut_signal(endpoint);
            let mut task = connect_local(port).await?;
            tokio::select! {
                moved = splice(&mut tcp, &mut task, routes.buffers()) => moved,
                () = cut.cut() => {
                    debug!(%endpoint, "call cut: the task is moving");
                    return Ok(());
                }
            }
        }
        Route::Remote { peer } => {
            let stream = open_following_moves(opener, routes, peer, endpoint).await?;
            splice(&mut tcp, &mut stream.compat(), routes.buffers()).await
        }
    };
    match moved {
        Ok((out, back)) => debug!(%endpoint, ?route, out, back, "call ended"),
        // A reset from either end is how TCP connections often end; not the tunnel's fault.
        Err(e) => debug!(%endpoint, ?route, error = %e, "call ended with an error"),
    }
    Ok(())
}
