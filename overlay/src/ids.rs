//! Identifiers and time values shared by the sans-IO cores.
//!
//! The cores never read a clock: every entry point takes the current [`Time`] from its caller (the
//! libp2p shell passes a monotonic clock, the simulator its virtual clock). Nodes are named by a
//! compact [`NodeId`]; the shell keeps the table from libp2p `PeerId`s to these ids.

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

/// A node's identifier inside the overlay core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// The core's id of a peer: the first 8 bytes (big-endian) of a 64-bit FNV-1a hash of the peer
/// id's bytes, passed through SplitMix64's finalizer so every bit depends on every input byte.
pub fn node_id_of(peer: &PeerId) -> NodeId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in peer.to_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    NodeId(h ^ (h >> 31))
}

/// A point in time, in microseconds since an arbitrary epoch chosen by the caller.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Time(pub u64);

impl Time {
    /// This time plus `ms` milliseconds (negative or non-finite values count as 0).
    pub fn plus_ms(self, ms: f64) -> Time {
        let us = if ms.is_finite() && ms > 0.0 {
            (ms * 1000.0).round() as u64
        } else {
            0
        };
        Time(self.0.saturating_add(us))
    }

    /// Milliseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn ms_since(self, earlier: Time) -> f64 {
        self.0.saturating_sub(earlier.0) as f64 / 1000.0
    }
}

/// A map request's unique id: the originator and its own sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MapId {
    pub origin: NodeId,
    pub seq: u64,
}
