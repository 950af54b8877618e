//! What the control API answers, in the node's own terms: plain serde types, so neither the
//! socket protocol nor the CLI depends on libp2p's types. `--json` prints these as they are, so
//! their field names are the stable interface for scripts; peer ids are always full there (a
//! person reads brume's short form of them).

use brume_overlay::neighbourhood::NeighbourhoodMap;
use serde::{Deserialize, Serialize};

use crate::{Deployed, DrainLine, Event, MoveProgress, Moved, Row};

/// `brume status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub peer_id: String,
    /// The node's human name, from its config, if it has one.
    #[serde(default)]
    pub name: Option<String>,
    /// The overlay's numeric id of the node (what map links refer to).
    pub node_id: u64,
    pub listen: Vec<String>,
    pub degree: usize,
    /// Vivaldi coordinate `[x, y, height]` in ms, and its relative error.
    pub coord: [f64; 3],
    pub coord_error: f64,
    pub uptime_s: f64,
    /// What the node learned about its own CRIU dumps (absent from older nodes).
    #[serde(default)]
    pub predictor: Option<PredictorView>,
    /// How the confirmation probes of the maps this node started were answered (absent from
    /// older nodes).
    #[serde(default)]
    pub probes: Option<ProbesView>,
}

/// Counts of a node's map confirmation probes by what answered each, in `brume status`: a
/// connected peer's smoothed ping RTT, the kernel's RTT of the TCP handshake of a connection
/// the probe dialled, a ping, or nothing (the target could not be dialled).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbesView {
    pub srtt: u64,
    pub handshake: u64,
    pub ping: u64,
    pub unreached: u64,
}

/// The node's dump-duration models, in `brume status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictorView {
    /// The model in use (the least lost computation on this node's dumps so far).
    pub model: String,
    /// Real dumps learned.
    pub dumps: u64,
    /// The features PB-MLR uses now (seed 000's VIF and p-value selection on the node's own
    /// dumps), intercept first; empty from older nodes.
    #[serde(default)]
    pub pbmlr_features: Vec<String>,
    /// Why the stored state was refused at start (the prior is used then), if it was.
    #[serde(default)]
    pub refused: Option<String>,
}

/// One line of `brume peers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    pub peer_id: String,
    /// The peer's human name, if its record carries one.
    #[serde(default)]
    pub name: Option<String>,
    pub node_id: u64,
    pub addr: Option<String>,
    /// Smoothed RTT and its variation from pings, if any were answered yet.
    pub srtt_ms: Option<f64>,
    pub rttvar_ms: Option<f64>,
    /// RTT predicted from the two Vivaldi coordinates.
    pub predicted_ms: Option<f64>,
    /// How many links the peer published with its last state (issue 17's maps use them).
    #[serde(default)]
    pub links: usize,
    /// This node holds the link to the peer as a cone link (`brume node --cones`).
    #[serde(default)]
    pub cone: bool,
}

/// One line of `brume ps`: an instance and the service it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PsRow {
    pub service: String,
    #[serde(flatten)]
    pub instance: Row,
}

impl From<(String, Row)> for PsRow {
    fn from((service, instance): (String, Row)) -> Self {
        PsRow { service, instance }
    }
}

/// What `brume logs` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLines {
    pub task: String,
    pub replica: u32,
    /// The last lines the instance wrote, oldest first, without their line ends.
    pub lines: Vec<String>,
}

/// What `brume stop` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopped {
    pub service: String,
    /// The engine-level names of the instances stopped and removed.
    pub instances: Vec<String>,
}

/// What `brume gc` did: the items of the data directory nothing used, deleted now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Content-addressed chunks deleted.
    pub chunks: u64,
    /// Assembled artifacts (`images/<digest>.tar`) deleted.
    pub artifacts: u64,
    /// Process-engine image trees deleted.
    pub image_trees: u64,
    /// Bytes those took.
    pub freed_bytes: u64,
    /// Bytes of chunks, artifacts and image trees before and after.
    pub before_bytes: u64,
    pub after_bytes: u64,
    /// Bytes of the items still in use (kept).
    pub live_bytes: u64,
    /// The node's disk budget in bytes, if it has one.
    pub budget_bytes: Option<u64>,
    /// Docker images this node had prepared, removed because nothing uses them.
    pub images_removed: Vec<String>,
    /// Why every chunk was kept, if one was.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks_kept_because: Vec<String>,
}

/// The answer to each command (one variant per command; see
/// [`crate::Command`] for which answers which).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Status(StatusView),
    Peers(Vec<PeerView>),
    Map(NeighbourhoodMap),
    Deployed(Deployed),
    Ps(Vec<PsRow>),
    Logs(LogLines),
    Stopped(Stopped),
    Moved(Moved),
    Drained(Vec<DrainLine>),
    Gc(GcReport),
}

/// A progress report of a long command, sent before its reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Progress {
    /// A step of one instance of a deploy.
    Deploy(Event),
    /// A phase of a move (`migrate`, or one instance of a `drain`).
    Move(MoveProgress),
}
