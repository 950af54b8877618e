//! Per-peer limits on loopback, against a bare libp2p peer that does what no brume node does:
//!
//! * it opens more connections to one node than [`MAX_CONNECTIONS_PER_PEER`]: the ones past it
//!   are refused (seen on the node's [`ConnectionEvent`]s), the others stay;
//! * it opens streams of a limited protocol faster than the node's stream rate allows: the
//!   burst is served, the rest dropped unread;
//! * it sends state requests faster than the node's request rate allows: the burst is answered,
//!   the rest refused unanswered.
//!
//! The rates are set so that no token comes back within a test (one per hour), so what is served
//! and what is refused does not depend on how fast this machine runs. Streams and requests go one
//! at a time, each waiting for its outcome; every wait is bounded by [`PATIENCE`], nothing sleeps.

use std::time::Duration;

use brume_overlay::behaviour::{MAX_CONNECTIONS_PER_PEER, STATE_PROTOCOL};
use brume_overlay::ids::node_id_of;
use brume_overlay::neighbourhood::NodeRecord;
use brume_overlay::peer_state::PeerState;
use brume_overlay::{
    signed_record, ConnectionEvent, Identity, Overlay, OverlayConfig, OverlayHandle, Rate,
    StreamLimits, StreamProtocol, Timings,
};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, cbor, ProtocolSupport};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, Swarm};
use tokio::sync::broadcast;

const PATIENCE: Duration = Duration::from_secs(60);
const PROTO: StreamProtocol = StreamProtocol::new("/brume-test/echo/1");
/// A burst of three, then nothing for an hour.
const THREE_THEN_NONE: Rate = Rate {
    every: Duration::from_secs(3600),
    burst: 3,
};

fn key(seed: u8) -> Keypair {
    Keypair::ed25519_from_bytes([seed; 32]).unwrap()
}

fn config(seed: u8) -> OverlayConfig {
    OverlayConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        min_degree: 1,
        max_degree: 4,
        identity: Identity::Seed([seed; 32]),
        timings: Timings {
            listen_timeout: PATIENCE,
            ..Timings::default()
        },
        ..OverlayConfig::default()
    }
}

async fn spawn(cfg: OverlayConfig) -> (OverlayHandle, Multiaddr) {
    let node = Overlay::spawn(cfg).await.expect("the node starts").0;
    let addr = node.listen_addrs().await.unwrap()[0].clone();
    (node, addr)
}

/// What the bare peer speaks: raw streams and the state protocol's requests.
#[derive(NetworkBehaviour)]
struct Bare {
    streams: libp2p_stream::Behaviour,
    state: cbor::Behaviour<PeerState, PeerState>,
}

fn bare(key: Keypair) -> Swarm<Bare> {
    libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| Bare {
            streams: libp2p_stream::Behaviour::new(),
            state: cbor::Behaviour::new(
                [(STATE_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default(),
            ),
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_per_peer_cap_are_refused() {
    let (node, at) = spawn(config(0x81)).await;
    let mut events = node.connection_events();
    let mut peer = bare(key(0x82));
    let me = *peer.local_peer_id();
    let extra = 2u32;
    let dials = MAX_CONNECTIONS_PER_PEER + extra;
    for _ in 0..dials {
        peer.dial(DialOpts::unknown_peer_id().address(at.clone()).build())
            .unwrap();
    }
    // The bare peer sees every dial complete (the node refuses only after the handshake), and
    // the refused ones close again; the node reports each refusal.
    let (mut established, mut closed, mut refused) = (0u32, 0u32, 0u32);
    let mut seen = Vec::new();
    let done = tokio::time::timeout(PATIENCE, async {
        while !(established == dials && refused == extra && closed == extra) {
            tokio::select! {
                ev = peer.select_next_some() => match ev {
                    SwarmEvent::ConnectionEstablished { .. } => established += 1,
                    SwarmEvent::ConnectionClosed { .. } => closed += 1,
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        panic!("a dial failed outright: {error}")
                    }
                    _ => {}
                },
                ev = events.recv() => match ev {
                    Ok(ConnectionEvent::Failed { peer: Some(p), incoming: true, denied: true, reason })
                        if p == me =>
                    {
                        assert!(reason.contains("limit"), "refused for another reason: {reason}");
                        refused += 1;
                    }
                    Ok(other) => seen.push(format!("{other:?}")),
                    Err(broadcast::error::RecvError::Lagged(n)) => seen.push(format!("lagged {n}")),
                    Err(broadcast::error::RecvError::Closed) => panic!("the node stopped"),
                },
            }
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "after {dials} dials: {established} established, {closed} closed, {refused} refused \
         (expected {extra}); node events {seen:?}"
    );
    assert_eq!(
        peer.connected_peers().count(),
        1,
        "the connections under the cap stay up"
    );
    assert_eq!(
        peer.network_info().connection_counters().num_established(),
        MAX_CONNECTIONS_PER_PEER
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_a_peers_rate_are_dropped_unread() {
    let (node, at) = spawn(OverlayConfig {
        stream_limits: StreamLimits {
            rate: THREE_THEN_NONE,
            ..StreamLimits::default()
        },
        ..config(0x83)
    })
    .await;
    // The node echoes one byte on every stream it serves.
    let mut incoming = node.accept_limited(PROTO).unwrap();
    let server = tokio::spawn(async move {
        while let Some((_, mut s)) = incoming.next().await {
            tokio::spawn(async move {
                let mut b = [0u8; 1];
                if s.read_exact(&mut b).await.is_ok() {
                    let _ = s.write_all(&b).await;
                    let _ = s.close().await;
                }
            });
        }
    });
    let mut peer = bare(key(0x84));
    let mut control = peer.behaviour().streams.new_control();
    peer.dial(at).unwrap();
    let driver = tokio::spawn(async move {
        loop {
            peer.select_next_some().await;
        }
    });
    // One stream at a time, each to its outcome: the node's accept queue holds one stream, so
    // a stream never finds it full (which would drop it for another reason).
    let mut served = Vec::new();
    for i in 0..5u8 {
        let outcome = tokio::time::timeout(PATIENCE, async {
            let mut s = control.open_stream(node.peer_id(), PROTO).await.ok()?;
            s.write_all(&[i]).await.ok()?;
            s.flush().await.ok()?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.ok()?;
            Some(b[0])
        })
        .await
        .expect("every stream is served or dropped in time");
        served.push(outcome);
    }
    assert_eq!(
        served,
        vec![Some(0), Some(1), Some(2), None, None],
        "the burst of three is served, the rest dropped"
    );
    driver.abort();
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_requests_past_a_peers_rate_go_unanswered() {
    let (node, at) = spawn(OverlayConfig {
        request_rate: THREE_THEN_NONE,
        ..config(0x85)
    })
    .await;
    let k = key(0x86);
    let mut peer = bare(k.clone());
    let me = *peer.local_peer_id();
    let mut record = NodeRecord::bare(node_id_of(&me));
    record.peer = Some(me);
    signed_record::sign(&mut record, &k);
    let state = PeerState {
        record,
        links: Vec::new(),
    };
    peer.dial(at).unwrap();
    let mut answered = Vec::new();
    for _ in 0..5 {
        let id = peer
            .behaviour_mut()
            .state
            .send_request(&node.peer_id(), state.clone());
        let outcome = tokio::time::timeout(PATIENCE, async {
            loop {
                match peer.select_next_some().await {
                    SwarmEvent::Behaviour(BareEvent::State(request_response::Event::Message {
                        message:
                            request_response::Message::Response {
                                request_id,
                                response,
                            },
                        ..
                    })) if request_id == id => return Some(response.record.id),
                    SwarmEvent::Behaviour(BareEvent::State(
                        request_response::Event::OutboundFailure { request_id, .. },
                    )) if request_id == id => return None,
                    _ => {}
                }
            }
        })
        .await
        .expect("every request is answered or refused in time");
        answered.push(outcome);
    }
    let node_id = node.node_id();
    assert_eq!(
        answered,
        vec![Some(node_id), Some(node_id), Some(node_id), None, None],
        "the burst of three is answered with the node's record, the rest refused"
    );
}
