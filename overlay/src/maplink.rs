//! Map messages on one long-lived stream per peer and direction (`/brume/map/4`).
//!
//! Why not request-response: a request-response message opens a fresh substream, and opening a
//! substream costs a multistream-select negotiation before the first byte is read, so each hop of
//! a map paid about 1.5 RTT instead of 0.5 (measured over the namespace testbed: a request to a
//! host 40 ms away arrived after 64 ms). Seed 004's budgets assume one-way delays, so far hosts
//! missed maps they were within. Here a node opens one outbound stream to each peer as soon as it
//! connects, and every later map message to that peer is a length-prefixed frame on it: one
//! one-way delay per message, in order.
//!
//! Data flow: the swarm task calls [`MapLinks::send`]; a writer task per peer owns the outbound
//! stream and writes frames. One acceptor task takes inbound streams and spawns a reader per
//! stream, which decodes frames with [`crate::wire`]'s size limit and hands them to the swarm
//! task as [`LinkEvent`]s through one channel. A frame that does not parse is reported as
//! [`MapFrame::Bad`] (so its sender is scored down) and the stream stays usable; a length over the
//! limit is reported and the stream is closed unread, since the bytes after it cannot be trusted.
//! An answer holding a node record whose signature does not hold ([`crate::signed_record`]) is
//! dropped whole and reported as a bad frame.
//! A link may rightly be quiet between frames, but not inside one: a frame whose bytes stop
//! coming for the idle timeout closes the stream, and its buffer grows only with the bytes that
//! arrive. A peer has at most [`LINKS_PER_PEER`] inbound links at once (one, plus those being
//! replaced, whose readers may not have noticed yet on a loaded machine); more are dropped unread.

use std::collections::HashMap;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::mpsc;
use tracing::{debug, trace};

use crate::behaviour::MapFrame;
use crate::frames::read_body;
use crate::limits::Slots;
use crate::mapping::Message;
use crate::wire::{self, WireError};

/// Version 4: node records in answers are signed by the node they describe.
pub const MAP_STREAM_PROTOCOL: StreamProtocol = StreamProtocol::new("/brume/map/4");

/// Frames queued for one peer beyond this are dropped (the map's timeouts cover the loss).
const QUEUE: usize = 1024;

/// The byte a reader sends when it takes a link, and how long a writer waits for it.
const WELCOME: u8 = 0xB7;
const WELCOME_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Inbound map links served at once per peer, and in all.
pub const LINKS_PER_PEER: usize = 16;
const LINKS_TOTAL: usize = 4096;

/// What the link tasks tell the swarm task.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// A frame read from `peer`.
    Frame { peer: PeerId, frame: MapFrame },
    /// The outbound link of this generation to `peer` failed and was dropped.
    Closed { peer: PeerId, generation: u64 },
}

struct Outbound {
    generation: u64,
    frames: mpsc::Sender<Vec<u8>>,
}

/// The map links of one node.
pub(crate) struct MapLinks {
    control: libp2p_stream::Control,
    outbound: HashMap<PeerId, Outbound>,
    events: mpsc::Sender<LinkEvent>,
    next_generation: u64,
    max_bytes: usize,
}

impl MapLinks {
    /// Starts accepting inbound map streams; events arrive on the returned receiver.
    pub(crate) fn start(
        mut control: libp2p_stream::Control,
        max_bytes: usize,
        mid_frame_timeout: Duration,
    ) -> (Self, mpsc::Receiver<LinkEvent>) {
        let (events, rx) = mpsc::channel(QUEUE);
        match control.accept(MAP_STREAM_PROTOCOL) {
            Ok(mut incoming) => {
                let events = events.clone();
                let slots = Slots::new(LINKS_PER_PEER, LINKS_TOTAL);
                tokio::spawn(async move {
                    while let Some((peer, stream)) = incoming.next().await {
                        let Some(slot) = slots.try_take(&peer) else {
                            debug!(%peer, "too many inbound map links from one peer; dropped");
                            continue;
                        };
                        let events = events.clone();
                        tokio::spawn(async move {
                            read_frames(peer, stream, events, max_bytes, mid_frame_timeout).await;
                            drop(slot);
                        });
                    }
                });
            }
            Err(e) => debug!(error = %e, "map streams already accepted elsewhere"),
        }
        let links = MapLinks {
            control,
            outbound: HashMap::new(),
            events,
            next_generation: 0,
            max_bytes,
        };
        (links, rx)
    }

    /// Opens the outbound link to `peer` unless one is up.
    pub(crate) fn open(&mut self, peer: PeerId) {
        if self.outbound.contains_key(&peer) {
            return;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let generation = self.next_generation;
        self.next_generation += 1;
        tokio::spawn(write_frames(
            peer,
            generation,
            self.control.clone(),
            rx,
            self.events.clone(),
        ));
        self.outbound.insert(
            peer,
            Outbound {
                generation,
                frames: tx,
            },
        );
    }

    /// Queues a message to `peer`, opening the link if needed. Returns false if it was dropped.
    pub(crate) fn send(&mut self, peer: PeerId, msg: &Message) -> bool {
        let bytes = match wire::encode(msg) {
            Ok(b) if b.len() <= self.max_bytes => b,
            Ok(b) => {
                debug!(%peer, len = b.len(), "map message over the size limit not sent");
                return false;
            }
            Err(e) => {
                debug!(%peer, error = %e, "map message not encodable");
                return false;
            }
        };
        self.open(peer);
        match self.outbound.get(&peer) {
            Some(link) => link.frames.try_send(bytes).is_ok(),
            None => false,
        }
    }

    /// Drops the outbound link to `peer` (its writer closes the stream).
    pub(crate) fn close(&mut self, peer: PeerId) {
        self.outbound.remove(&peer);
    }

    /// Forgets a failed link, unless a newer one has replaced it.
    pub(crate) fn on_closed(&mut self, peer: PeerId, generation: u64) {
        if self
            .outbound
            .get(&peer)
            .is_some_and(|l| l.generation == generation)
        {
            self.outbound.remove(&peer);
        }
    }
}

async fn write_frames(
    peer: PeerId,
    generation: u64,
    mut control: libp2p_stream::Control,
    mut frames: mpsc::Receiver<Vec<u8>>,
    events: mpsc::Sender<LinkEvent>,
) {
    // Opened at once, so the first map does not wait for the stream's negotiation.
    let mut stream = match open_link(&mut control, peer).await {
        Ok(s) => Some(s),
        Err(e) => {
            debug!(%peer, error = %e, "map link not opened yet");
            None
        }
    };
    while let Some(bytes) = frames.recv().await {
        // Two peers dialling each other at once end up with two connections and libp2p closes
        // one; a stream on it breaks although the peer is still connected. So a failed write
        // reopens the stream and sends the frame again, once.
        let mut sent = false;
        for attempt in 0..2 {
            if stream.is_none() {
                match open_link(&mut control, peer).await {
                    Ok(s) => {
                        trace!(%peer, attempt, "map link open");
                        stream = Some(s);
                    }
                    Err(e) => {
                        debug!(%peer, error = %e, "map link not opened");
                        break;
                    }
                }
            }
            let Some(s) = stream.as_mut() else { break };
            match write_frame(s, &bytes).await {
                Ok(()) => {
                    sent = true;
                    break;
                }
                Err(e) => {
                    debug!(%peer, error = %e, attempt, "map link broke");
                    stream = None;
                }
            }
        }
        if !sent {
            let _ = events.send(LinkEvent::Closed { peer, generation }).await;
            return;
        }
    }
    if let Some(mut s) = stream {
        let _ = s.close().await;
    }
}

/// Opens a map link and waits for the peer's one-byte welcome. libp2p-stream drops an inbound
/// stream when its acceptor is busy (it hands streams over through a one-slot channel); frames
/// written to such a stream would vanish without an error, so a link only counts once the peer's
/// reader has said hello. Tried three times.
async fn open_link(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
) -> std::io::Result<libp2p::Stream> {
    let mut last = std::io::Error::other("not tried");
    for attempt in 0..3u64 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
        }
        let mut s = match control.open_stream(peer, MAP_STREAM_PROTOCOL).await {
            Ok(s) => s,
            Err(e) => {
                last = std::io::Error::other(e.to_string());
                continue;
            }
        };
        let mut welcome = [0u8; 1];
        match tokio::time::timeout(WELCOME_TIMEOUT, s.read_exact(&mut welcome)).await {
            Ok(Ok(())) if welcome[0] == WELCOME => return Ok(s),
            Ok(Ok(())) => last = std::io::Error::other("unexpected welcome byte"),
            Ok(Err(e)) => last = e,
            Err(_) => last = std::io::Error::other("no welcome from the peer"),
        }
    }
    Err(last)
}

async fn write_frame(stream: &mut libp2p::Stream, bytes: &[u8]) -> std::io::Result<()> {
    stream
        .write_all(&(bytes.len() as u32).to_be_bytes())
        .await?;
    stream.write_all(bytes).await?;
    stream.flush().await
}

async fn read_frames(
    peer: PeerId,
    mut stream: libp2p::Stream,
    events: mpsc::Sender<LinkEvent>,
    max_bytes: usize,
    mid_frame_timeout: Duration,
) {
    if stream.write_all(&[WELCOME]).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 4];
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > max_bytes {
            let reason = WireError::TooLarge {
                len,
                limit: max_bytes,
            }
            .to_string();
            let frame = MapFrame::Bad {
                oversized: true,
                reason,
            };
            let _ = events.send(LinkEvent::Frame { peer, frame }).await;
            let _ = stream.close().await;
            return;
        }
        buf.clear();
        match tokio::time::timeout(mid_frame_timeout, read_body(&mut stream, len, &mut buf)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                debug!(%peer, len, got = buf.len(), "map frame stalled; link closed");
                let _ = stream.close().await;
                return;
            }
        }
        let frame = match wire::decode_with_limit(&buf, max_bytes) {
            Ok(mut msg) => {
                // Every hop checks records before it merges them, so an honest peer never
                // sends a bad one: the whole message goes, and its sender is scored down.
                let forged = msg.drop_forged();
                match forged.first() {
                    None => MapFrame::Msg(msg),
                    Some((id, why)) => MapFrame::Bad {
                        oversized: false,
                        reason: format!(
                            "an answer with {} forged node record(s), the first ({id}): {why}",
                            forged.len()
                        ),
                    },
                }
            }
            Err(e) => MapFrame::Bad {
                oversized: matches!(e, WireError::TooLarge { .. }),
                reason: e.to_string(),
            },
        };
        if events.send(LinkEvent::Frame { peer, frame }).await.is_err() {
            return;
        }
    }
}
