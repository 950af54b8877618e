//! `brume bench tunnel`: what a call pays for going through brume's tunnel instead of a direct
//! TCP connection.
//!
//! Two overlay nodes run in this process on loopback (TCP + noise + yamux, as in the daemon). A
//! bench server stands for a task on node B; node B serves `/brume/tunnel/2` for it and node A
//! has a [`Forwarder`] to it. Every figure is measured in the same run against the same server,
//! through the forwarder, through a second forwarder on A whose route is local (a call to a task
//! on the same node), and by connecting to the server's port directly, rotating which goes
//! first:
//!
//! * throughput: one connection writes `size_mb` MiB to the sink, half-closes, and waits for the
//!   sink's byte count (MiB/s from connect to count). A third figure, the raw overlay stream
//!   (the same transfer on a bare stream from A to a sink on B, no TCP at either end), is the
//!   ceiling the overlay connection itself sets, so the gap between it and the tunnel is the
//!   forwarders' share;
//! * round trip: `pings` 1-byte ping-pongs on one open connection (median per run); the added
//!   latency of the tunnel is the difference of the medians;
//! * connect: a fresh connection up to its first 1-byte echo (for the tunnel this includes opening
//!   the overlay stream and the hello/reply exchange), and, alone, the time to open a bare
//!   overlay stream (protocol negotiated).
//!
//! Every figure is the median over `runs`. On one machine both ends of the tunnel share the same
//! cores, so the throughput figure is a floor set by CPU (encryption, multiplexing, four copies
//! through the kernel's loopback), not by any network.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use brume_overlay::{OverlayHandle, StreamProtocol};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::compat::FuturesAsyncReadCompatExt;

use super::median;
use super::pair::Pair;
use brume_tunnel::{serve, Forwarder, InstanceId, Route, Routes, TUNNEL_PROTOCOL};

/// Connections per run for the connect figure.
const CONNECTS: usize = 10;
/// The first byte of a bench connection says what it is for.
const SINK: u8 = b'S';
const ECHO: u8 = b'P';
/// How long any single measurement may take before the bench gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// The bench's own protocol for the raw-stream figure: a sink on B.
const SINK_PROTOCOL: StreamProtocol = StreamProtocol::new("/brume/bench/tunnel-sink/1");

/// Options of `brume bench tunnel`.
#[derive(Debug, Clone, clap::Args)]
pub struct TunnelArgs {
    /// MiB written per throughput measurement.
    #[arg(long, default_value_t = 256)]
    pub size_mb: usize,
    /// 1-byte round trips per latency measurement.
    #[arg(long, default_value_t = 2000)]
    pub pings: usize,
    /// Repetitions; every figure is the median over them.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

/// The figures of one bench run (medians over `runs`). "local" is a forwarder whose route is
/// [`Route::Local`]: a call to a task on the same node, one loopback hop more than direct.
#[derive(Debug, Clone, PartialEq)]
pub struct TunnelNumbers {
    pub size_mb: usize,
    pub pings: usize,
    pub runs: usize,
    pub tunnel_mib_s: f64,
    pub local_mib_s: f64,
    pub direct_mib_s: f64,
    /// A bare overlay stream, no TCP at either end: the overlay connection's own ceiling.
    pub stream_mib_s: f64,
    /// Opening a bare overlay stream (what every tunnelled connection pays first).
    pub stream_open_us: f64,
    pub tunnel_rtt_us: f64,
    pub local_rtt_us: f64,
    pub direct_rtt_us: f64,
    pub tunnel_connect_us: f64,
    pub local_connect_us: f64,
    pub direct_connect_us: f64,
}

impl TunnelNumbers {
    /// Round-trip time the tunnel adds to a direct connection.
    pub fn added_rtt_us(&self) -> f64 {
        self.tunnel_rtt_us - self.direct_rtt_us
    }

    /// Tunnel throughput as a fraction of direct TCP's.
    pub fn throughput_ratio(&self) -> f64 {
        self.tunnel_mib_s / self.direct_mib_s
    }

    /// The table for a person, then the `BENCH tunnel ...` line.
    pub fn report(&self) -> String {
        let row = |name: &str, t: f64, l: f64, d: f64| {
            format!(
                "{name:<24} {t:>10.1} {l:>10.1} {d:>10.1} {:>+14.1}\n",
                t - d
            )
        };
        let mut out = format!(
            "tunnel vs direct TCP on loopback ({} MiB per transfer, {} pings, median of {} runs)\n\
             {:<24} {:>10} {:>10} {:>10} {:>14}\n",
            self.size_mb,
            self.pings,
            self.runs,
            "",
            "tunnel",
            "local fwd",
            "direct",
            "tunnel-direct"
        );
        out += &row(
            "throughput (MiB/s)",
            self.tunnel_mib_s,
            self.local_mib_s,
            self.direct_mib_s,
        );
        out += &format!(
            "{:<24} {:>10.1}\n",
            "  bare overlay stream", self.stream_mib_s
        );
        out += &row(
            "1-byte RTT (us)",
            self.tunnel_rtt_us,
            self.local_rtt_us,
            self.direct_rtt_us,
        );
        out += &row(
            "connect+1st echo (us)",
            self.tunnel_connect_us,
            self.local_connect_us,
            self.direct_connect_us,
        );
        out += &format!(
            "{:<24} {:>10.1}\n",
            "  of which stream open", self.stream_open_us
        );
        out += &format!(
            "BENCH tunnel tunnel_mib_s={:.1} local_mib_s={:.1} direct_mib_s={:.1} \
             stream_mib_s={:.1} throughput_ratio={:.3} tunnel_rtt_us={:.1} local_rtt_us={:.1} \
             direct_rtt_us={:.1} added_rtt_us={:.1} tunnel_connect_us={:.1} \
             local_connect_us={:.1} direct_connect_us={:.1} stream_open_us={:.1} size_mb={} \
             pings={} runs={}",
            self.tunnel_mib_s,
            self.local_mib_s,
            self.direct_mib_s,
            self.stream_mib_s,
            self.throughput_ratio(),
            self.tunnel_rtt_us,
            self.local_rtt_us,
            self.direct_rtt_us,
            self.added_rtt_us(),
            self.tunnel_connect_us,
            self.local_connect_us,
            self.direct_connect_us,
            self.stream_open_us,
            self.size_mb,
            self.pings,
            self.runs,
        );
        out
    }
}

/// `brume bench tunnel`: runs the bench on a runtime of its own and prints the report.
pub fn cli(args: &TunnelArgs) -> anyhow::Result<()> {
    let numbers = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args.size_mb, args.pings, args.runs))?;
    println!("{}", numbers.report());
    Ok(())
}

/// Measures the tunnel against direct TCP (see the module doc). Needs a tokio runtime with time
/// and I/O.
pub async fn run(size_mb: usize, pings: usize, runs: usize) -> anyhow::Result<TunnelNumbers> {
    if size_mb == 0 || pings == 0 || runs == 0 {
        bail!("size_mb, pings and runs must all be at least 1");
    }
    let pair = Pair::start().await?;
    let result = measure(&pair.a, &pair.b, size_mb, pings, runs).await;
    pair.stop().await;
    result
}

async fn measure(
    a: &OverlayHandle,
    b: &OverlayHandle,
    size_mb: usize,
    pings: usize,
    runs: usize,
) -> anyhow::Result<TunnelNumbers> {
    let server = TcpListener::bind("127.0.0.1:0").await?;
    let direct = server.local_addr()?;
    let server = tokio::spawn(bench_server(server));
    let endpoint = InstanceId::new("bench", "sink", 0);
    let routes_b = Routes::new();
    routes_b.set(
        endpoint.clone(),
        Route::Local {
            port: direct.port(),
        },
    );
    let serving = tokio::spawn(serve(b.accept_streams(TUNNEL_PROTOCOL)?, routes_b));
    let routes_a = Routes::new();
    routes_a.set(endpoint.clone(), Route::Remote { peer: b.peer_id() });
    let forwarder = Forwarder::bind(endpoint.clone(), routes_a, a.clone()).await?;
    let tunnel = forwarder.local_addr();
    // A co-located call: the same forwarder code with a local route (one more loopback hop).
    let routes_local = Routes::new();
    routes_local.set(
        endpoint.clone(),
        Route::Local {
            port: direct.port(),
        },
    );
    let local_forwarder = Forwarder::bind(endpoint, routes_local, a.clone()).await?;
    let local = local_forwarder.local_addr();
    let stream_sink = tokio::spawn(overlay_sink(b.clone()));

    let bytes = size_mb << 20;
    // Warm-up: the overlay connection's windows, the allocator, the page cache of the code.
    for addr in [tunnel, local, direct] {
        throughput(addr, bytes.min(16 << 20)).await?;
        round_trips(addr, pings.min(100)).await?;
    }
    stream_throughput(a, b, bytes.min(16 << 20)).await?;
    // Per path (tunnel, local forwarder, direct): MiB/s, RTT and connect samples.
    let mut samples: [[Vec<f64>; 3]; 3] = Default::default();
    let (mut s_mib, mut s_open) = (Vec::new(), Vec::new());
    for run in 0..runs {
        // Rotate which path goes first.
        let paths = [(0, tunnel), (1, local), (2, direct)];
        for k in 0..paths.len() {
            let (path, addr) = paths[(k + run) % paths.len()];
            let secs = throughput(addr, bytes).await?;
            let mut rtts = round_trips(addr, pings).await?;
            let mut connects = Vec::with_capacity(CONNECTS);
            for _ in 0..CONNECTS {
                connects.push(connect_once(addr).await?);
            }
            samples[path][0].push(size_mb as f64 / secs);
            samples[path][1].push(median(&mut rtts));
            samples[path][2].push(median(&mut connects));
        }
        s_mib.push(size_mb as f64 / stream_throughput(a, b, bytes).await?);
        let mut opens = Vec::with_capacity(CONNECTS);
        for _ in 0..CONNECTS {
            opens.push(stream_open(a, b).await?);
        }
        s_open.push(median(&mut opens));
    }
    forwarder.close().await;
    local_forwarder.close().await;
    serving.abort();
    server.abort();
    stream_sink.abort();
    let [t, l, d] = samples.map(|mut path| path.each_mut().map(|xs| median(xs)));
    Ok(TunnelNumbers {
        size_mb,
        pings,
        runs,
        tunnel_mib_s: t[0],
        local_mib_s: l[0],
        direct_mib_s: d[0],
        stream_mib_s: median(&mut s_mib),
        stream_open_us: median(&mut s_open),
        tunnel_rtt_us: t[1],
        local_rtt_us: l[1],
        direct_rtt_us: d[1],
        tunnel_connect_us: t[2],
        local_connect_us: l[2],
        direct_connect_us: d[2],
    })
}

/// The stand-in task: a sink that answers the byte count, or an echo, by the first byte.
async fn bench_server(listener: TcpListener) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut s, _)) = accepted else { continue };
                conns.spawn(async move {
                    s.set_nodelay(true)?;
                    let mode = s.read_u8().await?;
                    let mut buf = vec![0u8; 256 * 1024];
                    if mode == SINK {
                        let mut total = 0u64;
                        loop {
                            let n = s.read(&mut buf).await?;
                            if n == 0 {
                                break;
                            }
                            total += n as u64;
                        }
                        s.write_u64(total).await?;
                    } else {
                        loop {
                            let n = s.read(&mut buf).await?;
                            if n == 0 {
                                break;
                            }
                            s.write_all(&buf[..n]).await?;
                        }
                    }
                    s.shutdown().await
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// B's end of the raw-stream figures: counts the bytes of each stream, answers the count. A
/// stream that breaks (the open-time figure drops its streams unused) is skipped.
async fn overlay_sink(b: OverlayHandle) -> anyhow::Result<()> {
    let mut incoming = b.accept_streams(SINK_PROTOCOL)?;
    let mut buf = vec![0u8; 256 * 1024];
    while let Some((_, stream)) = incoming.next().await {
        let mut s = stream.compat();
        let count = async {
            let mut total = 0u64;
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            s.write_u64(total).await?;
            s.shutdown().await
        };
        let _ = count.await;
    }
    Ok(())
}

/// Microseconds to open a bare overlay stream from A to B (protocol negotiated, ready to write).
async fn stream_open(a: &OverlayHandle, b: &OverlayHandle) -> anyhow::Result<f64> {
    let start = Instant::now();
    let s = tokio::time::timeout(STEP_TIMEOUT, a.open_stream(b.peer_id(), SINK_PROTOCOL))
        .await
        .context("opening a stream timed out")??;
    let us = start.elapsed().as_secs_f64() * 1e6;
    drop(s);
    Ok(us)
}

/// Seconds to push `bytes` over a bare overlay stream from A to B's sink and get the count back.
async fn stream_throughput(
    a: &OverlayHandle,
    b: &OverlayHandle,
    bytes: usize,
) -> anyhow::Result<f64> {
    let go = async {
        let chunk = vec![0x5au8; 256 * 1024];
        let start = Instant::now();
        let mut s = a.open_stream(b.peer_id(), SINK_PROTOCOL).await?.compat();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n]).await?;
            left -= n;
        }
        s.shutdown().await?;
        let got = s.read_u64().await?;
        let secs = start.elapsed().as_secs_f64();
        if got != bytes as u64 {
            bail!("the overlay sink counted {got} bytes of {bytes}");
        }
        Ok(secs)
    };
    tokio::time::timeout(STEP_TIMEOUT, go)
        .await
        .context("bare-stream measurement timed out")?
}

async fn dial(addr: SocketAddr, mode: u8) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_u8(mode).await?;
    Ok(s)
}

/// Seconds to push `bytes` into the sink and get its count back.
async fn throughput(addr: SocketAddr, bytes: usize) -> anyhow::Result<f64> {
    let go = async {
        let chunk = vec![0x5au8; 256 * 1024];
        let start = Instant::now();
        let mut s = dial(addr, SINK).await?;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n]).await?;
            left -= n;
        }
        s.shutdown().await?;
        let got = s.read_u64().await?;
        let secs = start.elapsed().as_secs_f64();
        if got != bytes as u64 {
            bail!("the sink counted {got} bytes of {bytes}");
        }
        Ok(secs)
    };
    tokio::time::timeout(STEP_TIMEOUT, go)
        .await
        .context("throughput measurement timed out")?
}

/// Microseconds of each of `pings` 1-byte round trips on one connection.
async fn round_trips(addr: SocketAddr, pings: usize) -> anyhow::Result<Vec<f64>> {
    let go = async {
        let mut s = dial(addr, ECHO).await?;
        let mut rtts = Vec::with_capacity(pings);
        for i in 0..pings {
            let b = i as u8;
            let start = Instant::now();
            s.write_u8(b).await?;
            let back = s.read_u8().await?;
            rtts.push(start.elapsed().as_secs_f64() * 1e6);
            if back != b {
                bail!("the echo answered {back} to {b}");
            }
        }
        Ok(rtts)
    };
    tokio::time::timeout(STEP_TIMEOUT, go)
        .await
        .context("round-trip measurement timed out")?
}

/// Microseconds from connecting to the first 1-byte echo.
async fn connect_once(addr: SocketAddr) -> anyhow::Result<f64> {
    let go = async {
        let start = Instant::now();
        let mut s = dial(addr, ECHO).await?;
        s.write_u8(1).await?;
        let back = s.read_u8().await?;
        let us = start.elapsed().as_secs_f64() * 1e6;
        if back != 1 {
            bail!("the echo answered {back} to 1");
        }
        Ok(us)
    };
    tokio::time::timeout(STEP_TIMEOUT, go)
        .await
        .context("connect measurement timed out")?
}
