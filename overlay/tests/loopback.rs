//! Real libp2p nodes on loopback (TCP + noise + yamux), every port chosen by the kernel except
//! the one a restarting node must keep.
//!
//! * eight nodes join, each through a different earlier node; each shows up in some other node's
//!   peer table, the overlay graph ends connected and a map from every node holds exactly the
//!   eight;
//! * a peer sending malformed and oversized frames on `/brume/map/4` is scored down by exactly the
//!   penalties and dropped, nothing panics;
//! * a map with a node killed while it runs still ends, and later maps hold exactly the survivors;
//! * a raw stream moves bytes;
//! * a node that loses every peer rejoins through an address it remembers (not its bootstrap)
//!   when that peer comes back.
//!
//! These tests assert what the code must do, never how fast: every wait is a liveness bound of
//! [`PATIENCE`] (far beyond what a loaded two-core machine needs) that reports the last state it
//! saw. How long things took is printed (`-- --nocapture`). That a map ends by its budget plus
//! grace is the sans-IO core's promise, checked in simulated time in `tests/sim.rs`.
//!
//! Node identities (which also seed each node's membership choices) come from one seed, printed
//! at the start of every test; `BRUME_TEST_SEED=<n>` replays a run's.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use brume_overlay::addresses::peer_of;
use brume_overlay::ids::NodeId;
use brume_overlay::{Overlay, OverlayConfig, OverlayError, OverlayHandle, Timings};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use tokio::task::JoinHandle;

type Task = JoinHandle<Result<(), OverlayError>>;

/// How long any awaited condition may take before the test fails: a liveness bound.
const PATIENCE: Duration = Duration::from_secs(60);

/// A protocol only this test speaks: raw streams carry whatever protocol their caller names.
const RAW_TEST_PROTOCOL: StreamProtocol = StreamProtocol::new("/brume-test/raw/1");

/// The seed of every identity in these tests: `BRUME_TEST_SEED`, or a fixed default.
fn test_seed() -> u64 {
    std::env::var("BRUME_TEST_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0x6272_756d_6531)
}

/// Identities of one test's nodes: node `i` of test `test` always gets the same key for a seed,
/// and no two nodes of the suite share one. (Two runs of the suite at once would have the same
/// keys, and a node dialling a stale address could then reach the other run's twin; runs do not
/// overlap: scripts/test.sh holds a lock, one run per machine.)
struct Identities {
    test: &'static str,
    seed: u64,
}

impl Identities {
    /// Prints the seed (shown with the output of a failing test) and returns the test's keys.
    fn new(test: &'static str) -> Identities {
        let seed = test_seed();
        eprintln!("{test}: BRUME_TEST_SEED={seed}");
        Identities { test, seed }
    }

    /// The identity of node `i` (splitmix64 over the seed, the test's name and `i`).
    fn node(&self, i: u64) -> brume_overlay::Identity {
        let name = self.test.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let mut state = self.seed ^ name ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut key = [0u8; 32];
        for chunk in key.chunks_mut(8) {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        brume_overlay::Identity::Seed(key)
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A node on loopback (port 0: the node binds its own port and reports it) with fast periods.
/// Timeouts are not shortened: on a loaded machine a short one only turns a slow answer into a
/// retry.
fn config(identity: brume_overlay::Identity, bootstrap: Vec<Multiaddr>) -> OverlayConfig {
    OverlayConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap,
        min_degree: 3,
        max_degree: 6,
        identity,
        timings: Timings {
            ping_interval: Duration::from_millis(200),
            state_interval: Duration::from_millis(300),
            shuffle_interval: Duration::from_millis(500),
            maintain_interval: Duration::from_millis(100),
            listen_timeout: PATIENCE,
            ..Timings::default()
        },
        ..OverlayConfig::default()
    }
}

/// Polls `probe` every 20 ms until it returns `Ok` (the condition holds, with what it found),
/// at most [`PATIENCE`]; fails with `what` and the last state `probe` described in its `Err`.
async fn wait_until<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let state = match probe().await {
            Ok(found) => return found,
            Err(state) => state,
        };
        assert!(
            start.elapsed() < PATIENCE,
            "{what}: not within {PATIENCE:?}; last seen: {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn short(p: &PeerId) -> String {
    let s = p.to_string();
    s[s.len() - 6..].to_string()
}

/// Starts `n` nodes, node `i > 0` joining through node `i - 1` (a chain: every join goes through
/// a different member), each once the one before is in some other node's peer table. Returns the
/// handles, tasks and, per node, how long after its start it first appeared in another node's
/// peer table (printed, not asserted).
async fn start_chain(ids: &Identities, n: usize) -> (Vec<OverlayHandle>, Vec<Task>, Vec<Duration>) {
    start_chain_with(ids, n, config).await
}

/// [`start_chain`] with each node's configuration made by `make` from its identity and
/// bootstrap addresses.
async fn start_chain_with(
    ids: &Identities,
    n: usize,
    make: impl Fn(brume_overlay::Identity, Vec<Multiaddr>) -> OverlayConfig,
) -> (Vec<OverlayHandle>, Vec<Task>, Vec<Duration>) {
    let mut handles: Vec<OverlayHandle> = Vec::new();
    let mut tasks = Vec::new();
    let mut seen_after = Vec::new();
    for i in 0..n {
        let boot = match handles.last() {
            Some(h) => h.listen_addrs().await.unwrap(),
            None => Vec::new(),
        };
        let started = Instant::now();
        let (h, t) = Overlay::spawn(make(ids.node(i as u64), boot))
            .await
            .unwrap();
        let addrs = h.listen_addrs().await.unwrap();
        assert!(!addrs.is_empty());
        assert!(addrs
            .iter()
            .all(|a| !a.to_string().contains("/tcp/0/") && a.to_string().contains("/p2p/")));
        if i > 0 {
            let me = h.peer_id();
            let others = &handles;
            wait_until(
                &format!("node {i} in another node's peer table"),
                || async move {
                    let mut degrees = Vec::new();
                    for other in others {
                        let peers = other.peers().await.unwrap();
                        if peers.iter().any(|p| p.peer_id == me) {
                            return Ok(());
                        }
                        degrees.push(peers.len());
                    }
                    Err(format!("degrees of the earlier nodes {degrees:?}"))
                },
            )
            .await;
            seen_after.push(started.elapsed());
        }
        handles.push(h);
        tasks.push(t);
    }
    (handles, tasks, seen_after)
}

/// Waits until the overlay graph from every node's peer table is connected and every peer has an
/// RTT and a coordinate; returns the graph.
async fn wait_settled(handles: &[OverlayHandle]) -> HashMap<PeerId, Vec<PeerId>> {
    wait_until("overlay connected with RTTs", || async move {
        let mut graph = HashMap::new();
        let mut missing = Vec::new();
        for (i, h) in handles.iter().enumerate() {
            let peers = h.peers().await.unwrap();
            if peers.is_empty() {
                missing.push(format!("node {i} has no peer"));
            }
            for p in &peers {
                if p.srtt_ms.is_none() || p.coord.is_none() {
                    missing.push(format!("node {i}: {} without RTT/coord", short(&p.peer_id)));
                }
            }
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
        if missing.is_empty() && seen.len() == handles.len() {
            Ok(graph)
        } else {
            Err(format!(
                "reached {} of {} from node 0; {missing:?}",
                seen.len(),
                handles.len()
            ))
        }
    })
    .await
}

/// Maps from `h` (fresh, not from the cache) until the map holds exactly `want` and is complete;
/// returns that map's outcome and how many maps it took. A map may miss a node while links change
/// (a node above its maximum degree trims, one below its target dials, and a fresh link has no
/// RTT yet, so a map does not cross it); a node outside `want` in any map fails at once.
async fn map_until_exactly(
    h: &OverlayHandle,
    budget: Duration,
    want: &BTreeSet<NodeId>,
    never: &[NodeId],
) -> (brume_overlay::MapOutcome, usize) {
    let mut tries = 0;
    let out = wait_until(
        &format!("a complete map from {} holding {want:?}", h.node_id()),
        || {
            tries += 1;
            async move {
                let out = h.map_with(budget, true).await.unwrap();
                let ids: BTreeSet<NodeId> = out.map.ids().into_iter().collect();
                assert!(
                    never.iter().all(|n| !ids.contains(n)),
                    "map from {} holds a node that must not be there ({never:?}): {ids:?}",
                    h.node_id()
                );
                if ids == *want && out.complete {
                    Ok(out)
                } else {
                    Err(format!("{ids:?} (complete: {})", out.complete))
                }
            }
        },
    )
    .await;
    (out, tries)
}

async fn stop(handles: Vec<OverlayHandle>, tasks: Vec<Task>) {
    for h in &handles {
        let _ = h.shutdown().await;
    }
    for t in tasks {
        let _ = tokio::time::timeout(PATIENCE, t).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_nodes_join_through_one_another_and_map_each_other() {
    init_tracing();
    let ids = Identities::new("eight_nodes_join_through_one_another_and_map_each_other");
    let t0 = Instant::now();
    let (handles, tasks, seen_after) = start_chain(&ids, 8).await;
    let all: BTreeSet<NodeId> = handles.iter().map(|h| h.node_id()).collect();
    assert_eq!(all.len(), 8);
    let graph = wait_settled(&handles).await;
    let settled = t0.elapsed();
    let degrees: Vec<usize> = handles.iter().map(|h| graph[&h.peer_id()].len()).collect();
    let mut map_times = Vec::new();
    let mut tries = Vec::new();
    for h in &handles {
        let (out, n) = map_until_exactly(h, Duration::from_millis(1000), &all, &[]).await;
        assert!(!out.map.links.is_empty());
        // The status reports the size of the last map of each budget (what metrics show).
        let sizes = h.status().await.unwrap().maps;
        assert_eq!(
            sizes,
            vec![brume_overlay::MapSize {
                budget_ms: 1000.0,
                nodes: 8,
                complete: true
            }]
        );
        map_times.push(out.elapsed);
        tries.push(n);
    }
    // A node may sit above its maximum degree between an inbound connection and its next trim
    // (every 100 ms here); it must come back within the bounds.
    let node3 = &handles[3];
    wait_until("node 3's degree back within 1..=6", || async move {
        let status = node3.status().await.unwrap();
        assert!(status.coordinate.is_finite(), "{status:?}");
        if (1..=6).contains(&status.degree) {
            Ok(())
        } else {
            Err(format!("degree {}", status.degree))
        }
    })
    .await;
    // Each node publishes its links with its state: node 0 learns, from a peer, that peer's
    // links back to node 0 and on to another node of the test (its peers' peers), with a
    // coordinate and an address to dial it at.
    let node0 = &handles[0];
    let me = node0.peer_id();
    let ours: BTreeSet<PeerId> = handles.iter().map(|h| h.peer_id()).collect();
    let ours = &ours;
    wait_until(
        "a peer's published links back to node 0 and beyond",
        || async move {
            let peers = node0.peers().await.unwrap();
            let published: Vec<(String, Vec<String>)> = peers
                .iter()
                .map(|p| {
                    (
                        short(&p.peer_id),
                        p.links.iter().map(|l| short(&l.peer)).collect(),
                    )
                })
                .collect();
            let found = peers.iter().any(|p| {
                let back = p.links.iter().any(|l| l.peer == me);
                let beyond = p.links.iter().any(|l| {
                    l.peer != me
                        && ours.contains(&l.peer)
                        && l.coord.is_finite()
                        && l.addr.as_ref().and_then(peer_of) == Some(l.peer)
                });
                back && beyond
            });
            if found {
                Ok(())
            } else {
                Err(format!("links published by node 0's peers: {published:?}"))
            }
        },
    )
    .await;
    let srtts: Vec<String> = handles[0]
        .peers()
        .await
        .unwrap()
        .iter()
        .map(|p| format!("{:.2}", p.srtt_ms.unwrap_or(f64::NAN)))
        .collect();
    eprintln!("node 0's peers' ping SRTT (ms): {srtts:?}");
    eprintln!(
        "8 nodes: each seen by another node after {seen_after:?}; overlay connected with RTTs \
         {settled:?} after the first start; degrees {degrees:?}; map times {map_times:?}; tries \
         per map {tries:?}"
    );
    stop(handles, tasks).await;
}

/// Cone links in the daemon (issue 17): with `cones` set, a node chooses links among its peers
/// and their peers (from the links its peers publish with their states), dials them and keeps
/// them beyond `max_degree`: node 0, allowed one ordinary link, holds all its cone links at
/// once, and still does three maintenance rounds (100 ms each) later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cone_links_are_dialled_and_kept_beyond_the_degree_bound() {
    init_tracing();
    let ids = Identities::new("cone_links_are_dialled_and_kept_beyond_the_degree_bound");
    let with_cones = |identity, bootstrap| {
        let mut c = config(identity, bootstrap);
        c.min_degree = 1;
        c.max_degree = 1;
        c.cones = 4;
        c.timings.cone_interval = Duration::from_secs(2);
        c
    };
    let (handles, tasks, _) = start_chain_with(&ids, 5, with_cones).await;
    let node0 = &handles[0];
    // When node 0's cone links were first all held together, and which they were.
    let held: std::sync::Mutex<Option<(Instant, Vec<PeerId>)>> = std::sync::Mutex::new(None);
    let held = &held;
    wait_until("node 0 keeping two or more cone links", || async move {
        let status = node0.status().await.unwrap();
        let peers: BTreeSet<PeerId> = node0
            .peers()
            .await
            .unwrap()
            .iter()
            .map(|p| p.peer_id)
            .collect();
        let mut cones = status.cone_links.clone();
        cones.sort();
        let holds = cones.len() >= 2 && cones.iter().all(|c| peers.contains(c));
        let mut since = held.lock().unwrap();
        match (&*since, holds) {
            (Some((t, was)), true) if *was == cones => {
                if t.elapsed() >= Duration::from_millis(300) {
                    return Ok(status.degree);
                }
            }
            (_, true) => *since = Some((Instant::now(), cones.clone())),
            (_, false) => *since = None,
        }
        Err(format!(
            "cone links {:?}, peers {:?}, degree {}",
            cones.iter().map(short).collect::<Vec<_>>(),
            peers.iter().map(short).collect::<Vec<_>>(),
            status.degree
        ))
    })
    .await;
    stop(handles, tasks).await;
}

/// Probes that must dial (issue 17): node 0, allowed two links, maps six nodes by direct RTT;
/// it confirms each node it is not connected to by dialling it, and the kernel's RTT of the new
/// connection's TCP handshake answers the probe (counted in `Status::probes`), not the first
/// ping on the connection, which on a busy host measures the connection's set-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_that_dials_is_answered_by_the_tcp_handshake() {
    init_tracing();
    let ids = Identities::new("a_probe_that_dials_is_answered_by_the_tcp_handshake");
    let two_links = |identity, bootstrap| {
        let mut c = config(identity, bootstrap);
        c.min_degree = 1;
        c.max_degree = 2;
        c
    };
    let (handles, tasks, _) = start_chain_with(&ids, 6, two_links).await;
    wait_settled(&handles).await;
    let all: BTreeSet<NodeId> = handles.iter().map(|h| h.node_id()).collect();
    let (all, node0) = (&all, &handles[0]);
    let probes = wait_until(
        "a complete map of all six from node 0, a probe of it answered by a handshake",
        || async move {
            let out = node0
                .map_with(Duration::from_millis(1000), true)
                .await
                .unwrap();
            let held: BTreeSet<NodeId> = out.map.ids().into_iter().collect();
            let probes = node0.status().await.unwrap().probes;
            if held == *all && out.complete && probes.handshake > 0 {
                Ok(probes)
            } else {
                Err(format!(
                    "map {held:?} (complete: {}), probes {probes:?}",
                    out.complete
                ))
            }
        },
    )
    .await;
    eprintln!("node 0's probes: {probes:?}");
    stop(handles, tasks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_map_protocol_scores_the_sender_down_until_it_is_dropped() {
    init_tracing();
    let ids =
        Identities::new("garbage_on_the_map_protocol_scores_the_sender_down_until_it_is_dropped");
    let (victim, task) = Overlay::spawn(config(ids.node(0), Vec::new()))
        .await
        .unwrap();
    let victim_addr = victim.listen_addrs().await.unwrap()[0].clone();

    // A bare libp2p peer that speaks no brume protocol but writes bad frames on /brume/map/4.
    let evil_key = match ids.node(1) {
        brume_overlay::Identity::Seed(k) => {
            libp2p::identity::Keypair::ed25519_from_bytes(k).unwrap()
        }
        _ => unreachable!("Identities gives seeds"),
    };
    let mut evil = libp2p::SwarmBuilder::with_existing_identity(evil_key)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
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
    let proto = brume_overlay::maplink::MAP_STREAM_PROTOCOL;
    let score_of = |peers: Vec<brume_overlay::PeerInfo>| {
        peers
            .into_iter()
            .find(|p| p.peer_id == evil_id)
            .map(|p| p.score)
    };

    let mut s = tokio::time::timeout(PATIENCE, control.open_stream(victim_id, proto.clone()))
        .await
        .expect("stream opens in time")
        .expect("the victim accepts /brume/map/4");
    // Two malformed frames (-20 each), then a length header far over the limit (-30): the
    // score goes 100 -> 80 -> 60 -> 30, below the ban threshold of 50. Each frame is sent only
    // once the victim has judged the one before, so every score is exact.
    let mut scores = Vec::new();
    for (round, expected) in [(0u32, 80.0), (1, 60.0), (2, 30.0)] {
        if round < 2 {
            let garbage: Vec<u8> = (0..200u32).map(|i| (i * 37 + round) as u8 | 0x80).collect();
            s.write_all(&200u32.to_be_bytes()).await.unwrap();
            s.write_all(&garbage).await.unwrap();
            s.flush().await.unwrap();
        } else {
            // The victim refuses this frame on its header alone and bans the sender: it may
            // close the connection before anything after the header is written or flushed
            // (seen once in CI: "connection is closed"), so only the header must go out.
            s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
            let _ = s.write_all(&[0u8; 64]).await;
            let _ = s.flush().await;
        }
        // Wait until the victim has judged this frame.
        let victim = &victim;
        let score = wait_until(&format!("bad frame {round} scored"), || async move {
            let score = score_of(victim.peers().await.unwrap());
            if score.is_none_or(|s| s <= expected) {
                Ok(score)
            } else {
                Err(format!("score {score:?}"))
            }
        })
        .await;
        scores.push(score);
    }
    // The victim drops the connection to the banned sender.
    tokio::time::timeout(PATIENCE, closed_rx.recv())
        .await
        .expect("the victim closes the connection to the garbage sender");
    // The sender may see the close before the victim's swarm has handled it: wait for the
    // victim's own view (its peer table drops the sender when its close event is handled).
    let victim_ref = &victim;
    wait_until("the victim forgets the garbage sender", || async move {
        match score_of(victim_ref.peers().await.unwrap()) {
            None => Ok(()),
            Some(score) => Err(format!("still a peer, score {score}")),
        }
    })
    .await;
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
async fn a_map_with_a_node_killed_midway_still_ends_and_later_maps_hold_the_survivors() {
    init_tracing();
    let ids = Identities::new(
        "a_map_with_a_node_killed_midway_still_ends_and_later_maps_hold_the_survivors",
    );
    // Six nodes: enough for a tree with a middle, and lighter on a shared two-core machine
    // while the eight-node test runs in parallel.
    let (handles, mut tasks, _) = start_chain(&ids, 6).await;
    wait_settled(&handles).await;
    let budget = Duration::from_millis(400);
    let origin = handles[0].clone();
    // A node in the middle of the chain the nodes joined along.
    let victim = 3;
    let victim_id = handles[victim].node_id();
    let victim_peer = handles[victim].peer_id();
    let map = tokio::spawn(async move { origin.map_outcome(budget).await });
    // Kill a node while the map runs: its task (and swarm, and sockets) disappear at once.
    tasks[victim].abort();
    let started = Instant::now();
    // The map must end (its deadline is the core's, checked in simulated time in sim.rs; here
    // only that a dead node cannot stall it).
    let out = tokio::time::timeout(PATIENCE, map)
        .await
        .expect("the map with a node killed midway never ended")
        .unwrap()
        .unwrap();
    assert!(out.map.contains(handles[0].node_id()));
    eprintln!(
        "map with node {victim} killed: {} nodes, complete={}, {:?} (budget {budget:?}, waited \
         {:?})",
        out.map.nodes.len(),
        out.complete,
        out.elapsed,
        started.elapsed()
    );
    let mut alive = handles;
    alive.remove(victim);
    tasks.remove(victim);
    // Every survivor notices the dead node (its connections closed).
    let survivors = &alive;
    wait_until("the dead node gone from every peer table", || async move {
        let mut holding = Vec::new();
        for (i, h) in survivors.iter().enumerate() {
            if h.peers()
                .await
                .unwrap()
                .iter()
                .any(|p| p.peer_id == victim_peer)
            {
                holding.push(i);
            }
        }
        if holding.is_empty() {
            Ok(())
        } else {
            Err(format!("still listed by survivors {holding:?}"))
        }
    })
    .await;
    // Later maps hold exactly the five survivors, never the dead node.
    let want: BTreeSet<NodeId> = alive.iter().map(|h| h.node_id()).collect();
    let (out, tries) =
        map_until_exactly(&alive[0], Duration::from_millis(900), &want, &[victim_id]).await;
    eprintln!(
        "later map: {} survivors after {tries} tries, {:?}",
        out.map.nodes.len(),
        out.elapsed
    );
    stop(alive, tasks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_stream_moves_bytes() {
    init_tracing();
    let ids = Identities::new("a_raw_stream_moves_bytes");
    let (a, ta) = Overlay::spawn(config(ids.node(0), Vec::new()))
        .await
        .unwrap();
    let (b, tb) = Overlay::spawn(config(ids.node(1), a.listen_addrs().await.unwrap()))
        .await
        .unwrap();
    let mut incoming = a.accept_streams(RAW_TEST_PROTOCOL).unwrap();
    assert!(matches!(
        a.accept_streams(RAW_TEST_PROTOCOL),
        Err(OverlayError::AlreadyAccepting)
    ));
    wait_peers(&b, "B connected to A", |p| {
        p.iter().any(|p| p.peer_id == a.peer_id())
    })
    .await;
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
    let mut s = tokio::time::timeout(PATIENCE, b.open_stream(a.peer_id(), RAW_TEST_PROTOCOL))
        .await
        .expect("the raw stream opens")
        .unwrap();
    let t = Instant::now();
    s.write_all(&payload).await.unwrap();
    s.close().await.unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await.unwrap();
    let (from, got) = tokio::time::timeout(PATIENCE, receiver)
        .await
        .expect("the receiver ends")
        .unwrap();
    eprintln!("raw stream: 1 MiB in {:?}", t.elapsed());
    assert_eq!(from, b.peer_id());
    assert_eq!(got, expected);
    assert_eq!(reply, b"ok");
    stop(vec![a, b], vec![ta, tb]).await;
}

/// Waits until `cond` holds on `h`'s peer table (at most [`PATIENCE`]); returns how long it took.
async fn wait_peers(
    h: &OverlayHandle,
    what: &str,
    cond: impl Fn(&[brume_overlay::PeerInfo]) -> bool,
) -> Duration {
    let cond = &cond;
    let start = Instant::now();
    wait_until(what, || async move {
        let peers = h.peers().await.unwrap();
        if cond(&peers) {
            Ok(())
        } else {
            Err(format!(
                "peers {:?}",
                peers
                    .iter()
                    .map(|p| (short(&p.peer_id), p.addr.as_ref().map(|a| a.to_string())))
                    .collect::<Vec<_>>()
            ))
        }
    })
    .await;
    start.elapsed()
}

/// Ports a node may listen on and find again after a restart: those above the kernel's
/// ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`, 32768-60999 by default).
/// - A port from the ephemeral range, once its listener closes, can be taken at any moment by any
///   outgoing connection on the machine (this test's own nodes dial all the time), and the
///   restart would then fail.
/// - Below the range, the rest of the suite takes ports by name while this test runs: the node
///   tests lease 10000-20000 and brume's engines give tasks ports from 20000 up to the range. A
///   task that took B's port while B was down kept B from coming back; a node that took it
///   shared it with B (libp2p listens with SO_REUSEPORT; see `a_second_node_on_a_taken_port_is_refused`),
///   and C's every dial reached the other node: this test failed two CI-like runs so.
///
/// Above the range nothing else in the suite listens. Where the range reaches 65535 the ports
/// below it are used instead (with the risks above). The list starts at an offset drawn from the
/// process id, so parallel runs of this test (cargo test and nextest alike) start far apart.
fn restartable_ports() -> Vec<u16> {
    let (lo, hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    let above: Vec<u16> = match hi.checked_add(1) {
        Some(first) => (first..=u16::MAX).collect(),
        None => Vec::new(),
    };
    let ports: Vec<u16> = if above.len() >= 200 {
        above
    } else {
        (10_000..lo).collect()
    };
    let start = (std::process::id() as usize).wrapping_mul(7919) % ports.len();
    ports[start..]
        .iter()
        .chain(&ports[..start])
        .copied()
        .collect()
}

fn at_port(mut cfg: OverlayConfig, port: u16) -> OverlayConfig {
    cfg.listen = vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()];
    cfg
}

/// libp2p listens with SO_REUSEPORT, so without brume's own probe a second node would bind a
/// port the first one holds and silently take a share of its connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_a_taken_port_is_refused() {
    init_tracing();
    let ids = Identities::new("a_second_node_on_a_taken_port_is_refused");
    let (a, ta) = Overlay::spawn(config(ids.node(0), Vec::new()))
        .await
        .unwrap();
    let taken = a.listen_addrs().await.unwrap().remove(0);
    let mut second = config(ids.node(1), Vec::new());
    second.listen = vec![taken.clone()];
    match Overlay::spawn(second).await {
        Err(OverlayError::Listen { addr, reason }) => {
            assert_eq!(addr, taken);
            assert!(reason.contains("already listens"), "{reason}");
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a second node listens on {taken}, which the first one holds"),
    }
    stop(vec![a], vec![ta]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_every_peer_rejoins_through_a_remembered_address() {
    init_tracing();
    let ids = Identities::new("a_node_that_loses_every_peer_rejoins_through_a_remembered_address");
    let (a, ta) = Overlay::spawn(config(ids.node(0), Vec::new()))
        .await
        .unwrap();
    let a_addrs = a.listen_addrs().await.unwrap();
    // B listens on a port it can come back to (see restartable_ports): the first free one.
    let cb = config(ids.node(1), a_addrs.clone());
    let mut started = None;
    for port in restartable_ports().into_iter().take(200) {
        match Overlay::spawn(at_port(cb.clone(), port)).await {
            Ok(node) => {
                started = Some((node, port));
                break;
            }
            Err(OverlayError::Listen { reason, .. }) => {
                eprintln!("port {port} is taken ({reason}); trying the next")
            }
            Err(e) => panic!("start B: {e}"),
        }
    }
    let ((b, tb), port) = started.expect("a free port outside the ephemeral range");
    let b_id = b.peer_id();
    eprintln!("B listens on 127.0.0.1:{port}");
    // C joins through A only, and learns B's address from A's join sample or from B itself
    // (identify). Being connected to B is not enough: when B dialled C, C knows where to reach
    // B only once identify has told it, and a C that lost B before that had nothing to redial
    // (B stopped 14 ms after connecting in a loaded run, and C never dialled it again).
    let (c, tc) = Overlay::spawn(config(ids.node(2), a_addrs)).await.unwrap();
    let a_id = a.peer_id();
    let b_port = format!("/tcp/{port}/");
    wait_peers(&c, "C connected to A and B, with B's address", |p| {
        let knows_b = p.iter().any(|p| {
            p.peer_id == b_id
                && p.addr
                    .as_ref()
                    .is_some_and(|a| a.to_string().contains(&b_port))
        });
        knows_b && p.iter().any(|p| p.peer_id == a_id)
    })
    .await;

    // A and B go away: C is alone (A, its bootstrap, stays down for good).
    stop(vec![a, b], vec![ta, tb]).await;
    wait_peers(&c, "C alone", |p| p.is_empty()).await;

    // B comes back at the same address with the same identity, knowing nobody. Its old
    // listener and connections may take a moment to close (and its accepted connections linger
    // in TIME_WAIT, which SO_REUSEADDR, set by libp2p's TCP transport, lets a listener bind
    // over): try the same port until it binds. Nothing else takes a port outside the ephemeral
    // range, so this ends as soon as B's old sockets are gone.
    let mut cb = at_port(cb, port);
    cb.bootstrap = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    let (b2, tb2) = loop {
        match Overlay::spawn(cb.clone()).await {
            Ok(node) => break node,
            Err(OverlayError::Listen { reason, .. }) if Instant::now() < deadline => {
                tracing::debug!("port {port} not free again yet: {reason}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("B cannot listen on 127.0.0.1:{port} again: {e}"),
        }
    };
    assert_eq!(b2.peer_id(), b_id);
    let took = wait_peers(&c, "C back with B", |p| p.iter().any(|p| p.peer_id == b_id)).await;
    eprintln!("rejoin: C reconnected to the restarted B {took:?} after B came back");
    stop(vec![c, b2], vec![tc, tb2]).await;
}
