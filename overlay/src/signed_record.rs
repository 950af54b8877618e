//! Node records are signed by the node they describe. A record says where a node is, what it
//! offers and how to dial it; placement sends tasks where records point, so a record made up
//! by someone else (a node that claims another's id, inflates another's free CPU, or points
//! another's addresses at itself) would attract tasks. Every record a node sends about itself
//! carries its signature, made with its identity key over everything else in the record; every
//! record that arrives, in a state exchange or anywhere in a map, is checked: its peer id must
//! be the signing key's, its node id the one that peer id gives ([`crate::ids::node_id_of`]),
//! and the signature must hold. A record that fails is dropped: a state record alone, a map
//! answer whole. Since every hop checks before it merges, an honest node never forwards a bad
//! record, so the peer that sent one is at fault and is scored down.
//!
//! The sans-IO cores never sign or check anything (the simulator has no keys): the shell signs
//! its own record as it leaves and the map links check what arrives.

use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;

use crate::ids::NodeId;
use crate::neighbourhood::{NeighbourhoodMap, NodeRecord, RecordSignature};

/// What the signed bytes start with, so no other signature of the key can pass for one.
const DOMAIN: &[u8] = b"brume/node-record/1\n";

/// Why a record was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("the record names no peer id")]
    NoPeer,
    #[error("the record's node id {id} is not its peer id's")]
    WrongId { id: NodeId },
    #[error("the record is not signed")]
    Unsigned,
    #[error("the record's key is not a public key")]
    BadKey,
    #[error("the record is signed by {signer}, not by the node it describes")]
    NotItsKey { signer: PeerId },
    #[error("the record's signature does not match its contents")]
    BadSignature,
}

fn signed_bytes(record: &NodeRecord) -> Vec<u8> {
    let mut unsigned = record.clone();
    unsigned.signature = None;
    let mut out = DOMAIN.to_vec();
    // Writing into a Vec cannot fail, and a record is plainly serialisable.
    ciborium::into_writer(&unsigned, &mut out).expect("a record encodes as CBOR");
    out
}

/// Signs `record` (its id and peer id already this node's) with this node's `key`.
pub fn sign(record: &mut NodeRecord, key: &Keypair) {
    record.signature = None;
    match key.sign(&signed_bytes(record)) {
        Ok(sig) => {
            record.signature = Some(RecordSignature {
                key: key.public().encode_protobuf(),
                sig,
            })
        }
        // ed25519 signing cannot fail; an unsigned record is dropped by its receivers.
        Err(e) => tracing::warn!(error = %e, "cannot sign this node's record"),
    }
}

/// The peer a record describes, once its id, key and signature hold.
pub fn verify(record: &NodeRecord) -> Result<PeerId, RecordError> {
    let peer = record.peer.ok_or(RecordError::NoPeer)?;
    if crate::ids::node_id_of(&peer) != record.id {
        return Err(RecordError::WrongId { id: record.id });
    }
    let s = record.signature.as_ref().ok_or(RecordError::Unsigned)?;
    let key = PublicKey::try_decode_protobuf(&s.key).map_err(|_| RecordError::BadKey)?;
    let signer = key.to_peer_id();
    if signer != peer {
        return Err(RecordError::NotItsKey { signer });
    }
    if !key.verify(&signed_bytes(record), &s.sig) {
        return Err(RecordError::BadSignature);
    }
    Ok(peer)
}

/// Drops every record of `map` that does not verify, with the links and proofs of those nodes;
/// returns what was dropped and why.
pub fn drop_forged(map: &mut NeighbourhoodMap) -> Vec<(NodeId, RecordError)> {
    let mut dropped = Vec::new();
    map.nodes.retain(|r| match verify(r) {
        Ok(_) => true,
        Err(e) => {
            dropped.push((r.id, e));
            false
        }
    });
    if !dropped.is_empty() {
        let gone = |id: NodeId| dropped.iter().any(|(d, _)| *d == id);
        map.links.retain(|l| !gone(l.a) && !gone(l.b));
        map.proofs.retain(|p| !gone(p.id));
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::node_id_of;
    use crate::neighbourhood::{Link, RttHow, RttProof};

    fn key(seed: u8) -> Keypair {
        Keypair::ed25519_from_bytes([seed; 32]).unwrap()
    }

    /// The signed record of the node whose key is `seed`'s.
    fn record(seed: u8) -> NodeRecord {
        let k = key(seed);
        let peer = k.public().to_peer_id();
        let mut r = NodeRecord::bare(node_id_of(&peer));
        r.peer = Some(peer);
        r.cpu_free_milli = 500;
        r.coord_error = 0.25;
        r.addrs = vec![format!("/ip4/10.0.0.{seed}/tcp/7100/p2p/{peer}")
            .parse()
            .unwrap()];
        sign(&mut r, &k);
        r
    }

    #[test]
    fn a_signed_record_verifies_through_cbor() {
        let r = record(1);
        assert_eq!(verify(&r), Ok(r.peer.unwrap()));
        let mut bytes = Vec::new();
        ciborium::into_writer(&r, &mut bytes).unwrap();
        let back: NodeRecord = ciborium::from_reader(bytes.as_slice()).unwrap();
        assert_eq!(verify(&back), Ok(r.peer.unwrap()));
    }

    #[test]
    fn forged_records_are_dropped_with_their_links_and_proofs() {
        let good = record(1);
        // Inflated after signing: attracts tasks.
        let mut inflated = record(2);
        inflated.cpu_free_milli = 64_000;
        // Another node's id and peer, signed with the forger's key.
        let victim = key(3).public().to_peer_id();
        let mut impostor = record(4);
        impostor.peer = Some(victim);
        impostor.id = node_id_of(&victim);
        sign(&mut impostor, &key(4));
        // Its own peer, but an id that belongs to nobody it holds.
        let mut wrong_id = record(5);
        wrong_id.id = NodeId(42);
        let mut unsigned = record(6);
        unsigned.signature = None;
        // The victim's addresses pointed at the forger, the victim's signature kept.
        let mut redirected = record(7);
        redirected.addrs = vec!["/ip4/10.6.6.6/tcp/1".parse().unwrap()];
        let mut map = NeighbourhoodMap {
            nodes: vec![
                good.clone(),
                inflated.clone(),
                impostor.clone(),
                wrong_id.clone(),
                unsigned.clone(),
                redirected.clone(),
            ],
            links: vec![
                Link::new(good.id, inflated.id, 1.0),
                Link::new(good.id, impostor.id, 2.0),
            ],
            proofs: vec![
                RttProof {
                    id: good.id,
                    rtt_ms: 0.0,
                    how: RttHow::Origin,
                },
                RttProof {
                    id: impostor.id,
                    rtt_ms: 1.0,
                    how: RttHow::Direct,
                },
            ],
        };
        let dropped = drop_forged(&mut map);
        assert_eq!(
            map.nodes,
            vec![good.clone()],
            "only the honest record stays"
        );
        assert!(map.links.is_empty(), "{:?}", map.links);
        assert_eq!(map.proofs.len(), 1);
        let why: Vec<RecordError> = dropped.into_iter().map(|(_, e)| e).collect();
        assert_eq!(
            why,
            vec![
                RecordError::BadSignature,
                RecordError::NotItsKey {
                    signer: key(4).public().to_peer_id()
                },
                RecordError::WrongId { id: NodeId(42) },
                RecordError::Unsigned,
                RecordError::BadSignature,
            ]
        );
    }
}
