//! The callee's end of tunnels: [`serve`] answers `/brume/tunnel/2` streams for the tasks that
//! run on this node.
//!
//! Per stream: read the [`Hello`] (at most [`HELLO_LIMIT`] bytes, within [`HANDSHAKE_TIMEOUT`]),
//! look its endpoint up in [`Routes`]; only a [`Route::Local`] entry is served: connect to the
//! task's port, answer [`Reply::Ok`] and splice. Anything else (a task that runs elsewhere or not
//! at all, a port that refuses, a malformed hello) is answered with [`Reply::Refused`] where
//! possible, logged, and the stream closed. Nothing a peer sends can make this panic or stop
//! serving other streams.

use brume_overlay::PeerId;
use futures::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use futures::{Stream, StreamExt};
use tokio::task::JoinSet;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::{debug, warn};

use super::routes::{Route, Routes};
use super::wire::{Hello, Reply, TunnelError, HELLO_LIMIT};
use super::{connect_local, splice, HANDSHAKE_TIMEOUT, MAX_HOLD};
use brume_overlay::frames::{read_frame, write_frame};
use brume_overlay::limits::Slots;

/// Tunnelled connections carried at once for one peer (its tasks' calls to this node's), and in
/// all: past them a stream is dropped unserved. A tunnel may rightly be idle (a client keeping a
/// connection open), so tunnels have no idle timeout, only these caps (and the hello's).
pub const TUNNELS_PER_PEER: usize = 1024;
const TUNNELS_TOTAL: usize = 8192;

/// Serves every incoming tunnel stream (from
/// `OverlayHandle::accept_streams(TUNNEL_PROTOCOL)`) until `incoming` ends, then waits for the
/// calls in flight. Dropping the future ends them all. At most [`TUNNELS_PER_PEER`] at once
/// per peer.
pub async fn serve<I, S>(mut incoming: I, routes: Routes)
where
    I: Stream<Item = (PeerId, S)> + Unpin,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conns = JoinSet::new();
    let slots = Slots::new(TUNNELS_PER_PEER, TUNNELS_TOTAL);
    loop {
        tokio::select! {
            next = incoming.next() => match next {
                Some((peer, stream)) => {
                    let Some(slot) = slots.try_take(&peer) else {
                        warn!(%peer, "too many tunnelled connections from one peer; stream dropped");
                        continue;
                    };
                    let routes = routes.clone();
                    conns.spawn(async move {
                        if let Err(e) = answer(stream, &routes).await {
                            warn!(%peer, error = %e, "tunnel stream refused and closed");
                        }
                        drop(slot);
                    });
                }
                None => break,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    while conns.join_next().await.is_some() {}
}

/// Answers one stream: hello, route, connect, reply, splice.
async fn answer<S>(mut stream: S, routes: &Routes) -> Result<(), TunnelError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let hello = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        read_frame::<_, Hello>(&mut stream, HELLO_LIMIT),
    )
    .await
    {
        Ok(Ok(hello)) => hello,
        Ok(Err(e)) => {
            refuse(&mut stream, format!("bad tunnel hello: {e}")).await;
            return Err(e.into());
        }
        Err(_) => {
            let _ = stream.close().await;
            return Err(TunnelError::Timeout("waiting for the tunnel hello"));
        }
    };
    let endpoint = hello.endpoint;
    // A move may hold the endpoint: wait for it, then serve, redirect or refuse.
    let route = routes.resolve(&endpoint, MAX_HOLD).await;
    let cut = routes.cut_signal(&endpoint);
    let port = match route {
        Some(Route::Local { port }) => port,
        Some(Route::Remote { peer }) => {
            let moved = Reply::Moved {
                peer,
                addrs: routes.host_addrs(&peer),
            };
            reply_and_close(&mut stream, &moved).await;
            debug!(%endpoint, %peer, "caller redirected to the task's new host");
            return Ok(());
        }
        None => {
            let e = TunnelError::NotHere(endpoint);
            refuse(&mut stream, e.to_string()).await;
            return Err(e);
        }
    };
    let mut task = match connect_local(port).await {
        Ok(task) => task,
        Err(e) => {
            refuse(&mut stream, format!("{endpoint} runs here but {e}")).await;
            return Err(e);
        }
    };
    write_frame(&mut stream, &Reply::Ok).await?;
    let mut stream = stream.compat();
    tokio::select! {
        moved = splice(&mut stream, &mut task, routes.buffers()) => match moved {
            Ok((inbound, outbound)) => debug!(%endpoint, inbound, outbound, "tunnelled call ended"),
            Err(e) => debug!(%endpoint, error = %e, "tunnelled call ended with an error"),
        },
        () = cut.cut() => debug!(%endpoint, "tunnelled call cut: the task is moving"),
    }
    Ok(())
}

/// Best effort, bounded in time: tells the opener why, then closes the stream.
async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, reason: String) {
    reply_and_close(stream, &Reply::Refused { reason }).await;
}

/// Best effort, bounded in time: sends a final reply, then closes the stream.
async fn reply_and_close<S: AsyncWrite + Unpin>(stream: &mut S, reply: &Reply) {
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let _ = write_frame(stream, reply).await;
        let _ = stream.close().await;
    })
    .await;
}
