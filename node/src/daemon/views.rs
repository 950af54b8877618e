//! What the control API answers, in the node's own terms: plain serde types, so neither the
//! socket protocol nor the CLI depends on libp2p's types.

use serde::{Deserialize, Serialize};

/// `brume status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub peer_id: String,
    pub node_id: u64,
    pub listen: Vec<String>,
    pub degree: usize,
    /// Vivaldi coordinate `[x, y, height]` in ms, and its relative error.
    pub coord: [f64; 3],
    pub coord_error: f64,
    pub uptime_s: f64,
}

/// One line of `brume peers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    pub peer_id: String,
    pub node_id: u64,
    pub addr: Option<String>,
    /// Smoothed RTT and its variation from pings, if any were answered yet.
    pub srtt_ms: Option<f64>,
    pub rttvar_ms: Option<f64>,
    /// RTT predicted from the two Vivaldi coordinates.
    pub predicted_ms: Option<f64>,
}
