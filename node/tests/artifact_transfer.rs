//! Artifacts end to end: packing, the chunk store and the transfer protocol, over in-memory
//! pipes (`tokio::io::duplex`) and over two real overlay nodes on loopback.
//!
//! * the same build context packs to the same bytes (another copy of the tree, written in
//!   another order with other mtimes, too); modes, symlinks and `.dockerignore` are honoured; a
//!   context without a Dockerfile, or with a symlink out of it, is refused with the path at fault;
//!   a `docker save` tarball is checked for its `manifest.json`;
//! * Docker (the real engine) builds a packed context, symlink and `.dockerignore` honoured, and
//!   the `docker save` tarball of the result passes the check, crosses a fetch and assembles to
//!   the same bytes;
//! * a store refuses a chunk whose bytes do not match its digest and stores nothing;
//! * a host holding some chunks fetches only the others (counted on both ends);
//! * a server with one corrupt chunk: the fetch fails with a digest mismatch naming the chunk
//!   and the peer, and the host's store holds no bad chunk;
//! * a server missing a chunk: "not found", naming it; a peer that cannot be reached: the fetch
//!   gives up after its bounded retries;
//! * a stream that breaks after N bytes: the fetch resumes on a new stream, asks only for what
//!   it still lacks and completes;
//! * two fetches of one artifact into one store at once both succeed;
//! * a 32 MiB artifact moves between two overlay nodes on `/brume/transfer/1`, and the assembled
//!   file has the manifest's digest.
//!
//! The ignored test runs the transfer benchmark: `cargo test --release -p brume --test
//! artifact_transfer -- --ignored --nocapture`.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use brume_artifact::{
    fetch, pack_context, read_image_tar, serve, Artifact, ArtifactKind, ArtifactManifest,
    ChunkStore, Digest, FetchOptions, PackError, ServeStats, StoreError, TransferError, CHUNK_SIZE,
    TRANSFER_PROTOCOL,
};
use brume_overlay::{Overlay, OverlayConfig, Timings};
use futures::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

const TEST_TIME: Duration = Duration::from_secs(90);

/// Pseudo-random bytes (xorshift), different for every seed.
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

fn opts(peer: &str) -> FetchOptions {
    FetchOptions {
        peer: peer.into(),
        retry_delay: Duration::from_millis(10),
        // No test here relies on a read timing out; this only bounds a lost answer, generously
        // (a stream given up on is retried, which the 32 MiB test would count).
        read_timeout: Duration::from_secs(60),
        ..FetchOptions::default()
    }
}

/// A store with an artifact of `n` bytes in it.
fn server_with(dir: &Path, n: usize, seed: u64) -> (ChunkStore, ArtifactManifest, Vec<u8>) {
    let store = ChunkStore::open(dir).unwrap();
    let bytes = data(n, seed);
    let m = store
        .put_artifact(&Artifact::from_bytes(ArtifactKind::ImageTar, bytes.clone()))
        .unwrap();
    (store, m, bytes)
}

type Server = JoinHandle<Result<ServeStats, brume_artifact::ServeError>>;

/// Opens in-memory streams to `serve(store)`, one per call; keeps every server's outcome.
#[derive(Clone)]
struct Pipes {
    store: ChunkStore,
    servers: Arc<Mutex<Vec<Server>>>,
}

impl Pipes {
    fn new(store: &ChunkStore) -> Pipes {
        Pipes {
            store: store.clone(),
            servers: Arc::default(),
        }
    }

    fn open(&self) -> Compat<tokio::io::DuplexStream> {
        let (client, server) = tokio::io::duplex(256 * 1024);
        let store = self.store.clone();
        let h = tokio::spawn(async move { serve(&store, server.compat()).await });
        self.servers.lock().unwrap().push(h);
        client.compat()
    }

    /// Every server's stats (`None` for one whose stream broke).
    async fn outcomes(&self) -> Vec<Option<ServeStats>> {
        let hs: Vec<_> = self.servers.lock().unwrap().drain(..).collect();
        let mut out = Vec::new();
        for h in hs {
            out.push(h.await.unwrap().ok());
        }
        out
    }
}

fn no_temp_files(store: &ChunkStore) {
    let left = fs::read_dir(store.dir().join("tmp")).unwrap().count();
    assert_eq!(left, 0, "temp files left in the store");
}

// ----- packing -----

fn write_context(dir: &Path, order_reversed: bool) {
    let mut files: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "Dockerfile",
            b"FROM scratch\nCOPY app /app\nENTRYPOINT [\"/app\"]\n".to_vec(),
            0o644,
        ),
        ("app", data(300_000, 1), 0o755),
        ("etc/conf/settings.toml", b"a = 1\n".to_vec(), 0o600),
        ("etc/readme", b"hello\n".to_vec(), 0o644),
        ("build/junk.o", b"junk".to_vec(), 0o644),
        ("debug.log", b"log".to_vec(), 0o644),
        (".dockerignore", b"build\n*.log\n".to_vec(), 0o644),
    ];
    if order_reversed {
        files.reverse();
    }
    for (rel, bytes, mode) in files {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        if order_reversed {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    std::os::unix::fs::symlink("conf/settings.toml", dir.join("etc/current")).unwrap();
    std::os::unix::fs::symlink("/bin/sh", dir.join("sh")).unwrap();
}

#[test]
fn packing_is_deterministic_and_keeps_what_matters() {
    let a = tempdir();
    let b = tempdir();
    write_context(a.path(), false);
    write_context(b.path(), true);
    let pa = pack_context(a.path()).unwrap();
    assert_eq!(pa.kind(), ArtifactKind::Context);
    let pa2 = pack_context(a.path()).unwrap();
    let pb = pack_context(b.path()).unwrap();
    assert_eq!(
        pa.bytes().unwrap(),
        pa2.bytes().unwrap(),
        "packing twice differs"
    );
    assert_eq!(
        Digest::of(pa.bytes().unwrap()),
        Digest::of(pb.bytes().unwrap()),
        "the same tree written in another order packs differently"
    );

    // What is inside: sorted, zeroed times and owners, modes and symlinks kept, ignored left out.
    let mut ar = tar::Archive::new(pa.bytes().unwrap());
    let mut names = Vec::new();
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        let name = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        assert_eq!(h.mtime().unwrap(), 0, "{name}");
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0), "{name}");
        match name.as_str() {
            "app" => assert_eq!(h.mode().unwrap(), 0o755),
            "etc/conf/settings.toml" => assert_eq!(h.mode().unwrap(), 0o600),
            "etc/current" => {
                assert_eq!(h.entry_type(), tar::EntryType::Symlink);
                assert_eq!(
                    e.link_name().unwrap().unwrap().to_string_lossy(),
                    "conf/settings.toml"
                );
            }
            "sh" => assert_eq!(h.entry_type(), tar::EntryType::Symlink),
            _ => {}
        }
        names.push(name);
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "entries are not sorted");
    for want in [
        ".dockerignore",
        "Dockerfile",
        "app",
        "etc",
        "etc/conf",
        "etc/current",
        "sh",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    for gone in ["build", "build/junk.o", "debug.log"] {
        assert!(
            !names.iter().any(|n| n == gone),
            "{gone} should be ignored: {names:?}"
        );
    }

    // A changed mode is a different artifact.
    fs::set_permissions(a.path().join("app"), fs::Permissions::from_mode(0o700)).unwrap();
    let pa3 = pack_context(a.path()).unwrap();
    assert_ne!(pa.bytes().unwrap(), pa3.bytes().unwrap());
}

#[test]
fn a_context_without_dockerfile_or_with_an_escaping_link_is_refused() {
    let dir = tempdir();
    fs::write(dir.path().join("app"), b"bin").unwrap();
    let err = pack_context(dir.path()).unwrap_err();
    assert!(matches!(err, PackError::NoDockerfile { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&dir.path().display().to_string())
            && msg.contains("add a file named `Dockerfile`"),
        "{msg}"
    );

    fs::write(dir.path().join("Dockerfile"), b"FROM scratch\n").unwrap();
    std::os::unix::fs::symlink("../../etc/passwd", dir.path().join("pw")).unwrap();
    let err = pack_context(dir.path()).unwrap_err();
    assert!(matches!(err, PackError::SymlinkEscapes { .. }), "{err}");
    assert!(err.to_string().contains("pw"), "{err}");

    let file = dir.path().join("app");
    assert!(matches!(
        pack_context(&file),
        Err(PackError::NotADirectory { .. })
    ));
}

#[test]
fn image_tarballs_are_checked_for_their_manifest() {
    let dir = tempdir();
    let tar_with = |name: &str, entries: &[(&str, &[u8])]| {
        let mut b = tar::Builder::new(Vec::new());
        for (path, bytes) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, path, *bytes).unwrap();
        }
        let p = dir.path().join(name);
        fs::write(&p, b.into_inner().unwrap()).unwrap();
        p
    };
    let layer = data(3 * CHUNK_SIZE as usize / 2, 2);
    let good = tar_with(
        "good.tar",
        &[
            ("abc/layer.tar", &layer),
            (
                "manifest.json",
                br#"[{"Config":"c.json","RepoTags":["app:1"],"Layers":["abc/layer.tar"]}]"#,
            ),
        ],
    );
    let art = read_image_tar(&good).unwrap();
    assert_eq!(art.kind(), ArtifactKind::ImageTar);
    assert_eq!(art.path(), Some(good.as_path()));
    assert_eq!(art.len(), fs::metadata(&good).unwrap().len());
    let mut all = Vec::new();
    art.reader().unwrap().read_to_end(&mut all).unwrap();
    assert_eq!(all, fs::read(&good).unwrap());

    let no_manifest = tar_with("nomanifest.tar", &[("abc/layer.tar", b"x")]);
    let msg = read_image_tar(&no_manifest).unwrap_err().to_string();
    assert!(
        msg.contains("manifest.json") && msg.contains("docker save"),
        "{msg}"
    );
    let bad_json = tar_with("badjson.tar", &[("manifest.json", b"{not json")]);
    assert!(read_image_tar(&bad_json).is_err());
    let not_tar = dir.path().join("notatar.tar");
    fs::write(&not_tar, data(5000, 3)).unwrap();
    let msg = read_image_tar(&not_tar).unwrap_err().to_string();
    assert!(msg.contains("not a `docker save` tarball"), "{msg}");
    assert!(read_image_tar(&dir.path().join("absent.tar")).is_err());
}

/// Removes a Docker image when dropped, whatever the test's outcome.
struct ImageGuard(String);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rmi", "-f", &self.0])
            .output();
    }
}

/// A temporary directory named `brume-test-*` (the leftover sweep's prefix).
fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("brume-test-artifact-")
        .tempdir()
        .unwrap()
}

fn docker(args: &[&str], stdin: Option<&Path>) -> std::process::Output {
    let mut cmd = std::process::Command::new("docker");
    cmd.args(args).env("DOCKER_BUILDKIT", "0");
    if let Some(p) = stdin {
        cmd.stdin(fs::File::open(p).unwrap());
    }
    cmd.output().expect("running the docker CLI")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_builds_a_packed_context_and_its_saved_image_round_trips() {
    if !brume_testnet::require::docker(
        "artifact_transfer::docker_builds_a_packed_context_and_its_saved_image_round_trips",
    ) {
        return;
    }
    let work = tempdir();
    let ctx = work.path().join("ctx");
    fs::create_dir_all(ctx.join("etc")).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY etc /etc\nCOPY hello.txt /hello.txt\n",
    )
    .unwrap();
    fs::write(ctx.join("hello.txt"), b"hello from a packed context\n").unwrap();
    fs::write(ctx.join("etc/conf"), b"x = 1\n").unwrap();
    std::os::unix::fs::symlink("conf", ctx.join("etc/current")).unwrap();
    fs::write(ctx.join("ignored.log"), b"not sent").unwrap();
    fs::write(ctx.join(".dockerignore"), b"*.log\n").unwrap();
    let packed = pack_context(&ctx).unwrap();
    let ctx_tar = work.path().join("ctx.tar");
    fs::write(&ctx_tar, packed.bytes().unwrap()).unwrap();

    let tag = format!("brume-artifact-test-{:016x}:1", rand::random::<u64>());
    let _guard = ImageGuard(tag.clone());
    // --no-cache: Docker 20.10's legacy builder probes its cache by loading every image on the
    // same parent (FROM scratch: all of them), and a concurrent `docker rmi` of one (another
    // test's cleanup) fails this build with "unable to find image sha256:...". The label is
    // what the leftover sweep (scripts/sweep-test-leftovers.sh) removes by.
    let run =
        std::env::var("BRUME_TEST_RUN").unwrap_or_else(|_| format!("pid{}", std::process::id()));
    let label = format!("brume.test={run}");
    let built = docker(
        &[
            "build",
            "--no-cache",
            "--label",
            &label,
            "-q",
            "-t",
            &tag,
            "-",
        ],
        Some(&ctx_tar),
    );
    assert!(
        built.status.success(),
        "docker build of the packed context failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let saved = work.path().join("image.tar");
    let out = docker(&["save", "-o", saved.to_str().unwrap(), &tag], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The real `docker save` tarball passes the check, and survives store, fetch and assembly.
    let art = read_image_tar(&saved).unwrap();
    let src = ChunkStore::open(work.path().join("src")).unwrap();
    let m = src.put_artifact(&art).unwrap();
    let host = ChunkStore::open(work.path().join("host")).unwrap();
    let pipes = Pipes::new(&src);
    let stats = fetch(
        &host,
        &m,
        &opts("docker-peer"),
        || std::future::ready(Ok(pipes.open())),
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(stats.chunks_fetched, m.chunks.len());
    let assembled = work.path().join("assembled.tar");
    host.assemble(&m, &assembled).unwrap();
    assert_eq!(fs::read(&assembled).unwrap(), fs::read(&saved).unwrap());

    // The image holds what the context held, the symlink as a symlink, and not the ignored file.
    let created = docker(&["create", "--label", &label, &tag, "/none"], None);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let id = String::from_utf8_lossy(&created.stdout).trim().to_string();
    let exported = work.path().join("fs.tar");
    let ex = docker(&["export", "-o", exported.to_str().unwrap(), &id], None);
    let _ = docker(&["rm", "-f", &id], None);
    assert!(
        ex.status.success(),
        "{}",
        String::from_utf8_lossy(&ex.stderr)
    );
    let mut files = std::collections::BTreeMap::new();
    let bytes = fs::read(&exported).unwrap();
    let mut ar = tar::Archive::new(bytes.as_slice());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let kind = e.header().entry_type();
        let mut body = String::new();
        if kind == tar::EntryType::Symlink {
            body = e
                .link_name()
                .unwrap()
                .unwrap()
                .to_string_lossy()
                .into_owned();
        } else if kind == tar::EntryType::Regular {
            e.read_to_string(&mut body).unwrap();
        }
        files.insert(name, (kind, body));
    }
    assert_eq!(
        files.get("hello.txt").map(|f| f.1.as_str()),
        Some("hello from a packed context\n")
    );
    assert_eq!(files.get("etc/conf").map(|f| f.1.as_str()), Some("x = 1\n"));
    assert_eq!(
        files.get("etc/current"),
        Some(&(tar::EntryType::Symlink, "conf".to_string()))
    );
    assert!(!files.contains_key("ignored.log"));
}

// ----- the store -----

#[test]
fn the_store_refuses_a_corrupted_chunk() {
    let src = tempdir();
    let dst = tempdir();
    let (_, m, bytes) = server_with(src.path(), 2 * CHUNK_SIZE as usize, 4);
    let store = ChunkStore::open(dst.path()).unwrap();
    let mut chunk = bytes[..CHUNK_SIZE as usize].to_vec();
    chunk[12345] ^= 0x40;
    let err = store.put(&m.chunks[0], &chunk).unwrap_err();
    assert!(
        matches!(err, StoreError::DigestMismatch { expected, .. } if expected == m.chunks[0]),
        "{err}"
    );
    assert!(!store.has(&m.chunks[0]));
    assert!(!store.path_of(&m.chunks[0]).exists());
    no_temp_files(&store);
    assert_eq!(store.missing(&m).len(), 2);
}

// ----- transfers over in-memory pipes -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_missing_chunks_are_fetched() {
    tokio::time::timeout(TEST_TIME, async {
        let src = tempdir();
        let dst = tempdir();
        let (server, m, bytes) = server_with(src.path(), 10 * CHUNK_SIZE as usize - 1000, 5);
        assert_eq!(m.chunks.len(), 10);
        let host = ChunkStore::open(dst.path()).unwrap();
        for i in [0usize, 4, 9] {
            let start = i * CHUNK_SIZE as usize;
            let end = (start + CHUNK_SIZE as usize).min(bytes.len());
            host.put(&m.chunks[i], &bytes[start..end]).unwrap();
        }
        let pipes = Pipes::new(&server);
        let mut seen = Vec::new();
        let p = pipes.clone();
        let stats = fetch(
            &host,
            &m,
            &opts("peer-A"),
            move || std::future::ready(Ok(p.open())),
            |done, total| seen.push((done, total)),
        )
        .await
        .unwrap();
        assert_eq!(stats.chunks_total, 10);
        assert_eq!(stats.chunks_present, 3);
        assert_eq!(stats.chunks_fetched, 7);
        assert_eq!(stats.streams, 1);
        let served = pipes.outcomes().await;
        assert_eq!(served.len(), 1);
        let s = served[0].clone().expect("the server ended cleanly");
        assert_eq!(s.chunks_sent, 7, "the server sent chunks the host had");
        assert_eq!(s.bytes_sent, stats.bytes_fetched);
        // Progress starts at what was there and ends at the total.
        let total = bytes.len() as u64;
        assert_eq!(seen.first().unwrap().1, total);
        assert_eq!(
            seen.first().unwrap().0,
            2 * CHUNK_SIZE as u64 + (CHUNK_SIZE as u64 - 1000)
        );
        assert_eq!(*seen.last().unwrap(), (total, total));
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
        let out = dst.path().join("image.tar");
        host.assemble(&m, &out).unwrap();
        assert_eq!(Digest::of(&fs::read(&out).unwrap()), m.digest);

        // Fetching again moves nothing and opens no stream.
        let again = fetch(
            &host,
            &m,
            &opts("peer-A"),
            || {
                std::future::ready(Err::<Compat<tokio::io::DuplexStream>, _>(io::Error::other(
                    "not needed",
                )))
            },
            |_, _| {},
        )
        .await
        .unwrap();
        assert_eq!((again.chunks_fetched, again.streams), (0, 0));
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_server_is_caught_and_nothing_bad_is_stored() {
    tokio::time::timeout(TEST_TIME, async {
        let src = tempdir();
        let dst = tempdir();
        let (server, m, _) = server_with(src.path(), 6 * CHUNK_SIZE as usize, 6);
        // The server's copy of chunk 3 rots on disk (same length, one bit flipped).
        let bad = m.chunks[3];
        let path = server.path_of(&bad);
        let mut rotten = fs::read(&path).unwrap();
        rotten[777] ^= 1;
        fs::write(&path, &rotten).unwrap();

        let host = ChunkStore::open(dst.path()).unwrap();
        let pipes = Pipes::new(&server);
        let p = pipes.clone();
        let err = fetch(
            &host,
            &m,
            &opts("12D3KooWcorrupt"),
            move || std::future::ready(Ok(p.open())),
            |_, _| {},
        )
        .await
        .unwrap_err();
        match &err {
            TransferError::DigestMismatch {
                chunk,
                peer,
                actual,
            } => {
                assert_eq!(*chunk, bad);
                assert_eq!(peer, "12D3KooWcorrupt");
                assert_eq!(*actual, Digest::of(&rotten));
            }
            other => panic!("expected a digest mismatch, got {other}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&bad.to_string()) && msg.contains("12D3KooWcorrupt"),
            "{msg}"
        );
        assert!(!host.has(&bad), "the bad chunk was stored");
        assert!(!host.path_of(&bad).exists());
        // Whatever else was stored is good.
        for d in &m.chunks {
            if host.has(d) {
                assert_eq!(Digest::of(&host.get(d).unwrap()), *d);
            }
        }
        no_temp_files(&host);
        let out = dst.path().join("image.tar");
        assert!(host.assemble(&m, &out).is_err());
        assert!(!out.exists());
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_chunk_or_an_unreachable_peer_ends_the_fetch() {
    tokio::time::timeout(TEST_TIME, async {
        let src = tempdir();
        let dst = tempdir();
        let (server, m, _) = server_with(src.path(), 3 * CHUNK_SIZE as usize, 7);
        server.remove(&m.chunks[1]).unwrap();
        let host = ChunkStore::open(dst.path()).unwrap();
        let pipes = Pipes::new(&server);
        let p = pipes.clone();
        let err = fetch(&host, &m, &opts("peer-B"), move || std::future::ready(Ok(p.open())), |_, _| {})
            .await
            .unwrap_err();
        assert!(
            matches!(&err, TransferError::NotFound { chunk, peer } if *chunk == m.chunks[1] && peer == "peer-B"),
            "{err}"
        );
        assert!(host.has(&m.chunks[0]));

        let opens = AtomicUsize::new(0);
        let err = fetch(
            &host,
            &m,
            &opts("peer-gone"),
            || {
                opens.fetch_add(1, Ordering::SeqCst);
                std::future::ready(Err::<Compat<tokio::io::DuplexStream>, _>(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "refused",
                )))
            },
            |_, _| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(&err, TransferError::GaveUp { peer, .. } if peer == "peer-gone"), "{err}");
        assert_eq!(opens.load(Ordering::SeqCst), 6, "1 try + 5 retries");
    })
    .await
    .expect("test timed out");
}

/// A stream whose reads fail once `left` bytes have been read.
struct Breaking<S> {
    inner: S,
    left: usize,
    read: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Breaking<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.left == 0 {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "cut")));
        }
        let max = buf.len().min(self.left);
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, &mut buf[..max]) {
            Poll::Ready(Ok(n)) => {
                this.left -= n;
                this.read.fetch_add(n as u64, Ordering::SeqCst);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Breaking<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stream_resumes_where_it_stopped() {
    tokio::time::timeout(TEST_TIME, async {
        let src = tempdir();
        let dst = tempdir();
        let n_chunks = 12;
        let (server, m, _) = server_with(src.path(), n_chunks * CHUNK_SIZE as usize, 8);
        let host = ChunkStore::open(dst.path()).unwrap();
        let pipes = Pipes::new(&server);
        let read = Arc::new(AtomicU64::new(0));
        // The first stream breaks in the middle of the sixth chunk; later ones do not.
        let cut = 5 * (CHUNK_SIZE as usize + 37) + 1000;
        let mut calls = 0;
        let (p, r) = (pipes.clone(), read.clone());
        let stats = fetch(
            &host,
            &m,
            &opts("peer-C"),
            move || {
                calls += 1;
                let left = if calls == 1 { cut } else { usize::MAX };
                std::future::ready(Ok(Breaking {
                    inner: p.open(),
                    left,
                    read: r.clone(),
                }))
            },
            |_, _| {},
        )
        .await
        .unwrap();
        assert_eq!(stats.streams, 2, "{stats:?}");
        assert_eq!(
            stats.chunks_fetched, n_chunks,
            "each chunk stored exactly once"
        );
        assert_eq!(stats.bytes_fetched, (n_chunks * CHUNK_SIZE as usize) as u64);
        // On the wire: everything once, plus the part of the sixth chunk lost at the cut.
        let wire = read.load(Ordering::SeqCst);
        let once = (n_chunks * (CHUNK_SIZE as usize + 37)) as u64;
        assert_eq!(
            wire,
            once + 1000,
            "the resumed stream asked for chunks already stored"
        );
        let served = pipes.outcomes().await;
        assert_eq!(served.len(), 2);
        let second = served[1].clone().expect("second stream ended cleanly");
        assert_eq!(
            second.chunks_sent,
            n_chunks - 5,
            "the resumed stream re-sent stored chunks"
        );
        let out = dst.path().join("image.tar");
        host.assemble(&m, &out).unwrap();
        assert_eq!(Digest::of(&fs::read(&out).unwrap()), m.digest);
        no_temp_files(&host);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fetches_into_one_store_at_once_both_succeed() {
    tokio::time::timeout(TEST_TIME, async {
        let src = tempdir();
        let dst = tempdir();
        let (server, m, _) = server_with(src.path(), 8 * CHUNK_SIZE as usize + 5, 9);
        let host = ChunkStore::open(dst.path()).unwrap();
        let pipes = Pipes::new(&server);
        let run = |label: &'static str| {
            let (host, m, p) = (host.clone(), m.clone(), pipes.clone());
            tokio::spawn(async move {
                fetch(
                    &host,
                    &m,
                    &opts(label),
                    move || std::future::ready(Ok(p.open())),
                    |_, _| {},
                )
                .await
            })
        };
        let (a, b) = (run("x"), run("y"));
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
        assert!(host.missing(&m).is_empty());
        let out = dst.path().join("image.tar");
        host.assemble(&m, &out).unwrap();
        assert_eq!(Digest::of(&fs::read(&out).unwrap()), m.digest);
        no_temp_files(&host);
    })
    .await
    .expect("test timed out");
}

// ----- over the overlay -----

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_32_mib_artifact_crosses_two_overlay_nodes() {
    let src = tempdir();
    let dst = tempdir();
    let (a, a_task) = Overlay::spawn(node_config(vec![])).await.unwrap();
    let (b, b_task) = Overlay::spawn(node_config(a.listen_addrs().await.unwrap()))
        .await
        .unwrap();
    let result = tokio::time::timeout(TEST_TIME, async {
        // A holds the artifact (an image tarball file, read in a stream) and serves it.
        let (server, m, bytes) = {
            let store = ChunkStore::open(src.path().join("store")).unwrap();
            let bytes = data(32 << 20, 10);
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            b.append_data(&mut h, "layer.tar", bytes.as_slice())
                .unwrap();
            let manifest = br#"[{"Config":"c.json","RepoTags":["big:1"],"Layers":["layer.tar"]}]"#;
            let mut h = tar::Header::new_gnu();
            h.set_size(manifest.len() as u64);
            b.append_data(&mut h, "manifest.json", &manifest[..])
                .unwrap();
            let tar_path = src.path().join("image.tar");
            let tarball = b.into_inner().unwrap();
            fs::write(&tar_path, &tarball).unwrap();
            let art = read_image_tar(&tar_path).unwrap();
            let m = store.put_artifact(&art).unwrap();
            (store, m, tarball)
        };
        let n_chunks = bytes.len().div_ceil(CHUNK_SIZE as usize);
        assert_eq!(m.chunks.len(), n_chunks);
        let incoming = a.accept_streams(TRANSFER_PROTOCOL).unwrap();
        let serving = tokio::spawn(brume_artifact::serve_incoming(server.clone(), incoming, 4));

        let start = Instant::now();
        loop {
            let peers = b.peers().await.unwrap();
            if peers.iter().any(|p| p.peer_id == a.peer_id()) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the nodes did not connect within 60 s; b's peers: {peers:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let host = ChunkStore::open(dst.path().join("store")).unwrap();
        let peer = a.peer_id();
        let bb = b.clone();
        let t = Instant::now();
        let stats = fetch(
            &host,
            &m,
            &opts(&peer.to_string()),
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
        .unwrap();
        let secs = t.elapsed().as_secs_f64();
        eprintln!(
            "fetched {} chunks ({} bytes) over the overlay in {:.3} s ({:.0} MiB/s, debug build)",
            stats.chunks_fetched,
            stats.bytes_fetched,
            secs,
            stats.bytes_fetched as f64 / secs / (1 << 20) as f64
        );
        assert_eq!(stats.chunks_fetched, n_chunks);
        assert_eq!(stats.streams, 1);
        let out = dst.path().join("image.tar");
        host.assemble(&m, &out).unwrap();
        let got = fs::read(&out).unwrap();
        assert_eq!(Digest::of(&got), m.digest);
        assert_eq!(got, bytes);
        serving.abort();
    })
    .await;
    for (node, task) in [(a, a_task), (b, b_task)] {
        let _ = node.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    result.expect("test timed out");
}
