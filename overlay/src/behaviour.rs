//! The libp2p behaviours of a brume node, composed the rust-libp2p way: one small
//! `NetworkBehaviour` per protocol, put together with `#[derive(NetworkBehaviour)]`.
//!
//! * `identify`: learns the peers' listen addresses (what membership hands out to newcomers);
//! * `ping`: RTT samples for the mapping core's estimators and Vivaldi;
//! * `/brume/join/1` (request-response, CBOR): join samples and shuffles ([`MembershipRequest`]);
//! * `/brume/state/1` (request-response, CBOR): state records exchanged both ways;
//! * `/brume/map/1` (request-response, [`MapCodec`]): the mapping core's messages, one per
//!   request, encoded with [`crate::wire`] and read with a size limit. A malformed or oversized
//!   request is still delivered (as [`MapFrame::Bad`]) so the shell knows whom to score down;
//! * `/brume/bulk/1` (libp2p-stream): raw streams for bulk transfers.

use std::io;
use std::time::Duration;

use futures::prelude::*;
use libp2p::request_response::{self, cbor, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{identify, identity, ping, StreamProtocol};
use serde::{Deserialize, Serialize};

use crate::mapping::Message;
use crate::neighbourhood::NodeRecord;
use crate::wire::{self, WireError};

pub const JOIN_PROTOCOL: StreamProtocol = StreamProtocol::new("/brume/join/1");
pub const STATE_PROTOCOL: StreamProtocol = StreamProtocol::new("/brume/state/1");
pub const MAP_PROTOCOL: StreamProtocol = StreamProtocol::new("/brume/map/1");
pub const BULK_PROTOCOL: StreamProtocol = StreamProtocol::new("/brume/bulk/1");
/// identify's protocol version string for brume nodes.
pub const IDENTIFY_VERSION: &str = "/brume/1.0.0";

/// Size limits of the CBOR protocols (a join or shuffle holds a few dozen addresses, a state
/// record a few numbers).
pub const MAX_JOIN_BYTES: u64 = 64 * 1024;
pub const MAX_STATE_BYTES: u64 = 4 * 1024;

/// A request of `/brume/join/1`. Addresses are multiaddr strings ending in `/p2p/<peer id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MembershipRequest {
    /// A newcomer asks for a sample of the member's peers.
    Join,
    /// A shuffle: the sender's offer.
    Shuffle { entries: Vec<String> },
}

/// The answer of `/brume/join/1`: a sample of addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MembershipResponse {
    pub entries: Vec<String>,
}

/// One inbound or outbound message of `/brume/map/1`.
#[derive(Debug, Clone, PartialEq)]
pub enum MapFrame {
    Msg(Message),
    /// What arrived could not be used (only ever produced when reading).
    Bad {
        oversized: bool,
        reason: String,
    },
}

/// The codec of `/brume/map/1`: the request is one CBOR [`Message`] ([`wire::encode`]) filling the
/// stream, read with a size limit; the response is empty (the stream closing acknowledges it).
#[derive(Debug, Clone)]
pub struct MapCodec {
    pub max_bytes: usize,
}

impl Default for MapCodec {
    fn default() -> Self {
        MapCodec {
            max_bytes: wire::MAX_MESSAGE_BYTES,
        }
    }
}

impl request_response::Codec for MapCodec {
    type Protocol = StreamProtocol;
    type Request = MapFrame;
    type Response = ();

    async fn read_request<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<MapFrame>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut buf = Vec::new();
        // One byte past the limit tells an oversized message from one that fits exactly.
        io.take(self.max_bytes as u64 + 1)
            .read_to_end(&mut buf)
            .await?;
        Ok(match wire::decode_with_limit(&buf, self.max_bytes) {
            Ok(msg) => MapFrame::Msg(msg),
            Err(e @ WireError::TooLarge { .. }) => MapFrame::Bad {
                oversized: true,
                reason: e.to_string(),
            },
            Err(e) => MapFrame::Bad {
                oversized: false,
                reason: e.to_string(),
            },
        })
    }

    async fn read_response<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<()>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut buf = Vec::new();
        io.take(16).read_to_end(&mut buf).await?;
        Ok(())
    }

    async fn write_request<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        req: MapFrame,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let MapFrame::Msg(msg) = req else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a bad frame cannot be sent",
            ));
        };
        let bytes = wire::encode(&msg).map_err(io::Error::other)?;
        if bytes.len() > self.max_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("map message of {} bytes over the limit", bytes.len()),
            ));
        }
        io.write_all(&bytes).await?;
        io.close().await
    }

    async fn write_response<T>(&mut self, _: &Self::Protocol, io: &mut T, _: ()) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.close().await
    }
}

/// Timings the behaviours are built with.
#[derive(Debug, Clone)]
pub struct BehaviourTimings {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub identify_interval: Duration,
    pub request_timeout: Duration,
}

/// Every protocol a brume node speaks.
#[derive(NetworkBehaviour)]
pub struct BrumeBehaviour {
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub join: cbor::Behaviour<MembershipRequest, MembershipResponse>,
    pub state: cbor::Behaviour<NodeRecord, NodeRecord>,
    pub map: request_response::Behaviour<MapCodec>,
    pub bulk: libp2p_stream::Behaviour,
}

impl BrumeBehaviour {
    pub fn new(key: &identity::Keypair, t: &BehaviourTimings) -> Self {
        let rr = request_response::Config::default().with_request_timeout(t.request_timeout);
        let join_codec = cbor::codec::Codec::default()
            .set_request_size_maximum(MAX_JOIN_BYTES)
            .set_response_size_maximum(MAX_JOIN_BYTES);
        let state_codec = cbor::codec::Codec::default()
            .set_request_size_maximum(MAX_STATE_BYTES)
            .set_response_size_maximum(MAX_STATE_BYTES);
        BrumeBehaviour {
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_VERSION.to_string(), key.public())
                    .with_interval(t.identify_interval),
            ),
            ping: ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(t.ping_interval)
                    .with_timeout(t.ping_timeout),
            ),
            join: request_response::Behaviour::with_codec(
                join_codec,
                [(JOIN_PROTOCOL, ProtocolSupport::Full)],
                rr.clone(),
            ),
            state: request_response::Behaviour::with_codec(
                state_codec,
                [(STATE_PROTOCOL, ProtocolSupport::Full)],
                rr.clone(),
            ),
            map: request_response::Behaviour::with_codec(
                MapCodec::default(),
                [(MAP_PROTOCOL, ProtocolSupport::Full)],
                rr,
            ),
            bulk: libp2p_stream::Behaviour::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{MapId, NodeId};
    use futures::io::Cursor;
    use request_response::Codec as _;

    fn run<F: Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn map_codec_round_trips_and_flags_bad_input() {
        let msg = Message::Ack {
            id: MapId {
                origin: NodeId(3),
                seq: 1,
            },
            answer_follows: true,
        };
        let mut codec = MapCodec { max_bytes: 64 };
        let mut out = Cursor::new(Vec::new());
        run(codec.write_request(&MAP_PROTOCOL, &mut out, MapFrame::Msg(msg.clone()))).unwrap();
        let bytes = out.into_inner();
        let got = run(codec.read_request(&MAP_PROTOCOL, &mut Cursor::new(bytes))).unwrap();
        assert_eq!(got, MapFrame::Msg(msg));
        let got = run(codec.read_request(&MAP_PROTOCOL, &mut Cursor::new(vec![0xff; 10]))).unwrap();
        assert!(matches!(
            got,
            MapFrame::Bad {
                oversized: false,
                ..
            }
        ));
        let got =
            run(codec.read_request(&MAP_PROTOCOL, &mut Cursor::new(vec![0u8; 1000]))).unwrap();
        assert!(matches!(
            got,
            MapFrame::Bad {
                oversized: true,
                ..
            }
        ));
    }
}
