//! `brume bench deploy`: how long a deployment takes, and what the overlay costs the bytes that
//! cross it, each against its baseline measured in the same run.
//!
//! * Deploy: three `brume node` daemons on loopback (Docker engine, 150 mCPU each, so the three
//!   relay tasks land on three nodes and call each other through two tunnels). Time from
//!   starting `brume deploy` to the first task answering a request that crosses the whole chain
//!   (so every task answers). "Cold": a fresh artifact each run (chunks travel, images are
//!   built). "Warm": the same artifact again (hosts hold the chunks and the images). Baseline:
//!   `docker-compose up -d` of the same image as three host-network services on one host, to the
//!   same first answer; compose gets its image built beforehand, untimed.
//! * Transfer: an artifact fetched over the overlay against a plain TCP copy of the same bytes
//!   ([`super::transfer`]).
//! * Tunnel: throughput and round trip through a tunnel against a direct TCP connection
//!   ([`super::tunnel`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::median;
use brume_testnet::localnet::LocalNet;

/// Options of `brume bench deploy`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeployArgs {
    /// Deploys of each kind (cold, warm, compose); figures are medians.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// MiB moved by the transfer and tunnel measurements.
    #[arg(long, default_value_t = 128)]
    pub size_mb: usize,
    /// The static relay binary (built by scripts/build-static.sh).
    #[arg(long)]
    pub relay: Option<PathBuf>,
    /// Fewer and smaller runs, for a smoke test.
    #[arg(long)]
    pub quick: bool,
}

const ANSWER: &str = "front(mid(back))";

fn relay_path(args: &DeployArgs) -> anyhow::Result<PathBuf> {
    let path = match &args.relay {
        Some(p) => p.clone(),
        None => {
            // target/release/brume -> target/static/x86_64-unknown-linux-gnu/release/brume-relay
            let exe = std::env::current_exe()?;
            let target = exe
                .parent()
                .and_then(Path::parent)
                .context("cannot locate the target directory")?;
            target.join("static/x86_64-unknown-linux-gnu/release/brume-relay")
        }
    };
    if !path.exists() {
        anyhow::bail!(
            "no relay binary at {}: run scripts/build-static.sh first (or pass --relay PATH)",
            path.display()
        );
    }
    Ok(path)
}

/// Sends `hello` to the port until the whole chain answers (bounded).
fn wait_answer(port: u16, limit: Duration) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let start = Instant::now();
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"hello\n")?;
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line)?;
            Ok(line.trim().to_string())
        })();
        if matches!(&attempt, Ok(l) if l == ANSWER) {
            return Ok(());
        }
        if start.elapsed() > limit {
            anyhow::bail!("no `{ANSWER}` on port {port} within {limit:?}; last: {attempt:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One `brume deploy` to the first end-to-end answer, in seconds; the service is stopped after.
fn brume_deploy(net: &LocalNet, manifest: &Path, service: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let out = net.brume(0, &["deploy", &manifest.to_string_lossy(), "--json"])?;
    if !out.status.success() {
        anyhow::bail!("deploy failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let done: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let port = done["instances"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["task"] == "front"))
        .and_then(|r| r["address"].as_str())
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse::<u16>().ok())
        .context("no front task in the deploy's answer")?;
    wait_answer(port, Duration::from_secs(60))?;
    let secs = t.elapsed().as_secs_f64();
    let stop = net.brume(0, &["stop", service])?;
    if !stop.status.success() {
        anyhow::bail!("stop failed: {}", String::from_utf8_lossy(&stop.stderr));
    }
    Ok(secs)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(brume_engine::free_task_port()?)
}

/// `docker-compose up -d` of the same chain on one host, to the first answer, in seconds.
fn compose_up(dir: &Path, image: &str, project: &str) -> anyhow::Result<f64> {
    let ports = [free_port()?, free_port()?, free_port()?];
    let svc = |name: &str, port: u16, calls: Option<(&str, u16)>| {
        let mut s = format!(
            "  {name}:\n    image: {image}\n    network_mode: host\n    environment:\n      \
             PORT: \"{port}\"\n      BRUME_TASK: {name}\n"
        );
        if let Some((callee, p)) = calls {
            let var = callee.to_ascii_uppercase();
            s += &format!("      BRUME_CALL_{var}: \"127.0.0.1:{p}\"\n");
        }
        s
    };
    let file = dir.join("compose.yml");
    std::fs::write(
        &file,
        format!(
            "version: \"2.4\"\nservices:\n{}{}{}",
            svc("front", ports[0], Some(("mid", ports[1]))),
            svc("mid", ports[1], Some(("back", ports[2]))),
            svc("back", ports[2], None)
        ),
    )?;
    let compose = |args: &[&str]| {
        Command::new("docker-compose")
            .arg("-p")
            .arg(project)
            .arg("-f")
            .arg(&file)
            .args(args)
            .output()
    };
    let t = Instant::now();
    let out = compose(&["up", "-d"]).context("cannot run docker-compose")?;
    if !out.status.success() {
        let _ = compose(&["down"]);
        anyhow::bail!(
            "docker-compose up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let answered = wait_answer(ports[0], Duration::from_secs(60));
    let secs = t.elapsed().as_secs_f64();
    let _ = compose(&["down", "-t", "2"]);
    answered?;
    Ok(secs)
}

pub fn run(args: &DeployArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) && !args.quick {
        eprintln!("warning: this is a debug build; it will be slow (use --release)");
    }
    let runs = if args.quick { 1 } else { args.runs.max(1) };
    let size_mb = if args.quick { 16 } else { args.size_mb.max(1) };
    let relay = relay_path(args)?;
    let exe = crate::brume_exe()?;
    let net = LocalNet::start(&exe, 3, &["--engine", "docker", "--cpu-millis", "150"])?;
    let tag = format!("{:08x}", rand::random::<u32>());

    let (mut cold, mut warm, mut compose) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..runs {
        let dir = net.dir().join(format!("run{r}"));
        std::fs::create_dir_all(&dir)?;
        let service = format!("bench-{tag}-{r}");
        let ctx = brume_testnet::relay_service::context(&dir, &relay, &service)?;
        let m = brume_testnet::relay_service::manifest(&dir, &service)?;
        eprintln!("run {}/{runs}: cold deploy, warm deploy, compose up", r + 1);
        cold.push(brume_deploy(&net, &m, &service)?);
        warm.push(brume_deploy(&net, &m, &service)?);
        let image = format!("brume-bench-relay:{tag}-{r}");
        // --no-cache: Docker 20.10's cache probe lists and loads every image on the same parent
        // (FROM scratch: all of them) and fails the build if one is removed meanwhile; this
        // build's time is not measured, so the cache has nothing to save.
        let built = Command::new("docker")
            .args(["build", "--no-cache", "-q", "-t", &image])
            .arg(&ctx)
            .output()?;
        if !built.status.success() {
            anyhow::bail!(
                "docker build failed: {}",
                String::from_utf8_lossy(&built.stderr)
            );
        }
        let c = compose_up(&dir, &image, &format!("brumebench{tag}{r}"));
        let _ = Command::new("docker").args(["rmi", "-f", &image]).output();
        compose.push(c?);
    }
    drop(net);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    eprintln!("transfer: {size_mb} MiB over the overlay and over plain TCP ...");
    let transfer = rt.block_on(super::transfer::run(size_mb, runs.max(3)))?;
    eprintln!("tunnel: {size_mb} MiB and 1-byte round trips, tunnel and direct ...");
    let tunnel = rt.block_on(super::tunnel::run(size_mb, 500, runs.max(3)))?;

    let (cold_s, warm_s, compose_s) = (median(&mut cold), median(&mut warm), median(&mut compose));
    println!("Deployment of a 3-task chain on 3 local nodes (Docker engine), medians of {runs}");
    println!("  brume deploy, cold (chunks travel, images built)  {cold_s:>8.3} s");
    println!("  brume deploy, warm (chunks and images present)   {warm_s:>8.3} s");
    println!("  docker-compose up, same image, one host           {compose_s:>8.3} s");
    println!(
        "  ratio warm / compose                              {:>8.2}",
        warm_s / compose_s
    );
    println!();
    println!("Artifact transfer, {size_mb} MiB on loopback");
    println!(
        "  overlay fetch {:.0} MB/s, plain TCP {:.0} MB/s, ratio {:.3}",
        transfer.overlay_mb_s, transfer.tcp_mb_s, transfer.ratio
    );
    println!("Tunnel on loopback");
    println!(
        "  throughput: tunnel {:.0} MiB/s, direct {:.0} MiB/s (ratio {:.3})",
        tunnel.tunnel_mib_s,
        tunnel.direct_mib_s,
        tunnel.tunnel_mib_s / tunnel.direct_mib_s
    );
    println!(
        "  1-byte round trip: tunnel {:.0} us, direct {:.0} us (added {:.0} us)",
        tunnel.tunnel_rtt_us,
        tunnel.direct_rtt_us,
        tunnel.tunnel_rtt_us - tunnel.direct_rtt_us
    );
    println!(
        "BENCH deploy deploy_s={warm_s:.3} deploy_cold_s={cold_s:.3} compose_s={compose_s:.3} \
         transfer_ratio_vs_tcp={:.3} tunnel_mib_s={:.1} direct_mib_s={:.1} \
         tunnel_added_rtt_us={:.0}",
        transfer.ratio,
        tunnel.tunnel_mib_s,
        tunnel.direct_mib_s,
        tunnel.tunnel_rtt_us - tunnel.direct_rtt_us
    );
    Ok(())
}
