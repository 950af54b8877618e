//! Tunnels over real overlay nodes on loopback (TCP + noise + yamux, every port chosen by the
//! kernel). Each node runs `serve` on `/brume/tunnel/2` with its own routes table; "tasks" are
//! small TCP servers on loopback that greet with a line naming their node, then echo.
//!
//! * lines echo through a forwarder on A to a task on B; eight concurrent connections each move
//!   3 MiB both ways, checked by BLAKE3; half-closes pass through; a burst of 32 calls all get
//!   through (streams the far node drops under the burst are retried); closing the forwarder ends
//!   its connections and its listener;
//! * after the callee "moves" (A's route now names C, where another instance runs), new
//!   connections greet from C while the connection opened before the move still talks to B;
//! * a route to a node that does not run the task: the caller's connection is closed (no bytes),
//!   while a call in flight and later calls are served; garbage hellos on raw tunnel streams are
//!   refused and the node keeps serving;
//! * a burst of 64 tunnels opened at once all open, although the far node's acceptor drops some
//!   bare streams of such a burst (those are retried);
//! * a local route connects straight to the port, even with the overlay stopped;
//! * a call to a host the node never met fails until the overlay is told the host's addresses,
//!   then gets through (what a call target's addresses and a move notice do in the daemon);
//! * a redirect to a host the caller never met carries the host's addresses when the
//!   redirecting node knows them, and the call gets through (without them it cannot).
//!
//! The ignored test runs the tunnel benchmark: `cargo test --release -p brume --test
//! tunnel_overlay -- --ignored --nocapture`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use brume_overlay::frames::{read_frame, write_frame};
use brume_overlay::{Multiaddr, Overlay, OverlayConfig, OverlayError, OverlayHandle, Timings};
use brume_tunnel::{
    serve, Forwarder, Hello, InstanceId, Reply, Route, Routes, HELLO_LIMIT, TUNNEL_PROTOCOL,
};
use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const TEST_TIME: Duration = Duration::from_secs(120);

/// How long something a test waits for (peers connected, a call closed, a stream answered) may
/// take before the test calls it stuck: a liveness bound, never a speed claim.
const LIVENESS: Duration = Duration::from_secs(60);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// One overlay node serving tunnels for the tasks its `routes` call local.
struct Node {
    overlay: OverlayHandle,
    task: JoinHandle<Result<(), OverlayError>>,
    routes: Routes,
    server: JoinHandle<()>,
}

impl Node {
    async fn start(bootstrap: Vec<Multiaddr>) -> Node {
        let config = OverlayConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap,
            min_degree: 2,
            max_degree: 6,
            timings: Timings {
                ping_interval: Duration::from_millis(500),
                ..Timings::default()
            },
            ..OverlayConfig::default()
        };
        let (overlay, task) = Overlay::spawn(config).await.unwrap();
        let routes = Routes::new();
        let incoming = overlay.accept_streams(TUNNEL_PROTOCOL).unwrap();
        let server = tokio::spawn(serve(incoming, routes.clone()));
        Node {
            overlay,
            task,
            routes,
            server,
        }
    }

    async fn addrs(&self) -> Vec<Multiaddr> {
        self.overlay.listen_addrs().await.unwrap()
    }

    /// Routes this node's calls to `endpoint` to `host` and opens a forwarder for them.
    async fn forward_to(&self, host: &Node, endpoint: &InstanceId) -> Forwarder {
        self.forward_to_at(host, endpoint, 0).await
    }

    /// [`Node::forward_to`], the forwarder listening on `port` (0: any).
    async fn forward_to_at(&self, host: &Node, endpoint: &InstanceId, port: u16) -> Forwarder {
        self.routes.set(
            endpoint.clone(),
            Route::Remote {
                peer: host.overlay.peer_id(),
            },
        );
        Forwarder::bind_at(
            endpoint.clone(),
            self.routes.clone(),
            self.overlay.clone(),
            port,
        )
        .await
        .unwrap()
    }

    fn is_address_of_mine(&self, addr: &Multiaddr) -> bool {
        addr.to_string()
            .ends_with(&format!("/p2p/{}", self.overlay.peer_id()))
    }

    /// Waits until this node has `others` as connected peers.
    async fn wait_connected(&self, others: &[&Node]) {
        let start = Instant::now();
        loop {
            let peers = self.overlay.peers().await.unwrap();
            if others
                .iter()
                .all(|o| peers.iter().any(|p| p.peer_id == o.overlay.peer_id()))
            {
                return;
            }
            assert!(
                start.elapsed() < LIVENESS,
                "nodes not connected after {LIVENESS:?}; this node's peers: {peers:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) {
        self.server.abort();
        let _ = self.overlay.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// A task: greets with `greeting`, then echoes until the caller half-closes, then closes.
/// Aborted on drop.
struct EchoTask {
    port: u16,
    accept: JoinHandle<()>,
}

impl EchoTask {
    async fn start(greeting: &'static str) -> EchoTask {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accept = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                conns.spawn(async move {
                    s.write_all(greeting.as_bytes()).await?;
                    let (mut r, mut w) = s.split();
                    tokio::io::copy(&mut r, &mut w).await?;
                    w.shutdown().await?;
                    Ok::<_, std::io::Error>(())
                });
            }
        });
        EchoTask { port, accept }
    }
}

impl Drop for EchoTask {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Connects and reads the task's greeting line.
async fn connect(
    addr: SocketAddr,
) -> (
    BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
    String,
) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (r, w) = s.into_split();
    let mut r = BufReader::new(r);
    let mut greeting = String::new();
    r.read_line(&mut greeting).await.unwrap();
    (r, w, greeting)
}

/// Sends `line` and reads it back.
async fn echo_line(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    line: &str,
) -> String {
    w.write_all(format!("{line}\n").as_bytes()).await.unwrap();
    let mut got = String::new();
    r.read_line(&mut got).await.unwrap();
    got
}

/// Deterministic pseudo-random bytes.
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Sends `len` bytes while reading the echo; returns (hash sent, hash received, bytes received).
async fn transfer(addr: SocketAddr, seed: u64, len: usize) -> (blake3::Hash, blake3::Hash, usize) {
    let (mut r, mut w, greeting) = connect(addr).await;
    assert!(greeting.starts_with("hello from"), "{greeting:?}");
    let data = payload(seed, len);
    let sent = blake3::hash(&data);
    let writer = tokio::spawn(async move {
        for chunk in data.chunks(100_000) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::with_capacity(len);
    r.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    (sent, blake3::hash(&got), got.len())
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_TIME, f)
        .await
        .expect("the test finishes in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_and_eight_concurrent_transfers_cross_the_tunnel() {
    init_tracing();
    within(async {
        let a = Node::start(Vec::new()).await;
        let b = Node::start(a.addrs().await).await;
        a.wait_connected(&[&b]).await;
        let task = EchoTask::start("hello from b\n").await;
        let e = InstanceId::new("svc", "echo", 0);
        b.routes.set(e.clone(), Route::Local { port: task.port });
        // The forwarder listens on a port held by a socket bound with SO_REUSEADDR and never
        // listened on: once the forwarder closes, a connection there is refused, and no other
        // socket can take the port (bind(0) and outgoing connections skip a bound port), so a
        // refusal at the end says the forwarder's listener is gone.
        let hold = tokio::net::TcpSocket::new_v4().unwrap();
        hold.set_reuseaddr(true).unwrap();
        hold.bind(([127, 0, 0, 1], 0).into()).unwrap();
        let fwd = a
            .forward_to_at(&b, &e, hold.local_addr().unwrap().port())
            .await;
        let addr = fwd.local_addr();

        let (mut r, mut w, greeting) = connect(addr).await;
        assert_eq!(greeting, "hello from b\n");
        for i in 0..20 {
            let line = format!("line {i} through the tunnel");
            assert_eq!(echo_line(&mut r, &mut w, &line).await, format!("{line}\n"));
        }

        const LEN: usize = 3 << 20;
        let t = Instant::now();
        let calls: Vec<_> = (0..8u64)
            .map(|seed| tokio::spawn(transfer(addr, seed, LEN)))
            .collect();
        for call in calls {
            let (sent, got, n) = call.await.unwrap();
            assert_eq!(n, LEN);
            assert_eq!(sent, got, "bytes changed in the tunnel");
        }
        eprintln!(
            "8 x 3 MiB echoed through the tunnel in {:?} (debug build)",
            t.elapsed()
        );

        // A burst of 32 calls at once: the far node's acceptor drops streams that arrive faster
        // than it takes them, and the forwarder retries those; every call gets through.
        let burst: Vec<_> = (0..32)
            .map(|i| {
                tokio::spawn(async move {
                    let (mut r, mut w, greeting) = connect(addr).await;
                    let line = format!("burst {i}");
                    (greeting, echo_line(&mut r, &mut w, &line).await, line)
                })
            })
            .collect();
        for call in burst {
            let (greeting, got, line) = call.await.unwrap();
            assert_eq!(greeting, "hello from b\n");
            assert_eq!(got, format!("{line}\n"));
        }

        // The line connection is still up; closing the forwarder ends it and the listener.
        assert_eq!(echo_line(&mut r, &mut w, "still").await, "still\n");
        fwd.close().await;
        let mut rest = Vec::new();
        let end = tokio::time::timeout(LIVENESS, r.read_to_end(&mut rest)).await;
        assert!(end.is_ok(), "a call outlived its forwarder");
        assert!(rest.is_empty());
        assert!(TcpStream::connect(addr).await.is_err());
        a.stop().await;
        b.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_move_new_connections_reach_the_new_host() {
    init_tracing();
    within(async {
        let a = Node::start(Vec::new()).await;
        let b = Node::start(a.addrs().await).await;
        let c = Node::start(a.addrs().await).await;
        a.wait_connected(&[&b, &c]).await;
        let on_b = EchoTask::start("hello from b\n").await;
        let on_c = EchoTask::start("hello from c\n").await;
        let e = InstanceId::new("svc", "echo", 0);
        b.routes.set(e.clone(), Route::Local { port: on_b.port });
        let fwd = a.forward_to(&b, &e).await;
        let (mut old_r, mut old_w, greeting) = connect(fwd.local_addr()).await;
        assert_eq!(greeting, "hello from b\n");

        // The task moves to c: c runs it, b forgets it, a's route follows.
        c.routes.set(e.clone(), Route::Local { port: on_c.port });
        b.routes.remove(&e);
        a.routes.set(e.clone(), Route::Remote { peer: c.overlay.peer_id() });
        for i in 0..3 {
            let (mut r, mut w, greeting) = connect(fwd.local_addr()).await;
            assert_eq!(greeting, "hello from c\n");
            assert_eq!(echo_line(&mut r, &mut w, &format!("{i}")).await, format!("{i}\n"));
        }
        // The connection from before the move keeps its far end (the old instance still runs).
        assert_eq!(echo_line(&mut old_r, &mut old_w, "old").await, "old\n");
        // And b now refuses new tunnels for it.
        let mut raw = a.overlay.open_stream(b.overlay.peer_id(), TUNNEL_PROTOCOL).await.unwrap();
        write_frame(&mut raw, &Hello { endpoint: e.clone() })
            .await
            .unwrap();
        let reply: Reply = read_frame(&mut raw, HELLO_LIMIT).await.unwrap();
        assert!(
            matches!(&reply, Reply::Refused { reason } if reason.contains("does not run on this node")),
            "{reply:?}"
        );
        drop(fwd);
        for n in [a, b, c] {
            n.stop().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_reaches_a_host_this_node_never_met_once_told_its_addresses() {
    init_tracing();
    within(async {
        // Two nodes that never met: no bootstrap either way.
        let a = Node::start(Vec::new()).await;
        let c = Node::start(Vec::new()).await;
        let on_c = EchoTask::start("hello from c\n").await;
        let e = InstanceId::new("svc", "echo", 0);
        c.routes.set(e.clone(), Route::Local { port: on_c.port });
        let fwd = a.forward_to(&c, &e).await;

        // Not told where c is: the call is closed without a greeting (libp2p has no address).
        assert!(closes_without_greeting(fwd.local_addr()).await);
        assert!(a
            .overlay
            .known_addresses(c.overlay.peer_id())
            .await
            .unwrap()
            .is_empty());

        // Told (as a call target's addresses or a Moved notice tell a daemon): calls get through.
        a.overlay
            .add_addresses(c.overlay.peer_id(), c.addrs().await)
            .await
            .unwrap();
        let known = a
            .overlay
            .known_addresses(c.overlay.peer_id())
            .await
            .unwrap();
        assert!(
            !known.is_empty() && known.iter().all(|k| c.is_address_of_mine(k)),
            "{known:?}"
        );
        for i in 0..3 {
            let (mut r, mut w, greeting) = connect(fwd.local_addr()).await;
            assert_eq!(greeting, "hello from c\n");
            assert_eq!(
                echo_line(&mut r, &mut w, &format!("{i}")).await,
                format!("{i}\n")
            );
        }
        drop(fwd);
        for n in [a, c] {
            n.stop().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_a_host_the_caller_never_met_carries_its_addresses() {
    init_tracing();
    within(async {
        // a calls through b; the task moved from b to c, which a never met (c is alone).
        let a = Node::start(Vec::new()).await;
        let b = Node::start(a.addrs().await).await;
        let c = Node::start(Vec::new()).await;
        a.wait_connected(&[&b]).await;
        let on_c = EchoTask::start("hello from c\n").await;
        let e = InstanceId::new("svc", "echo", 0);
        c.routes.set(e.clone(), Route::Local { port: on_c.port });
        b.routes.set(
            e.clone(),
            Route::Remote {
                peer: c.overlay.peer_id(),
            },
        );
        let fwd = a.forward_to(&b, &e).await;

        // b does not know where c is: its redirect names c alone and a cannot reach it.
        assert!(closes_without_greeting(fwd.local_addr()).await);

        // b knows (a move's source knows its target): the redirect carries c's addresses.
        let c_addrs = c.addrs().await;
        b.routes
            .set_host_addrs(c.overlay.peer_id(), c_addrs.clone());
        a.routes.set(
            e.clone(),
            Route::Remote {
                peer: b.overlay.peer_id(),
            },
        );
        for i in 0..3 {
            let (mut r, mut w, greeting) = connect(fwd.local_addr()).await;
            assert_eq!(greeting, "hello from c\n");
            assert_eq!(
                echo_line(&mut r, &mut w, &format!("{i}")).await,
                format!("{i}\n")
            );
        }
        assert_eq!(
            a.routes.get(&e),
            Some(Route::Remote {
                peer: c.overlay.peer_id()
            })
        );
        assert_eq!(a.routes.host_addrs(&c.overlay.peer_id()), c_addrs);
        drop(fwd);
        for n in [a, b, c] {
            n.stop().await;
        }
    })
    .await;
}

/// Connects through a forwarder and says whether the call was closed without a byte (the
/// forwarder could not reach the task), within [`LIVENESS`].
async fn closes_without_greeting(addr: SocketAddr) -> bool {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(LIVENESS, s.read_to_end(&mut got))
        .await
        .expect("the forwarder neither served nor closed the call");
    read.is_err() || got.is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_garbage_leave_both_ends_serving() {
    init_tracing();
    within(async {
        let a = Node::start(Vec::new()).await;
        let b = Node::start(a.addrs().await).await;
        a.wait_connected(&[&b]).await;
        let task = EchoTask::start("hello from b\n").await;
        let good = InstanceId::new("svc", "echo", 0);
        let missing = InstanceId::new("svc", "echo", 1);
        b.routes.set(good.clone(), Route::Local { port: task.port });
        let to_b = Route::Remote {
            peer: b.overlay.peer_id(),
        };
        a.routes.set(good.clone(), to_b);
        a.routes.set(missing.clone(), to_b);
        let fwd_good = Forwarder::bind(good.clone(), a.routes.clone(), a.overlay.clone())
            .await
            .unwrap();
        let fwd_missing = Forwarder::bind(missing.clone(), a.routes.clone(), a.overlay.clone())
            .await
            .unwrap();

        // A call in flight before the refusals.
        let (mut r, mut w, _) = connect(fwd_good.local_addr()).await;
        for _ in 0..3 {
            let t = Instant::now();
            let mut s = TcpStream::connect(fwd_missing.local_addr()).await.unwrap();
            let mut got = Vec::new();
            let n = tokio::time::timeout(LIVENESS, s.read_to_end(&mut got))
                .await
                .expect("a refused call is closed");
            assert!(
                n.is_err() || got.is_empty(),
                "refused call got bytes: {got:?}"
            );
            eprintln!("refused call closed after {:?}", t.elapsed());
        }

        // Garbage on raw tunnel streams: a frame that is not CBOR, an oversized length, an
        // unrelated CBOR value, a stream closed before its hello.
        let mut oversized = u32::MAX.to_be_bytes().to_vec();
        oversized.extend_from_slice(&[7; 64]);
        let not_cbor = [&[0, 0, 0, 5][..], &[0xff, 0xfe, 0xfd, 0xfc, 0xfb]].concat();
        let unrelated = [&[0, 0, 0, 1][..], &[0x07]].concat();
        for garbage in [not_cbor, oversized, unrelated, Vec::new()] {
            let mut raw = a
                .overlay
                .open_stream(b.overlay.peer_id(), TUNNEL_PROTOCOL)
                .await
                .unwrap();
            raw.write_all(&garbage).await.unwrap();
            raw.close().await.unwrap();
            let mut answer = Vec::new();
            tokio::time::timeout(LIVENESS, raw.read_to_end(&mut answer))
                .await
                .expect("b closes a garbage stream")
                .unwrap();
            if !answer.is_empty() {
                let reply: Reply = read_frame(&mut answer.as_slice(), HELLO_LIMIT)
                    .await
                    .unwrap();
                assert!(matches!(reply, Reply::Refused { .. }), "{reply:?}");
            }
        }

        // Both ends still serve: the old call, and new ones.
        assert_eq!(echo_line(&mut r, &mut w, "alive").await, "alive\n");
        let (mut r2, mut w2, greeting) = connect(fwd_good.local_addr()).await;
        assert_eq!(greeting, "hello from b\n");
        assert_eq!(echo_line(&mut r2, &mut w2, "new").await, "new\n");
        drop((fwd_good, fwd_missing));
        a.stop().await;
        b.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_tunnels_all_open_though_raw_streams_get_dropped() {
    init_tracing();
    within(async {
        let a = Node::start(Vec::new()).await;
        let b = Node::start(a.addrs().await).await;
        a.wait_connected(&[&b]).await;
        let task = EchoTask::start("hello from b\n").await;
        let e = InstanceId::new("svc", "echo", 0);
        b.routes.set(e.clone(), Route::Local { port: task.port });
        let peer = b.overlay.peer_id();
        const BURST: usize = 64;
        // Bare streams, no retry: b's acceptor may drop some of a burst (libp2p-stream hands
        // inbound streams over through a one-slot channel). Informational: it depends on timing.
        let raw = futures::future::join_all((0..BURST).map(|_| {
            let (overlay, e) = (a.overlay.clone(), e.clone());
            async move {
                let mut s = overlay.open_stream(peer, TUNNEL_PROTOCOL).await.ok()?;
                write_frame(&mut s, &Hello { endpoint: e }).await.ok()?;
                read_frame::<_, Reply>(&mut s, HELLO_LIMIT).await.ok()
            }
        }))
        .await;
        let raw_lost = raw.iter().filter(|r| r.is_none()).count();
        // The same burst through open_tunnel, which retries streams lost before the reply.
        let tunnels = futures::future::join_all(
            (0..BURST).map(|_| brume_tunnel::open_tunnel(&a.overlay, peer, &e)),
        )
        .await;
        let failed: Vec<String> = tunnels
            .iter()
            .filter_map(|t| t.as_ref().err().map(|e| e.to_string()))
            .collect();
        eprintln!("burst of {BURST}: {raw_lost} bare streams lost; tunnels failed: {failed:?}");
        assert!(failed.is_empty(), "tunnels failed: {failed:?}");
        drop(tunnels);
        a.stop().await;
        b.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_route_connects_directly_without_the_overlay() {
    init_tracing();
    within(async {
        let a = Node::start(Vec::new()).await;
        let task = EchoTask::start("hello from a\n").await;
        let e = InstanceId::new("svc", "echo", 0);
        a.routes.set(e.clone(), Route::Local { port: task.port });
        let fwd = Forwarder::bind(e, a.routes.clone(), a.overlay.clone())
            .await
            .unwrap();
        // With the overlay stopped, only a direct connection can answer.
        let addr = fwd.local_addr();
        a.stop().await;
        let (mut r, mut w, greeting) = connect(addr).await;
        assert_eq!(greeting, "hello from a\n");
        assert_eq!(echo_line(&mut r, &mut w, "direct").await, "direct\n");
    })
    .await;
}
