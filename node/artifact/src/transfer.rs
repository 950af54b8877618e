//! The chunk transfer protocol, `/brume/transfer/1`: a host fetches the chunks of an artifact
//! it lacks from the peer that has them, over one overlay stream.
//!
//! ```text
//! fetcher                                         server
//!   Want { chunks: [d1 .. d64] }   (CBOR frame) ->
//!   Want { chunks: [d65 .. d128] }              ->
//!                                               <-  'C' d1 len  <len raw bytes>
//!                                               <-  'N' d2 0    (not held here)
//!                                                   ... one answer per wanted digest, in order
//!   Want { chunks: [d129 ..] }  (after the first batch is in)
//!   close                                         ->  end
//! ```
//!
//! Requests are small CBOR frames ([`brume_overlay::frames`], at most [`MAX_WANT`] digests each); answers
//! are a fixed 37-byte header (tag, digest, big-endian length) then the chunk's raw bytes, so a
//! chunk crosses the stream with no encoding and lands in a reused buffer: no per-chunk
//! allocation on either side. The fetcher keeps two batches asked for, so the server never waits
//! for a request; while it reads chunk i off the stream, chunk i-1 is hashed and written on a
//! blocking thread, and the server likewise reads chunk i+1 from disk while it sends chunk i.
//!
//! The fetcher trusts nothing: an answer's length must be the manifest's, and every chunk's
//! BLAKE3 digest is checked by [`ChunkStore::put`] before it is stored, so a wrong chunk is an
//! error naming the chunk and the peer and nothing bad is stored. A broken or stalled stream is
//! not fatal: [`fetch`] opens a new one and asks only for what is still missing, up to
//! [`FetchOptions::max_retries`] times in a row without progress.

use std::fmt;
use std::future::Future;
use std::io;
use std::time::{Duration, Instant};

use brume_overlay::{LimitedIncoming, PeerId, StreamLimits, StreamProtocol};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::chunks::{ArtifactManifest, Digest, ManifestError, CHUNK_SIZE};
use super::store::{ChunkStore, StoreError};
use brume_overlay::frames::{read_frame, write_frame, FrameError};

/// The overlay stream protocol of chunk transfers.
pub const TRANSFER_PROTOCOL: StreamProtocol = StreamProtocol::new("/brume/transfer/1");

/// The most digests one [`Want`] may carry: 64 MiB of chunks (64 of them).
pub const MAX_WANT: usize = (64 << 20) / CHUNK_SIZE as usize;

/// The largest `Want` frame a server reads: 64 digests of 64 hex digits plus CBOR overhead.
const WANT_FRAME_LIMIT: usize = 8 * 1024;

/// The answer header: tag, digest, length.
const HEADER_LEN: usize = 1 + 32 + 4;
const TAG_CHUNK: u8 = b'C';
const TAG_NOT_FOUND: u8 = b'N';

/// The fetcher's request: send me these chunks, in this order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Want {
    pub chunks: Vec<Digest>,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(
        "peer {peer} sent chunk {chunk} with bytes that digest to {actual}: refused, nothing \
         stored (the peer's store or the link is corrupt; fetch from another peer)"
    )]
    DigestMismatch {
        chunk: Digest,
        peer: String,
        actual: Digest,
    },
    #[error(
        "peer {peer} does not hold chunk {chunk}; fetch from the node that deployed the artifact"
    )]
    NotFound { chunk: Digest, peer: String },
    #[error("peer {peer} broke the transfer protocol: {reason}")]
    Protocol { peer: String, reason: String },
    #[error(transparent)]
    Store(StoreError),
    #[error(
        "fetch from peer {peer} gave up after {attempts} attempts in a row without progress; \
         last error: {last}"
    )]
    GaveUp {
        peer: String,
        attempts: u32,
        #[source]
        last: io::Error,
    },
}

/// Why serving a fetcher stopped (other than its closing the stream, which is success).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("transfer stream: {0}")]
    Io(#[from] io::Error),
    #[error("bad transfer request: {0}")]
    BadRequest(String),
}

/// How a fetch behaves.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Who is being fetched from, as errors and logs should name it (a peer id).
    pub peer: String,
    /// Streams opened in a row that store nothing before the fetch gives up.
    pub max_retries: u32,
    /// Wait before reopening, multiplied by the number of failures in a row.
    pub retry_delay: Duration,
    /// A stream that delivers nothing for this long counts as broken.
    pub read_timeout: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            peer: "<unnamed peer>".into(),
            max_retries: 5,
            retry_delay: Duration::from_millis(200),
            read_timeout: Duration::from_secs(30),
        }
    }
}

/// What a fetch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// Distinct chunks in the manifest.
    pub chunks_total: usize,
    /// Of those, already stored before the fetch.
    pub chunks_present: usize,
    /// Chunks received, checked and stored.
    pub chunks_fetched: usize,
    pub bytes_fetched: u64,
    /// Streams opened (1 unless the transfer had to resume).
    pub streams: u32,
    pub elapsed: Duration,
}

/// What one served stream did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeStats {
    pub chunks_sent: usize,
    pub bytes_sent: u64,
    pub not_found: usize,
}

/// Fetches every chunk of `manifest` that `store` lacks from one peer. `open` opens a fresh
/// stream to it (called again to resume after a break); `progress(done, total)` is called with
/// byte counts over the manifest's distinct chunks, first with what is already stored, then
/// after every stored chunk. Needs a tokio runtime (chunks are checked and written on blocking
/// threads).
pub async fn fetch<S, F, Fut, P>(
    store: &ChunkStore,
    manifest: &ArtifactManifest,
    opts: &FetchOptions,
    mut open: F,
    mut progress: P,
) -> Result<FetchStats, TransferError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<S>>,
    P: FnMut(u64, u64),
{
    manifest.validate()?;
    let started = Instant::now();
    let distinct = manifest.distinct_chunks();
    let total: u64 = distinct.iter().map(|(_, l)| u64::from(*l)).sum();
    let mut todo = missing(store, manifest).await?;
    let mut stats = FetchStats {
        chunks_total: distinct.len(),
        chunks_present: distinct.len() - todo.len(),
        ..FetchStats::default()
    };
    let mut done = total - todo.iter().map(|(_, l)| u64::from(*l)).sum::<u64>();
    progress(done, total);
    let mut buffers = Buffers::default();
    let mut failures = 0u32;
    while !todo.is_empty() {
        let before = stats.chunks_fetched;
        let outcome = match open().await {
            Ok(stream) => {
                stats.streams += 1;
                let mut s = Session {
                    store,
                    peer: &opts.peer,
                    read_timeout: opts.read_timeout,
                    stats: &mut stats,
                    buffers: &mut buffers,
                    done: &mut done,
                    total,
                    progress: &mut progress,
                };
                s.run(stream, &todo).await
            }
            Err(e) => Err(SessionError::Broken(e)),
        };
        let progressed = stats.chunks_fetched > before;
        match outcome {
            Err(SessionError::Fatal(e)) => return Err(e),
            Err(SessionError::Broken(e)) => {
                failures = if progressed { 1 } else { failures + 1 };
                if failures > opts.max_retries {
                    return Err(TransferError::GaveUp {
                        peer: opts.peer.clone(),
                        attempts: failures,
                        last: e,
                    });
                }
                debug!(peer = %opts.peer, error = %e, failures, "transfer stream broke; resuming");
                tokio::time::sleep(opts.retry_delay * failures).await;
            }
            Ok(()) if !progressed => {
                // Everything asked for was answered, yet the chunks are still missing: someone
                // removed them meanwhile. Count it, so this cannot loop for ever.
                failures += 1;
                if failures > opts.max_retries {
                    return Err(TransferError::GaveUp {
                        peer: opts.peer.clone(),
                        attempts: failures,
                        last: io::Error::other("chunks vanished from the store after fetching"),
                    });
                }
            }
            Ok(()) => failures = 0,
        }
        todo = missing(store, manifest).await?;
    }
    stats.elapsed = started.elapsed();
    Ok(stats)
}

async fn missing(
    store: &ChunkStore,
    manifest: &ArtifactManifest,
) -> Result<Vec<(Digest, u32)>, TransferError> {
    let (store, manifest) = (store.clone(), manifest.clone());
    tokio::task::spawn_blocking(move || store.missing(&manifest))
        .await
        .map_err(|e| TransferError::Store(join_error(e)))
}

fn join_error(e: tokio::task::JoinError) -> StoreError {
    StoreError::Io {
        path: "<chunk store worker>".into(),
        source: io::Error::other(e.to_string()),
    }
}

enum SessionError {
    /// The stream broke or stalled: worth another stream.
    Broken(io::Error),
    /// The peer misbehaved or the store failed: stop.
    Fatal(TransferError),
}

impl From<io::Error> for SessionError {
    fn from(e: io::Error) -> Self {
        SessionError::Broken(e)
    }
}

/// Chunk-sized buffers passed between the stream reader and the store workers.
#[derive(Default)]
struct Buffers(Vec<Vec<u8>>);

impl Buffers {
    fn take(&mut self) -> Vec<u8> {
        self.0
            .pop()
            .unwrap_or_else(|| vec![0u8; CHUNK_SIZE as usize])
    }

    fn give(&mut self, b: Vec<u8>) {
        self.0.push(b);
    }
}

/// A chunk being checked and stored on a blocking thread.
struct Pending {
    chunk: Digest,
    len: u32,
    job: JoinHandle<(Vec<u8>, Result<bool, StoreError>)>,
}

/// One stream's worth of a fetch.
struct Session<'a, P> {
    store: &'a ChunkStore,
    peer: &'a str,
    read_timeout: Duration,
    stats: &'a mut FetchStats,
    buffers: &'a mut Buffers,
    done: &'a mut u64,
    total: u64,
    progress: &'a mut P,
}

impl<P: FnMut(u64, u64)> Session<'_, P> {
    async fn run<S>(&mut self, mut stream: S, todo: &[(Digest, u32)]) -> Result<(), SessionError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut pending: Option<Pending> = None;
        let res = self.exchange(&mut stream, todo, &mut pending).await;
        // Whatever happened, the chunk already read is worth keeping.
        let finished = match pending.take() {
            Some(p) => self.finish(p).await,
            None => Ok(()),
        };
        match (res, finished) {
            // A refused chunk outranks the broken stream it came with.
            (_, Err(fatal @ SessionError::Fatal(_))) => Err(fatal),
            (Err(e), _) | (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(())) => {
                let _ = stream.close().await;
                Ok(())
            }
        }
    }

    async fn exchange<S>(
        &mut self,
        stream: &mut S,
        todo: &[(Digest, u32)],
        pending: &mut Option<Pending>,
    ) -> Result<(), SessionError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let batches: Vec<&[(Digest, u32)]> = todo.chunks(MAX_WANT).collect();
        for b in batches.iter().take(2) {
            self.want(stream, b).await?;
        }
        for (i, batch) in batches.iter().enumerate() {
            for &(chunk, len) in batch.iter() {
                let mut header = [0u8; HEADER_LEN];
                self.read_exact(stream, &mut header).await?;
                let (tag, got, got_len) = parse_header(&header);
                if got != chunk {
                    return Err(self.protocol(format!(
                        "answered with chunk {got} where chunk {chunk} was due"
                    )));
                }
                match tag {
                    TAG_CHUNK => {}
                    TAG_NOT_FOUND => {
                        return Err(SessionError::Fatal(TransferError::NotFound {
                            chunk,
                            peer: self.peer.to_string(),
                        }))
                    }
                    t => return Err(self.protocol(format!("unknown answer tag {t:#04x}"))),
                }
                if got_len != len {
                    return Err(self.protocol(format!(
                        "sent {got_len} bytes for chunk {chunk}, which is {len} bytes"
                    )));
                }
                let mut buf = self.buffers.take();
                if let Err(e) = self.read_exact(stream, &mut buf[..len as usize]).await {
                    self.buffers.give(buf);
                    return Err(e);
                }
                if let Some(p) = pending.take() {
                    self.finish(p).await?;
                }
                let store = self.store.clone();
                let job = tokio::task::spawn_blocking(move || {
                    let r = store.put(&chunk, &buf[..len as usize]);
                    (buf, r)
                });
                *pending = Some(Pending { chunk, len, job });
            }
            if let Some(next) = batches.get(i + 2) {
                self.want(stream, next).await?;
            }
        }
        Ok(())
    }

    /// Waits for a chunk's check and write; counts it or turns a refusal into the error.
    async fn finish(&mut self, p: Pending) -> Result<(), SessionError> {
        let (buf, res) = p
            .job
            .await
            .map_err(|e| SessionError::Fatal(TransferError::Store(join_error(e))))?;
        self.buffers.give(buf);
        match res {
            Ok(_) => {
                self.stats.chunks_fetched += 1;
                self.stats.bytes_fetched += u64::from(p.len);
                *self.done += u64::from(p.len);
                (self.progress)(*self.done, self.total);
                Ok(())
            }
            Err(StoreError::DigestMismatch { actual, .. }) => {
                warn!(peer = %self.peer, chunk = %p.chunk, %actual, "chunk refused: wrong digest");
                Err(SessionError::Fatal(TransferError::DigestMismatch {
                    chunk: p.chunk,
                    peer: self.peer.to_string(),
                    actual,
                }))
            }
            Err(e) => Err(SessionError::Fatal(TransferError::Store(e))),
        }
    }

    async fn want<S: AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        batch: &[(Digest, u32)],
    ) -> Result<(), SessionError> {
        let want = Want {
            chunks: batch.iter().map(|(d, _)| *d).collect(),
        };
        match write_frame(stream, &want).await {
            Ok(()) => Ok(()),
            Err(FrameError::Io(e)) => Err(SessionError::Broken(e)),
            Err(e) => Err(self.protocol(format!("cannot send a request: {e}"))),
        }
    }

    async fn read_exact<S: AsyncRead + Unpin>(
        &self,
        stream: &mut S,
        buf: &mut [u8],
    ) -> Result<(), SessionError> {
        match tokio::time::timeout(self.read_timeout, stream.read_exact(buf)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(SessionError::Broken(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no data for {:?}", self.read_timeout),
            ))),
        }
    }

    fn protocol(&self, reason: String) -> SessionError {
        SessionError::Fatal(TransferError::Protocol {
            peer: self.peer.to_string(),
            reason,
        })
    }
}

fn parse_header(h: &[u8; HEADER_LEN]) -> (u8, Digest, u32) {
    let mut d = [0u8; 32];
    d.copy_from_slice(&h[1..33]);
    let len = u32::from_be_bytes([h[33], h[34], h[35], h[36]]);
    (h[0], Digest(d), len)
}

fn header(tag: u8, d: &Digest, len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = tag;
    h[1..33].copy_from_slice(&d.0);
    h[33..].copy_from_slice(&len.to_be_bytes());
    h
}

/// A chunk being read from disk on a blocking thread.
type Read = JoinHandle<(Vec<u8>, Result<(), StoreError>)>;

fn read_chunk(store: &ChunkStore, d: Digest, mut buf: Vec<u8>) -> Read {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let r = store.read_into(&d, &mut buf);
        (buf, r)
    })
}

/// Serves one fetcher on `stream` until it closes the stream: answers every wanted digest with
/// the chunk or "not found". Every read is bounded ([`MAX_WANT`] digests per request, a small
/// frame limit). Needs a tokio runtime.
pub async fn serve<S>(store: &ChunkStore, mut stream: S) -> Result<ServeStats, ServeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut stats = ServeStats::default();
    let mut spare: Vec<Vec<u8>> = Vec::with_capacity(2);
    loop {
        let want: Want = match read_frame(&mut stream, WANT_FRAME_LIMIT).await {
            Ok(w) => w,
            Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(FrameError::Io(e)) => return Err(ServeError::Io(e)),
            Err(e) => return Err(ServeError::BadRequest(e.to_string())),
        };
        if want.chunks.is_empty() || want.chunks.len() > MAX_WANT {
            return Err(ServeError::BadRequest(format!(
                "a request for {} chunks (1 to {MAX_WANT} allowed)",
                want.chunks.len()
            )));
        }
        let mut next = Some(read_chunk(store, want.chunks[0], spare_buf(&mut spare)));
        for (i, d) in want.chunks.iter().enumerate() {
            let Some(job) = next.take() else { break };
            let (buf, res) = job
                .await
                .map_err(|e| ServeError::Io(io::Error::other(e.to_string())))?;
            if let Some(n) = want.chunks.get(i + 1) {
                next = Some(read_chunk(store, *n, spare_buf(&mut spare)));
            }
            match res {
                Ok(()) if buf.len() <= CHUNK_SIZE as usize => {
                    stream
                        .write_all(&header(TAG_CHUNK, d, buf.len() as u32))
                        .await?;
                    stream.write_all(&buf).await?;
                    stats.chunks_sent += 1;
                    stats.bytes_sent += buf.len() as u64;
                }
                other => {
                    if let Err(e) = other {
                        if !matches!(e, StoreError::Missing { .. }) {
                            warn!(chunk = %d, error = %e, "cannot read a chunk to serve");
                        }
                    }
                    stream.write_all(&header(TAG_NOT_FOUND, d, 0)).await?;
                    stats.not_found += 1;
                }
            }
            spare.push(buf);
        }
        stream.flush().await?;
    }
    let _ = stream.close().await;
    Ok(stats)
}

fn spare_buf(spare: &mut Vec<Vec<u8>>) -> Vec<u8> {
    spare
        .pop()
        .unwrap_or_else(|| Vec::with_capacity(CHUNK_SIZE as usize))
}

/// The caps a node serves transfers under ([`serve_limited`]): a peer may hold a few streams
/// (one per artifact it fetches at once), everyone together a bounded number (each holds up to
/// two chunk buffers), and a stream that stalls for the idle time is dropped.
pub const TRANSFER_LIMITS: StreamLimits = StreamLimits {
    idle_timeout: Duration::from_secs(30),
    per_peer: 16,
    total: 64,
    rate: brume_overlay::rate::Rate::per_second(16, 64),
};

/// Serves every incoming stream (from `accept_streams(TRANSFER_PROTOCOL)`) under `limits` until
/// the incoming streams end: a stream over the per-peer or total cap is dropped at once (its
/// fetcher retries), never queued, so streams that idle cannot delay another peer's fetch, and a
/// stream whose peer sends nothing or stops reading for `limits.idle_timeout` is dropped and
/// its slot freed. Errors are logged per peer.
pub async fn serve_limited<I, S>(store: ChunkStore, incoming: I, limits: StreamLimits)
where
    I: Stream<Item = (PeerId, S)> + Unpin,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut incoming = LimitedIncoming::new(incoming, limits);
    while let Some((peer, stream)) = incoming.next().await {
        let store = store.clone();
        tokio::spawn(async move {
            match serve(&store, stream).await {
                Ok(s) => debug!(%peer, chunks = s.chunks_sent, bytes = s.bytes_sent, "served"),
                Err(e) => debug!(%peer, error = %e, "transfer stream ended badly"),
            }
        });
    }
}

/// Serves every incoming stream (from `accept_streams(TRANSFER_PROTOCOL)`), at most
/// `max_concurrent` at once, until the incoming streams end. Errors are logged per peer. A
/// stream over the cap waits for a free slot, and so does every stream after it: for trusted
/// peers (tests, benches); a node serves with [`serve_limited`].
pub async fn serve_incoming<I, Id, S>(store: ChunkStore, mut incoming: I, max_concurrent: usize)
where
    I: Stream<Item = (Id, S)> + Unpin,
    Id: fmt::Display + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(max_concurrent.max(1)));
    while let Some((peer, stream)) = incoming.next().await {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let store = store.clone();
        tokio::spawn(async move {
            match serve(&store, stream).await {
                Ok(s) => debug!(%peer, chunks = s.chunks_sent, bytes = s.bytes_sent, "served"),
                Err(e) => debug!(%peer, error = %e, "transfer stream ended badly"),
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let d = Digest::of(b"x");
        let h = header(TAG_CHUNK, &d, 12345);
        assert_eq!(parse_header(&h), (TAG_CHUNK, d, 12345));
    }

    #[test]
    fn a_full_want_fits_its_frame_limit() {
        let want = Want {
            chunks: vec![Digest::of(b"x"); MAX_WANT],
        };
        let mut body = Vec::new();
        ciborium::ser::into_writer(&want, &mut body).unwrap();
        assert!(body.len() <= WANT_FRAME_LIMIT, "{}", body.len());
    }

    #[tokio::test]
    async fn server_refuses_oversized_and_empty_requests() {
        use tokio_util::compat::TokioAsyncReadCompatExt;
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        for n in [0, MAX_WANT + 1] {
            let (a, b) = tokio::io::duplex(1 << 16);
            let server = tokio::spawn({
                let store = store.clone();
                async move { serve(&store, b.compat()).await }
            });
            let mut a = a.compat();
            write_frame(
                &mut a,
                &Want {
                    chunks: vec![Digest::of(b"x"); n],
                },
            )
            .await
            .unwrap();
            let r = server.await.unwrap();
            assert!(matches!(r, Err(ServeError::BadRequest(_))), "{n}: {r:?}");
        }
        // Garbage instead of a frame: refused, no panic.
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn({
            let store = store.clone();
            async move { serve(&store, b.compat()).await }
        });
        let mut a = a.compat();
        a.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2]).await.unwrap();
        let r = server.await.unwrap();
        assert!(matches!(r, Err(ServeError::BadRequest(_))), "{r:?}");
    }
}
