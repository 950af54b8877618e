//! `brume bench transfer --link`: brume's two byte movers against a plain TCP copy over a real,
//! shaped link, in the same run. This replaces the loopback ratio of `brume bench transfer`,
//! which measures the CPU cost of noise + yamux on two shared cores rather than any link.
//!
//! The setup: a 2-host brume-testnet testbed (two network namespaces joined by the userspace TUN
//! router, which shapes host A's link, both directions, to the rate under test and holds every
//! packet half the RTT each way). Each host runs a real brume overlay endpoint (TCP + noise +
//! yamux, as the daemon) on a tokio runtime of its own whose threads all live in that host's
//! namespace (named `brume-link-a` / `brume-link-b`, so their CPU time is told apart). Host A
//! holds `N` MiB of random bytes; every run moves them A -> B three ways:
//!
//! * **TCP**: a plain TCP connection, memory to memory (1 MiB writes and reads).
//! * **TCP to a file**: the same, B writing each filled 1 MiB buffer to a file on the disk the
//!   chunk store uses (what `nc host port > image.tar` does): the artifact fetch's baseline,
//!   as in issue 5's loopback ratio. Landing bytes in the page cache is not free on this VM
//!   (fresh pages cost the host a fault each: see BENCHMARKS.md).
//! * **fetch**: brume's artifact path: A's chunk store serves `/brume/transfer/1`, B fetches
//!   every 1 MiB chunk into an empty store on that disk (each digest checked).
//! * **wire**: a migration stream: A opens an overlay stream to B and writes brume-migration's
//!   `live::wire` frames as the live source does (a hello, `Chunks` frames of
//!   [`BATCH_CHUNKS`] 4 KiB pages, uncompressed, a final `RoundEnd`); B decodes every frame and
//!   acknowledges the round. Its baseline is TCP memory to memory.
//!
//! A run's time runs from the side that starts the move (B for TCP and fetch, A for the wire)
//! to the moment B holds the last byte. Ratio = baseline time / brume time of the same run; the
//! figures are medians over the runs (order alternating), with their ranges. The fetch is also
//! shown against TCP memory to memory, the stricter figure. Beside each rate is
//! the CPU time per MB of each end and of the router thread (from /proc, all of a runtime's
//! threads), which says what each way costs on these cores.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::tcpcopy::COPY_BUF;
use anyhow::{bail, Context};
use brume_artifact::{
    fetch, serve_incoming, Artifact, ArtifactKind, ArtifactManifest, ChunkStore, FetchOptions,
    TRANSFER_PROTOCOL,
};
use brume_migration::chunks::{ChunkRef, Digest as PageDigest, CHUNK_SIZE as PAGE};
use brume_migration::compress::Level;
use brume_migration::live::scan::BATCH_CHUNKS;
use brume_migration::live::wire::{read_message, write_message, Message, Mode, VERSION};
use brume_overlay::{Overlay, OverlayConfig, OverlayHandle, PeerId, StreamProtocol};
use brume_testnet::{Shaping, Testbed};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use super::median;

/// A stream protocol of this bench only: live::wire frames, as on `/brume/migrate/2`.
const WIRE_PROTOCOL: StreamProtocol = StreamProtocol::new("/brume/bench-link-wire/1");
/// How long one transfer may take before the bench gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(300);
/// Thread name prefixes whose CPU time is counted as host A, host B and the router.
const THREADS_A: &str = "brume-link-a";
const THREADS_B: &str = "brume-link-b";
const THREADS_ROUTER: &str = "brume-testnet-r";
/// With no size given, each transfer moves about this many seconds of the link's rate.
const AUTO_SECONDS: f64 = 2.0;

/// What one link measurement needs.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// Link rate, Mbit/s (10^6 bit/s).
    pub mbit: u64,
    /// Round trip between the hosts, ms.
    pub rtt_ms: f64,
    /// MiB per transfer; `None`: about [`AUTO_SECONDS`] of the link's rate.
    pub size_mb: Option<usize>,
    /// Repetitions; figures are medians over them.
    pub runs: usize,
}

impl LinkOptions {
    fn size_mib(&self) -> usize {
        self.size_mb.unwrap_or_else(|| {
            let bytes = self.mbit as f64 * 1e6 / 8.0 * AUTO_SECONDS;
            ((bytes / 1048576.0).round() as usize).max(4)
        })
    }
}

/// The three ways of one rate, as samples per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Tcp,
    TcpFile,
    Fetch,
    Wire,
}

const WAYS: [Way; 4] = [Way::Tcp, Way::TcpFile, Way::Fetch, Way::Wire];

impl Way {
    /// What this way is measured against.
    fn baseline(self) -> Way {
        match self {
            Way::Fetch | Way::TcpFile => Way::TcpFile,
            Way::Tcp | Way::Wire => Way::Tcp,
        }
    }
}

/// One transfer: seconds and CPU seconds of A, B and the router.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    secs: f64,
    cpu_a: f64,
    cpu_b: f64,
    cpu_router: f64,
}

/// The figures of one link rate.
#[derive(Debug, Clone)]
pub struct LinkNumbers {
    pub mbit: u64,
    pub rtt_ms: f64,
    pub size_mib: usize,
    pub runs: usize,
    samples: [Vec<Sample>; 4],
}

/// Median and range of a sample.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

fn spread(xs: &[f64]) -> Spread {
    let mut v = xs.to_vec();
    Spread {
        median: median(&mut v),
        min: v.first().copied().unwrap_or(f64::NAN),
        max: v.last().copied().unwrap_or(f64::NAN),
    }
}

impl LinkNumbers {
    fn mb(&self) -> f64 {
        (self.size_mib << 20) as f64 / 1e6
    }

    fn of(&self, w: Way) -> &[Sample] {
        &self.samples[w as usize]
    }

    /// MB/s (10^6 bytes) of a way over the runs.
    fn rate(&self, w: Way) -> Spread {
        let mb = self.mb();
        spread(&self.of(w).iter().map(|s| mb / s.secs).collect::<Vec<_>>())
    }

    /// Per run, `base`'s time / this way's time (1.0 = as fast as the baseline).
    fn ratio_to(&self, w: Way, base: Way) -> Spread {
        let r: Vec<f64> = self
            .of(base)
            .iter()
            .zip(self.of(w))
            .map(|(t, s)| t.secs / s.secs)
            .collect();
        spread(&r)
    }

    /// Against the way's own baseline ([`Way::baseline`]).
    fn ratio(&self, w: Way) -> Spread {
        self.ratio_to(w, w.baseline())
    }

    fn cpu(&self, w: Way, f: fn(&Sample) -> f64) -> f64 {
        let mb = self.mb();
        median(
            &mut self
                .of(w)
                .iter()
                .map(|s| f(s) * 1e3 / mb)
                .collect::<Vec<_>>(),
        )
    }

    /// Artifact fetch / TCP into a file, median over runs.
    pub fn fetch_ratio(&self) -> f64 {
        self.ratio(Way::Fetch).median
    }

    /// Migration stream / TCP memory to memory, median over runs.
    pub fn wire_ratio(&self) -> f64 {
        self.ratio(Way::Wire).median
    }

    /// The headline: the smaller of the two movers' ratios.
    pub fn ratio_key(&self) -> f64 {
        self.fetch_ratio().min(self.wire_ratio())
    }

    /// `100mbit`, `1gbit`: the suffix of this rate's BENCH keys.
    pub fn label(&self) -> String {
        if self.mbit.is_multiple_of(1000) {
            format!("{}gbit", self.mbit / 1000)
        } else {
            format!("{}mbit", self.mbit)
        }
    }

    /// The table of this rate, for a person.
    pub fn table(&self) -> String {
        let mut t = format!(
            "link shaped at {} Mbit/s, RTT {} ms, {} MiB per transfer, median of {} runs [range]\n\
             {:<24} {:>20} {:>26} {:>8} {:>8} {:>8}\n",
            self.mbit,
            self.rtt_ms,
            self.size_mib,
            self.runs,
            "way",
            "MB/s",
            "ratio to its baseline",
            "A ms/MB",
            "B ms/MB",
            "router",
        );
        for (w, name) in [
            (Way::Tcp, "plain TCP, to memory"),
            (Way::TcpFile, "plain TCP, to a file"),
            (Way::Fetch, "artifact fetch (/file)"),
            (Way::Wire, "migration stream (/mem)"),
        ] {
            let r = self.rate(w);
            let q = self.ratio(w);
            let _ = writeln!(
                t,
                "{:<24} {:>20} {:>26} {:>8.2} {:>8.2} {:>8.2}",
                name,
                format!("{:.1} [{:.1}-{:.1}]", r.median, r.min, r.max),
                format!("{:.3} [{:.3}-{:.3}]", q.median, q.min, q.max),
                self.cpu(w, |s| s.cpu_a),
                self.cpu(w, |s| s.cpu_b),
                self.cpu(w, |s| s.cpu_router),
            );
        }
        let f = self.ratio_to(Way::Fetch, Way::Tcp);
        let _ = writeln!(
            t,
            "artifact fetch against TCP to memory: {:.3} [{:.3}-{:.3}]",
            f.median, f.min, f.max
        );
        t
    }

    /// `key=value` pairs of this rate for a BENCH line.
    pub fn keys(&self) -> String {
        let l = self.label();
        format!(
            "transfer_ratio_{l}={:.3} fetch_ratio_{l}={:.3} wire_ratio_{l}={:.3} \
             fetch_vs_tcp_mem_{l}={:.3} tcp_mb_s_{l}={:.1} tcp_file_mb_s_{l}={:.1} \
             fetch_mb_s_{l}={:.1} wire_mb_s_{l}={:.1} fetch_cpu_ms_per_mb_{l}={:.2} \
             wire_cpu_ms_per_mb_{l}={:.2} tcp_cpu_ms_per_mb_{l}={:.2}",
            self.ratio_key(),
            self.fetch_ratio(),
            self.wire_ratio(),
            self.ratio_to(Way::Fetch, Way::Tcp).median,
            self.rate(Way::Tcp).median,
            self.rate(Way::TcpFile).median,
            self.rate(Way::Fetch).median,
            self.rate(Way::Wire).median,
            self.cpu(Way::Fetch, |s| s.cpu_a + s.cpu_b),
            self.cpu(Way::Wire, |s| s.cpu_a + s.cpu_b),
            self.cpu(Way::Tcp, |s| s.cpu_a + s.cpu_b),
        )
    }
}

/// `brume bench transfer --link`: every rate in turn, the tables, then one BENCH line.
pub fn cli(mbits: &[u64], rtt_ms: f64, size_mb: Option<usize>, runs: usize) -> anyhow::Result<()> {
    let mut line = String::from("BENCH transfer_link");
    for &mbit in mbits {
        let n = measure(&LinkOptions {
            mbit,
            rtt_ms,
            size_mb,
            runs,
        })?;
        println!("{}", n.table());
        line.push(' ');
        line.push_str(&n.keys());
    }
    let _ = write!(line, " rtt_ms={rtt_ms} runs={runs}");
    println!("{line}");
    Ok(())
}

/// `brume bench migration`'s `transfer_ratio_100mbit` and `transfer_ratio_1gbit`: both rates at
/// the migration bench's RTT, each table printed; a quick run moves 8 MiB once.
pub fn for_migration(rtt_ms: f64, quick: bool, runs: usize) -> anyhow::Result<Vec<LinkNumbers>> {
    let mut out = Vec::new();
    for mbit in [100, 1000] {
        let n = measure(&LinkOptions {
            mbit,
            rtt_ms,
            size_mb: quick.then_some(8),
            runs: if quick { 1 } else { runs.max(3) },
        })?;
        println!("\n{}", n.table());
        out.push(n);
    }
    Ok(out)
}

/// Measures one rate (see the module doc). Needs root; runs its own runtimes, so call it from
/// outside any tokio runtime.
pub fn measure(opts: &LinkOptions) -> anyhow::Result<LinkNumbers> {
    if opts.runs == 0 || opts.mbit == 0 {
        bail!("runs and the link rate must both be at least 1");
    }
    if unsafe { libc::geteuid() } != 0 {
        bail!("the link bench needs root (network namespaces)");
    }
    let size_mib = opts.size_mib();
    let rtt = opts.rtt_ms;
    let bed = Testbed::builder(2, |i, j| if i == j { 0.0 } else { rtt })
        .bandwidth(0, Shaping::mbit(opts.mbit))
        .build()
        .context("build the 2-host testbed (needs root, ip, /dev/net/tun)")?;
    let rt_a = ns_runtime(&bed, 0, THREADS_A)?;
    let rt_b = ns_runtime(&bed, 1, THREADS_B)?;
    let work = tempfile::tempdir().context("creating the bench's temp directory")?;
    let bytes: Arc<[u8]> = random_bytes(size_mib << 20).into();
    let store = ChunkStore::open(work.path().join("server"))?;
    let manifest = store.put_artifact(&Artifact::from_bytes(
        ArtifactKind::ImageTar,
        bytes.to_vec(),
    ))?;
    let refs: Arc<[ChunkRef]> = bytes
        .chunks(PAGE)
        .map(|c| ChunkRef {
            digest: PageDigest::of(c),
            len: c.len() as u32,
        })
        .collect();

    let (a, b) = start_pair(&bed, &rt_a, &rt_b)?;
    let rig = Rig {
        bed: &bed,
        rt_a: &rt_a,
        rt_b: &rt_b,
        a: &a,
        b: &b,
        work: work.path(),
        manifest: &manifest,
        bytes,
        refs,
    };
    let result = rig.measure_all(&store, opts.runs);
    for (node, rt) in [(&a, &rt_a), (&b, &rt_b)] {
        let node = node.clone();
        let _ = on(rt, async move { Ok(node.shutdown().await?) });
    }
    rt_a.shutdown_timeout(Duration::from_secs(5));
    rt_b.shutdown_timeout(Duration::from_secs(5));
    drop(bed);
    Ok(LinkNumbers {
        mbit: opts.mbit,
        rtt_ms: rtt,
        size_mib,
        runs: opts.runs,
        samples: result?,
    })
}

/// A multi-threaded runtime whose every thread (workers and blocking pool) enters host `i`'s
/// namespace as it starts, so every socket it opens is host `i`'s.
fn ns_runtime(bed: &Testbed, i: usize, name: &'static str) -> anyhow::Result<Runtime> {
    let ns = bed.netns(i).to_string();
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        // Threads that exit would take their CPU time with them mid-measurement.
        .thread_keep_alive(Duration::from_secs(3600))
        .on_thread_start(move || {
            // A thread left outside cannot reach the testbed's addresses: the transfers fail
            // loudly rather than measure another path.
            if let Err(e) = brume_testnet::netns::enter(&ns) {
                eprintln!("brume bench: a runtime thread could not enter {ns}: {e}");
            }
        })
        .enable_all()
        .build()?)
}

/// Runs `fut` as a task of `rt` (on its namespaced threads, never on the caller's) and waits.
fn on<T: Send + 'static>(
    rt: &Runtime,
    fut: impl std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    rt.block_on(async {
        tokio::time::timeout(STEP_TIMEOUT, rt.spawn(fut))
            .await
            .context("a link bench step timed out")?
            .context("a link bench task panicked")?
    })
}

/// Overlay node A on host A, node B on host B joined through it; returns once each has the
/// other in its peer table.
fn start_pair(
    bed: &Testbed,
    rt_a: &Runtime,
    rt_b: &Runtime,
) -> anyhow::Result<(OverlayHandle, OverlayHandle)> {
    let listen = |i: usize| -> anyhow::Result<_> {
        Ok(vec![format!("/ip4/{}/tcp/0", bed.addr(i)).parse()?])
    };
    let la = listen(0)?;
    let (a, _) = on(rt_a, async move {
        Overlay::spawn(OverlayConfig {
            listen: la,
            ..OverlayConfig::default()
        })
        .await
        .context("starting overlay node A")
    })?;
    let boot = {
        let a = a.clone();
        on(rt_a, async move { Ok(a.listen_addrs().await?) })?
    };
    let lb = listen(1)?;
    let (b, _) = on(rt_b, async move {
        Overlay::spawn(OverlayConfig {
            listen: lb,
            bootstrap: boot,
            ..OverlayConfig::default()
        })
        .await
        .context("starting overlay node B")
    })?;
    let (ca, cb) = (a.clone(), b.clone());
    on(rt_b, async move {
        let started = Instant::now();
        loop {
            let sees = |from: OverlayHandle, to: PeerId| async move {
                anyhow::Ok(from.peers().await?.iter().any(|p| p.peer_id == to))
            };
            if sees(ca.clone(), cb.peer_id()).await? && sees(cb.clone(), ca.peer_id()).await? {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("the two bench nodes did not connect within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })?;
    Ok((a, b))
}

struct Rig<'a> {
    bed: &'a Testbed,
    rt_a: &'a Runtime,
    rt_b: &'a Runtime,
    a: &'a OverlayHandle,
    b: &'a OverlayHandle,
    work: &'a Path,
    manifest: &'a ArtifactManifest,
    bytes: Arc<[u8]>,
    refs: Arc<[ChunkRef]>,
}

impl Rig<'_> {
    fn measure_all(&self, store: &ChunkStore, runs: usize) -> anyhow::Result<[Vec<Sample>; 4]> {
        // Host A: the chunk server and the TCP sender.
        let _serving = {
            let incoming = self.a.accept_streams(TRANSFER_PROTOCOL)?;
            let store = store.clone();
            AbortOnDrop(
                self.rt_a
                    .spawn(async move { serve_incoming(store, incoming, 4).await }),
            )
        };
        let tcp_addr = {
            let addr = (self.bed.addr(0), 0);
            let bytes = self.bytes.clone();
            on(self.rt_a, async move {
                let l = TcpListener::bind(addr).await?;
                let at = l.local_addr()?;
                tokio::spawn(tcp_sender(l, bytes));
                Ok(at)
            })?
        };
        // Host B: the migration stream's receiving end.
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let _sink = {
            let mut incoming = self.b.accept_streams(WIRE_PROTOCOL)?;
            AbortOnDrop(self.rt_b.spawn(async move {
                while let Some((_, s)) = incoming.next().await {
                    let done = done_tx.clone();
                    tokio::spawn(async move {
                        let _ = done.send(receive_wire(s).await);
                    });
                }
            }))
        };
        // Every copy B lands on disk is kept until the end: each then writes fresh pages, as a
        // host's fetch does. (Deleted at once, the next writer would reuse pages the VM still
        // backs and run up to twice as fast as the one that found none: whichever way came first
        // after a pause lost, and the order, not the way, decided the ratio.)
        let mut kept: Vec<tempfile::TempDir> = Vec::new();
        let mut once = |way: Way| -> anyhow::Result<Sample> {
            let dir = tempfile::tempdir_in(self.work)?;
            let cpu = Cpu::now();
            let secs = match way {
                Way::Tcp => self.tcp(tcp_addr, None)?,
                Way::TcpFile => self.tcp(tcp_addr, Some(dir.path()))?,
                Way::Fetch => self.fetch(dir.path())?,
                Way::Wire => self.wire(&mut done_rx)?,
            };
            let sample = cpu.since(secs);
            kept.push(dir);
            Ok(sample)
        };
        // Warm-up: the connection's windows, the allocator, the page cache.
        for way in WAYS {
            once(way).with_context(|| format!("warm-up {way:?}"))?;
        }
        let mut samples: [Vec<Sample>; 4] = Default::default();
        for run in 0..runs {
            let mut order = WAYS;
            if run % 2 == 1 {
                order.reverse();
            }
            for way in order {
                let s = once(way).with_context(|| format!("{way:?}, run {run}"))?;
                eprintln!(
                    "  {way:?} run {run}: {:.2} s, {:.1} MB/s, CPU A {:.0} ms, B {:.0} ms, router {:.0} ms",
                    s.secs,
                    (self.bytes.len() as f64 / 1e6) / s.secs,
                    s.cpu_a * 1e3,
                    s.cpu_b * 1e3,
                    s.cpu_router * 1e3
                );
                samples[way as usize].push(s);
            }
        }
        // Deleting the copies is not part of any measurement.
        drop(kept);
        Ok(samples)
    }

    /// A plain TCP copy to host B, into a file in `dir` if given.
    fn tcp(&self, addr: std::net::SocketAddr, dir: Option<&Path>) -> anyhow::Result<f64> {
        let size = self.bytes.len();
        let path = dir.map(|d| d.join("image.tar"));
        on(self.rt_b, async move {
            let started = Instant::now();
            crate::tcpcopy::receive(addr, path.as_deref(), size).await?;
            Ok(started.elapsed().as_secs_f64())
        })
    }

    /// An artifact fetch by host B into an empty store in `dir`.
    fn fetch(&self, dir: &Path) -> anyhow::Result<f64> {
        let host = ChunkStore::open(dir)?;
        let (b, peer, manifest) = (self.b.clone(), self.a.peer_id(), self.manifest.clone());
        on(self.rt_b, async move {
            let opts = FetchOptions {
                peer: peer.to_string(),
                ..FetchOptions::default()
            };
            let started = Instant::now();
            let stats = fetch(
                &host,
                &manifest,
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
            let secs = started.elapsed().as_secs_f64();
            let want = manifest.distinct_chunks().len();
            if stats.chunks_fetched != want {
                bail!("fetched {} chunks of {want}", stats.chunks_fetched);
            }
            Ok(secs)
        })
    }

    fn wire(
        &self,
        done: &mut mpsc::UnboundedReceiver<anyhow::Result<(Instant, u64)>>,
    ) -> anyhow::Result<f64> {
        let (a, peer) = (self.a.clone(), self.b.peer_id());
        let (bytes, refs) = (self.bytes.clone(), self.refs.clone());
        let started = Instant::now();
        on(self.rt_a, send_wire(a, peer, bytes, refs))?;
        let (at, got) = self
            .rt_b
            .block_on(async { tokio::time::timeout(STEP_TIMEOUT, done.recv()).await })
            .context("the migration stream's receiver did not report")?
            .context("the migration stream's receiver is gone")??;
        if got != self.bytes.len() as u64 {
            bail!(
                "the migration stream carried {got} bytes of {}",
                self.bytes.len()
            );
        }
        Ok((at - started).as_secs_f64())
    }
}

/// Host A's end of every TCP copy: writes the bytes and closes.
async fn tcp_sender(l: TcpListener, bytes: Arc<[u8]>) {
    while let Ok((mut s, _)) = l.accept().await {
        let bytes = bytes.clone();
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            for c in bytes.chunks(COPY_BUF) {
                if s.write_all(c).await.is_err() {
                    return;
                }
            }
            let _ = s.shutdown().await;
        });
    }
}

/// Host A's end of a migration stream: what the live source writes for one uncompressed round.
async fn send_wire(
    a: OverlayHandle,
    peer: PeerId,
    bytes: Arc<[u8]>,
    refs: Arc<[ChunkRef]>,
) -> anyhow::Result<()> {
    let mut s = a.open_stream(peer, WIRE_PROTOCOL).await?.compat();
    let hello = Message::Hello {
        version: VERSION,
        mode: Mode::StopAndCopy,
        pid: 0,
        memory_bytes: bytes.len() as u64,
    };
    write_message(&mut s, &hello).await?;
    for (i, part) in bytes.chunks(PAGE * BATCH_CHUNKS).enumerate() {
        let first = i * BATCH_CHUNKS;
        let n = part.len().div_ceil(PAGE);
        // As the source does: the batch's payload is built, then framed (two copies).
        let frame = Message::Chunks {
            level: Level::None,
            refs: refs[first..first + n].to_vec(),
            payload: part.to_vec(),
        }
        .encode();
        s.write_all(&frame).await?;
    }
    let end = Message::RoundEnd {
        round: 1,
        last: true,
        files: Vec::new(),
    };
    write_message(&mut s, &end).await?;
    s.flush().await?;
    match read_message(&mut s).await? {
        Message::Ack { .. } => Ok(()),
        other => bail!("the receiver answered {other:?} instead of an ack"),
    }
}

/// Host B's end of a migration stream: decodes every frame; returns when the last round ended
/// and the payload bytes it carried.
async fn receive_wire<S>(s: S) -> anyhow::Result<(Instant, u64)>
where
    S: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    let mut s = s.compat();
    let mut got = 0u64;
    loop {
        match read_message(&mut s).await? {
            Message::Hello { .. } => {}
            Message::Chunks { refs, payload, .. } => {
                let want: u64 = refs.iter().map(|r| u64::from(r.len)).sum();
                if want != payload.len() as u64 {
                    bail!("a batch of {want} bytes carried {}", payload.len());
                }
                got += want;
            }
            Message::RoundEnd { round, .. } => {
                let at = Instant::now();
                write_message(&mut s, &Message::Ack { round, chunks: 0 }).await?;
                s.flush().await?;
                return Ok((at, got));
            }
            other => bail!("unexpected message on the migration stream: {other:?}"),
        }
    }
}

/// CPU seconds of host A's threads, host B's threads and the router thread at one moment.
struct Cpu([f64; 3]);

impl Cpu {
    fn now() -> Cpu {
        Cpu([
            threads_cpu(THREADS_A),
            threads_cpu(THREADS_B),
            threads_cpu(THREADS_ROUTER),
        ])
    }

    fn since(self, secs: f64) -> Sample {
        let now = Cpu::now();
        Sample {
            secs,
            cpu_a: now.0[0] - self.0[0],
            cpu_b: now.0[1] - self.0[1],
            cpu_router: now.0[2] - self.0[2],
        }
    }
}

/// User plus system CPU seconds of this process's threads whose name starts with `prefix`.
fn threads_cpu(prefix: &str) -> f64 {
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    let mut ticks = 0u64;
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ... : the name may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // Fields 14 and 15 of stat (utime, stime) are the 12th and 13th after the name.
        for f in fields.get(11..13).unwrap_or_default() {
            ticks += f.parse::<u64>().unwrap_or(0);
        }
    }
    ticks as f64 / hz
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Incompressible bytes (xorshift64), so no layer can cheat by compressing.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_auto_sizes() {
        let n = |mbit| LinkNumbers {
            mbit,
            rtt_ms: 2.0,
            size_mib: 1,
            runs: 1,
            samples: Default::default(),
        };
        assert_eq!(n(100).label(), "100mbit");
        assert_eq!(n(1000).label(), "1gbit");
        let o = |mbit| LinkOptions {
            mbit,
            rtt_ms: 2.0,
            size_mb: None,
            runs: 1,
        };
        assert_eq!(o(100).size_mib(), 24);
        assert_eq!(o(1000).size_mib(), 238);
    }

    #[test]
    fn ratios_pair_runs_and_take_the_smaller_mover() {
        let s = |secs| Sample {
            secs,
            ..Sample::default()
        };
        let n = LinkNumbers {
            mbit: 100,
            rtt_ms: 2.0,
            size_mib: 1,
            runs: 3,
            samples: [
                vec![s(1.0), s(2.0), s(1.0)],
                vec![s(1.0), s(2.0), s(1.0)],
                vec![s(1.0), s(4.0), s(1.25)],
                vec![s(2.0), s(2.0), s(2.0)],
            ],
        };
        assert_eq!(n.fetch_ratio(), 0.8);
        assert_eq!(n.wire_ratio(), 0.5);
        assert_eq!(n.ratio_key(), 0.5);
    }
}
