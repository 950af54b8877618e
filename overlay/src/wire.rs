//! CBOR encoding of `/brume/map/1` messages with a size limit on every read.
//!
//! Bytes from the network are hostile until proven otherwise: [`decode`] refuses anything larger
//! than the limit before parsing it, bounds nesting, and returns an error (never panics) on
//! malformed input, so the shell can drop the message and lower the sender's score.

use crate::mapping::Message;

/// The largest map message accepted by default (a 10,000-node map fits with room to spare).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Nesting deeper than this is refused (our messages nest less than 8 levels).
const MAX_DEPTH: usize = 32;

/// Why a message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("message of {len} bytes exceeds the {limit}-byte limit; dropped unread")]
    TooLarge { len: usize, limit: usize },
    #[error("malformed map message: {0}")]
    Malformed(String),
    #[error("cannot encode map message: {0}")]
    Encode(String),
}

/// Encodes a message as CBOR.
pub fn encode(msg: &Message) -> Result<Vec<u8>, WireError> {
    let mut buf = Vec::new();
    ciborium::ser::into_writer(msg, &mut buf).map_err(|e| WireError::Encode(e.to_string()))?;
    Ok(buf)
}

/// Decodes a message with the default size limit.
pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
    decode_with_limit(bytes, MAX_MESSAGE_BYTES)
}

/// Decodes a message, refusing inputs longer than `limit` bytes.
pub fn decode_with_limit(bytes: &[u8], limit: usize) -> Result<Message, WireError> {
    if bytes.len() > limit {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    ciborium::de::from_reader_with_recursion_limit(bytes, MAX_DEPTH)
        .map_err(|e| WireError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{MapId, NodeId};
    use crate::mapping::MapRequest;
    use crate::neighbourhood::{Link, NeighbourhoodMap, NodeRecord};

    fn request() -> Message {
        Message::Request(MapRequest {
            id: MapId {
                origin: NodeId(1),
                seq: 7,
            },
            origin: NodeId(1),
            budget_ms: 42.5,
            wait_ms: 50.0,
            skip: vec![NodeId(1), NodeId(3)],
            reach: Some(crate::mapping::Reach {
                budget_ms: 60.0,
                coord: crate::vivaldi::Coord::origin(),
                error: 0.2,
                proven: false,
                extend: true,
                report: false,
            }),
        })
    }

    #[test]
    fn round_trips() {
        let mut map = NeighbourhoodMap::single(NodeRecord::bare(NodeId(4)));
        map.links.push(Link::new(NodeId(4), NodeId(1), 3.5));
        for msg in [
            request(),
            Message::Ack {
                id: MapId {
                    origin: NodeId(1),
                    seq: 7,
                },
                answer_follows: false,
            },
            Message::Answer {
                id: MapId {
                    origin: NodeId(1),
                    seq: 7,
                },
                map: map.clone(),
            },
            Message::Report {
                id: MapId {
                    origin: NodeId(1),
                    seq: 7,
                },
                map,
                children: vec![NodeId(5), NodeId(6)],
            },
        ] {
            let bytes = encode(&msg).unwrap();
            assert_eq!(decode(&bytes).unwrap(), msg);
        }
    }

    #[test]
    fn refuses_oversized_and_malformed_input() {
        let bytes = encode(&request()).unwrap();
        assert!(matches!(
            decode_with_limit(&bytes, bytes.len() - 1),
            Err(WireError::TooLarge { .. })
        ));
        assert!(matches!(
            decode(&bytes[..bytes.len() / 2]),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(decode(&[]), Err(WireError::Malformed(_))));
        assert!(matches!(decode(&[0xff; 64]), Err(WireError::Malformed(_))));
        // An array header claiming 2^32 entries must not allocate them.
        assert!(decode(&[0x9b, 0, 0, 0, 1, 0, 0, 0, 0]).is_err());
        // Deep nesting is refused, not a stack overflow.
        assert!(decode(&[0x81; 10_000]).is_err());
        // Every truncation and every single-byte corruption errors or decodes: never panics.
        for cut in 0..bytes.len() {
            let _ = decode(&bytes[..cut]);
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xa5;
            let _ = decode(&b);
        }
    }
}
