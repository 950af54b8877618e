//! Node records are signed by the node they describe, and a forged one is dropped where it
//! arrives. A real node (the victim) on loopback and a bare libp2p peer that writes map
//! answers on `/brume/map/4` itself: an answer carrying a record of another node signed with
//! the sender's key, or its own record altered after signing, is dropped and costs the sender
//! exactly the malformed-message penalty (20); an answer carrying its own honestly signed
//! record is taken, which earns the good-message reward (1).
//! Each frame is judged before the next is sent (the victim's score of the sender says so), so
//! every score is exact; every wait is bounded by [`PATIENCE`], a hang guard.

use std::time::Duration;

use brume_overlay::ids::node_id_of;
use brume_overlay::ids::{MapId, NodeId};
use brume_overlay::mapping::Message;
use brume_overlay::neighbourhood::{NeighbourhoodMap, NodeRecord};
use brume_overlay::{signed_record, wire, Identity, Overlay, OverlayConfig, OverlayHandle};
use futures::{AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::PeerId;

const PATIENCE: Duration = Duration::from_secs(60);

fn key(seed: u8) -> Keypair {
    Keypair::ed25519_from_bytes([seed; 32]).unwrap()
}

/// `peer`'s record, with some free CPU, signed by `signer`.
fn record(peer: PeerId, signer: &Keypair) -> NodeRecord {
    let mut r = NodeRecord::bare(node_id_of(&peer));
    r.peer = Some(peer);
    r.cpu_free_milli = 1000;
    signed_record::sign(&mut r, signer);
    r
}

fn answer(origin: NodeId, seq: u64, nodes: Vec<NodeRecord>) -> Vec<u8> {
    let msg = Message::Answer {
        id: MapId { origin, seq },
        map: NeighbourhoodMap {
            nodes,
            links: Vec::new(),
            proofs: Vec::new(),
        },
    };
    let body = wire::encode(&msg).unwrap();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend(body);
    frame
}

async fn score(victim: &OverlayHandle, of: PeerId) -> Option<f64> {
    victim
        .peers()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.peer_id == of)
        .map(|p| p.score)
}

/// Waits until the victim scores `of` at `expected` or lower; returns the score.
async fn scored(victim: &OverlayHandle, of: PeerId, expected: f64) -> Option<f64> {
    let waited = tokio::time::timeout(PATIENCE, async {
        loop {
            let s = score(victim, of).await;
            if s.is_some_and(|s| s <= expected) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    waited.unwrap_or_else(|_| panic!("no score of {expected} within {PATIENCE:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_node_record_is_dropped_and_costs_its_sender() {
    let (victim, _task) = Overlay::spawn(OverlayConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        identity: Identity::Seed([0x71; 32]),
        ..OverlayConfig::default()
    })
    .await
    .unwrap();
    let victim_addr = victim.listen_addrs().await.unwrap()[0].clone();

    // The sender: a bare libp2p peer that writes map frames by hand.
    let evil_key = key(0x72);
    let evil_id = evil_key.public().to_peer_id();
    let mut evil = libp2p::SwarmBuilder::with_existing_identity(evil_key.clone())
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
    let mut control = evil.behaviour().new_control();
    evil.dial(victim_addr).unwrap();
    let evil_task = tokio::spawn(async move {
        loop {
            evil.select_next_some().await;
        }
    });
    let mut s = tokio::time::timeout(
        PATIENCE,
        control.open_stream(
            victim.peer_id(),
            brume_overlay::maplink::MAP_STREAM_PROTOCOL,
        ),
    )
    .await
    .expect("the stream opens in time")
    .expect("the victim takes map links");
    let origin = victim.node_id();
    let start = scored(&victim, evil_id, 100.0).await;
    assert_eq!(start, Some(100.0));

    // Another node's record, signed with the sender's key: dropped, -20.
    let other = key(0x73).public().to_peer_id();
    let frame = answer(origin, 1, vec![record(other, &evil_key)]);
    s.write_all(&frame).await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(scored(&victim, evil_id, 80.0).await, Some(80.0));

    // Its own record, honestly signed: taken, +1. Then its own record with the free CPU raised
    // after signing: dropped, -20. The score after both (61) shows the first was taken.
    let honest = record(evil_id, &evil_key);
    let mut inflated = honest.clone();
    inflated.cpu_free_milli = 64_000;
    for (seq, r) in [(2, honest), (3, inflated)] {
        s.write_all(&answer(origin, seq, vec![r])).await.unwrap();
    }
    s.flush().await.unwrap();
    assert_eq!(scored(&victim, evil_id, 61.0).await, Some(61.0));
    evil_task.abort();
    victim.shutdown().await.unwrap();
}
