//! What a simulated map's messages would weigh on the wire.
//!
//! Why: listed candidates (issue 17) trade messages for larger answers, and the simulator
//! counts messages. A simulated record lacks what a daemon's carries (its peer id, a dialable
//! address, its signature), so each message is encoded as CBOR, as `/brume/map/1` sends it,
//! and every record it carries is charged what a real signed record weighs beyond the bare
//! one, measured once by encoding both.

use brume_overlay::ids::{node_id_of, MapId, NodeId};
use brume_overlay::mapping::Message;
use brume_overlay::neighbourhood::{NeighbourhoodMap, NodeRecord};
use brume_overlay::{signed_record, wire, Keypair};

/// Sizes map messages as a daemon would send them.
#[derive(Debug, Clone, Copy)]
pub(super) struct WireSize {
    /// Bytes a daemon's signed record carries beyond a simulated one like it.
    record_extra: usize,
}

impl WireSize {
    /// Measures `bare` (a simulated node's record) against the same record as a daemon on a
    /// fixed ed25519 key signs it, with one TCP address.
    pub(super) fn new(bare: &NodeRecord) -> WireSize {
        // A fixed key: a signature's CBOR size depends on its bytes (a byte under 24 takes
        // one byte, others two), so a random key would make the same run weigh differently.
        let key =
            Keypair::ed25519_from_bytes([7; 32]).unwrap_or_else(|_| Keypair::generate_ed25519());
        let peer = key.public().to_peer_id();
        let mut real = bare.clone();
        real.id = node_id_of(&peer);
        real.peer = Some(peer);
        real.addrs = format!("/ip4/192.168.100.200/tcp/7100/p2p/{peer}")
            .parse()
            .into_iter()
            .collect();
        signed_record::sign(&mut real, &key);
        let answer = |r: &NodeRecord| Message::Answer {
            id: MapId {
                origin: NodeId(u64::MAX),
                seq: u64::MAX,
            },
            map: NeighbourhoodMap {
                nodes: vec![r.clone()],
                ..NeighbourhoodMap::default()
            },
        };
        let size = |m: &Message| wire::encode(m).map_or(0, |b| b.len());
        WireSize {
            record_extra: size(&answer(&real)).saturating_sub(size(&answer(bare))),
        }
    }

    /// The bytes of `msg` on the wire, its records as daemons' (the frame's length prefix
    /// not counted).
    pub(super) fn of(&self, msg: &Message) -> usize {
        let records = match msg {
            Message::Answer { map, .. } | Message::Report { map, .. } => map.nodes.len(),
            Message::Request(_) | Message::Ack { .. } => 0,
        };
        wire::encode(msg).map_or(0, |b| b.len()) + records * self.record_extra
    }

    #[cfg(test)]
    fn record_extra(&self) -> usize {
        self.record_extra
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_record_weighs_its_key_signature_peer_and_address() {
        let ws = WireSize::new(&NodeRecord::bare(NodeId(7)));
        // An ed25519 public key (32 bytes in a 36-byte protobuf), a 64-byte signature, a
        // 38-byte peer id, and an address holding it again: at least 170 bytes.
        assert!(ws.record_extra() >= 170, "{}", ws.record_extra());
        let ack = Message::Ack {
            id: MapId {
                origin: NodeId(1),
                seq: 2,
            },
            answer_follows: true,
        };
        assert_eq!(ws.of(&ack), wire::encode(&ack).unwrap().len());
    }
}
