//! The messages of a map (`/brume/map/4`) and what the state machine tells its shell: a
//! request spreads out, each reached node acknowledges it and answers back along the tree (or
//! reports straight to the origin), and the origin's shell is asked to probe and told when the
//! map is done.

use libp2p::identity::Keypair;
use serde::{Deserialize, Serialize};

use crate::ids::{MapId, NodeId};
use crate::neighbourhood::{NeighbourhoodMap, NodeRecord};
use crate::signed_record::{self, RecordError};
use crate::vivaldi::Coord;

/// A request to map the neighbourhood of `origin` within `budget_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapRequest {
    pub id: MapId,
    pub origin: NodeId,
    /// What is left of the latency budget for paths from the receiver onwards (ms).
    pub budget_ms: f64,
    /// How long the receiver may take before answering (ms).
    pub wait_ms: f64,
    /// Nodes that already have this request; the receiver does not forward to them.
    pub skip: Vec<NodeId>,
    /// What the receiver needs to judge peers by their predicted direct RTT from the origin
    /// (issue 17). Requests of nodes before it carry none: the receiver then maps by paths only.
    #[serde(default)]
    pub reach: Option<Reach>,
}

/// The origin's whole budget and Vivaldi coordinate, carried by every request, so a receiver can
/// forward to a peer whose overlay path no longer fits the budget but whose predicted direct RTT
/// from the origin still may.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reach {
    /// The origin's budget `B`.
    pub budget_ms: f64,
    /// The origin's coordinate and Vivaldi error when it started the map.
    pub coord: Coord,
    pub error: f64,
    /// Whether every hop so far fitted the path budget: the receiver is then proven to be within
    /// `budget_ms - MapRequest::budget_ms` of the origin over the overlay.
    pub proven: bool,
    /// Whether the origin asked for forwarding beyond the path budget (it then probes what comes
    /// back beyond it); false is seed 004's map.
    pub extend: bool,
    /// Whether each reached node reports straight to the origin ([`Message::Report`]) instead
    /// of answering the node it got the request from ([`MapConfig::reports`]).
    #[serde(default)]
    pub report: bool,
}

impl Reach {
    pub(super) fn is_valid(&self) -> bool {
        self.budget_ms.is_finite()
            && self.budget_ms >= 0.0
            && self.coord.is_finite()
            && self.error.is_finite()
            && self.error >= 0.0
    }
}

/// The messages of `/brume/map/1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    Request(MapRequest),
    /// Sent at once on every request. `answer_follows` is false for a duplicate id.
    Ack {
        id: MapId,
        answer_follows: bool,
    },
    /// The sender's part of the map (its subtree), sent to the node it got the request from.
    Answer {
        id: MapId,
        map: NeighbourhoodMap,
    },
    /// With [`Reach::report`]: the sender's own part of the map (its record, links and the
    /// candidates it lists, not its subtree), sent straight to the origin the moment the
    /// request reached it, with the peers it forwarded the request to (the origin waits for
    /// their reports in turn).
    Report {
        id: MapId,
        map: NeighbourhoodMap,
        children: Vec<NodeId>,
    },
}

impl Message {
    /// Drops every forged record of the map this message carries, if any
    /// ([`signed_record::drop_forged`]); returns what was dropped and why.
    pub fn drop_forged(&mut self) -> Vec<(NodeId, RecordError)> {
        match self {
            Message::Answer { map, .. } | Message::Report { map, .. } => {
                signed_record::drop_forged(map)
            }
            Message::Request(_) | Message::Ack { .. } => Vec::new(),
        }
    }

    /// Signs the record of `me` wherever this message carries it (this node's part of a map).
    pub fn sign_own(&mut self, me: NodeId, key: &Keypair) {
        if let Message::Answer { map, .. } | Message::Report { map, .. } = self {
            for r in map.nodes.iter_mut().filter(|r| r.id == me) {
                signed_record::sign(r, key);
            }
        }
    }
}

/// Why a message was refused (the shell should lower the sender's score).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("request budget or wait is not a finite non-negative number of ms")]
    BadNumbers,
    #[error("request origin {origin} differs from its id's origin {id_origin}")]
    OriginMismatch { origin: NodeId, id_origin: NodeId },
    #[error("skip list has {len} entries, more than the {max} allowed")]
    SkipTooLong { len: usize, max: usize },
    #[error("answer holds {nodes} nodes, more than the {max} allowed")]
    AnswerTooLarge { nodes: usize, max: usize },
}

/// What the state machine asks its shell to do or tells it.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Send {
        to: NodeId,
        msg: Message,
    },
    /// A map this node originated is finished. `complete` is false if some branch was given up
    /// (a peer that did not answer in time); the map then holds what did answer.
    MapDone {
        id: MapId,
        map: NeighbourhoodMap,
        complete: bool,
        from_cache: bool,
    },
    /// The origin of map `id` asks its shell to measure the RTT to each target once, all in
    /// parallel, and to report every result through [`MappingNode::handle_probe_result`]. A
    /// result not back within `timeout_ms` need not be reported: the target is beyond the budget.
    /// Targets are nodes the map found beyond what overlay paths prove (and, with
    /// [`MapConfig::confirm_paths`], path-proven nodes the origin has not measured itself).
    /// Each target comes as its record (its peer id and addresses, for a shell not connected
    /// to it).
    Probe {
        id: MapId,
        targets: Vec<NodeRecord>,
        timeout_ms: f64,
    },
    /// A message was malformed and dropped.
    Refused {
        from: NodeId,
        reason: Refusal,
    },
}
