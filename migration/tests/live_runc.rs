//! A Docker container moved live with brume's pre-copy through the runc checkpointer: each
//! round is a `runc checkpoint --leave-running` of the container on Docker's runc state into a
//! fresh directory, chunked and deduplicated against the previous round's images, the final one
//! a `runc checkpoint` that stops it, and the target restores the rebuilt images as a new runc
//! container from a copied bundle (`brume_migration::checkpointer`). The stream is loopback TCP.
//!
//! What is proven: the restored container answers with the counter the original had at the
//! final checkpoint (a client kept ticking it during the pre-copy rounds) and the checksum of
//! its memory; later rounds send a fraction of the first (the workload never writes its buffer
//! after the fill, so that holds by construction, not by timing); a target that drops the link
//! mid pre-copy leaves the Docker container running untouched; a restore that fails on the
//! target brings the container back on the source as a runc container.
//!
//! Needs root, criu >= 4, runc, Docker 20.10 with its runc state in /run/docker/runtime-runc/moby
//! (which exists only once dockerd has run a container since it started: the test starts its
//! container first, then looks) and cgroup v1; it skips otherwise, or fails under
//! `BRUME_REQUIRE` (`brume_testnet::require`). Unique names starting `brume-test-live-runc-`;
//! Docker objects labelled `brume.test=<run>`; the containers, runc containers (under a runc
//! root in the test's temp dir), image, cgroups and directories are removed on drop.

mod criu_support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use brume_migration::checkpointer::{
    prepare_bundle, RuncContainer, RuncRestore, DOCKER_BUNDLES, DOCKER_RUNC_ROOT,
};
use brume_migration::lazy::abort_page_server;
use brume_migration::live::wire::{read_message, write_message, Message};
use brume_migration::live::{
    migrate_in, migrate_out, LiveError, Migrated, Mode, Received, RoundStats, SourceOptions,
    TargetOptions,
};
use brume_migration::planner::{Action, PlannerConfig};
use brume_testnet::require::{self, Need};
use criu_support::{
    build_workload_image, docker_label, expected_checksum, have_criu_runc_docker, remove_cgroup,
    remove_runc_container, run, run_ok, unique, wait_for, wait_ready, TempDir, LIVENESS, PREFIX,
    TEST_BUDGET,
};
use tokio::net::{TcpListener, TcpStream};

/// The workload's memory and seed: static, so later rounds find the same chunks.
const MIB: usize = 16;
const SEED: u64 = 0x7c0de;

/// One command on a fresh connection, without panicking (the ticker runs across dumps).
fn try_ask(socket: &Path, command: &str) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(LIVENESS))?;
    writeln!(stream, "{command}")?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

fn ask(socket: &Path, command: &str) -> String {
    try_ask(socket, command).unwrap_or_else(|e| panic!("{command} to {}: {e}", socket.display()))
}

fn socket_of(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root/w.sock"))
}

/// A Docker container of the static workload, and whatever the test restores from it; all of
/// it removed on drop.
struct Fixture {
    dir: TempDir,
    suffix: String,
    image: String,
    container: String,
    id: String,
    pid: u32,
    restored: Vec<RuncRestore>,
    cgroups: Vec<String>,
}

impl Fixture {
    /// Builds the image and starts the container; `None` (the skip recorded, see
    /// `brume_testnet::require`) when Docker, runc, criu or root is missing.
    fn start(test: &str) -> Option<Fixture> {
        if !have_criu_runc_docker(test) {
            return None;
        }
        let dir = TempDir::new("live-runc");
        let suffix = unique();
        let mut f = Fixture {
            image: format!("{PREFIX}-live-runc:{suffix}"),
            container: format!("{PREFIX}-live-runc-{suffix}"),
            dir,
            suffix,
            id: String::new(),
            pid: 0,
            restored: Vec::new(),
            cgroups: Vec::new(),
        };
        build_workload_image(
            &f.dir.path().join("context"),
            &f.image,
            &f.suffix,
            MIB,
            SEED,
        );
        f.id = run_ok(
            "docker",
            &[
                "run",
                "-d",
                "--label",
                &docker_label(),
                "--name",
                &f.container,
                &f.image,
            ],
        );
        f.pid = run_ok("docker", &["inspect", "-f", "{{.State.Pid}}", &f.id])
            .parse()
            .expect("pid");
        // Docker creates its runc state dir with its first container since it started.
        if !Path::new(DOCKER_RUNC_ROOT).join(&f.id).is_dir() {
            require::missing(
                test,
                Need::Docker,
                &format!("Docker's runc state {DOCKER_RUNC_ROOT}/<id> is missing (not Docker 20.10's layout?)"),
            );
            return None;
        }
        wait_ready(&socket_of(f.pid));
        Some(f)
    }

    /// [`Fixture::start`] for a post-copy test, which needs `fs.pipe-max-size` >= 4 MiB too.
    fn start_lazy(test: &str) -> Option<Fixture> {
        if let Err(e) = brume_migration::lazy::check_pipe_max_size() {
            require::missing(test, Need::Criu, &e.to_string());
            return None;
        }
        Fixture::start(test)
    }

    /// A restorer into a new runc container under the test's own runc root, with a bundle
    /// copied from the running container's (`tag` names it).
    fn restorer(&mut self, tag: &str) -> RuncRestore {
        let cgroup = format!("/{PREFIX}-live-runc-{}-{tag}", self.suffix);
        let bundle = self.dir.path().join(format!("bundle-{tag}"));
        let config = Path::new(DOCKER_BUNDLES).join(&self.id).join("config.json");
        prepare_bundle(&config, &bundle, &cgroup).expect("prepare the bundle");
        self.cgroups.push(cgroup);
        let r = RuncRestore {
            runc: PathBuf::from("runc"),
            root: self.dir.path().join("runc-root"),
            id: format!("{PREFIX}-live-runc-{}-{tag}", self.suffix),
            bundle,
        };
        self.restored.push(r.clone());
        r
    }

    fn docker_status(&self) -> String {
        run_ok("docker", &["inspect", "-f", "{{.State.Status}}", &self.id])
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for r in &self.restored {
            remove_runc_container(&r.root, &r.id);
        }
        let _ = run("docker", &["rm", "-f", &self.container]);
        let _ = run("docker", &["rmi", "-f", &self.image]);
        for cgroup in &self.cgroups {
            remove_cgroup(cgroup);
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn source_opts(f: &Fixture, fallback: Option<RuncRestore>) -> SourceOptions {
    let mut o = SourceOptions::new(f.dir.path().join("source"));
    o.planner = PlannerConfig {
        max_downtime: TEST_BUDGET,
        ..PlannerConfig::default()
    };
    let mut c = RuncContainer::docker(f.id.clone());
    c.fallback = fallback;
    o.checkpointer = Some(Arc::new(c));
    o
}

/// What a move left in the test's directory beside the target's staging directory (its
/// logs, runc's work directory): nothing, once it succeeded.
fn staging_leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("the test's directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("staging"))
        .collect()
}

/// Moves container `pid` with `source` over loopback TCP to a target that stages into
/// `staging` and restores with `restorer`, `on_round` seeing each round: the source's and the
/// target's results.
fn move_over_loopback(
    pid: u32,
    source: SourceOptions,
    staging: PathBuf,
    restorer: RuncRestore,
    on_round: impl FnMut(&RoundStats),
) -> (Result<Migrated, LiveError>, Result<Received, LiveError>) {
    runtime().block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let target = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let mut opts = TargetOptions::new(staging);
            opts.restorer = Some(Arc::new(restorer));
            migrate_in(stream, opts).await
        });
        let stream = TcpStream::connect(addr).await.expect("connect");
        let migrated = migrate_out(stream, pid, source, on_round).await;
        (migrated, target.await.expect("the target's task"))
    })
}

/// A client that TICKs the container every 15 ms until stopped, remembering the last answer
/// (connections that a dump catches make that dump retry, which is part of what is tested).
struct Ticker {
    stop: Arc<AtomicBool>,
    last: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Ticker {
    fn start(socket: PathBuf, last: u64) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let last = Arc::new(AtomicU64::new(last));
        let (s, l) = (stop.clone(), last.clone());
        let thread = std::thread::spawn(move || {
            let mut ticks = 0;
            while !s.load(Ordering::SeqCst) {
                if let Ok(v) = try_ask(&socket, "TICK") {
                    l.store(v.parse().expect("counter"), Ordering::SeqCst);
                    ticks += 1;
                }
                std::thread::sleep(Duration::from_millis(15));
            }
            ticks
        });
        Ticker {
            stop,
            last,
            thread: Some(thread),
        }
    }

    /// Stops ticking; returns the last counter and how many ticks were answered.
    fn stop(&mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let ticks = self
            .thread
            .take()
            .map(|t| t.join().expect("ticker"))
            .unwrap_or(0);
        (self.last.load(Ordering::SeqCst), ticks)
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_docker_container_moves_live_with_precopy_rounds_of_runc_checkpoints() {
    let Some(mut f) =
        Fixture::start("a_docker_container_moves_live_with_precopy_rounds_of_runc_checkpoints")
    else {
        return;
    };
    let socket = socket_of(f.pid);
    for i in 1..=3 {
        assert_eq!(ask(&socket, "TICK"), i.to_string());
    }
    let sum = ask(&socket, "SUM");
    assert_eq!(sum, expected_checksum(MIB, SEED).to_string());
    let restorer = f.restorer("target");
    let source = source_opts(&f, None);
    let staging = f.dir.path().join("staging");
    let mut ticker = Ticker::start(socket.clone(), 3);

    let mut rounds: Vec<RoundStats> = Vec::new();
    let mut before_final: Option<(u64, u64)> = None;
    let (migrated, received) = move_over_loopback(f.pid, source, staging, restorer, |r| {
        eprintln!(
            "round {}{}: dumped {} KiB, delta {} KiB, wire {} KiB, dump {} ms ({} attempts, frozen {:?}), round {} ms",
            r.round,
            if r.last { " (final)" } else { "" },
            r.dumped_bytes / 1024,
            r.delta_bytes / 1024,
            r.wire_bytes / 1024,
            r.dump.as_millis(),
            r.dump_attempts,
            r.frozen,
            r.round_time.as_millis()
        );
        rounds.push(r.clone());
        // The planner's next step is the final checkpoint: stop ticking, so the counter
        // the final checkpoint catches is the ticker's last answer.
        if r.progress
            .as_ref()
            .is_some_and(|p| p.decision.action == Action::FinalDump)
        {
            before_final = Some(ticker.stop());
        }
    });
    let migrated = migrated.unwrap_or_else(|e| panic!("migration: {e}"));
    let received = received.unwrap_or_else(|e| panic!("target: {e}"));
    let (last, ticks) = before_final.expect("the planner chose the final checkpoint");
    let left = staging_leftovers(f.dir.path());
    assert!(left.is_empty(), "left on the target: {left:?}");

    assert_eq!(migrated.target_pid, received.pid);
    assert_ne!(received.pid, f.pid, "a new container, a new host pid");
    // At least one pre-copy round, by construction: the container's memory (16 MiB) exceeds the
    // planner's delta threshold (256 KiB) and no deadline is set.
    let precopy: Vec<&RoundStats> = rounds.iter().filter(|r| !r.last).collect();
    assert!(!precopy.is_empty(), "pre-copy rounds ran: {rounds:?}");
    // By construction too, not by timing: the workload never writes its 16 MiB of random
    // words after the fill, so a later round sends only the few pages the ticker's requests
    // touched and the recipes' changes.
    assert!(
        rounds.iter().skip(1).all(|r| r.wire_bytes < rounds[0].wire_bytes / 4),
        "later rounds send a fraction of the first (chunks deduplicated across runc checkpoints): {rounds:?}"
    );
    assert!(rounds.last().is_some_and(|r| r.last));
    // The final checkpoint stopped the container; Docker hears of it from containerd a moment
    // later.
    wait_for(
        "Docker seeing the container stopped by the final checkpoint",
        LIVENESS,
        || match f.docker_status() {
            s if s == "running" => Err(s),
            _ => Ok(()),
        },
    );
    // The restored container continues exactly from the final checkpoint.
    let new_socket = socket_of(received.pid);
    wait_ready(&new_socket);
    assert_eq!(
        ask(&new_socket, "PID"),
        "1",
        "PID 1 of its own pid namespace"
    );
    assert_eq!(
        ask(&new_socket, "TICK"),
        (last + 1).to_string(),
        "the counter continues from the last answer before the final checkpoint"
    );
    assert_eq!(
        ask(&new_socket, "SUM"),
        sum,
        "memory is the checkpointed memory"
    );
    let attempts: u32 = rounds.iter().map(|r| r.dump_attempts).sum();
    eprintln!(
        "runc live: {} pre-copy round(s) + final, {ticks} ticks answered during pre-copy (counter {last}), {attempts} checkpoints for {} rounds, wire {:.1} MiB (round 1 {:.1} MiB), total {} ms, downtime {} ms (final checkpoint {} ms, rebuild {} ms, runc restore {} ms)",
        precopy.len(),
        rounds.len(),
        migrated.wire_bytes as f64 / 1048576.0,
        rounds[0].wire_bytes as f64 / 1048576.0,
        migrated.total.as_millis(),
        migrated.downtime.as_millis(),
        rounds.last().map_or(0, |r| r.dump.as_millis()),
        migrated.rebuild.as_millis(),
        migrated.restore.as_millis(),
    );
}

#[test]
fn a_target_that_drops_the_link_mid_precopy_leaves_the_docker_container_running() {
    let Some(f) = Fixture::start(
        "a_target_that_drops_the_link_mid_precopy_leaves_the_docker_container_running",
    ) else {
        return;
    };
    let socket = socket_of(f.pid);
    assert_eq!(ask(&socket, "TICK"), "1");
    let rt = runtime();
    let source = source_opts(&f, None);
    let result = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let target = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            // Take the hello, welcome the source with an empty store, take a few batches of
            // the first round, then vanish.
            match read_message(&mut stream).await {
                Ok(Message::Hello { .. }) => {}
                other => panic!("expected the hello, got {other:?}"),
            }
            write_message(&mut stream, &Message::Welcome { store_chunks: 0 })
                .await
                .expect("welcome");
            let mut seen = 0;
            while seen < 4 {
                match read_message(&mut stream).await {
                    Ok(Message::Chunks { .. }) => seen += 1,
                    Ok(_) => {}
                    Err(e) => panic!("source stopped first: {e}"),
                }
            }
            drop(stream);
        });
        let stream = TcpStream::connect(addr).await.expect("connect");
        let r = migrate_out(stream, f.pid, source, |_| {}).await;
        target.await.expect("target");
        r
    });
    let err = result.expect_err("the target went away");
    assert!(matches!(err, LiveError::Link(_)), "{err}");
    assert!(err.task_untouched(), "{err}");
    assert_eq!(f.docker_status(), "running");
    assert_eq!(
        run_ok("docker", &["inspect", "-f", "{{.State.Pid}}", &f.id]),
        f.pid.to_string()
    );
    assert_eq!(ask(&socket, "TICK"), "2", "the same container goes on");
    assert_eq!(
        ask(&socket, "SUM"),
        expected_checksum(MIB, SEED).to_string()
    );
    assert!(
        !f.dir.path().join("source").exists(),
        "round images removed"
    );
    eprintln!("link dropped mid pre-copy: {err}; the Docker container runs on");
}

#[test]
fn a_failed_restore_on_the_target_brings_the_container_back_on_the_source() {
    let Some(mut f) =
        Fixture::start("a_failed_restore_on_the_target_brings_the_container_back_on_the_source")
    else {
        return;
    };
    let socket = socket_of(f.pid);
    for i in 1..=4 {
        assert_eq!(ask(&socket, "TICK"), i.to_string());
    }
    let fallback = f.restorer("fallback");
    let mut broken = f.restorer("target");
    // A runc that fails every command: the target's restore fails after the final checkpoint.
    broken.runc = PathBuf::from("/bin/false");
    let source = source_opts(&f, Some(fallback.clone()));
    let staging = f.dir.path().join("staging");
    let (result, target) = move_over_loopback(f.pid, source, staging, broken, |_| {});
    assert!(target.is_err(), "the target's restore failed");
    let err = result.expect_err("the target could not restore");
    let LiveError::RestoredAtSource {
        pid,
        cause,
        restore,
    } = &err
    else {
        panic!("expected the container back on the source, got {err}");
    };
    assert!(matches!(**cause, LiveError::Target { .. }), "{cause}");
    assert_eq!(*pid, fallback.pid().expect("runc state"));
    let new_socket = socket_of(*pid);
    wait_ready(&new_socket);
    assert_eq!(
        ask(&new_socket, "TICK"),
        "5",
        "continues from the final checkpoint"
    );
    assert_eq!(
        ask(&new_socket, "SUM"),
        expected_checksum(MIB, SEED).to_string()
    );
    eprintln!(
        "restore failed on the target; back on the source as runc container {} (pid {pid}, runc restore {} ms)",
        fallback.id,
        restore.as_millis()
    );
}

/// Post-copy of a Docker container: a lazy `runc checkpoint` (its page server on a loopback
/// port, relayed over the migration stream), the target's lazy `runc restore` beside its
/// lazy-pages daemon. The container runs on the target before its memory is there; once every
/// page arrived the original ends. Proven: the images carried no memory (a fraction of the
/// container's 16 MiB), the pages crossed over the relay, and the restored container continues
/// the counter and sums the same memory.
#[test]
fn a_docker_container_moves_live_with_post_copy_of_its_memory() {
    let Some(mut f) =
        Fixture::start_lazy("a_docker_container_moves_live_with_post_copy_of_its_memory")
    else {
        return;
    };
    let socket = socket_of(f.pid);
    for i in 1..=3 {
        assert_eq!(ask(&socket, "TICK"), i.to_string());
    }
    let sum = ask(&socket, "SUM");
    let restorer = f.restorer("target");
    let mut source = source_opts(&f, None);
    source.mode = Mode::PostCopy;
    let staging = f.dir.path().join("staging");
    let mut rounds: Vec<RoundStats> = Vec::new();
    let (migrated, received) =
        move_over_loopback(f.pid, source, staging, restorer, |r| rounds.push(r.clone()));
    let migrated = migrated.unwrap_or_else(|e| panic!("migration: {e}"));
    let received = received.unwrap_or_else(|e| panic!("target: {e}"));
    assert_eq!(migrated.target_pid, received.pid);
    assert_ne!(received.pid, f.pid, "a new container, a new host pid");
    let left = staging_leftovers(f.dir.path());
    assert!(left.is_empty(), "left on the target: {left:?}");
    let post = migrated.post_copy.as_ref().expect("a post-copy move");
    let memory = (MIB as u64) << 20;
    assert_eq!(rounds.len(), 1, "one lazy dump: {rounds:?}");
    assert!(
        rounds[0].wire_bytes < memory / 4,
        "the images carry no memory: {} bytes for {memory}",
        rounds[0].wire_bytes
    );
    assert!(
        post.page_bytes >= memory,
        "the container's memory crossed as pages after the restore: {} bytes",
        post.page_bytes
    );
    // Every page is on the target, so CRIU ended the original.
    wait_for(
        "Docker seeing the container ended by the lazy dump",
        LIVENESS,
        || match f.docker_status() {
            s if s == "running" => Err(s),
            _ => Ok(()),
        },
    );
    let new_socket = socket_of(received.pid);
    wait_ready(&new_socket);
    assert_eq!(ask(&new_socket, "TICK"), "4", "the counter continues");
    assert_eq!(ask(&new_socket, "SUM"), sum, "memory is the dumped memory");
    eprintln!(
        "runc post-copy: images {} KiB, pages {:.1} MiB, lazy dump {} ms, downtime {} ms (rebuild {} ms, runc restore {} ms), every page {} ms after the restore, total {} ms",
        rounds[0].wire_bytes / 1024,
        post.page_bytes as f64 / 1048576.0,
        rounds[0].dump.as_millis(),
        migrated.downtime.as_millis(),
        migrated.rebuild.as_millis(),
        migrated.restore.as_millis(),
        post.pages_done.as_millis(),
        migrated.total.as_millis(),
    );
}

/// Post-copy whose lazy restore fails on the target: the source's CRIU thaws the frozen
/// container in place (the very process, Docker's own container), which serves on with its
/// counter and memory.
#[test]
fn a_failed_lazy_restore_on_the_target_thaws_the_docker_container() {
    let Some(mut f) =
        Fixture::start_lazy("a_failed_lazy_restore_on_the_target_thaws_the_docker_container")
    else {
        return;
    };
    let socket = socket_of(f.pid);
    assert_eq!(ask(&socket, "TICK"), "1");
    let mut broken = f.restorer("target");
    // A runc that fails every command: the lazy restore fails once the images arrived.
    broken.runc = PathBuf::from("/bin/false");
    let mut source = source_opts(&f, None);
    source.mode = Mode::PostCopy;
    let staging = f.dir.path().join("staging");
    let (result, target) = move_over_loopback(f.pid, source, staging, broken, |_| {});
    let target_error = target.expect_err("the target's restore failed");
    let err = result.expect_err("the target could not restore");
    assert!(
        matches!(err, LiveError::Thawed { .. }),
        "expected the container thawed on the source, got {err}"
    );
    assert!(err.task_untouched(), "{err}");
    assert_eq!(f.docker_status(), "running");
    assert_eq!(
        run_ok("docker", &["inspect", "-f", "{{.State.Pid}}", &f.id]),
        f.pid.to_string(),
        "the same process"
    );
    assert_eq!(ask(&socket, "TICK"), "2", "the same container goes on");
    assert_eq!(
        ask(&socket, "SUM"),
        expected_checksum(MIB, SEED).to_string()
    );
    eprintln!("lazy restore failed on the target ({target_error}); {err}");
}

/// The IPv4 addresses (as /proc/net/tcp writes them) listening on TCP `port` in this network
/// namespace.
fn listeners_on(port: u16) -> Vec<String> {
    let tcp = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let want = format!("{port:04X}");
    tcp.lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let local = f.nth(1)?;
            let state = f.nth(1)?;
            let (addr, p) = local.split_once(':')?;
            (p == want && state == "0A").then(|| addr.to_string())
        })
        .collect()
}

/// The lazy `runc checkpoint` on its own: once ready, the criu that serves the frozen
/// container's pages listens on loopback only (brume's config file in runc's environment says
/// `address 127.0.0.1`: over RPC criu takes only the port and would listen on every address);
/// an unknown page-server command then fails the transfer and CRIU thaws the container, which
/// runs on as Docker's with its counter and memory.
#[test]
fn a_lazy_runc_checkpoint_serves_on_loopback_and_thaws_when_aborted() {
    let Some(f) =
        Fixture::start_lazy("a_lazy_runc_checkpoint_serves_on_loopback_and_thaws_when_aborted")
    else {
        return;
    };
    let socket = socket_of(f.pid);
    assert_eq!(ask(&socket, "TICK"), "1");
    let images = f.dir.path().join("lazy");
    let log = f.dir.path().join("lazy.log");
    let runc = RuncContainer::docker(f.id.clone());
    let (dump, port) = runc
        .lazy_checkpoint(&images, &log, false)
        .unwrap_or_else(|e| panic!("lazy runc checkpoint: {e}"));
    let config = log.with_extension("work").join("lazy.conf");
    assert_eq!(
        std::fs::read_to_string(&config).expect("the config"),
        "address 127.0.0.1\n"
    );
    let listening = listeners_on(port);
    assert_eq!(
        listening,
        vec!["0100007F".to_string()],
        "the page server listens on 127.0.0.1:{port} only"
    );
    let mut page_socket =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the page server");
    let peer = page_socket.peer_addr().expect("the page server's address");
    assert!(peer.ip().is_loopback(), "{peer}");
    assert!(
        !images.join("pages-1.img").exists()
            || std::fs::metadata(images.join("pages-1.img")).map_or(0, |m| m.len())
                < (MIB as u64) << 18,
        "the lazy images hold no memory"
    );
    abort_page_server(&mut page_socket).expect("the abort request");
    let ended = dump.wait();
    assert!(ended.is_err(), "the aborted dump ended as a success");
    assert_eq!(f.docker_status(), "running");
    assert_eq!(
        ask(&socket, "TICK"),
        "2",
        "the container thawed and goes on"
    );
    assert_eq!(
        ask(&socket, "SUM"),
        expected_checksum(MIB, SEED).to_string()
    );
}
