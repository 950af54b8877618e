//! Unit tests of the tunnel ends over in-memory streams (a fake [`StreamOpener`] that hands the
//! far end of a `tokio::io::duplex` pipe to [`serve`]); the real overlay is exercised by
//! `node/tests/tunnel_overlay.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use brume_overlay::PeerId;
use futures::channel::mpsc;
use futures::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

use super::*;

type Pipe = Compat<tokio::io::DuplexStream>;

/// Peers that "accept" tunnel streams: each is a channel into a running `serve`.
#[derive(Clone)]
struct FakeOverlay {
    peers: HashMap<PeerId, mpsc::Sender<(PeerId, Pipe)>>,
    /// How many of the next streams the far side drops unread (as an overlay node does when
    /// streams arrive faster than its acceptor takes them).
    drop_next: Arc<AtomicU32>,
}

impl FakeOverlay {
    fn new(peers: HashMap<PeerId, mpsc::Sender<(PeerId, Pipe)>>) -> Self {
        FakeOverlay {
            peers,
            drop_next: Arc::new(AtomicU32::new(0)),
        }
    }
}

impl StreamOpener for FakeOverlay {
    type Stream = Pipe;

    async fn open(&self, peer: PeerId) -> Result<Pipe, TunnelError> {
        let mut tx = self.peers.get(&peer).cloned().ok_or(TunnelError::Open {
            peer,
            reason: "unknown peer".into(),
        })?;
        let (near, far) = tokio::io::duplex(64 * 1024);
        let dropping = self
            .drop_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if dropping {
            drop(far);
            return Ok(near.compat());
        }
        tx.send((PeerId::random(), far.compat()))
            .await
            .map_err(|_| TunnelError::Open {
                peer,
                reason: "peer stopped".into(),
            })?;
        Ok(near.compat())
    }
}

/// A fake node: its routes and its running `serve`.
fn fake_node(peers: &mut HashMap<PeerId, mpsc::Sender<(PeerId, Pipe)>>) -> (PeerId, Routes) {
    let (tx, rx) = mpsc::channel(8);
    let peer = PeerId::random();
    let routes = Routes::new();
    tokio::spawn(serve(rx, routes.clone()));
    peers.insert(peer, tx);
    (peer, routes)
}

/// A task: greets with `greeting`, then echoes until the caller half-closes, then closes.
async fn echo_task(greeting: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                s.write_all(greeting.as_bytes()).await.unwrap();
                let (mut r, mut w) = s.split();
                tokio::io::copy(&mut r, &mut w).await.unwrap();
                w.shutdown().await.unwrap();
            });
        }
    });
    port
}

/// Sends `msg`, half-closes, returns everything read until the end of stream.
async fn call(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let go = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(msg).await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got).await;
        got
    };
    // A liveness bound: a call that never ends fails instead of hanging.
    tokio::time::timeout(Duration::from_secs(60), go)
        .await
        .expect("call ends in time")
}

#[test]
fn call_env_follows_the_convention() {
    let a: SocketAddr = "127.0.0.1:4001".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:4002".parse().unwrap();
    assert_eq!(call_env_name("fed-avg"), "BRUME_CALL_FED_AVG");
    assert_eq!(
        call_env("trainer", &[a, b]),
        vec![
            (
                "BRUME_CALL_TRAINER".into(),
                "127.0.0.1:4001,127.0.0.1:4002".into()
            ),
            ("BRUME_CALL_TRAINER_0".into(), "127.0.0.1:4001".into()),
            ("BRUME_CALL_TRAINER_1".into(), "127.0.0.1:4002".into()),
        ]
    );
}

#[test]
fn routes_are_shared_between_clones() {
    let routes = Routes::new();
    let other = routes.clone();
    let e = InstanceId::new("svc", "db", 0);
    assert_eq!(routes.set(e.clone(), Route::Local { port: 9 }), None);
    assert_eq!(other.local_port(&e), Some(9));
    let peer = PeerId::random();
    assert_eq!(
        other.set(e.clone(), Route::Remote { peer }),
        Some(Route::Local { port: 9 })
    );
    assert_eq!(routes.get(&e), Some(Route::Remote { peer }));
    assert_eq!(routes.local_port(&e), None);
    assert_eq!(routes.snapshot(), vec![(e.clone(), Route::Remote { peer })]);
    assert_eq!(routes.remove(&e), Some(Route::Remote { peer }));
    assert_eq!(other.get(&e), None);
}

#[tokio::test]
async fn remote_local_refused_and_unrouted_calls() {
    let mut peers = HashMap::new();
    let (b, routes_b) = fake_node(&mut peers);
    let (c, _routes_c) = fake_node(&mut peers);
    let overlay = FakeOverlay::new(peers);
    let e = InstanceId::new("svc", "echo", 0);
    let port = echo_task("hi\n").await;
    routes_b.set(e.clone(), Route::Local { port });

    let routes_a = Routes::new();
    let fwd = Forwarder::bind(e.clone(), routes_a.clone(), overlay.clone())
        .await
        .unwrap();
    assert_eq!(fwd.endpoint(), &e);
    let addr = fwd.local_addr();
    assert!(addr.ip().is_loopback());

    // No route yet: the connection is closed without a byte.
    assert_eq!(call(addr, b"x").await, b"");
    // Through the tunnel to b; the half-close reaches the task, whose close comes back.
    routes_a.set(e.clone(), Route::Remote { peer: b });
    assert_eq!(call(addr, b"ping").await, b"hi\nping");
    // c does not run the task: refused, closed.
    routes_a.set(e.clone(), Route::Remote { peer: c });
    assert_eq!(call(addr, b"ping").await, b"");
    let refused = open_tunnel(&overlay, c, &e).await.unwrap_err();
    assert!(
        matches!(&refused, TunnelError::Refused(r) if r.contains("does not run on this node")),
        "{refused}"
    );
    // An unknown peer: closed.
    routes_a.set(
        e.clone(),
        Route::Remote {
            peer: PeerId::random(),
        },
    );
    assert_eq!(call(addr, b"ping").await, b"");
    // Local: straight to the port.
    routes_a.set(e.clone(), Route::Local { port });
    assert_eq!(call(addr, b"local").await, b"hi\nlocal");

    fwd.close().await;
    let after = TcpStream::connect(addr).await;
    assert!(after.is_err(), "the forwarder still listens after close");
}

#[tokio::test]
async fn a_task_that_refuses_connections_is_reported() {
    let mut peers = HashMap::new();
    let (b, routes_b) = fake_node(&mut peers);
    let overlay = FakeOverlay::new(peers);
    // A port nobody listens on: bound without SO_REUSEADDR and never listened on, so every
    // connection is refused and nothing else can listen there while `closed` lives.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed
        .bind((std::net::Ipv4Addr::LOCALHOST, 0).into())
        .unwrap();
    let port = closed.local_addr().unwrap().port();
    let e = InstanceId::new("svc", "gone", 1);
    routes_b.set(e.clone(), Route::Local { port });
    let err = open_tunnel(&overlay, b, &e).await.unwrap_err();
    assert!(
        matches!(&err, TunnelError::Refused(r) if r.contains("is the task listening")),
        "{err}"
    );
}

#[tokio::test]
async fn streams_lost_before_the_reply_are_retried() {
    let mut peers = HashMap::new();
    let (b, routes_b) = fake_node(&mut peers);
    let overlay = FakeOverlay::new(peers);
    let e = InstanceId::new("svc", "echo", 0);
    let port = echo_task("hi\n").await;
    routes_b.set(e.clone(), Route::Local { port });
    let routes_a = Routes::new();
    routes_a.set(e.clone(), Route::Remote { peer: b });
    let fwd = Forwarder::bind(e.clone(), routes_a, overlay.clone())
        .await
        .unwrap();

    // Lost streams short of the limit: the call goes through, its bytes exactly once.
    overlay.drop_next.store(OPEN_ATTEMPTS - 1, Ordering::SeqCst);
    assert_eq!(call(fwd.local_addr(), b"once").await, b"hi\nonce");
    assert_eq!(overlay.drop_next.load(Ordering::SeqCst), 0);
    // As many lost streams as attempts: given up, with the cause.
    overlay.drop_next.store(OPEN_ATTEMPTS, Ordering::SeqCst);
    let err = open_tunnel(&overlay, b, &e).await.unwrap_err();
    assert!(matches!(err, TunnelError::Handshake(_)), "{err}");
    // A refusal is not retried.
    let missing = InstanceId::new("svc", "nope", 0);
    overlay.drop_next.store(0, Ordering::SeqCst);
    let err = open_tunnel(&overlay, b, &missing).await.unwrap_err();
    assert!(matches!(err, TunnelError::Refused(_)), "{err}");
}

#[tokio::test]
async fn a_call_follows_a_moved_task_and_waits_out_a_hold() {
    let mut peers = HashMap::new();
    let (old_host, old_routes) = fake_node(&mut peers);
    let (new_host, new_routes) = fake_node(&mut peers);
    let ep = InstanceId::new("svc", "mid", 0);
    let port = echo_task("new:").await;
    new_routes.set(ep.clone(), Route::Local { port });
    // The old host knows the task moved; the caller's node still routes to the old host.
    old_routes.set(ep.clone(), Route::Remote { peer: new_host });
    let caller_routes = Routes::new();
    caller_routes.set(ep.clone(), Route::Remote { peer: old_host });
    let fwd = Forwarder::bind(ep.clone(), caller_routes.clone(), FakeOverlay::new(peers))
        .await
        .unwrap();
    assert_eq!(call(fwd.local_addr(), b"hi").await, b"new:hi");
    assert_eq!(
        caller_routes.get(&ep),
        Some(Route::Remote { peer: new_host }),
        "the caller's node learned the new host from the redirect"
    );

    // While the new host holds the task (as a move does), a call waits, then goes through.
    let hold = new_routes.hold(&ep);
    let pending = tokio::spawn(call(fwd.local_addr(), b"later"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !pending.is_finished(),
        "a call went through a held endpoint"
    );
    drop(hold);
    assert_eq!(pending.await.unwrap(), b"new:later");
}
