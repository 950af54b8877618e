//! Limits on inbound streams, between two real overlay nodes on loopback (port 0):
//!
//! * a peer that opens chunk-transfer streams and stalls them (a frame header, then nothing; or
//!   nothing at all) has them closed by the serving node after its idle timeout (configured
//!   small here), and the node keeps serving: a real fetch completes afterwards;
//! * eight transfer streams that asked for chunks and stopped reading do not delay a ninth
//!   fetch: the server refuses over-cap streams instead of queueing every later one behind them,
//!   so the fetch completes (the idle timeout is set far beyond the test's hang guard, so it
//!   cannot be what frees a slot).
//!
//! No assertion is on a duration: deadlines here only turn a hang into a failure.

use std::io;
use std::time::{Duration, Instant};

use brume_artifact::transfer::Want;
use brume_artifact::{
    fetch, serve_limited, Artifact, ArtifactKind, ArtifactManifest, ChunkStore, FetchOptions,
    CHUNK_SIZE, TRANSFER_LIMITS, TRANSFER_PROTOCOL,
};
use brume_overlay::frames::write_frame;
use brume_overlay::{Overlay, OverlayConfig, OverlayHandle, StreamLimits, Timings};
use futures::io::{AsyncReadExt, AsyncWriteExt};

/// Turns a hang into a failure; never reached when things work.
const HANG_GUARD: Duration = Duration::from_secs(120);

fn node_config(bootstrap: Vec<brume_overlay::Multiaddr>) -> OverlayConfig {
    OverlayConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap,
        min_degree: 1,
        max_degree: 4,
        timings: Timings {
            ping_interval: Duration::from_millis(500),
            ..Timings::default()
        },
        ..OverlayConfig::default()
    }
}

/// Pseudo-random bytes (xorshift, seed printed by the caller).
fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Two connected nodes; the first serves `store` under `limits`.
async fn pair(
    store: &ChunkStore,
    limits: StreamLimits,
) -> (
    OverlayHandle,
    OverlayHandle,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let (a, a_task) = Overlay::spawn(node_config(vec![])).await.unwrap();
    let (b, b_task) = Overlay::spawn(node_config(a.listen_addrs().await.unwrap()))
        .await
        .unwrap();
    let incoming = a.accept_streams(TRANSFER_PROTOCOL).unwrap();
    let serving = tokio::spawn(serve_limited(store.clone(), incoming, limits));
    loop {
        let peers = b.peers().await.unwrap();
        if peers.iter().any(|p| p.peer_id == a.peer_id()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let tasks = vec![
        serving,
        tokio::spawn(async move {
            let _ = a_task.await;
        }),
        tokio::spawn(async move {
            let _ = b_task.await;
        }),
    ];
    (a, b, tasks)
}

fn artifact(store: &ChunkStore, chunks: usize, seed: u64) -> ArtifactManifest {
    eprintln!("artifact seed {seed}");
    store
        .put_artifact(&Artifact::from_bytes(
            ArtifactKind::ImageTar,
            data(chunks * CHUNK_SIZE as usize, seed),
        ))
        .unwrap()
}

/// Fetches `m` from `server` over the overlay into a fresh store.
async fn fetch_from(b: &OverlayHandle, server: &OverlayHandle, m: &ArtifactManifest) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let host = ChunkStore::open(dir.path()).unwrap();
    let peer = server.peer_id();
    let bb = b.clone();
    let opts = FetchOptions {
        peer: peer.to_string(),
        retry_delay: Duration::from_millis(20),
        max_retries: 20,
        read_timeout: Duration::from_secs(60),
    };
    let stats = fetch(
        &host,
        m,
        &opts,
        move || {
            let bb = bb.clone();
            async move {
                bb.open_stream(peer, TRANSFER_PROTOCOL)
                    .await
                    .map_err(io::Error::other)
            }
        },
        |_, _| {},
    )
    .await
    .expect("the fetch completes");
    assert!(host.missing(m).is_empty());
    stats.chunks_fetched
}

/// Reads until the server closes or resets the stream.
async fn closed_by_server(s: &mut brume_overlay::Stream) {
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_is_closed_by_the_idle_timeout_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    let m = artifact(&store, 3, 21);
    let limits = StreamLimits {
        // Small, so the test is short; a fetch slowed past it by a loaded machine resumes on a
        // new stream (and the fetch below allows many resumptions).
        idle_timeout: Duration::from_secs(1),
        ..TRANSFER_LIMITS
    };
    let (a, b, tasks) = pair(&store, limits).await;
    tokio::time::timeout(HANG_GUARD, async {
        // A frame header announcing more than is ever sent, then a few bytes, then silence.
        let mut partial = b.open_stream(a.peer_id(), TRANSFER_PROTOCOL).await.unwrap();
        partial.write_all(&4000u32.to_be_bytes()).await.unwrap();
        partial.write_all(&[0xa1; 10]).await.unwrap();
        partial.flush().await.unwrap();
        // And a stream that never says anything.
        let mut silent = b.open_stream(a.peer_id(), TRANSFER_PROTOCOL).await.unwrap();
        silent.flush().await.unwrap();
        // Both are closed by the server; without an idle timeout these reads never end.
        closed_by_server(&mut partial).await;
        closed_by_server(&mut silent).await;
        // The node keeps serving.
        assert_eq!(fetch_from(&b, &a, &m).await, 3);
    })
    .await
    .expect("hang guard: a stalled stream was never closed, or the fetch hung");
    for t in tasks {
        t.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_idle_transfer_streams_do_not_delay_a_ninth_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    // Chunks of 1 MiB: far more than a stream's flow-control window, so a server writing one to
    // a fetcher that does not read is stuck until the stream is dropped.
    let m = artifact(&store, 4, 22);
    let limits = StreamLimits {
        // Longer than the hang guard: no slot is freed by a timeout during the test.
        idle_timeout: HANG_GUARD * 10,
        ..TRANSFER_LIMITS
    };
    assert!(limits.per_peer > 8 && limits.total > 8);
    let (a, b, tasks) = pair(&store, limits).await;
    tokio::time::timeout(HANG_GUARD, async {
        let mut idle = Vec::new();
        let started = Instant::now();
        while idle.len() < 8 {
            assert!(
                started.elapsed() < HANG_GUARD,
                "could not open the idle streams"
            );
            // Ask for every chunk, read one byte (the server is serving this stream now), then
            // stop reading. A stream the overlay dropped before the server took it is opened
            // again.
            let Ok(mut s) = b.open_stream(a.peer_id(), TRANSFER_PROTOCOL).await else {
                continue;
            };
            let want = Want {
                chunks: m.chunks.clone(),
            };
            if write_frame(&mut s, &want).await.is_err() {
                continue;
            }
            let mut first = [0u8; 1];
            if s.read_exact(&mut first).await.is_ok() {
                assert_eq!(first[0], b'C');
                idle.push(s);
            }
        }
        // Eight streams hold the server now. A ninth fetch, from the same peer, completes.
        assert_eq!(fetch_from(&b, &a, &m).await, 4);
        drop(idle);
    })
    .await
    .expect("hang guard: the ninth fetch waited behind the idle streams");
    for t in tasks {
        t.abort();
    }
}
