//! How a node's swarm reaches other nodes: TCP, then (in a private overlay) libp2p `pnet` with
//! the network key, then noise and yamux. Every protocol of a node, the overlay's own and the
//! raw streams the node opens for deploys, moves, transfers and tunnels, runs over these
//! connections, so the key guards all of them; no part of brume opens a socket to another node
//! any other way.
//!
//! Without a key it is the plain TCP + noise + yamux transport, as the overlay always had. The
//! swarm's connection timeout (libp2p's default, 10 s) bounds a handshake that goes nowhere,
//! which is how a key mismatch can end when neither side can parse the other's bytes.
//!
//! Every new TCP socket leaves the kernel's handshake RTT in [`HandshakeRtts`] before anything
//! runs on it, for the probes that dial (see [`crate::handshake_rtt`]).

use std::time::{Duration, Instant};

use futures::future::Either;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::upgrade::Version;
use libp2p::core::{ConnectedPoint, Transport};
use libp2p::identity::Keypair;
use libp2p::pnet::PnetConfig;
use libp2p::{noise, tcp, yamux, Swarm};

use crate::behaviour::BrumeBehaviour;
use crate::error::OverlayError;
use crate::handshake_rtt::{self, HandshakeRtts};
use crate::network_key::NetworkKey;

/// How long a connection that nothing uses stays up: the overlay decides which connections to
/// keep (membership's degree bounds), not the idle timer.
const IDLE: Duration = Duration::from_secs(365 * 86_400);

/// The swarm of a node with identity `key`, over TCP guarded by `network_key` if given, whose
/// new sockets' handshake RTTs go to `rtts`.
pub fn build(
    key: Keypair,
    network_key: Option<NetworkKey>,
    rtts: HandshakeRtts,
    behaviour: impl FnOnce(&Keypair) -> BrumeBehaviour,
) -> Result<Swarm<BrumeBehaviour>, OverlayError> {
    let transport_error = |e: &dyn std::fmt::Display| OverlayError::Transport(e.to_string());
    let tcp_config = tcp::Config::default().nodelay(true);
    let psk = network_key.map(|k| k.psk());
    let tcp = tcp::tokio::Transport::new(tcp_config).and_then(
        move |socket: tcp::tokio::TcpStream, _: ConnectedPoint| {
            if let (Some(rtt), Ok(remote)) =
                (handshake_rtt::of_socket(&socket.0), socket.0.peer_addr())
            {
                rtts.record(remote, rtt, Instant::now());
            }
            async move {
                match psk {
                    Some(psk) => PnetConfig::new(psk)
                        .handshake(socket)
                        .await
                        .map(Either::Left),
                    None => Ok(Either::Right(socket)),
                }
            }
        },
    );
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|key| {
            let noise = noise::Config::new(key)?;
            let transport = tcp
                .upgrade(Version::V1Lazy)
                .authenticate(noise)
                .multiplex(yamux::Config::default())
                .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(transport)
        })
        .map_err(|e| transport_error(&e))?
        .with_behaviour(behaviour)
        .map_err(|e| transport_error(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE))
        .build();
    Ok(swarm)
}
