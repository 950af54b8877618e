//! Real libp2p nodes on loopback (TCP + noise + yamux), every port chosen by the kernel.
//!
//! * eight nodes join, each through a different earlier node; each is in some other node's peer
//!   table within 1 s of starting, the overlay graph ends connected and a map from every node
//!   holds all eight;
//! * a peer sending malformed and oversized frames on `/brume/map/2` is scored down and dropped,
//!   nothing panics;
//! * a map with a node killed while it runs ends within its budget plus grace;
//! * a bulk stream moves bytes;
//! * a node that loses every peer rejoins through an address it remembers (not its bootstrap)
//!   when that peer comes back.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use brume_overlay::ids::NodeId;
use brume_overlay::{Overlay, OverlayConfig, OverlayError, OverlayHandle, Timings};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use tokio::task::JoinHandle;

type Task = JoinHandle<Result<(), OverlayError>>;

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

fn config(bootstrap: Vec<Multiaddr>) -> OverlayConfig {
    OverlayConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap,
        min_degree: 3,
        max_degree: 6,
        timings: Timings {
            ping_interval: Duration::from_millis(200),
            state_interval: Duration::from_millis(300),
            shuffle_interval: Duration::from_millis(500),
            maintain_interval: Duration::from_millis(100),
            request_timeout: Duration::from_secs(2),
            ..Timings::default()
        },
        ..OverlayConfig::default()
    }
}

/// Starts `n` nodes, node `i > 0` joining through node `i - 1` (a chain: every join goes through
/// a different member). Returns the handles, tasks and, per node, how long after its start it
/// first appeared in another node's peer table.
async fn start_chain(n: usize) -> (Vec<OverlayHandle>, Vec<Task>, Vec<Duration>) {
    let mut handles: Vec<OverlayHandle> = Vec::new();
    let mut tasks = Vec::new();
    let mut seen_after = Vec::new();
    for i in 0..n {
        let boot = match handles.last() {
            Some(h) => h.listen_addrs().await.unwrap(),
            None => Vec::new(),
        };
        let started = Instant::now();
        let (h, t) = Overlay::spawn(config(boot)).await.unwrap();
        let addrs = h.listen_addrs().await.unwrap();
        assert!(!addrs.is_empty());
        assert!(addrs
            .iter()
            .all(|a| !a.to_string().contains("/tcp/0/") && a.to_string().contains("/p2p/")));
        if i > 0 {
            let me = h.peer_id();
            loop {
                let mut found = false;
                for other in &handles {
                    if other.peers().await.unwrap().iter().any(|p| p.peer_id == me) {
                        found = true;
                        break;
                    }
                }
                if found {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "node {i} is in no other node's peer table 1 s after starting"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            seen_after.push(started.elapsed());
        }
        handles.push(h);
        tasks.push(t);
    }
    (handles, tasks, seen_after)
}

/// The overlay graph from every node's peer table: connected, and every peer has an RTT.
async fn wait_settled(
    handles: &[OverlayHandle],
    deadline: Duration,
) -> HashMap<PeerId, Vec<PeerId>> {
    let start = Instant::now();
    loop {
        let mut graph = HashMap::new();
        let mut all_rtt = true;
        for h in handles {
            let peers = h.peers().await.unwrap();
            all_rtt &= !peers.is_empty()
                && peers
                    .iter()
                    .all(|p| p.srtt_ms.is_some() && p.coord.is_some());
            graph.insert(
                h.peer_id(),
                peers.iter().map(|p| p.peer_id).collect::<Vec<_>>(),
            );
        }
        // Breadth-first from the first node.
        let mut seen = HashSet::from([handles[0].peer_id()]);
        let mut todo = vec![handles[0].peer_id()];
        while let Some(p) = todo.pop() {
            for q in graph.get(&p).into_iter().flatten() {
                if seen.insert(*q) {
                    todo.push(*q);
                }
            }
        }
        if all_rtt && seen.len() == handles.len() {
            return graph;
        }
        assert!(
            start.elapsed() < deadline,
            "overlay not connected with RTTs after {deadline:?}: reached {} of {}",
            seen.len(),
            handles.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stop(handles: Vec<OverlayHandle>, tasks: Vec<Task>) {
    for h in &handles {
        let _ = h.shutdown().await;
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_nodes_join_through_one_another_and_map_each_other() {
    init_tracing();
    let t0 = Instant::now();
    let (handles, tasks, seen_after) = start_chain(8).await;
    let all: BTreeSet<NodeId> = handles.iter().map(|h| h.node_id()).collect();
    assert_eq!(all.len(), 8);
    let max_seen = seen_after.iter().max().copied().unwrap_or_default();
    let graph = wait_settled(&handles, Duration::from_secs(10)).await;
    let settled = t0.elapsed();
    let degrees: Vec<usize> = handles.iter().map(|h| graph[&h.peer_id()].len()).collect();
    // The overlay is connected with RTTs, but its links still change (a node above its maximum
    // degree trims, one below its target dials, and a fresh link has no RTT yet, so a map does
    // not cross it): a map may miss a node while that happens. Every node's map must hold all
    // eight within a few seconds; how many tries it took is printed.
    let mut map_times = Vec::new();
    let mut tries = Vec::new();
    for h in &handles {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut n = 0;
        let out = loop {
            n += 1;
            let out = h.map_with(Duration::from_millis(1000), true).await.unwrap();
            let ids: BTreeSet<NodeId> = out.map.ids().into_iter().collect();
            if ids == all && out.complete {
                break out;
            }
            assert!(
                Instant::now() < deadline,
                "map from {} still misses nodes after {n} tries: {ids:?} (complete: {})",
                h.node_id(),
                out.complete
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(!out.map.links.is_empty());
        map_times.push(out.elapsed);
        tries.push(n);
    }
    // A node may sit above its maximum degree between an inbound connection and its next trim
    // (every 100 ms here); it must come back within the bounds.
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let status = handles[3].status().await.unwrap();
        if (1..=6).contains(&status.degree) {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "node 3's degree {} stays outside 1..=6",
            status.degree
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.coordinate.is_finite());
    let srtts: Vec<String> = handles[0]
        .peers()
        .await
        .unwrap()
        .iter()
        .map(|p| format!("{:.2}", p.srtt_ms.unwrap_or(f64::NAN)))
        .collect();
    eprintln!("node 0's peers' ping SRTT (ms): {srtts:?}");
    eprintln!(
        "8 nodes: each seen by another node after {:?} (max {max_seen:?}); overlay connected with \
         RTTs {settled:?} after the first start; degrees {degrees:?}; map times {map_times:?}; \
         tries per map {tries:?}",
        seen_after
    );
    stop(handles, tasks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_map_protocol_scores_the_sender_down_until_it_is_dropped() {
    init_tracing();
    let (victim, task) = Overlay::spawn(config(Vec::new())).await.unwrap();
    let victim_addr = victim.listen_addrs().await.unwrap()[0].clone();

    // A bare libp2p peer that speaks no brume protocol but writes bad frames on /brume/map/2.
    let mut evil = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let evil_id = *evil.local_peer_id();
    let mut control = evil.behaviour().new_control();
    evil.dial(victim_addr).unwrap();
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let evil_task = tokio::spawn(async move {
        loop {
            if let libp2p::swarm::SwarmEvent::ConnectionClosed { .. } =
                evil.select_next_some().await
            {
                let _ = closed_tx.send(());
            }
        }
    });
    let victim_id = victim.peer_id();
    let proto = StreamProtocol::new("/brume/map/2");
    let score_of = |peers: Vec<brume_overlay::PeerInfo>| {
        peers
            .into_iter()
            .find(|p| p.peer_id == evil_id)
            .map(|p| p.score)
    };

    let mut s = tokio::time::timeout(
        Duration::from_secs(5),
        control.open_stream(victim_id, proto.clone()),
    )
    .await
    .expect("stream opens in time")
    .expect("the victim accepts /brume/map/2");
    // Two malformed frames (-20 each), then a length header far over the limit (-30): the
    // score goes 100 -> 80 -> 60 -> 30, below the ban threshold of 50.
    let mut scores = Vec::new();
    for (round, expected) in [(0u32, 80.0), (1, 60.0), (2, 30.0)] {
        if round < 2 {
            let garbage: Vec<u8> = (0..200u32).map(|i| (i * 37 + round) as u8 | 0x80).collect();
            s.write_all(&200u32.to_be_bytes()).await.unwrap();
            s.write_all(&garbage).await.unwrap();
        } else {
            s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
            s.write_all(&[0u8; 64]).await.unwrap();
        }
        s.flush().await.unwrap();
        // Wait until the victim has judged this frame.
        let start = Instant::now();
        loop {
            let score = score_of(victim.peers().await.unwrap());
            if score.is_none_or(|s| s <= expected) {
                scores.push(score);
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "bad frame {round} not scored (score {score:?})"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // The victim drops the connection to the banned sender.
    tokio::time::timeout(Duration::from_secs(5), closed_rx.recv())
        .await
        .expect("the victim closes the connection to the garbage sender");
    assert_eq!(score_of(victim.peers().await.unwrap()), None);
    assert_eq!(scores[0], Some(80.0));
    assert_eq!(scores[1], Some(60.0));
    // The victim is alive and well.
    let status = victim.status().await.unwrap();
    assert_eq!(status.degree, 0);
    let map = victim.map(Duration::from_millis(50)).await.unwrap();
    assert_eq!(map.ids(), vec![victim.node_id()]);
    evil_task.abort();
    stop(vec![victim], vec![task]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_with_a_node_killed_midway_ends_within_budget_plus_grace() {
    init_tracing();
    // Six nodes: enough for a tree with a middle, and lighter on a shared two-core machine
    // while the eight-node test runs in parallel.
    let (handles, mut tasks, _) = start_chain(6).await;
    wait_settled(&handles, Duration::from_secs(10)).await;
    let budget = Duration::from_millis(400);
    // Grace is max(2 ms, 10 % of the budget); allow a little scheduling slack on a busy machine.
    let bound = budget + Duration::from_millis(40) + Duration::from_millis(250);
    let origin = handles[0].clone();
    // A node in the middle of the chain the nodes joined along.
    let victim = 3;
    let map = tokio::spawn(async move { origin.map_outcome(budget).await });
    // Kill a node while the map runs: its task (and swarm, and sockets) disappear at once.
    tasks[victim].abort();
    let started = Instant::now();
    let out = tokio::time::timeout(bound + Duration::from_secs(1), map)
        .await
        .expect("the map ends")
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.elapsed <= bound,
        "map took {:?}, bound {bound:?}",
        out.elapsed
    );
    assert!(out.map.contains(handles[0].node_id()));
    eprintln!(
        "map with node {victim} killed: {} nodes, complete={}, {:?} (waited {took:?})",
        out.map.nodes.len(),
        out.complete,
        out.elapsed
    );
    // A later map, with the dead node gone, still works and holds the seven survivors.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = handles[0]
        .map_outcome(Duration::from_millis(900))
        .await
        .unwrap();
    assert!(out.elapsed <= Duration::from_millis(900 + 90 + 250));
    assert!(!out.map.contains(handles[victim].node_id()));
    assert_eq!(out.map.nodes.len(), 5, "survivors: {:?}", out.map.ids());
    tasks.remove(victim);
    let mut alive = handles;
    alive.remove(victim);
    stop(alive, tasks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_stream_moves_bytes() {
    init_tracing();
    let (a, ta) = Overlay::spawn(config(Vec::new())).await.unwrap();
    let (b, tb) = Overlay::spawn(config(a.listen_addrs().await.unwrap()))
        .await
        .unwrap();
    let mut incoming = a.accept_bulk().unwrap();
    assert!(matches!(
        a.accept_bulk(),
        Err(OverlayError::AlreadyAccepting)
    ));
    let start = Instant::now();
    while !b
        .peers()
        .await
        .unwrap()
        .iter()
        .any(|p| p.peer_id == a.peer_id())
    {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let payload: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let expected = payload.clone();
    let receiver = tokio::spawn(async move {
        let (from, mut s) = incoming.next().await.expect("a stream arrives");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        s.write_all(b"ok").await.unwrap();
        s.close().await.unwrap();
        (from, got)
    });
    let mut s = b.open_bulk(a.peer_id()).await.unwrap();
    let t = Instant::now();
    s.write_all(&payload).await.unwrap();
    s.close().await.unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await.unwrap();
    let (from, got) = receiver.await.unwrap();
    eprintln!("bulk: 1 MiB in {:?}", t.elapsed());
    assert_eq!(from, b.peer_id());
    assert_eq!(got, expected);
    assert_eq!(reply, b"ok");
    stop(vec![a, b], vec![ta, tb]).await;
}

/// Waits until `cond` holds on `h`'s peer table, up to `limit`.
async fn wait_peers(
    h: &OverlayHandle,
    limit: Duration,
    what: &str,
    cond: impl Fn(&[brume_overlay::PeerInfo]) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let peers = h.peers().await.unwrap();
        if cond(&peers) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what} not within {limit:?}; peers {:?}",
            peers.iter().map(|p| p.peer_id).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_every_peer_rejoins_through_a_remembered_address() {
    init_tracing();
    let seed_b: [u8; 32] = rand::random();
    let (a, ta) = Overlay::spawn(config(Vec::new())).await.unwrap();
    let a_addrs = a.listen_addrs().await.unwrap();
    let mut cb = config(a_addrs.clone());
    cb.identity = brume_overlay::Identity::Seed(seed_b);
    let (b, tb) = Overlay::spawn(cb.clone()).await.unwrap();
    let b_addr = b.listen_addrs().await.unwrap()[0].clone();
    let b_id = b.peer_id();
    // C joins through A only, and learns B's address from A's join sample.
    let (c, tc) = Overlay::spawn(config(a_addrs)).await.unwrap();
    wait_peers(&c, Duration::from_secs(5), "C connected to A and B", |p| {
        p.iter().any(|p| p.peer_id == b_id) && p.iter().any(|p| p.peer_id == a.peer_id())
    })
    .await;

    // A and B go away: C is alone (A, its bootstrap, stays down for good).
    stop(vec![a, b], vec![ta, tb]).await;
    wait_peers(&c, Duration::from_secs(5), "C alone", |p| p.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // B comes back at the same address with the same identity, knowing nobody.
    let port = b_addr
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .expect("a tcp address");
    cb.bootstrap = Vec::new();
    cb.listen = vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()];
    let (b2, tb2) = Overlay::spawn(cb).await.unwrap();
    assert_eq!(b2.peer_id(), b_id);
    let took = wait_peers(&c, Duration::from_secs(15), "C back with B", |p| {
        p.iter().any(|p| p.peer_id == b_id)
    })
    .await;
    eprintln!("rejoin: C reconnected to the restarted B {took:?} after B came back");
    stop(vec![c, b2], vec![tc, tb2]).await;
}
