//! The artifact transfer benchmark: how fast a host fetches an artifact's chunks from a peer
//! over the overlay, against a plain TCP copy of the same bytes, measured in the same run.
//!
//! Two overlay nodes run in this process on loopback (TCP + noise + yamux, as in the daemon).
//! Node A's chunk store holds a `size_mb` MiB artifact of random bytes and serves
//! `/brume/transfer/1`; each run, node B fetches it into an empty store (every chunk hashed,
//! checked and written to disk) and the baseline copies the same bytes over a plain loopback TCP
//! connection into a file (what `nc host port > image.tar` would do: no hashing, no chunks).
//! The headline is their ratio, `transfer_ratio_vs_tcp`.
//!
//! To tell where time goes, three more figures come from the same run: the same bytes over a
//! raw overlay stream (memory to memory: the noise + yamux ceiling), over raw TCP (memory to
//! memory), and a fetch over an in-memory pipe (no network: the chunk store and hashing
//! ceiling). Every figure is the median over `runs`, the order alternating between runs. Both
//! ends share this machine's cores, so the figures are floors set by CPU, not by any network.
//! MB are 10^6 bytes. Next to each rate is the process's CPU time per MB (both ends, all
//! threads): what each way costs, a figure other work on the machine barely moves.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::tcpcopy::COPY_BUF;
use anyhow::{bail, Context};
use brume_overlay::{OverlayHandle, StreamProtocol};
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::compat::TokioAsyncReadCompatExt;

use super::median;
use super::pair::Pair;
use brume_artifact::{
    fetch, serve, serve_incoming, Artifact, ArtifactKind, ArtifactManifest, ChunkStore,
    FetchOptions, TRANSFER_PROTOCOL,
};

/// A stream protocol of this bench only: the peer writes the artifact's bytes and closes.
const RAW_PROTOCOL: StreamProtocol = StreamProtocol::new("/brume/bench-transfer-raw/1");
/// How long any single measurement may take before the bench gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(300);

/// Options of `brume bench transfer`.
#[derive(Debug, Clone, clap::Args)]
pub struct TransferArgs {
    /// MiB in the artifact [default: 256 on loopback; with --link, about 2 s of each rate].
    #[arg(long)]
    pub size_mb: Option<usize>,
    /// Repetitions; every figure is the median over them [default: 5 on loopback, 3 with --link].
    #[arg(long)]
    pub runs: Option<usize>,
    /// Measure over a shaped link instead of loopback (needs root): two overlay endpoints in two
    /// brume-testnet namespaces; a plain TCP copy, an artifact fetch and a migration stream
    /// (live::wire frames) of the same bytes in the same run, at each --mbit. Its ratios
    /// (`transfer_ratio_100mbit`, `transfer_ratio_1gbit`) replace the loopback ratio, which
    /// measures noise + yamux's CPU cost on two shared cores, not a link.
    #[arg(long)]
    pub link: bool,
    /// With --link: the link rates, Mbit/s (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [100u64, 1000], requires = "link")]
    pub mbit: Vec<u64>,
    /// With --link: the round trip between the two hosts, ms.
    #[arg(long, default_value_t = 2.0, requires = "link")]
    pub rtt_ms: f64,
}

/// The figures of one bench run (medians over `runs`, MB/s of 10^6 bytes).
#[derive(Debug, Clone, PartialEq)]
pub struct TransferNumbers {
    pub size_mb: usize,
    pub runs: usize,
    /// Chunk fetch over two overlay nodes into an empty store.
    pub overlay_mb_s: f64,
    /// Plain TCP copy of the same bytes into a file.
    pub tcp_mb_s: f64,
    /// `overlay_mb_s / tcp_mb_s`.
    pub ratio: f64,
    /// The same bytes over one raw overlay stream, memory to memory.
    pub overlay_raw_mb_s: f64,
    /// The same bytes over raw TCP, memory to memory.
    pub tcp_raw_mb_s: f64,
    /// Chunk fetch over an in-memory pipe (no network) into an empty store.
    pub local_fetch_mb_s: f64,
    /// CPU time of this process (both ends) per MB moved, in ms, for each way above: unlike
    /// throughput, barely moved by other work on the machine.
    pub overlay_cpu_ms_per_mb: f64,
    pub tcp_cpu_ms_per_mb: f64,
    pub overlay_raw_cpu_ms_per_mb: f64,
    pub tcp_raw_cpu_ms_per_mb: f64,
    pub local_fetch_cpu_ms_per_mb: f64,
}

impl TransferNumbers {
    /// The table for a person, then the `BENCH transfer ...` line.
    pub fn report(&self) -> String {
        format!(
            "artifact transfer on loopback ({} MiB, median of {} runs)\n\
             {:<44} {:>9} {:>12}\n\
             {:<44} {:>9.1} {:>12.2}\n\
             {:<44} {:>9.1} {:>12.2}\n\
             {:<44} {:>9.3}\n\
             {:<44} {:>9.1} {:>12.2}\n\
             {:<44} {:>9.1} {:>12.2}\n\
             {:<44} {:>9.1} {:>12.2}\n\
             BENCH transfer overlay_mb_s={:.1} tcp_mb_s={:.1} transfer_ratio_vs_tcp={:.3} \
             overlay_raw_mb_s={:.1} tcp_raw_mb_s={:.1} local_fetch_mb_s={:.1} \
             overlay_cpu_ms_per_mb={:.3} tcp_cpu_ms_per_mb={:.3} overlay_raw_cpu_ms_per_mb={:.3} \
             tcp_raw_cpu_ms_per_mb={:.3} local_fetch_cpu_ms_per_mb={:.3} size_mb={} runs={}",
            self.size_mb,
            self.runs,
            "",
            "MB/s",
            "CPU ms/MB",
            "chunk fetch over the overlay, to the store",
            self.overlay_mb_s,
            self.overlay_cpu_ms_per_mb,
            "plain TCP copy, to a file",
            self.tcp_mb_s,
            self.tcp_cpu_ms_per_mb,
            "ratio (overlay / TCP)",
            self.ratio,
            "raw overlay stream, memory to memory",
            self.overlay_raw_mb_s,
            self.overlay_raw_cpu_ms_per_mb,
            "raw TCP, memory to memory",
            self.tcp_raw_mb_s,
            self.tcp_raw_cpu_ms_per_mb,
            "chunk fetch over an in-memory pipe",
            self.local_fetch_mb_s,
            self.local_fetch_cpu_ms_per_mb,
            self.overlay_mb_s,
            self.tcp_mb_s,
            self.ratio,
            self.overlay_raw_mb_s,
            self.tcp_raw_mb_s,
            self.local_fetch_mb_s,
            self.overlay_cpu_ms_per_mb,
            self.tcp_cpu_ms_per_mb,
            self.overlay_raw_cpu_ms_per_mb,
            self.tcp_raw_cpu_ms_per_mb,
            self.local_fetch_cpu_ms_per_mb,
            self.size_mb,
            self.runs,
        )
    }
}

/// `brume bench transfer`: runs the bench on a runtime of its own and prints the report.
pub fn cli(args: &TransferArgs) -> anyhow::Result<()> {
    if args.link {
        let runs = args.runs.unwrap_or(3);
        return super::linkspeed::cli(&args.mbit, args.rtt_ms, args.size_mb, runs);
    }
    let numbers = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args.size_mb.unwrap_or(256), args.runs.unwrap_or(5)))?;
    println!("{}", numbers.report());
    Ok(())
}

/// Measures chunk fetches over the overlay against plain TCP (see the module doc). Needs a
/// multi-threaded tokio runtime with time and I/O.
pub async fn run(size_mb: usize, runs: usize) -> anyhow::Result<TransferNumbers> {
    if size_mb == 0 || runs == 0 {
        bail!("size_mb and runs must both be at least 1");
    }
    let work = tempfile::tempdir().context("creating the bench's temp directory")?;
    let bytes = random_bytes(size_mb << 20);
    let store = ChunkStore::open(work.path().join("server"))?;
    let manifest = {
        let (store, bytes) = (store.clone(), bytes.clone());
        tokio::task::spawn_blocking(move || {
            store.put_artifact(&Artifact::from_bytes(ArtifactKind::ImageTar, bytes))
        })
        .await??
    };

    let pair = Pair::start().await?;
    let result = measure(
        &pair.a,
        &pair.b,
        &store,
        &manifest,
        &bytes,
        work.path(),
        runs,
    )
    .await;
    pair.stop().await;
    result.map(|mut n| {
        n.size_mb = size_mb;
        n
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Way {
    Overlay,
    Tcp,
    OverlayRaw,
    TcpRaw,
    Local,
}

async fn measure(
    a: &OverlayHandle,
    b: &OverlayHandle,
    store: &ChunkStore,
    manifest: &ArtifactManifest,
    bytes: &[u8],
    work: &Path,
    runs: usize,
) -> anyhow::Result<TransferNumbers> {
    let serving = tokio::spawn(serve_incoming(
        store.clone(),
        a.accept_streams(TRANSFER_PROTOCOL)?,
        4,
    ));
    let shared: std::sync::Arc<[u8]> = bytes.into();
    let raw_serving = {
        let mut incoming = a.accept_streams(RAW_PROTOCOL)?;
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Some((_, mut s)) = incoming.next().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    for c in shared.chunks(COPY_BUF) {
                        if s.write_all(c).await.is_err() {
                            return;
                        }
                    }
                    let _ = s.close().await;
                });
            }
        })
    };
    let tcp = TcpListener::bind("127.0.0.1:0").await?;
    let tcp_addr = tcp.local_addr()?;
    let tcp_serving = {
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = tcp.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = s.set_nodelay(true);
                    for c in shared.chunks(COPY_BUF) {
                        if s.write_all(c).await.is_err() {
                            return;
                        }
                    }
                    let _ = s.shutdown().await;
                });
            }
        })
    };

    let ctx = Ctx {
        a,
        b,
        store,
        manifest,
        work,
        size: bytes.len(),
        tcp_addr,
    };
    // Warm-up: connection windows, the allocator, the page cache.
    for way in [
        Way::Overlay,
        Way::Tcp,
        Way::OverlayRaw,
        Way::TcpRaw,
        Way::Local,
    ] {
        ctx.once(way).await?;
    }
    let mut secs: [Vec<f64>; 5] = Default::default();
    let mut cpu: [Vec<f64>; 5] = Default::default();
    let order = [
        Way::Overlay,
        Way::Tcp,
        Way::OverlayRaw,
        Way::TcpRaw,
        Way::Local,
    ];
    for run in 0..runs {
        let mut this = order;
        if run % 2 == 1 {
            this.reverse();
        }
        for way in this {
            let (s, c) = ctx.once(way).await?;
            secs[way as usize].push(s);
            cpu[way as usize].push(c);
        }
    }
    serving.abort();
    raw_serving.abort();
    tcp_serving.abort();
    let mb = bytes.len() as f64 / 1e6;
    let rate = |w: Way| {
        let mut r: Vec<f64> = secs[w as usize].iter().map(|s| mb / s).collect();
        median(&mut r)
    };
    let cpu_per_mb = |w: Way| {
        let mut r: Vec<f64> = cpu[w as usize].iter().map(|c| c * 1e3 / mb).collect();
        median(&mut r)
    };
    let overlay_mb_s = rate(Way::Overlay);
    let tcp_mb_s = rate(Way::Tcp);
    Ok(TransferNumbers {
        size_mb: 0,
        runs,
        overlay_mb_s,
        tcp_mb_s,
        ratio: overlay_mb_s / tcp_mb_s,
        overlay_raw_mb_s: rate(Way::OverlayRaw),
        tcp_raw_mb_s: rate(Way::TcpRaw),
        local_fetch_mb_s: rate(Way::Local),
        overlay_cpu_ms_per_mb: cpu_per_mb(Way::Overlay),
        tcp_cpu_ms_per_mb: cpu_per_mb(Way::Tcp),
        overlay_raw_cpu_ms_per_mb: cpu_per_mb(Way::OverlayRaw),
        tcp_raw_cpu_ms_per_mb: cpu_per_mb(Way::TcpRaw),
        local_fetch_cpu_ms_per_mb: cpu_per_mb(Way::Local),
    })
}

struct Ctx<'a> {
    a: &'a OverlayHandle,
    b: &'a OverlayHandle,
    store: &'a ChunkStore,
    manifest: &'a ArtifactManifest,
    work: &'a Path,
    size: usize,
    tcp_addr: std::net::SocketAddr,
}

impl Ctx<'_> {
    /// Seconds and CPU seconds (of the whole process) for one transfer the `way` says.
    async fn once(&self, way: Way) -> anyhow::Result<(f64, f64)> {
        let dir = tempfile::tempdir_in(self.work)?;
        let go = async {
            let cpu = cpu_seconds();
            let start = Instant::now();
            match way {
                Way::Overlay => self.fetch_overlay(dir.path()).await?,
                Way::Local => self.fetch_local(dir.path()).await?,
                Way::Tcp => self.tcp_copy(Some(&dir.path().join("image.tar"))).await?,
                Way::TcpRaw => self.tcp_copy(None).await?,
                Way::OverlayRaw => self.overlay_raw().await?,
            }
            anyhow::Ok((start.elapsed().as_secs_f64(), cpu_seconds() - cpu))
        };
        let secs = tokio::time::timeout(STEP_TIMEOUT, go)
            .await
            .context("a transfer measurement timed out")??;
        // Deleting the fetched copy is not part of the measurement.
        tokio::task::spawn_blocking(move || drop(dir)).await?;
        Ok(secs)
    }

    async fn fetch_overlay(&self, dir: &Path) -> anyhow::Result<()> {
        let host = ChunkStore::open(dir)?;
        let peer = self.a.peer_id();
        let b = self.b.clone();
        let opts = FetchOptions {
            peer: peer.to_string(),
            ..FetchOptions::default()
        };
        let stats = fetch(
            &host,
            self.manifest,
            &opts,
            move || {
                let b = b.clone();
                async move {
                    b.open_stream(peer, TRANSFER_PROTOCOL)
                        .await
                        .map_err(std::io::Error::other)
                }
            },
            |_, _| {},
        )
        .await?;
        check_fetched(stats.chunks_fetched, self.manifest)
    }

    async fn fetch_local(&self, dir: &Path) -> anyhow::Result<()> {
        let host = ChunkStore::open(dir)?;
        let server = self.store.clone();
        let stats = fetch(
            &host,
            self.manifest,
            &FetchOptions::default(),
            move || {
                let (client, srv) = tokio::io::duplex(1 << 20);
                let server = server.clone();
                tokio::spawn(async move { serve(&server, srv.compat()).await });
                std::future::ready(Ok(client.compat()))
            },
            |_, _| {},
        )
        .await?;
        check_fetched(stats.chunks_fetched, self.manifest)
    }

    /// Reads the bytes off a TCP connection, into `out` if given.
    async fn tcp_copy(&self, out: Option<&Path>) -> anyhow::Result<()> {
        crate::tcpcopy::receive(self.tcp_addr, out, self.size).await
    }

    async fn overlay_raw(&self) -> anyhow::Result<()> {
        let mut s = self.b.open_stream(self.a.peer_id(), RAW_PROTOCOL).await?;
        let mut buf = vec![0u8; COPY_BUF];
        let mut got = 0usize;
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if got != self.size {
            bail!("raw overlay stream got {got} bytes of {}", self.size);
        }
        Ok(())
    }
}

fn check_fetched(fetched: usize, manifest: &ArtifactManifest) -> anyhow::Result<()> {
    let want = manifest.distinct_chunks().len();
    if fetched != want {
        bail!("fetched {fetched} chunks of {want}");
    }
    Ok(())
}

/// User plus system CPU time of this process so far, in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return f64::NAN;
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Incompressible bytes (xorshift64), so no layer can cheat by compressing.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
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
