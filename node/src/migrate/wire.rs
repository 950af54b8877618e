//! What nodes say to each other about moves, on `/brume/move/2`: a node asks the host of an
//! instance to move it (`brume migrate` forwarded from the initiator), and the source tells
//! every node it knows, and the service's initiator, where the instance runs now.
//!
//! One request per stream, as length-prefixed CBOR frames ([`brume_overlay::frames`]); a move
//! is answered by any number of [`Reply::Phase`] frames and then exactly one final frame. The
//! target's part of a move (prepare, start, remove) uses the deploy protocol
//! ([`crate::deploy::wire`]); a live move's pages go on `/brume/live/3` ([`super::live`]).

use brume_overlay::{Multiaddr, PeerId, StreamProtocol};
use brume_tunnel::InstanceId;
use serde::{Deserialize, Serialize};

use crate::deploy::wire::{self, Generation, InstanceView};

/// Version 2: a move, a fence and `Moved` are obeyed only from the service's owner (or, for
/// `Moved` and a fence, the host that runs the instance).
pub const MOVE_PROTOCOL: StreamProtocol = StreamProtocol::new("/brume/move/2");

/// A live move's own stream: its frames around the pre-copy ([`super::live`]), then the pages.
/// Version 2: the instance's spec carries its owner's signature, which the target checks.
pub const LIVE_PROTOCOL: StreamProtocol = StreamProtocol::new("/brume/live/3");

/// Largest request or reply frame.
pub const MAX_FRAME: usize = 1 << 20;

/// What a node is asked about a move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Moves an instance running on this host to `to`, or to a host this node picks from its
    /// map within `budget_ms` when `to` is `None`.
    Migrate {
        instance: InstanceId,
        to: Option<PeerId>,
        budget_ms: u64,
        /// Restart the task cold instead of carrying its state (a `checkpoint = "criu"` task
        /// that cannot move live is refused without it).
        allow_cold: bool,
        /// Give up, leaving the instance where it is, if the move takes longer.
        deadline_ms: Option<u64>,
        /// The longest freeze a live move may predict before it gives up.
        max_downtime_ms: Option<u64>,
        /// Freeze whatever the prediction (neither that limit nor the task's downtime budget
        /// holds).
        #[serde(default)]
        force: bool,
    },
    /// An instance now runs on `peer`: calls to it go there from now on.
    Moved {
        instance: InstanceId,
        peer: PeerId,
        /// The new host's name as maps print it, and its dialable addresses, for the
        /// initiator's ledger.
        host: String,
        addrs: Vec<Multiaddr>,
        /// From a holder of the service's record re-placing for its dead owner: the owner's
        /// signed word that it may ([`crate::heal::delegation`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delegation: Option<Box<crate::heal::delegation::Delegation>>,
    },
    /// From the source of a failed move: stop `instance` here if it runs (or is being restored)
    /// at `generation`, and never run that generation. Idempotent; answered with
    /// [`Reply::Fenced`] only once no such copy runs here.
    Fence {
        instance: InstanceId,
        generation: Generation,
    },
}

/// A step of a move, as the source reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// The target chosen.
    Target { peer: PeerId, host: String },
    /// The target getting the image ready (fetching, building).
    Preparing(wire::Phase),
    /// The instance's state captured (`bytes` of it).
    Checkpointed { bytes: u64 },
    /// The new instance runs; callers are being switched to it.
    Switching,
    /// A round of a live CRIU migration ended (sizes in bytes, rate in bytes/s).
    Round {
        round: u32,
        /// The final round: the task was frozen for it.
        last: bool,
        dumped_bytes: u64,
        delta_bytes: u64,
        wire_bytes: u64,
        /// Wall time of the round and of its dump.
        round_ms: u64,
        dump_ms: u64,
        rate: u64,
        /// After a pre-copy round: the planner's predicted downtime if it froze now.
        predicted_downtime_ms: Option<u64>,
    },
    /// A live CRIU migration's task runs on the target: how long it was frozen (final dump to
    /// restored), the target's `criu restore`, rounds and bytes sent in all.
    Restored {
        downtime_ms: u64,
        restore_ms: u64,
        rounds: u32,
        wire_bytes: u64,
    },
}

/// How a move carried the instance's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The task's own checkpoint line went along.
    App,
    /// Moved live with CRIU (full-dump pre-copy).
    Criu,
    /// Moved live with CRIU, its memory carried by the dirty-page tracker before the freeze
    /// and the pages written since after it (tracked post-copy).
    Tracked,
    /// Restarted on the target without its state.
    Cold,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::App => "app",
            Mode::Criu => "criu",
            Mode::Tracked => "tracked",
            Mode::Cold => "cold",
        }
    }
}

/// What the node answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// Progress of a move; more frames follow.
    Phase(Phase),
    /// The instance moved: it runs on `to` (as `instance`) and no longer here.
    Migrated {
        to: PeerId,
        host: String,
        instance: InstanceView,
        mode: Mode,
        /// Bytes of state carried.
        state_bytes: u64,
        /// How long calls to the instance were held (checkpoint, start on the target,
        /// switch), in milliseconds: the pause callers saw.
        held_ms: u64,
        /// Hosts told about the move.
        told: usize,
    },
    /// How many routes a `Moved` changed here.
    Rerouted { routes: usize },
    /// The fence holds: no copy of that generation runs here, nor will; `stopped` if one was
    /// running and was killed.
    Fenced { stopped: bool },
    /// Nothing moved; the reason says where the instance is.
    Refused { reason: String },
}
