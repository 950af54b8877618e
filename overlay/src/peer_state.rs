//! What a node tells each peer about itself on `/brume/state/4`: its signed record and its links
//! (issue 17). A map that forwards along a tree needs every sender to know which of its peer's
//! neighbours are that peer's parents toward the origin ([`crate::reach_tree`]), and a node that
//! chooses cone links by what it knows ([`crate::cones`]) looks at its peers' peers: both come
//! from the links each peer publishes, with the coordinates their records gave it.
//!
//! The links are the sender's word about its own neighbourhood and only steer where requests
//! go and which nodes are dialled, so they are not signed; a receiver bounds and checks them
//! ([`PeerState::checked_links`]) and a peer that sends bad ones is scored down like any
//! malformed message.

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::addresses::peer_of;
use crate::ids::{node_id_of, NodeId};
use crate::neighbourhood::NodeRecord;
use crate::vivaldi::Coord;

/// At most this many links in one state message: a node's degree stays below it (joining's
/// links and cone links), and it keeps the message within [`crate::behaviour::MAX_STATE_BYTES`].
pub const MAX_PUBLISHED_LINKS: usize = 64;

/// The message of `/brume/state/4`, both ways.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerState {
    pub record: NodeRecord,
    #[serde(default)]
    pub links: Vec<PublishedLink>,
}

/// One of the sender's links: the peer at its other end, that peer's coordinate and one of its
/// dialable addresses (ending in `/p2p/<peer>`), as the sender last had them from the peer's
/// record: what a node choosing cone links among its peers' peers needs to dial one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishedLink {
    pub peer: PeerId,
    pub coord: Coord,
    #[serde(default)]
    pub addr: Option<Multiaddr>,
    /// The sender chose this link as one of its cone links: the peer keeps it too, beyond its
    /// degree bound ([`crate::membership::Membership::set_cone_links`]).
    #[serde(default)]
    pub cone: bool,
}

/// Why a state message's links were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LinksError {
    #[error("{len} links, more than the {max} allowed")]
    TooMany { len: usize, max: usize },
    #[error("a link's coordinate is not finite")]
    BadCoord,
    #[error("a link's address {addr} does not end in its peer's id")]
    BadAddr { addr: Multiaddr },
}

impl PeerState {
    /// The links as the mapping core takes them ([`crate::mapping::MappingNode::set_peer_links`]),
    /// by node id, each peer once.
    pub fn checked_links(&self) -> Result<Vec<(NodeId, Coord)>, LinksError> {
        if self.links.len() > MAX_PUBLISHED_LINKS {
            return Err(LinksError::TooMany {
                len: self.links.len(),
                max: MAX_PUBLISHED_LINKS,
            });
        }
        if self.links.iter().any(|l| !l.coord.is_finite()) {
            return Err(LinksError::BadCoord);
        }
        let wrong = |l: &PublishedLink| l.addr.clone().filter(|a| peer_of(a) != Some(l.peer));
        if let Some(addr) = self.links.iter().find_map(wrong) {
            return Err(LinksError::BadAddr { addr });
        }
        let mut out: Vec<(NodeId, Coord)> = self
            .links
            .iter()
            .map(|l| (node_id_of(&l.peer), l.coord))
            .collect();
        out.sort_by_key(|l| l.0);
        out.dedup_by_key(|l| l.0);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vivaldi::MIN_HEIGHT;
    use libp2p::identity::Keypair;

    fn link(seed: u8, x: f64) -> PublishedLink {
        let key = Keypair::ed25519_from_bytes([seed; 32]).expect("a 32-byte seed");
        PublishedLink {
            peer: key.public().to_peer_id(),
            coord: Coord {
                x,
                y: 0.0,
                height: MIN_HEIGHT,
            },
            addr: Some(
                format!(
                    "/ip4/192.168.100.{seed}/tcp/40123/p2p/{}",
                    key.public().to_peer_id()
                )
                .parse()
                .expect("an address"),
            ),
            cone: seed.is_multiple_of(2),
        }
    }

    fn state(links: Vec<PublishedLink>) -> PeerState {
        PeerState {
            record: NodeRecord::bare(NodeId(1)),
            links,
        }
    }

    #[test]
    fn links_come_out_as_node_ids_each_once() {
        let s = state(vec![link(2, 5.0), link(1, 3.0), link(2, 5.0)]);
        let got = s.checked_links().expect("good links");
        assert_eq!(got.len(), 2);
        assert!(got.contains(&(node_id_of(&link(1, 0.0).peer), link(1, 3.0).coord)));
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn too_many_or_non_finite_links_are_refused() {
        let many = state(
            (0..=MAX_PUBLISHED_LINKS)
                .map(|i| link(1, i as f64))
                .collect(),
        );
        assert_eq!(
            many.checked_links(),
            Err(LinksError::TooMany {
                len: MAX_PUBLISHED_LINKS + 1,
                max: MAX_PUBLISHED_LINKS
            })
        );
        let nan = state(vec![link(1, f64::NAN)]);
        assert_eq!(nan.checked_links(), Err(LinksError::BadCoord));
        // An address that dials someone else than the peer the link names.
        let mut wrong = link(1, 1.0);
        wrong.addr = link(2, 1.0).addr;
        assert!(matches!(
            state(vec![wrong]).checked_links(),
            Err(LinksError::BadAddr { .. })
        ));
    }

    #[test]
    fn a_full_state_fits_the_protocols_size_limit() {
        let key = Keypair::ed25519_from_bytes([9; 32]).expect("a 32-byte seed");
        let mut record = NodeRecord::bare(node_id_of(&key.public().to_peer_id()));
        record.name = Some("gw-kitchen-0123456789abcdefghij".into());
        record.peer = Some(key.public().to_peer_id());
        for i in 0..4u16 {
            let addr = format!(
                "/ip6/fd00::{i}/tcp/40{i:03}/p2p/{}",
                key.public().to_peer_id()
            );
            record.addrs.push(addr.parse().expect("an address"));
        }
        crate::signed_record::sign(&mut record, &key);
        let full = PeerState {
            record,
            links: (0..MAX_PUBLISHED_LINKS)
                .map(|i| link(i as u8, 1234.567 + i as f64))
                .collect(),
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&full, &mut bytes).expect("encodes");
        eprintln!(
            "a state with {MAX_PUBLISHED_LINKS} links: {} bytes",
            bytes.len()
        );
        assert!(
            (bytes.len() as u64) < crate::behaviour::MAX_STATE_BYTES,
            "{} bytes",
            bytes.len()
        );
    }
}
