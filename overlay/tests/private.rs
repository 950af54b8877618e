//! A private overlay on loopback: real nodes, real sockets (every port chosen by the kernel).
//!
//! * a node without the network key, and a node with another key, cannot join a node that has
//!   one: the keyed node sees each connection fail, and neither ever becomes anyone's peer; a
//!   node with the same key then joins;
//! * with an allow-list, a member holding the key but not on the list is refused once it has
//!   authenticated, and a listed one joins.
//!
//! Every wait is on the node's [`ConnectionEvent`]s, bounded by [`PATIENCE`] (a hang guard far
//! beyond what a loaded machine needs); nothing sleeps. Keys and identities are fixed bytes.

use std::collections::HashSet;
use std::time::Duration;

use brume_overlay::{
    ConnectionEvent, Identity, NetworkKey, Overlay, OverlayConfig, OverlayHandle, Timings,
};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::broadcast;

/// How long any awaited event may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(60);

fn identity(i: u8) -> Identity {
    Identity::Seed([0x50 + i; 32])
}

fn peer_of(i: u8) -> PeerId {
    libp2p::identity::Keypair::ed25519_from_bytes([0x50 + i; 32])
        .unwrap()
        .public()
        .to_peer_id()
}

fn config(
    i: u8,
    key: Option<NetworkKey>,
    allowed: Option<HashSet<PeerId>>,
    bootstrap: Vec<Multiaddr>,
) -> OverlayConfig {
    OverlayConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap,
        min_degree: 1,
        max_degree: 4,
        identity: identity(i),
        network_key: key,
        allowed_peers: allowed,
        timings: Timings {
            maintain_interval: Duration::from_millis(100),
            listen_timeout: PATIENCE,
            ..Timings::default()
        },
        ..OverlayConfig::default()
    }
}

async fn spawn(cfg: OverlayConfig) -> OverlayHandle {
    Overlay::spawn(cfg).await.expect("the node starts").0
}

async fn addr(node: &OverlayHandle) -> Multiaddr {
    node.listen_addrs().await.unwrap()[0].clone()
}

/// The next event `pick` accepts; fails with every event seen after [`PATIENCE`].
async fn wait_for(
    events: &mut broadcast::Receiver<ConnectionEvent>,
    what: &str,
    pick: impl Fn(&ConnectionEvent) -> bool,
) -> ConnectionEvent {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(PATIENCE, async {
        loop {
            match events.recv().await {
                Ok(ev) if pick(&ev) => return ev,
                Ok(ev) => seen.push(ev),
                Err(broadcast::error::RecvError::Lagged(n)) => seen.push(ConnectionEvent::Failed {
                    peer: None,
                    incoming: false,
                    denied: false,
                    reason: format!("({n} events missed)"),
                }),
                Err(broadcast::error::RecvError::Closed) => panic!("the node stopped"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no {what} within {PATIENCE:?}; saw {seen:?}"))
}

async fn peer_ids(node: &OverlayHandle) -> Vec<PeerId> {
    node.peers()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.peer_id)
        .collect()
}

/// `node` dials `to` (through [`OverlayHandle::connect`], watched on its own events): the
/// outcome, a failure or a connection.
async fn dial_outcome(node: &OverlayHandle, to: PeerId, at: Multiaddr) -> ConnectionEvent {
    let mut events = node.connection_events();
    let dialer = node.clone();
    tokio::spawn(async move {
        let _ = dialer.connect(to, vec![at], PATIENCE).await;
    });
    wait_for(&mut events, "the dial's outcome", |e| match e {
        ConnectionEvent::Connected { peer } => *peer == to,
        ConnectionEvent::Failed {
            peer,
            incoming: false,
            ..
        } => *peer == Some(to),
        _ => false,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_holders_of_the_network_key_can_join() {
    let key = NetworkKey::from_bytes([1; 32]);
    let other = NetworkKey::from_bytes([2; 32]);
    let a = spawn(config(0, Some(key), None, vec![])).await;
    let mut events = a.connection_events();
    let at = addr(&a).await;

    // No key, then another key: each dial fails on both sides; nobody becomes a peer.
    let keyless = spawn(config(1, None, None, vec![])).await;
    let stranger = spawn(config(2, Some(other), None, vec![])).await;
    for node in [&keyless, &stranger] {
        let outcome = dial_outcome(node, peer_of(0), at.clone()).await;
        eprintln!("{}: {outcome:?}", node.peer_id());
        assert!(
            matches!(outcome, ConnectionEvent::Failed { .. }),
            "{outcome:?}"
        );
        wait_for(
            &mut events,
            "the keyed node's failed incoming connection",
            |e| matches!(e, ConnectionEvent::Failed { incoming: true, .. }),
        )
        .await;
    }

    // The same key: joins (through the bootstrap list, as `brume node --join` does).
    let member = spawn(config(3, Some(key), None, vec![at.clone()])).await;
    let joined = wait_for(&mut events, "the member's connection", |e| {
        matches!(e, ConnectionEvent::Connected { .. })
    })
    .await;
    assert_eq!(
        joined,
        ConnectionEvent::Connected { peer: peer_of(3) },
        "the first connection the keyed node ever completed is the member's"
    );
    assert_eq!(peer_ids(&a).await, vec![peer_of(3)]);
    assert!(peer_ids(&keyless).await.is_empty());
    assert!(peer_ids(&stranger).await.is_empty());
    for n in [a, keyless, stranger, member] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_list_keeps_other_members_out() {
    let key = NetworkKey::from_bytes([3; 32]);
    let allowed: HashSet<PeerId> = [peer_of(12)].into();
    let a = spawn(config(10, Some(key), Some(allowed), vec![])).await;
    let mut events = a.connection_events();
    let at = vec![addr(&a).await];

    let outsider = spawn(config(11, Some(key), None, at.clone())).await;
    let refused = wait_for(&mut events, "the outsider's refusal", |e| {
        matches!(e, ConnectionEvent::Failed { denied: true, .. })
    })
    .await;
    assert!(
        matches!(refused, ConnectionEvent::Failed { peer: Some(p), incoming: true, .. } if p == peer_of(11)),
        "{refused:?}"
    );

    let listed = spawn(config(12, Some(key), None, at)).await;
    let joined = wait_for(&mut events, "the listed node's connection", |e| {
        matches!(e, ConnectionEvent::Connected { .. })
    })
    .await;
    assert_eq!(joined, ConnectionEvent::Connected { peer: peer_of(12) });
    assert_eq!(peer_ids(&a).await, vec![peer_of(12)]);
    for n in [a, outsider, listed] {
        n.shutdown().await.unwrap();
    }
}

/// A dial to a port nobody listens on is refused by the kernel: `connect` fails with that
/// failure, long before its (hour-long) timeout, which only a dial that neither succeeds nor
/// fails waits out. Bounded by [`PATIENCE`], no time asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_dial_fails_connect_at_once() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
        // dropped: the port is closed
    };
    let node = spawn(config(7, None, None, vec![])).await;
    let at: Multiaddr = format!("/ip4/127.0.0.1/tcp/{closed}").parse().unwrap();
    let outcome = tokio::time::timeout(
        PATIENCE,
        node.connect(peer_of(8), vec![at], Duration::from_secs(3600)),
    )
    .await
    .unwrap_or_else(|_| panic!("connect still waiting after {PATIENCE:?}"));
    let e = outcome.expect_err("nobody listens there");
    assert!(e.to_string().contains("dial failed"), "{e}");
}
