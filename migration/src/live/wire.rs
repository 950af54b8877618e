//! The migration protocol's messages and their framing (`/brume/migrate/2`).
//!
//! Why hand-rolled: chunk batches are most of the bytes and must not be copied through a
//! generic serializer; the rest is a handful of small messages. Every frame is a big-endian u32
//! length, then a tag byte and the body; a frame longer than [`MAX_FRAME`] is refused before
//! anything is allocated, and every count inside a frame is checked against what is left of it,
//! so a hostile or broken peer cannot make either side allocate without bound.
//!
//! Source to target: [`Message::Hello`], then per round any number of [`Message::Chunks`] and one
//! [`Message::RoundEnd`] (with `last` set on the final round), or [`Message::Abort`]. Target to
//! source: [`Message::Ack`] after each pre-copy round is applied, then [`Message::Restored`] or
//! [`Message::Failed`] after the last one (or [`Message::Failed`] at any time).
//!
//! Version 2 adds the target's chunk store ([`super::store`]), in pre-copy only: the target
//! answers the hello with [`Message::Welcome`] (how many chunks its store holds; the source reads
//! it after round 1's dump, so it costs no round trip of its own). If the store holds any, the
//! source sends round 1's distinct digests in a [`Message::Query`] before its chunks, and the
//! target answers [`Message::Holding`], a bitmap of those it took from its store (read and
//! checked); the source treats those as acknowledged. An empty store or none: no query, the
//! version 1 exchange. In post-copy
//! ([`Mode::PostCopy`]) the one round carries no memory, and from its end on both sides also
//! send [`Message::Pages`] (the page-server conversation, relayed) until the target says
//! [`Message::PagesDone`]. Post-copy with tracking sends, before that one round, tracked
//! rounds of pages ([`Message::Tracked`], each round closed by [`Message::TrackedEnd`] and
//! acknowledged) and, after the frozen dump, one more of the pages written since: the target
//! answers the lazy-pages daemon from them. When that last round would take longer to cross the
//! link than the freeze should wait, the source names its pages instead ([`Message::Stale`]):
//! the target drops them from its replica and they come from the source's page server after
//! the restore, like any page the replica lacks.
//!
//! Version 3: the post-copy target also answers the hello with [`Message::Welcome`] (no store:
//! 0 chunks), which the source reads before its first round, so that the target's first
//! message precedes every page in both modes; and the target's proxy answers its lazy-pages
//! daemon's close itself, the source closing its page server (which ends its task) only on
//! [`Message::PagesDone`].

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::chunks::{ChunkRef, Digest, CHUNK_SIZE};
use crate::compress::Level;

/// The protocol's name, for a stream negotiated over the overlay.
pub const PROTOCOL: &str = "/brume/migrate/2";
/// The version in [`Message::Hello`].
pub const VERSION: u32 = 3;
/// The largest frame either side accepts: a recipe of a 7 GiB image fits.
pub const MAX_FRAME: usize = 64 << 20;
/// The most chunks one [`Message::Chunks`] may carry.
pub const MAX_BATCH: usize = 1024;
/// The most digests one [`Message::Query`] may name (a 64 GiB image's distinct chunks; the
/// frame is then 32 MiB, within [`MAX_FRAME`]).
pub const MAX_QUERY: usize = 1 << 20;
/// The longest file name or reason string.
const MAX_TEXT: usize = 4096;

/// How the source moves the task, as announced in [`Message::Hello`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Iterative pre-copy rounds, then a final one.
    PreCopy,
    /// One round: freeze, dump, copy, restore.
    StopAndCopy,
    /// Post-copy: freeze, dump everything but memory, restore at once; pages follow on demand
    /// and in the background through CRIU's lazy pages ([`crate::lazy`]).
    PostCopy,
}

/// One step of a file's recipe, relative to the recipe the same file had in the previous round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecipeOp {
    /// The next `n` chunks are the previous recipe's chunks at the same positions.
    Same(u32),
    /// The next chunks, named in full.
    Refs(Vec<ChunkRef>),
}

/// A file of the round's images: its name, length and recipe (as a diff).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRecipe {
    pub name: String,
    pub len: u64,
    pub ops: Vec<RecipeOp>,
}

/// Every message of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Hello {
        version: u32,
        mode: Mode,
        pid: u32,
        memory_bytes: u64,
    },
    /// Chunks the target lacks, concatenated in `refs` order and compressed together at `level`.
    Chunks {
        level: Level,
        refs: Vec<ChunkRef>,
        payload: Vec<u8>,
    },
    /// The round's images are complete: rebuild them from these recipes (and, if `last`,
    /// restore the task from them).
    RoundEnd {
        round: u32,
        last: bool,
        files: Vec<FileRecipe>,
    },
    /// The source gives up; the target drops what it received.
    Abort { reason: String },
    /// The target applied round `round` and holds `chunks` chunks.
    Ack { round: u32, chunks: u64 },
    /// The task runs on the target as `pid`.
    Restored {
        pid: u32,
        rebuild_us: u64,
        restore_us: u64,
    },
    /// The target cannot go on.
    Failed { reason: String },
    /// Post-copy: bytes between the source's page server and the target's lazy-pages daemon,
    /// either way, relayed as they are.
    Pages { data: Vec<u8> },
    /// Post-copy: the target holds every page; the migration is over.
    PagesDone,
    /// Pre-copy, target, right after the hello: its chunk store holds `store_chunks` chunks
    /// (0: no store, or an empty one; the source then sends no [`Message::Query`]).
    Welcome { store_chunks: u64 },
    /// Source, before round 1's chunks: which of these (distinct) chunks does your store hold?
    Query { digests: Vec<Digest> },
    /// Target: bit `i` (byte `i / 8`, bit `i % 8`) set if it took `digests[i]` of the query
    /// from its store; exactly `ceil(n / 8)` bytes.
    Holding { bitmap: Vec<u8> },
    /// Post-copy with tracking, source: pages of process `pid` (its PID in the task's
    /// namespace, as CRIU's images name it) read by the dirty-page tracker ([`crate::track`]),
    /// `runs` of (start address, pages), their bytes back to back, compressed at `level`.
    Tracked {
        pid: u32,
        level: Level,
        runs: Vec<(u64, u32)>,
        payload: Vec<u8>,
    },
    /// Post-copy with tracking, source: tracked round `round` is complete; the target answers
    /// [`Message::Ack`] with the pages its replica holds.
    TrackedEnd { round: u32 },
    /// Post-copy with tracking, source, after the frozen dump: process `pid` wrote these `runs`
    /// of (start address, pages) since the last tracked round, and they are not sent: the
    /// target drops them from its replica, so the page proxy asks the source's page server for
    /// them after the restore. Sent instead of a last [`Message::Tracked`] round whose pages
    /// would take too long to cross the link ([`super::TrackedPlan::final_inline`]). A target
    /// of an older build does not know it and fails the move, which thaws the task on the
    /// source.
    Stale { pid: u32, runs: Vec<(u64, u32)> },
}

/// The most runs one [`Message::Tracked`] may carry.
pub const MAX_RUNS: usize = 1 << 16;
/// The most page bytes one [`Message::Tracked`] may carry, uncompressed (16 MiB).
pub const MAX_TRACKED_BYTES: usize = 16 << 20;

/// Why bytes from the peer are not a valid message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("a frame of {len} bytes exceeds the limit of {MAX_FRAME}: refused")]
    FrameTooLarge { len: usize },
    #[error("a malformed {what} message: {why}")]
    Malformed { what: &'static str, why: String },
    #[error("unknown message tag {0}: is the peer speaking another protocol version?")]
    UnknownTag(u8),
}

fn malformed(what: &'static str, why: impl Into<String>) -> WireError {
    WireError::Malformed {
        what,
        why: why.into(),
    }
}

const T_HELLO: u8 = 1;
const T_CHUNKS: u8 = 2;
const T_ROUND_END: u8 = 3;
const T_ABORT: u8 = 4;
const T_ACK: u8 = 5;
const T_RESTORED: u8 = 6;
const T_FAILED: u8 = 7;
const T_PAGES: u8 = 8;
const T_PAGES_DONE: u8 = 9;
const T_WELCOME: u8 = 10;
const T_QUERY: u8 = 11;
const T_HOLDING: u8 = 12;
const T_TRACKED: u8 = 13;
const T_TRACKED_END: u8 = 14;
const T_STALE: u8 = 15;

fn level_byte(l: Level) -> u8 {
    match l {
        Level::None => 0,
        Level::Zstd1 => 1,
        Level::Zstd3 => 3,
        Level::Zstd9 => 9,
    }
}

fn byte_level(b: u8) -> Option<Level> {
    Some(match b {
        0 => Level::None,
        1 => Level::Zstd1,
        3 => Level::Zstd3,
        9 => Level::Zstd9,
        _ => return None,
    })
}

struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn text(&mut self, s: &str) {
        let s = &s.as_bytes()[..s.len().min(MAX_TEXT)];
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s);
    }
    fn chunk_ref(&mut self, r: &ChunkRef) {
        self.0.extend_from_slice(&r.digest.0);
        self.u32(r.len);
    }
}

struct Dec<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(malformed(
                self.what,
                format!("needs {n} more bytes, {} left", self.buf.len()),
            ));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }
    /// A count of items of at least `item_size` bytes each, checked against what is left.
    fn count(&mut self, item_size: usize, max: usize) -> Result<usize, WireError> {
        let n = self.u32()? as usize;
        if n > max || n.saturating_mul(item_size) > self.buf.len() {
            return Err(malformed(
                self.what,
                format!("a count of {n} does not fit the frame"),
            ));
        }
        Ok(n)
    }
    fn text(&mut self) -> Result<String, WireError> {
        let n = self.count(1, MAX_TEXT)?;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| malformed(self.what, "text is not UTF-8"))
    }
    fn chunk_ref(&mut self) -> Result<ChunkRef, WireError> {
        let mut d = [0u8; 32];
        d.copy_from_slice(self.take(32)?);
        let len = self.u32()?;
        if len == 0 || len as usize > CHUNK_SIZE {
            return Err(malformed(self.what, format!("a chunk of {len} bytes")));
        }
        Ok(ChunkRef {
            digest: Digest(d),
            len,
        })
    }
    fn end(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(malformed(
                self.what,
                format!("{} trailing bytes", self.buf.len()),
            ))
        }
    }
}

impl Message {
    /// The message as one frame: length, tag, body.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc(vec![0, 0, 0, 0]);
        match self {
            Message::Hello {
                version,
                mode,
                pid,
                memory_bytes,
            } => {
                e.u8(T_HELLO);
                e.u32(*version);
                e.u8(match mode {
                    Mode::PreCopy => 0,
                    Mode::StopAndCopy => 1,
                    Mode::PostCopy => 2,
                });
                e.u32(*pid);
                e.u64(*memory_bytes);
            }
            Message::Chunks {
                level,
                refs,
                payload,
            } => {
                e.u8(T_CHUNKS);
                e.u8(level_byte(*level));
                e.u32(refs.len() as u32);
                for r in refs {
                    e.chunk_ref(r);
                }
                e.u32(payload.len() as u32);
                e.0.extend_from_slice(payload);
            }
            Message::RoundEnd { round, last, files } => {
                e.u8(T_ROUND_END);
                e.u32(*round);
                e.u8(u8::from(*last));
                e.u32(files.len() as u32);
                for f in files {
                    e.text(&f.name);
                    e.u64(f.len);
                    e.u32(f.ops.len() as u32);
                    for op in &f.ops {
                        match op {
                            RecipeOp::Same(n) => {
                                e.u8(0);
                                e.u32(*n);
                            }
                            RecipeOp::Refs(refs) => {
                                e.u8(1);
                                e.u32(refs.len() as u32);
                                for r in refs {
                                    e.chunk_ref(r);
                                }
                            }
                        }
                    }
                }
            }
            Message::Abort { reason } => {
                e.u8(T_ABORT);
                e.text(reason);
            }
            Message::Ack { round, chunks } => {
                e.u8(T_ACK);
                e.u32(*round);
                e.u64(*chunks);
            }
            Message::Restored {
                pid,
                rebuild_us,
                restore_us,
            } => {
                e.u8(T_RESTORED);
                e.u32(*pid);
                e.u64(*rebuild_us);
                e.u64(*restore_us);
            }
            Message::Failed { reason } => {
                e.u8(T_FAILED);
                e.text(reason);
            }
            Message::Pages { data } => {
                e.u8(T_PAGES);
                e.u32(data.len() as u32);
                e.0.extend_from_slice(data);
            }
            Message::PagesDone => e.u8(T_PAGES_DONE),
            Message::Welcome { store_chunks } => {
                e.u8(T_WELCOME);
                e.u64(*store_chunks);
            }
            Message::Query { digests } => {
                e.u8(T_QUERY);
                e.u32(digests.len() as u32);
                for d in digests {
                    e.0.extend_from_slice(&d.0);
                }
            }
            Message::Holding { bitmap } => {
                e.u8(T_HOLDING);
                e.u32(bitmap.len() as u32);
                e.0.extend_from_slice(bitmap);
            }
            Message::Tracked {
                pid,
                level,
                runs,
                payload,
            } => {
                e.u8(T_TRACKED);
                e.u32(*pid);
                e.u8(level_byte(*level));
                e.u32(runs.len() as u32);
                for (start, pages) in runs {
                    e.u64(*start);
                    e.u32(*pages);
                }
                e.u32(payload.len() as u32);
                e.0.extend_from_slice(payload);
            }
            Message::TrackedEnd { round } => {
                e.u8(T_TRACKED_END);
                e.u32(*round);
            }
            Message::Stale { pid, runs } => {
                e.u8(T_STALE);
                e.u32(*pid);
                e.u32(runs.len() as u32);
                for (start, pages) in runs {
                    e.u64(*start);
                    e.u32(*pages);
                }
            }
        }
        let len = (e.0.len() - 4) as u32;
        e.0[..4].copy_from_slice(&len.to_be_bytes());
        e.0
    }

    /// Decodes one frame's body (tag and fields, without the length).
    pub fn decode(body: &[u8]) -> Result<Message, WireError> {
        let (&tag, rest) = body
            .split_first()
            .ok_or_else(|| malformed("empty", "a frame without a tag"))?;
        let what = match tag {
            T_HELLO => "hello",
            T_CHUNKS => "chunks",
            T_ROUND_END => "round-end",
            T_ABORT => "abort",
            T_ACK => "ack",
            T_RESTORED => "restored",
            T_FAILED => "failed",
            T_PAGES => "pages",
            T_PAGES_DONE => "pages-done",
            T_WELCOME => "welcome",
            T_QUERY => "query",
            T_HOLDING => "holding",
            T_TRACKED => "tracked",
            T_TRACKED_END => "tracked-end",
            T_STALE => "stale",
            other => return Err(WireError::UnknownTag(other)),
        };
        let mut d = Dec { buf: rest, what };
        let msg = match tag {
            T_HELLO => Message::Hello {
                version: d.u32()?,
                mode: match d.u8()? {
                    0 => Mode::PreCopy,
                    1 => Mode::StopAndCopy,
                    2 => Mode::PostCopy,
                    m => return Err(malformed(what, format!("unknown mode {m}"))),
                },
                pid: d.u32()?,
                memory_bytes: d.u64()?,
            },
            T_CHUNKS => {
                let level = byte_level(d.u8()?)
                    .ok_or_else(|| malformed(what, "unknown compression level"))?;
                let n = d.count(36, MAX_BATCH)?;
                let refs = (0..n)
                    .map(|_| d.chunk_ref())
                    .collect::<Result<Vec<_>, _>>()?;
                let len = d.count(1, MAX_FRAME)?;
                let payload = d.take(len)?.to_vec();
                Message::Chunks {
                    level,
                    refs,
                    payload,
                }
            }
            T_ROUND_END => {
                let round = d.u32()?;
                let last = d.u8()? != 0;
                let nfiles = d.count(16, 1 << 16)?;
                let mut files = Vec::with_capacity(nfiles);
                for _ in 0..nfiles {
                    let name = d.text()?;
                    let len = d.u64()?;
                    let nops = d.count(5, MAX_FRAME)?;
                    let mut ops = Vec::with_capacity(nops);
                    for _ in 0..nops {
                        ops.push(match d.u8()? {
                            0 => RecipeOp::Same(d.u32()?),
                            1 => {
                                let n = d.count(36, MAX_FRAME)?;
                                RecipeOp::Refs(
                                    (0..n).map(|_| d.chunk_ref()).collect::<Result<_, _>>()?,
                                )
                            }
                            op => return Err(malformed(what, format!("unknown recipe op {op}"))),
                        });
                    }
                    files.push(FileRecipe { name, len, ops });
                }
                Message::RoundEnd { round, last, files }
            }
            T_ABORT => Message::Abort { reason: d.text()? },
            T_ACK => Message::Ack {
                round: d.u32()?,
                chunks: d.u64()?,
            },
            T_RESTORED => Message::Restored {
                pid: d.u32()?,
                rebuild_us: d.u64()?,
                restore_us: d.u64()?,
            },
            T_FAILED => Message::Failed { reason: d.text()? },
            T_PAGES => {
                let len = d.count(1, MAX_FRAME)?;
                Message::Pages {
                    data: d.take(len)?.to_vec(),
                }
            }
            T_WELCOME => Message::Welcome {
                store_chunks: d.u64()?,
            },
            T_QUERY => {
                let n = d.count(32, MAX_QUERY)?;
                let digests = (0..n)
                    .map(|_| {
                        let mut b = [0u8; 32];
                        b.copy_from_slice(d.take(32)?);
                        Ok(Digest(b))
                    })
                    .collect::<Result<_, WireError>>()?;
                Message::Query { digests }
            }
            T_HOLDING => {
                let n = d.count(1, MAX_QUERY.div_ceil(8))?;
                Message::Holding {
                    bitmap: d.take(n)?.to_vec(),
                }
            }
            T_TRACKED => {
                let pid = d.u32()?;
                let level = byte_level(d.u8()?)
                    .ok_or_else(|| malformed(what, "unknown compression level"))?;
                let n = d.count(12, MAX_RUNS)?;
                let mut runs = Vec::with_capacity(n);
                let mut bytes = 0usize;
                for _ in 0..n {
                    let start = d.u64()?;
                    let pages = d.u32()?;
                    bytes = bytes.saturating_add(pages as usize * 4096);
                    runs.push((start, pages));
                }
                if bytes > MAX_TRACKED_BYTES {
                    return Err(malformed(what, format!("{bytes} bytes of pages")));
                }
                let len = d.count(1, MAX_FRAME)?;
                Message::Tracked {
                    pid,
                    level,
                    runs,
                    payload: d.take(len)?.to_vec(),
                }
            }
            T_TRACKED_END => Message::TrackedEnd { round: d.u32()? },
            T_STALE => {
                let pid = d.u32()?;
                let n = d.count(12, MAX_RUNS)?;
                let runs = (0..n)
                    .map(|_| Ok((d.u64()?, d.u32()?)))
                    .collect::<Result<_, WireError>>()?;
                Message::Stale { pid, runs }
            }
            _ => Message::PagesDone,
        };
        d.end()?;
        Ok(msg)
    }
}

/// A [`Message::Holding`] bitmap of `bits`, in order.
pub fn to_bitmap(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, _) in bits.iter().enumerate().filter(|(_, b)| **b) {
        out[i / 8] |= 1 << (i % 8);
    }
    out
}

/// The `n` bits of a [`Message::Holding`] bitmap; an error unless it has exactly `ceil(n / 8)`
/// bytes and no bit set past `n`.
pub fn from_bitmap(bitmap: &[u8], n: usize) -> Result<Vec<bool>, WireError> {
    if bitmap.len() != n.div_ceil(8) {
        return Err(malformed(
            "holding",
            format!("{} bytes answer a query of {n}", bitmap.len()),
        ));
    }
    if !n.is_multiple_of(8) && bitmap.last().is_some_and(|b| b >> (n % 8) != 0) {
        return Err(malformed("holding", "bits set past the query's end"));
    }
    Ok((0..n)
        .map(|i| bitmap[i / 8] & (1 << (i % 8)) != 0)
        .collect())
}

/// What reading a frame can run into.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wire(#[from] WireError),
}

/// Writes one message as a frame.
pub async fn write_message<W: AsyncWrite + Unpin>(w: &mut W, m: &Message) -> std::io::Result<()> {
    w.write_all(&m.encode()).await
}

/// Reads one frame and decodes it; refuses frames over [`MAX_FRAME`] before reading them.
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> Result<Message, ReadError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(WireError::FrameTooLarge { len }.into());
    }
    let mut body = Vec::new();
    read_body(r, len, &mut body).await?;
    Ok(Message::decode(&body)?)
}

/// How far a frame's buffer grows ahead of the bytes that arrived.
pub const READ_STEP: usize = 256 * 1024;

/// Appends exactly `len` bytes from `r` to `buf`, growing it by at most [`READ_STEP`] beyond what
/// arrived: a peer that announces a 64 MiB frame and stalls costs one step, not 64 MiB.
pub async fn read_body<R: AsyncRead + Unpin>(
    r: &mut R,
    len: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    let end = buf.len() + len;
    while buf.len() < end {
        let start = buf.len();
        let step = (end - start).min(READ_STEP);
        buf.resize(start + step, 0);
        let mut got = 0;
        while got < step {
            match r.read(&mut buf[start + got..start + step]).await {
                Ok(0) => {
                    buf.truncate(start + got);
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    buf.truncate(start + got);
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_announced_frame_is_not_allocated_before_its_bytes_arrive() {
        let mut wire = (MAX_FRAME as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(&[T_PAGES; 1000]);
        let mut r = wire.as_slice();
        let mut head = [0u8; 4];
        r.read_exact(&mut head).await.unwrap();
        let mut buf = Vec::new();
        let e = read_body(&mut r, u32::from_be_bytes(head) as usize, &mut buf)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        assert_eq!(buf.len(), 1000);
        assert!(buf.capacity() <= 2 * READ_STEP, "{}", buf.capacity());
        let mut wire = (MAX_FRAME as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(&[T_PAGES; 1000]);
        assert!(matches!(
            read_message(&mut wire.as_slice()).await,
            Err(ReadError::Io(_))
        ));
    }

    fn r(b: u8, len: u32) -> ChunkRef {
        ChunkRef {
            digest: Digest([b; 32]),
            len,
        }
    }

    fn all() -> Vec<Message> {
        vec![
            Message::Hello {
                version: VERSION,
                mode: Mode::StopAndCopy,
                pid: 42,
                memory_bytes: 1 << 30,
            },
            Message::Chunks {
                level: Level::Zstd3,
                refs: vec![r(1, 4096), r(2, 10)],
                payload: vec![9; 77],
            },
            Message::RoundEnd {
                round: 3,
                last: true,
                files: vec![FileRecipe {
                    name: "pages-1.img".into(),
                    len: 8196,
                    ops: vec![RecipeOp::Same(1), RecipeOp::Refs(vec![r(3, 4096), r(4, 4)])],
                }],
            },
            Message::Abort {
                reason: "bye".into(),
            },
            Message::Ack {
                round: 2,
                chunks: 99,
            },
            Message::Restored {
                pid: 7,
                rebuild_us: 5,
                restore_us: 6,
            },
            Message::Failed {
                reason: "no".into(),
            },
            Message::Hello {
                version: VERSION,
                mode: Mode::PostCopy,
                pid: 1,
                memory_bytes: 0,
            },
            Message::Pages {
                data: vec![1, 2, 3, 4, 5],
            },
            Message::PagesDone,
            Message::Welcome { store_chunks: 9 },
            Message::Query {
                digests: vec![Digest([1; 32]), Digest([2; 32])],
            },
            Message::Holding { bitmap: vec![0b10] },
            Message::Query { digests: vec![] },
            Message::Holding { bitmap: vec![] },
            Message::Tracked {
                pid: 1,
                level: Level::Zstd1,
                runs: vec![(0x7f00_0000_0000, 3), (0x1000, 1)],
                payload: vec![5; 33],
            },
            Message::TrackedEnd { round: 4 },
            Message::Stale {
                pid: 2,
                runs: vec![(0x7f00_0000_0000, 3), (0x1000, 1)],
            },
            Message::Stale {
                pid: 3,
                runs: vec![],
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in all() {
            let frame = m.encode();
            let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
            assert_eq!(len, frame.len() - 4);
            assert_eq!(Message::decode(&frame[4..]).unwrap(), m);
        }
    }

    #[test]
    fn truncated_and_padded_frames_are_refused() {
        for m in all() {
            let frame = m.encode();
            let body = &frame[4..];
            for cut in 0..body.len() {
                assert!(Message::decode(&body[..cut]).is_err(), "{m:?} cut at {cut}");
            }
            let mut padded = body.to_vec();
            padded.push(0);
            assert!(Message::decode(&padded).is_err());
        }
    }

    #[test]
    fn huge_counts_and_bad_chunks_are_refused() {
        // A chunks frame claiming 2^31 refs in a few bytes.
        let body = [T_CHUNKS, 1, 0x80, 0, 0, 0, 1, 2, 3];
        assert!(matches!(
            Message::decode(&body),
            Err(WireError::Malformed { .. })
        ));
        let bad = Message::Chunks {
            level: Level::None,
            refs: vec![r(1, 5000)],
            payload: vec![],
        };
        assert!(Message::decode(&bad.encode()[4..]).is_err());
        assert_eq!(Message::decode(&[200]), Err(WireError::UnknownTag(200)));
        // A query or holding claiming more than fits.
        assert!(Message::decode(&[T_QUERY, 0, 0, 0, 2, 1, 2, 3]).is_err());
        assert!(Message::decode(&[T_QUERY, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(Message::decode(&[T_HOLDING, 0, 0, 0, 9, 1]).is_err());
    }

    #[test]
    fn bitmaps_round_trip_and_wrong_sizes_are_refused() {
        for n in [0usize, 1, 7, 8, 9, 100] {
            let bits: Vec<bool> = (0..n).map(|i| i % 3 == 1).collect();
            let map = to_bitmap(&bits);
            assert_eq!(map.len(), n.div_ceil(8));
            assert_eq!(from_bitmap(&map, n).unwrap(), bits);
            assert!(from_bitmap(&map, n + 8).is_err());
        }
        assert!(
            from_bitmap(&[0b1000_0000], 7).is_err(),
            "a bit past the end"
        );
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_before_reading_it() {
        let mut bytes: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        let err = read_message(&mut bytes).await.unwrap_err();
        assert!(matches!(
            err,
            ReadError::Wire(WireError::FrameTooLarge { .. })
        ));
    }
}
