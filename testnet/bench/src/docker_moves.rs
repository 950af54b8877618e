//! `brume bench docker-moves`: a Docker container moved live by brume's runc checkpointer, by
//! full-dump pre-copy (rounds of `runc checkpoint --leave-running`, then a final `runc
//! checkpoint` with every page inside the freeze, as the node moved Docker tasks before) against
//! post-copy (a lazy `runc checkpoint` whose page server brume relays, the target's lazy `runc
//! restore`: the pages cross after the container runs again), the two alternated run by run.
//!
//! Why its own family: `brume bench migration` moves a process between two network namespaces
//! over shaped links; a Docker container's checkpoint and restore go through runc and Docker's
//! own state, on this host's network. Here both ends are on this host and the stream is
//! loopback TCP, as a node pair on one machine moves it, so the figures are the freeze and the
//! restore, not a link. The workload is the dirtier (`examples/dirtier`, built static into a
//! `FROM scratch` image) rewriting its memory at a set rate; every move is checked: the
//! restored container's memory is what its seed and step count make, and the original is gone.
//!
//! The downtime is the source's: from the start of the freezing dump to the target's word that
//! the container runs (the node reports the same), not a client's view.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use brume_migration::checkpointer::{
    prepare_bundle, runc_usable, RuncContainer, RuncRestore, DOCKER_BUNDLES,
};
use brume_migration::live::{
    migrate_in, migrate_out, scratch_dir, Mode, RoundStats, SourceOptions, TargetOptions,
};
use brume_migration::planner::PlannerConfig;
use clap::Args;

use crate::migration::{build_dirtier, verify_dirtier};

const LABEL: &str = "brume.bench=docker-moves";
/// A liveness bound on anything awaited, never a speed claim.
const PATIENCE: Duration = Duration::from_secs(60);

/// Options of `brume bench docker-moves`.
#[derive(Args, Debug, Clone)]
pub struct DockerMovesArgs {
    /// Container sizes, MiB (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [32usize, 128, 512])]
    pub sizes: Vec<usize>,
    /// Moves per size and mode; every figure is the median over them.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// How fast the container rewrites its memory, MiB/s (random pages).
    #[arg(long, default_value_t = 8.0)]
    pub dirty_mib_s: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    PreCopy,
    PostCopy,
    /// Post-copy after rounds of the dirty-page tracker on the container's process.
    Tracked,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::PreCopy => "pre-copy",
            Way::PostCopy => "post-copy",
            Way::Tracked => "tracked",
        }
    }
}

/// One move's figures, ms.
#[derive(Clone, Debug, Default)]
struct Moved {
    downtime: f64,
    final_dump: f64,
    restore: f64,
    total: f64,
    rounds: f64,
    wire_mib: f64,
}

pub fn run(args: &DockerMovesArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("docker-moves needs root (runc checkpoint and restore)");
    }
    runc_usable().map_err(|e| anyhow::anyhow!(e))?;
    brume_migration::lazy::check_pipe_max_size()?;
    let work = tempfile::Builder::new()
        .prefix("brume-bench-docker-moves-")
        .tempdir()?;
    let dirtier = build_dirtier(work.path(), true)?;
    let image = format!("brume-bench-dmove:{:08x}", rand::random::<u32>());
    build_image(work.path(), &dirtier, &image)?;
    let _image = RemoveImage(image.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "docker-moves: the dirtier in a Docker container ({} MiB/s dirtied), moved on this host over loopback TCP; downtime = the freezing dump's start to the target's restored container, ms",
        args.dirty_mib_s
    );
    let mut bench = Vec::new();
    for &mib in &args.sizes {
        let ways = [Way::PreCopy, Way::PostCopy, Way::Tracked];
        let mut by_way: Vec<(Way, Vec<Moved>)> = ways.iter().map(|w| (*w, Vec::new())).collect();
        for run in 0..args.runs {
            // Rotated, so a drift of the machine's load touches every way alike.
            let mut order = ways;
            order.rotate_left(run % ways.len());
            for way in order {
                let seed = 0x5eed_0000 + (mib as u64) * 100 + run as u64;
                let m = one_move(&rt, work.path(), &dirtier, &image, mib, seed, args, way)
                    .with_context(|| format!("{} of {mib} MiB, run {}", way.name(), run + 1))?;
                eprintln!(
                    "docker-moves: {mib} MiB {} run {}: downtime {:.0} ms (final dump {:.0}, restore {:.0}), {} round(s), total {:.0} ms, {:.1} MiB on the wire",
                    way.name(),
                    run + 1,
                    m.downtime,
                    m.final_dump,
                    m.restore,
                    m.rounds,
                    m.total,
                    m.wire_mib
                );
                if let Some((_, v)) = by_way.iter_mut().find(|(w, _)| *w == way) {
                    v.push(m);
                }
            }
        }
        println!("\n{mib} MiB:");
        println!("| way | downtime each | downtime | final dump | restore | rounds | total |");
        println!("|---|---|---|---|---|---|---|");
        let mut med = [0.0f64; 3];
        for (i, (way, moves)) in by_way.iter().enumerate() {
            let each: Vec<String> = moves.iter().map(|m| format!("{:.0}", m.downtime)).collect();
            let pick = |f: fn(&Moved) -> f64| median(moves.iter().map(f).collect());
            med[i] = pick(|m| m.downtime);
            println!(
                "| {} | {} | **{:.0}** | {:.0} | {:.0} | {:.0} | {:.0} |",
                way.name(),
                each.join(", "),
                med[i],
                pick(|m| m.final_dump),
                pick(|m| m.restore),
                pick(|m| m.rounds),
                pick(|m| m.total)
            );
        }
        bench.push(format!("precopy_ms_{mib}={:.0}", med[0]));
        bench.push(format!("postcopy_ms_{mib}={:.0}", med[1]));
        bench.push(format!("tracked_ms_{mib}={:.0}", med[2]));
        bench.push(format!(
            "postcopy_vs_precopy_{mib}={:.3}",
            med[1] / med[0].max(1e-9)
        ));
        bench.push(format!(
            "tracked_vs_precopy_{mib}={:.3}",
            med[2] / med[0].max(1e-9)
        ));
    }
    println!("\nBENCH docker_moves {}", bench.join(" "));
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Starts a container of `mib` MiB, moves it with `way` into a runc container on this host,
/// checks the restored memory and that the original ended, and removes both.
#[allow(clippy::too_many_arguments)]
fn one_move(
    rt: &tokio::runtime::Runtime,
    work: &Path,
    dirtier: &Path,
    image: &str,
    mib: usize,
    seed: u64,
    args: &DockerMovesArgs,
    way: Way,
) -> anyhow::Result<Moved> {
    let tag = format!("{:08x}", rand::random::<u32>());
    let name = format!("brume-bench-dmove-{tag}");
    let dir = work.join(&tag);
    std::fs::create_dir_all(&dir)?;
    let mut guard = Cleanup {
        container: name.clone(),
        restored: None,
        cgroup: format!("/brume-bench-dmove-{tag}"),
        dirs: vec![dir.clone()],
    };
    let rate = args.dirty_mib_s.to_string();
    let id = docker(&[
        "run",
        "-d",
        "--label",
        LABEL,
        "--name",
        &name,
        image,
        "serve",
        "/w.sock",
        &mib.to_string(),
        &seed.to_string(),
        &rate,
    ])?;
    let pid: u32 = docker(&["inspect", "-f", "{{.State.Pid}}", &id])?
        .parse()
        .context("the container's pid")?;
    let socket = |pid: u32| PathBuf::from(format!("/proc/{pid}/root/w.sock"));
    wait_socket(&socket(pid))?;
    // Let it dirty for a while first, then check its memory is what the seed makes.
    std::thread::sleep(Duration::from_millis(500));
    let before = verify_dirtier(&socket(pid), dirtier, mib, seed)?;
    let bundle = dir.join("bundle");
    let config = Path::new(DOCKER_BUNDLES).join(&id).join("config.json");
    prepare_bundle(&config, &bundle, &guard.cgroup)?;
    let restorer = RuncRestore {
        runc: PathBuf::from("runc"),
        root: dir.join("runc-root"),
        id: format!("{name}-in"),
        bundle,
    };
    guard.restored = Some(restorer.clone());
    let src_dir = scratch_dir("bench-dmove-out");
    let staging = scratch_dir("bench-dmove-in");
    guard.dirs.push(src_dir.clone());
    guard.dirs.push(staging.clone());
    // What a failed move keeps beside the staging directory (its logs, runc's work directory).
    for sibling in [
        "restore.work",
        "restore.log",
        "restore.pid",
        "lazy-pages.log",
    ] {
        guard
            .dirs
            .push(PathBuf::from(format!("{}.{sibling}", staging.display())));
    }
    let mut src = SourceOptions::new(src_dir);
    src.checkpointer = Some(Arc::new(RuncContainer::docker(id.clone())));
    src.network_lock = brume_migration::criu::NetworkLock::Skip;
    src.planner = PlannerConfig {
        max_downtime: Duration::from_secs(120),
        ..PlannerConfig::default()
    };
    match way {
        Way::PreCopy => {}
        Way::PostCopy => src.mode = Mode::PostCopy,
        Way::Tracked => {
            src.mode = Mode::PostCopy;
            src.track = true;
        }
    }
    let mut dst = TargetOptions::new(staging);
    dst.network_lock = brume_migration::criu::NetworkLock::Skip;
    dst.restorer = Some(Arc::new(restorer));
    let mut rounds: Vec<RoundStats> = Vec::new();
    let (out, received) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let target = tokio::spawn(async move {
            let (s, _) = listener.accept().await?;
            s.set_nodelay(true)?;
            Ok::<_, anyhow::Error>(migrate_in(s, dst).await)
        });
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let out = migrate_out(stream, pid, src, |r| rounds.push(r.clone())).await;
        let received = target.await??;
        Ok::<_, anyhow::Error>((out, received))
    })?;
    let migrated = out.context("the move failed")?;
    if way == Way::Tracked && migrated.rounds.len() < 2 {
        bail!("the move ran no tracked round (the tracker could not attach: see the log)");
    }
    let received = received.context("the target failed")?;
    let after = verify_dirtier(&socket(received.pid), dirtier, mib, seed)?;
    if after < before {
        bail!("the restored container's steps went back ({before} -> {after})");
    }
    let until = Instant::now() + PATIENCE;
    while docker(&["inspect", "-f", "{{.State.Running}}", &id])? == "true" {
        if Instant::now() > until {
            bail!("the original container still runs after the move");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let last = rounds.last().context("no final round")?;
    Ok(Moved {
        downtime: ms(migrated.downtime),
        final_dump: ms(last.dump),
        restore: ms(migrated.restore),
        total: ms(migrated.total),
        rounds: migrated.rounds.len() as f64,
        wire_mib: migrated.wire_bytes as f64 / (1u64 << 20) as f64,
    })
}

/// Removes what a move made, however it ended: the runc container restored, the Docker
/// container, the restore's cgroup, the directories.
struct Cleanup {
    container: String,
    restored: Option<RuncRestore>,
    cgroup: String,
    dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(r) = &self.restored {
            r.remove();
        }
        let _ = docker(&["rm", "-f", &self.container]);
        let rel = self.cgroup.trim_start_matches('/');
        if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in controllers.flatten() {
                let _ = std::fs::remove_dir(c.path().join(rel));
            }
        }
        for d in &self.dirs {
            if std::fs::remove_dir_all(d).is_err() {
                let _ = std::fs::remove_file(d);
            }
        }
    }
}

struct RemoveImage(String);

impl Drop for RemoveImage {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", &self.0]);
    }
}

/// `docker ARGS`, its trimmed stdout, or why it failed.
fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .context("run docker")?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn wait_socket(socket: &Path) -> anyhow::Result<()> {
    let until = Instant::now() + PATIENCE;
    while UnixStream::connect(socket).is_err() {
        if Instant::now() > until {
            bail!("the dirtier did not come up on {}", socket.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn build_image(work: &Path, dirtier: &Path, image: &str) -> anyhow::Result<()> {
    let context = work.join("context");
    std::fs::create_dir_all(&context)?;
    std::fs::copy(dirtier, context.join("dirtier"))?;
    std::fs::write(
        context.join("Dockerfile"),
        format!("FROM scratch\nCOPY dirtier /\nLABEL {LABEL}\nENTRYPOINT [\"/dirtier\"]\n"),
    )?;
    docker(&["build", "-q", "-t", image, &context.display().to_string()])?;
    Ok(())
}
