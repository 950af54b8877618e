//! What a node is started with: its identity, the periods of its protocols, its degree bounds
//! and the tuning of its sans-IO cores. [`crate::swarm`] reads it once, when the node starts.

use std::collections::HashSet;
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};

use crate::limits::StreamLimits;
use crate::mapping::MapConfig;
use crate::membership::MembershipConfig;
use crate::neighbourhood::NodeRecord;
use crate::network_key::NetworkKey;
use crate::rate::Rate;

/// How a node gets its libp2p identity.
#[derive(Debug, Clone, Default)]
pub enum Identity {
    /// A fresh random ed25519 key.
    #[default]
    Generate,
    /// An ed25519 key derived from 32 secret bytes (the same seed gives the same peer id).
    Seed([u8; 32]),
    /// A given key.
    Keypair(Keypair),
}

/// Periods and timeouts of the node.
#[derive(Debug, Clone)]
pub struct Timings {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub identify_interval: Duration,
    /// How often state records are exchanged with every peer.
    pub state_interval: Duration,
    /// request-response timeout of the join, state and map protocols.
    pub request_timeout: Duration,
    /// Mean time between two shuffles.
    pub shuffle_interval: Duration,
    /// How often degree bounds are checked.
    pub maintain_interval: Duration,
    /// How long [`Overlay::spawn`] waits for its listeners to report their addresses.
    pub listen_timeout: Duration,
    /// How often a node with cone links ([`OverlayConfig::cones`]) chooses them again: each
    /// round replaces some of them (Vivaldi coordinates keep moving), so rounds are rare.
    pub cone_interval: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            ping_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(10),
            identify_interval: Duration::from_secs(300),
            state_interval: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            shuffle_interval: Duration::from_secs(10),
            maintain_interval: Duration::from_secs(1),
            listen_timeout: Duration::from_secs(5),
            cone_interval: Duration::from_secs(300),
        }
    }
}

/// Everything needed to start a node.
#[derive(Debug, Clone)]
pub struct OverlayConfig {
    /// Addresses to listen on (`/ip4/127.0.0.1/tcp/0` picks a free port).
    pub listen: Vec<Multiaddr>,
    /// Members to join through (any member will do); empty for the first node.
    pub bootstrap: Vec<Multiaddr>,
    pub min_degree: usize,
    pub max_degree: usize,
    /// Cone links (issue 17, [`crate::cones`]): the node also links to the nearest node it knows
    /// of (its peers and the links they publish) in each of this many cones around its Vivaldi
    /// coordinate, every [`Timings::cone_interval`], beyond `max_degree`. 0: none.
    pub cones: usize,
    pub identity: Identity,
    /// The resources this node advertises (its id and coordinate are filled in by the node).
    pub record: Option<NodeRecord>,
    pub timings: Timings,
    /// Mapping protocol tuning.
    pub map: MapConfig,
    /// Membership tuning; `min_degree`, `max_degree` and the shuffle and maintenance intervals
    /// above override the corresponding fields.
    pub membership: MembershipConfig,
    /// The private overlay's pre-shared key: with one, only nodes holding the same key can
    /// complete a connection ([`crate::network_key`]); without, the overlay is open.
    pub network_key: Option<NetworkKey>,
    /// The only peers this node connects to or accepts (`None`: any; see [`crate::gate`]).
    pub allowed_peers: Option<HashSet<PeerId>>,
    /// Caps on the inbound streams of the node's own protocols (deploy, move, transfer), applied
    /// by [`crate::OverlayHandle::accept_limited`].
    pub stream_limits: StreamLimits,
    /// Join, shuffle and state requests one peer may send: an honest peer sends a state request
    /// every few seconds and a shuffle now and then; past the rate a request is refused
    /// unanswered (the asker sees it fail) before it costs a record check or a membership update.
    pub request_rate: Rate,
}

impl Default for OverlayConfig {
    fn default() -> Self {
        OverlayConfig {
            listen: vec!["/ip4/0.0.0.0/tcp/0".parse().expect("a valid multiaddr")],
            bootstrap: Vec::new(),
            min_degree: 4,
            max_degree: 12,
            cones: 0,
            identity: Identity::Generate,
            record: None,
            timings: Timings::default(),
            map: network_map_config(),
            membership: MembershipConfig::default(),
            network_key: None,
            allowed_peers: None,
            stream_limits: StreamLimits::default(),
            request_rate: Rate::per_second(10, 40),
        }
    }
}

/// The mapping core's tuning for real networks: [`MapConfig::default`] is tuned for the
/// simulator, where handling a message takes no time. Over libp2p every message opens a yamux
/// stream and crosses two tasks, which on a loaded two-core machine in a debug build can take
/// tens of milliseconds even on loopback, so a child gets at least 250 ms to acknowledge and each
/// hop keeps 2 ms in hand. The originator's grace, its wait for answers beyond the budget's
/// own, is at least 80 ms: answers that climb back several hops, each handled by a busy host,
/// come later than the sum of the hops' RTTs (on a 48-daemon testbed on two cores, a grace of
/// 20 ms left 42% of the hosts within 25 ms out of the maps, 80 ms 12%: BENCHMARKS.md "Direct
/// maps of real daemons"). A probe of a node the origin is not connected to dials it first, and
/// its result, the kernel's RTT of the TCP handshake ([`crate::handshake_rtt`]), is read when
/// the connection is up (after the Noise handshake and stream negotiation: three RTTs or more),
/// so the origin waits six budgets for it, at most a second beyond the budget and at least
/// 250 ms; the RTT measured must still fit the budget.
pub fn network_map_config() -> MapConfig {
    MapConfig {
        ack_timeout_min_ms: 250.0,
        hop_guard_ms: 2.0,
        grace_min_ms: 80.0,
        probe_wait_factor: 6.0,
        probe_wait_extra_max_ms: 1_000.0,
        probe_wait_min_ms: 250.0,
        ..MapConfig::default()
    }
}
