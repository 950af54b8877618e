//! `/brume/transfer/1` from both ends: a server fed a hostile fetcher's requests, and a fetcher
//! fed a hostile server's answers for a two-chunk artifact. Whatever arrives, nothing that does
//! not match its digest may land in the fetcher's store.
#![no_main]

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use brume_artifact::chunks::split;
use brume_artifact::transfer::{fetch, serve, FetchOptions};
use brume_artifact::{ArtifactKind, ArtifactManifest, ChunkStore, Digest, CHUNK_SIZE};
use futures::io::{AsyncRead, AsyncWrite};
use libfuzzer_sys::fuzz_target;

/// Reads the fuzzer's bytes, swallows what is written.
struct Hostile<'a>(&'a [u8]);

impl AsyncRead for Hostile<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let n = buf.len().min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Hostile<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// A chunk and a half of fixed bytes: the artifact the fetcher wants (made once).
fn artifact() -> &'static (ArtifactManifest, Vec<(Digest, Vec<u8>)>) {
    static ARTIFACT: OnceLock<(ArtifactManifest, Vec<(Digest, Vec<u8>)>)> = OnceLock::new();
    ARTIFACT.get_or_init(made)
}

fn made() -> (ArtifactManifest, Vec<(Digest, Vec<u8>)>) {
    let bytes: Vec<u8> = (0..CHUNK_SIZE as usize * 3 / 2)
        .map(|i| (i % 251) as u8)
        .collect();
    let mut chunks = Vec::new();
    let manifest = split::<_, _, io::Error>(ArtifactKind::Context, bytes.as_slice(), |d, c| {
        chunks.push((d, c.to_vec()));
        Ok(())
    })
    .expect("a manifest of bytes in memory");
    (manifest, chunks)
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = ChunkStore::open(dir.path().join("store")).expect("a chunk store");
    let (manifest, chunks) = artifact();
    runtime().block_on(async {
        // A server holding one of the two chunks, asked by a hostile fetcher.
        store
            .put(&chunks[0].0, &chunks[0].1)
            .expect("a chunk stored");
        let _ = serve(&store, Hostile(data)).await;
        // A fetcher missing the other, answered by a hostile server.
        let opts = FetchOptions {
            max_retries: 0,
            retry_delay: Duration::ZERO,
            read_timeout: Duration::from_secs(5),
            ..FetchOptions::default()
        };
        let _ = fetch(
            &store,
            manifest,
            &opts,
            || async { Ok(Hostile(data)) },
            |_, _| {},
        )
        .await;
    });
    for (d, _) in chunks {
        if let Ok(bytes) = store.get(d) {
            assert_eq!(
                Digest::of(&bytes),
                *d,
                "a chunk landed under another digest"
            );
        }
    }
});
