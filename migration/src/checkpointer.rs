//! What the live pipeline checkpoints and restores, behind one trait: a process, dumped with
//! CRIU directly ([`CriuProcess`], [`CriuRestore`]), or a Docker container, checkpointed with
//! `runc checkpoint` on Docker's own runc state and restored as a new runc container from a
//! copied bundle ([`RuncContainer`], [`RuncRestore`], [`prepare_bundle`]).
//!
//! Why a trait: pre-copy, chunking, dedup and the wire do not care what made the image files;
//! only the dump at each round, the restore on the target and the source's fallback restore do.
//! The calls block (they run a program); the live pipeline calls them on `spawn_blocking`.
//!
//! Why runc and not `docker checkpoint`: Docker's checkpoint needs the daemon in experimental
//! mode, which needs a restart (docs/criu.md). runc is what Docker runs its containers with, so
//! `runc --root /run/docker/runtime-runc/moby checkpoint <id>` checkpoints a Docker container
//! without Docker's help. There is no way to hand the images back to Docker without
//! experimental, so the restore makes a runc container Docker does not know about, from a copy
//! of the container's OCI bundle: the rootfs copied, the bind-mounted files (resolv.conf, hosts,
//! hostname) copied, its own cgroup, Docker's network hooks removed, and a CRIU config file
//! (`org.criu.config` annotation) with `mntns-compat-mode`. Docker's containers have a network
//! namespace without a path, which runc checkpoints as `--empty-ns net`: the restored container
//! gets a fresh network namespace with only a loopback (Docker's hook that wires the veth is
//! gone); whatever serves the container over the network must set that up again.

use std::fmt;
use std::io::{self, Seek};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::criu::{
    dir_bytes, error_lines, Criu, CriuError, DumpOptions, DumpReport, DumpStats, InheritFd,
    NetworkLock, RestoreOptions,
};
use crate::lazy::{check_pipe_max_size, LazyDump, PageSocket};

/// Where Docker 20.10 keeps runc's state of its containers (exists once dockerd has run a
/// container since it started).
pub const DOCKER_RUNC_ROOT: &str = "/run/docker/runtime-runc/moby";

/// The restored container's stdout and stderr, in its bundle ([`RuncRestore::output`]).
pub const OUTPUT_FILE: &str = "output.log";

/// Where containerd keeps a Docker container's OCI bundle (`<id>/config.json`).
pub const DOCKER_BUNDLES: &str = "/run/docker/containerd/daemon/io.containerd.runtime.v2.task/moby";

/// Why this host cannot checkpoint or restore Docker's containers with runc, if it cannot: runc
/// missing, or Docker's runc state not where Docker 20.10 keeps it.
pub fn runc_usable() -> Result<(), String> {
    let runc = Command::new("runc")
        .arg("--version")
        .stdin(Stdio::null())
        .output();
    match runc {
        Ok(o) if o.status.success() => {}
        _ => {
            return Err(
                "runc is not installed here: Docker tasks move live through `runc checkpoint`"
                    .to_string(),
            )
        }
    }
    if !Path::new(DOCKER_RUNC_ROOT).is_dir() {
        return Err(format!(
            "Docker's runc state {DOCKER_RUNC_ROOT} is missing (not Docker 20.10's layout?)"
        ));
    }
    Ok(())
}

/// A task restored here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Restored {
    /// The restored root process's PID as this host sees it.
    pub pid: u32,
    /// Wall time of the restore command.
    pub elapsed: Duration,
}

/// Restores a checkpointed task on this host. The target side of a live migration.
pub trait Restorer: Send + Sync + fmt::Debug {
    /// Restores the task dumped as `dumped_pid` (the PID the source saw) from `images`; `log`
    /// names where the call's log goes (CRIU's log file; runc's work directory is `log` with
    /// the extension `work`).
    fn restore(
        &self,
        images: &Path,
        dumped_pid: u32,
        log: &Path,
    ) -> Result<Restored, CheckpointError>;

    /// Whether this restores a process with CRIU, so that post-copy's lazy restore of the same
    /// images may stand in for it (a container restorer may not: runc restores containers).
    fn restores_a_process(&self) -> bool {
        false
    }

    /// Runs post-copy's lazy restore, which stands in for [`Restorer::restore`] (the pipeline
    /// starts it beside its lazy-pages daemon), under whatever guards this restorer's own
    /// restores: a restorer that may refuse a restore, or must record the restored pid, does
    /// so around `restore` too. By default it just runs it.
    fn guard_lazy(
        &self,
        restore: &mut dyn FnMut() -> Result<Restored, CheckpointError>,
    ) -> Result<Restored, CheckpointError> {
        restore()
    }

    /// Whether this restores post-copy's lazy images itself ([`Restorer::restore_lazy`]): a
    /// container restorer whose program runs CRIU (runc).
    fn restores_lazily(&self) -> bool {
        false
    }

    /// Restores the task from the lazy images in `images`, beside the `criu lazy-pages` daemon
    /// already serving that directory (its socket is there), under this restorer's guards.
    /// Only for a restorer that [`Restorer::restores_lazily`].
    fn restore_lazy(&self, _images: &Path, _dumped_pid: u32) -> Result<Restored, CheckpointError> {
        Err(CheckpointError::Unsupported(
            "this restorer does not restore post-copy's lazy images".into(),
        ))
    }
}

/// Checkpoints a running task. The source side of a live migration; its [`Restorer`] half is
/// the fallback that brings the task back on the source when the target cannot run it.
pub trait Checkpointer: Restorer {
    /// Checkpoints the task into `images` (created), letting it run on when `leave_running`
    /// (a pre-copy round) or stopping it (the final round). `log` as in [`Restorer::restore`].
    fn dump(
        &self,
        images: &Path,
        leave_running: bool,
        log: &Path,
    ) -> Result<DumpReport, CheckpointError>;

    /// Post-copy's dump: freezes the task, writes every image but its anonymous memory into
    /// `images` (created) and returns once its page server waits for the target, with the
    /// local end of the page server's connection (`log` as in [`Checkpointer::dump`]). The
    /// task stays frozen until the transfer ends ([`crate::lazy`]). Only for a checkpointer
    /// that does it; a process's is driven by the live pipeline with CRIU directly.
    fn dump_lazy(
        &self,
        _images: &Path,
        _log: &Path,
        _defer_reads: bool,
    ) -> Result<(LazyDump, PageSocket), CheckpointError> {
        Err(CheckpointError::Unsupported(
            "this checkpointer has no post-copy dump".into(),
        ))
    }
}

/// Why a checkpoint or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Criu(#[from] CriuError),
    /// The `runc` program could not be started.
    #[error("could not run {binary}: {source} (is runc installed?)")]
    RuncSpawn {
        binary: PathBuf,
        #[source]
        source: io::Error,
    },
    /// runc ran and failed; CRIU's own error lines come from its log in runc's work directory.
    #[error("runc {action} of {container} failed ({status}): {stderr}{}; CRIU log {}", criu_lines(.criu_errors), log_file.display())]
    Runc {
        action: &'static str,
        container: String,
        status: ExitStatus,
        stderr: String,
        /// CRIU's `Error (...)` lines from its log, without the harmless RLIMIT_NOFILE one.
        criu_errors: Vec<String>,
        log_file: PathBuf,
    },
    /// `runc state` said something unexpected after a restore.
    #[error("runc state of {container}: {why}")]
    State { container: String, why: String },
    /// Preparing a bundle, or a work directory, failed.
    #[error("{what} {}: {source}", path.display())]
    Files {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A bundle's config.json is not what a Docker container's is.
    #[error("bundle config {}: {why}", path.display())]
    Config { path: PathBuf, why: String },
    /// This checkpointer cannot do what was asked (e.g. post-copy of a container).
    #[error("{0}")]
    Unsupported(String),
}

fn criu_lines(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!(" [{}]", lines.join(" | "))
    }
}

/// Whether CRIU's error lines say only that the dump caught the task mid-connection: a Unix
/// connection to a peer outside it (a client that has not closed yet, or one still in the
/// listen queue), or an established TCP connection (a call the task is making: brume holds the
/// calls it receives, not the ones it makes). CRIU resumes the task after such a failed dump,
/// so it can be tried again once the connection is gone. So can a lazy dump whose page server
/// found its loopback port taken (runc's lazy dumps name a port, [`RuncContainer::dump_lazy`]).
pub(crate) fn transient_lines(lines: &[String]) -> bool {
    lines.iter().any(|l| {
        l.contains("External socket is used")
            || (l.contains("unix: Unix socket") && l.contains("not found"))
            || l.contains("Connected TCP socket")
            || l.contains("Can't bind page server")
    })
}

impl CheckpointError {
    /// True when the dump only caught a transient connection and trying again is safe.
    pub fn transient(&self) -> bool {
        match self {
            CheckpointError::Criu(CriuError::Failed { errors, .. }) => transient_lines(errors),
            CheckpointError::Runc { criu_errors, .. } => transient_lines(criu_errors),
            _ => false,
        }
    }
}

fn files(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CheckpointError {
    let path = path.to_path_buf();
    move |source| CheckpointError::Files { what, path, source }
}

/// A process tree dumped directly with CRIU (`criu dump -t <pid>`): brume's process engine.
#[derive(Clone, Debug)]
pub struct CriuProcess {
    pub criu: Criu,
    pub pid: u32,
    pub network_lock: NetworkLock,
    /// How the task is brought back on this host if the target cannot run it.
    pub local: CriuRestore,
}

impl Restorer for CriuProcess {
    fn restores_a_process(&self) -> bool {
        true
    }

    fn restore(
        &self,
        images: &Path,
        dumped_pid: u32,
        log: &Path,
    ) -> Result<Restored, CheckpointError> {
        self.local.restore(images, dumped_pid, log)
    }
}

impl Checkpointer for CriuProcess {
    fn dump(
        &self,
        images: &Path,
        leave_running: bool,
        log: &Path,
    ) -> Result<DumpReport, CheckpointError> {
        let mut opts = DumpOptions::new(images, self.pid)
            .leave_running(leave_running)
            .network_lock(self.network_lock);
        opts.log_file = Some(log.to_path_buf());
        Ok(self.criu.dump(&opts)?)
    }
}

/// `criu restore` of a process tree, detached, its root's PID read from a pidfile beside the
/// log (`log` with the extension `pid`).
#[derive(Clone, Debug)]
pub struct CriuRestore {
    pub criu: Criu,
    pub network_lock: NetworkLock,
    /// How long to wait for the dumped PID to be free here (CRIU restores PIDs).
    pub pid_wait: Duration,
    /// Descriptors the restored task gets in place of files outside it (`--inherit-fd`).
    pub inherit_fds: Vec<InheritFd>,
    /// The task is the init of its own PID namespace: its host PID need not be free here.
    pub pid_namespace: bool,
    /// The task ran in a mount namespace of its own: restore it with this directory as its
    /// root (`--root`, see [`RestoreOptions::root`]).
    pub root: Option<PathBuf>,
}

impl Restorer for CriuRestore {
    fn restores_a_process(&self) -> bool {
        true
    }

    fn restore(
        &self,
        images: &Path,
        dumped_pid: u32,
        log: &Path,
    ) -> Result<Restored, CheckpointError> {
        if !self.pid_namespace {
            Criu::wait_pid_gone(dumped_pid, self.pid_wait)?;
        }
        let mut ro = RestoreOptions::new(images).network_lock(self.network_lock);
        ro.inherit_fds = self.inherit_fds.clone();
        ro.root = self.root.clone();
        ro.log_file = Some(log.to_path_buf());
        ro.pidfile = Some(log.with_extension("pid"));
        let r = self.criu.restore(&ro)?;
        Ok(Restored {
            pid: r.pid,
            elapsed: r.elapsed,
        })
    }
}

/// A running container checkpointed with `runc checkpoint` from runc's state directory (for a
/// Docker container, [`DOCKER_RUNC_ROOT`] and Docker's full container id).
///
/// Between pre-copy rounds runc needs nothing: `checkpoint --leave-running` leaves the container
/// `running` in runc's state and Docker's, and the next checkpoint into a fresh directory works
/// (no parent images, since this kernel cannot track dirty pages). The final checkpoint without
/// `--leave-running` kills the container: Docker sees it exit (137) and keeps it as exited.
#[derive(Clone, Debug)]
pub struct RuncContainer {
    pub runc: PathBuf,
    pub root: PathBuf,
    pub id: String,
    /// Where the container comes back on this host if the target cannot run it after the
    /// final checkpoint (a new runc container from a bundle prepared beforehand); `None`: the
    /// fallback fails and the images are kept.
    pub fallback: Option<RuncRestore>,
}

impl RuncContainer {
    /// Docker's container `id` (the full id), through Docker's runc state.
    pub fn docker(id: impl Into<String>) -> Self {
        RuncContainer {
            runc: PathBuf::from("runc"),
            root: PathBuf::from(DOCKER_RUNC_ROOT),
            id: id.into(),
            fallback: None,
        }
    }
}

impl Restorer for RuncContainer {
    fn restore(
        &self,
        images: &Path,
        dumped_pid: u32,
        log: &Path,
    ) -> Result<Restored, CheckpointError> {
        match &self.fallback {
            Some(r) => r.restore(images, dumped_pid, log),
            None => Err(CheckpointError::Unsupported(format!(
                "no bundle was prepared to restore container {} on this host",
                self.id
            ))),
        }
    }
}

/// runc's work directory for the call logging to `log` (CRIU's log lands in it), emptied.
fn fresh_work_dir(log: &Path) -> Result<PathBuf, CheckpointError> {
    let work = log.with_extension("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(files("create runc's work directory", &work))?;
    Ok(work)
}

impl Checkpointer for RuncContainer {
    fn dump(
        &self,
        images: &Path,
        leave_running: bool,
        log: &Path,
    ) -> Result<DumpReport, CheckpointError> {
        let work = fresh_work_dir(log)?;
        let mut cmd = Command::new(&self.runc);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("checkpoint")
            .arg("--image-path")
            .arg(images)
            .arg("--work-path")
            .arg(&work);
        if leave_running {
            cmd.arg("--leave-running");
        }
        cmd.arg(&self.id);
        let started = Instant::now();
        let out =
            cmd.stdin(Stdio::null())
                .output()
                .map_err(|source| CheckpointError::RuncSpawn {
                    binary: self.runc.clone(),
                    source,
                })?;
        let elapsed = started.elapsed();
        let log_file = work.join("dump.log");
        if !out.status.success() {
            return Err(runc_failed(
                "checkpoint",
                &self.id,
                out.status,
                &out.stderr,
                &log_file,
            ));
        }
        let image_bytes = dir_bytes(images).map_err(files("read the images", images))?;
        let stats = DumpStats::read(images).or_else(|| DumpStats::read(&work));
        Ok(DumpReport {
            elapsed,
            image_bytes,
            log_file,
            stats,
        })
    }

    /// [`RuncContainer::lazy_checkpoint`], then a connection to its page server: the page
    /// server serves the first peer that connects, and only this process knows the port before
    /// then.
    fn dump_lazy(
        &self,
        images: &Path,
        log: &Path,
        defer_reads: bool,
    ) -> Result<(LazyDump, PageSocket), CheckpointError> {
        let (dump, port) = self.lazy_checkpoint(images, log, defer_reads)?;
        match std::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port)) {
            Ok(socket) => {
                let _ = socket.set_nodelay(true);
                Ok((dump, PageSocket::Tcp(socket)))
            }
            // Dropping the dump kills runc; its criu, with no peer ever, then stays frozen
            // with the container: say so loudly rather than leave it silently.
            Err(e) => Err(CheckpointError::Files {
                what: "connect to the lazy dump's page server (the container may stay frozen; `runc resume` it)",
                path: PathBuf::from(format!("127.0.0.1:{port}")),
                source: e,
            }),
        }
    }
}

impl RuncContainer {
    /// `runc checkpoint --lazy-pages` until it is ready, and the loopback port its page server
    /// listens on. runc cannot hand its criu a socket, so the page server listens on a port,
    /// which a config file in criu's environment keeps on loopback (over RPC criu takes only
    /// the port of a lazy dump's page server and would listen on every address: docs/criu.md,
    /// "Post-copy of a Docker container through runc"). The port is one the kernel just gave
    /// this process and let go; if another program takes it first, criu cannot bind, thaws the
    /// container, and the dump fails as transient (tried again on another port).
    pub fn lazy_checkpoint(
        &self,
        images: &Path,
        log: &Path,
        defer_reads: bool,
    ) -> Result<(LazyDump, u16), CheckpointError> {
        check_pipe_max_size()?;
        let work = fresh_work_dir(log)?;
        std::fs::create_dir_all(images).map_err(files("create the images directory", images))?;
        let config = work.join("lazy.conf");
        let mut lines = String::from("address 127.0.0.1\n");
        if defer_reads {
            lines.push_str("lazy-pages-defer-read\n");
        }
        std::fs::write(&config, lines).map_err(files("write criu's config", &config))?;
        let port = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(files("find a loopback port for the page server", &work))?
            .port();
        let stderr_file = work.join("runc.stderr");
        let stderr = std::fs::File::create(&stderr_file)
            .map_err(files("create runc's stderr file", &stderr_file))?;
        let (status, status_w) = io::pipe().map_err(files("make the status pipe", &work))?;
        let started = Instant::now();
        // runc writes criu's ready byte (its "status-ready" notification) to the descriptor
        // named: its stdout here, a pipe (runc checks only that it is writable).
        let child = Command::new(&self.runc)
            .env("CRIU_CONFIG_FILE", &config)
            .arg("--root")
            .arg(&self.root)
            .arg("checkpoint")
            .arg("--lazy-pages")
            .arg("--page-server")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--status-fd")
            .arg("1")
            .arg("--image-path")
            .arg(images)
            .arg("--work-path")
            .arg(&work)
            .arg(&self.id)
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::os::fd::OwnedFd::from(status_w)))
            .stderr(stderr)
            .spawn()
            .map_err(|source| CheckpointError::RuncSpawn {
                binary: self.runc.clone(),
                source,
            })?;
        let mut dump = LazyDump::of_runc(
            child,
            status,
            images,
            work.join("dump.log"),
            stderr_file,
            port,
            started,
        );
        dump.wait_ready()?;
        Ok((dump, port))
    }
}

fn runc_failed(
    action: &'static str,
    container: &str,
    status: ExitStatus,
    stderr: &[u8],
    log_file: &Path,
) -> CheckpointError {
    let log = std::fs::read_to_string(log_file).unwrap_or_default();
    CheckpointError::Runc {
        action,
        container: container.to_string(),
        status,
        stderr: String::from_utf8_lossy(stderr).trim().to_string(),
        criu_errors: error_lines(&log),
        log_file: log_file.to_path_buf(),
    }
}

/// `runc restore --detach` of checkpoint images into a new container `id` under runc state
/// directory `root` (brume's own, not Docker's: Docker would not know the container anyway),
/// from a bundle made by [`prepare_bundle`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RuncRestore {
    pub runc: PathBuf,
    pub root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
}

impl Restorer for RuncRestore {
    fn restore(
        &self,
        images: &Path,
        _dumped_pid: u32,
        log: &Path,
    ) -> Result<Restored, CheckpointError> {
        let work = fresh_work_dir(log)?;
        self.run_restore(images, &work, false)
    }

    fn restores_lazily(&self) -> bool {
        true
    }

    /// `runc restore --lazy-pages` with the images directory as runc's work directory: that is
    /// where criu's restore looks for the lazy-pages daemon's socket, which the daemon made in
    /// the directory it serves. CRIU's restore log lands there too.
    fn restore_lazy(&self, images: &Path, _dumped_pid: u32) -> Result<Restored, CheckpointError> {
        self.run_restore(images, images, true)
    }
}

impl RuncRestore {
    /// `runc restore --detach` of `images`, runc's work directory `work`, lazily or not.
    fn run_restore(
        &self,
        images: &Path,
        work: &Path,
        lazy: bool,
    ) -> Result<Restored, CheckpointError> {
        std::fs::create_dir_all(&self.root).map_err(files("create runc's root", &self.root))?;
        // runc's stdio becomes the restored container's (CRIU gives the dumped stdout and
        // stderr pipes runc's own). A pipe, like Docker's, so that the container can be
        // checkpointed again (runc hands a pipe to CRIU as external; a host file outside the
        // container's mounts fails the dump: "Can't lookup mount"), drained into
        // [`RuncRestore::output`] for as long as anything holds its write end by a `cat` of its
        // own ([`crate::drain`]), not by this process. runc's own messages come through it
        // first: a failure quotes what this call added.
        let output = self.output();
        let mut out_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&output)
            .map_err(files("open the container's output file", &output))?;
        let before = out_file
            .seek(io::SeekFrom::End(0))
            .map_err(files("seek the container's output file", &output))?;
        drop(out_file);
        let (reader, writer) =
            io::pipe().map_err(files("make the container's output pipe", &output))?;
        let stderr = writer
            .try_clone()
            .map_err(files("make the container's output pipe", &output))?;
        let drain = crate::drain::start(reader, &output)
            .map_err(files("start the drain of the container's output", &output))?;
        let started = Instant::now();
        let mut cmd = Command::new(&self.runc);
        cmd.arg("--root").arg(&self.root).arg("restore");
        if lazy {
            cmd.arg("--lazy-pages");
        }
        let status = cmd
            .arg("--image-path")
            .arg(images)
            .arg("--work-path")
            .arg(work)
            .arg("--bundle")
            .arg(&self.bundle)
            .arg("--detach")
            .arg(&self.id)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(stderr)
            .status()
            .map_err(|source| CheckpointError::RuncSpawn {
                binary: self.runc.clone(),
                source,
            })?;
        let elapsed = started.elapsed();
        if !status.success() {
            // No container holds the pipe: the drain ends once runc's last words are in.
            drain.wait(Duration::from_secs(5));
            let all = std::fs::read(&output).unwrap_or_default();
            let start = usize::try_from(before).unwrap_or(0).min(all.len());
            let stderr = all.get(start..).unwrap_or_default().to_vec();
            let mut log = work.join("restore.log");
            if lazy {
                // The work directory is the images directory, which its caller removes once
                // the move failed: the log is kept beside it (`<images>.restore.log`), where
                // a process's lazy restore logs.
                let mut kept = images.as_os_str().to_owned();
                kept.push(".restore.log");
                if std::fs::copy(&log, &kept).is_ok() {
                    log = PathBuf::from(kept);
                }
            }
            return Err(runc_failed("restore", &self.id, status, &stderr, &log));
        }
        let pid = self.pid()?;
        Ok(Restored { pid, elapsed })
    }

    /// The file the restored container's stdout and stderr go to: `output.log` in its bundle
    /// (a node's `logs` of the container read it).
    pub fn output(&self) -> PathBuf {
        self.bundle.join(OUTPUT_FILE)
    }

    /// The container's init PID on this host, from `runc state`.
    pub fn pid(&self) -> Result<u32, CheckpointError> {
        let state_error = |why: String| CheckpointError::State {
            container: self.id.clone(),
            why,
        };
        let out = Command::new(&self.runc)
            .arg("--root")
            .arg(&self.root)
            .arg("state")
            .arg(&self.id)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| CheckpointError::RuncSpawn {
                binary: self.runc.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(state_error(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        let state: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| state_error(format!("not JSON: {e}")))?;
        state
            .get("pid")
            .and_then(|p| p.as_u64())
            .and_then(|p| u32::try_from(p).ok())
            .filter(|&p| p > 0)
            .ok_or_else(|| state_error(format!("no pid in {state}")))
    }

    /// Kills and deletes the container (best effort): `runc kill KILL`, then `runc delete -f`.
    pub fn remove(&self) {
        let run = |args: &[&str]| {
            let _ = Command::new(&self.runc)
                .arg("--root")
                .arg(&self.root)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        run(&["kill", &self.id, "KILL"]);
        std::thread::sleep(Duration::from_millis(100));
        run(&["delete", "-f", &self.id]);
    }
}

/// Makes a runc bundle in `bundle` (created) to restore a checkpoint of the container whose OCI
/// config is `config` (for Docker: `<DOCKER_BUNDLES>/<id>/config.json`), as docs/criu.md found
/// it works: the root filesystem copied to `bundle/rootfs` (directories, regular files,
/// symlinks; sockets are recreated by CRIU), then [`PortableBundle::lay_out`]. The copy must be
/// made while the container runs: once the final checkpoint stops it, Docker unmounts its rootfs.
pub fn prepare_bundle(
    config: &Path,
    bundle: &Path,
    cgroups_path: &str,
) -> Result<(), CheckpointError> {
    let portable = PortableBundle::read(config)?;
    let rootfs_src = portable.root_path(config)?;
    std::fs::create_dir_all(bundle).map_err(files("create the bundle", bundle))?;
    copy_tree(&rootfs_src, &bundle.join("rootfs"))?;
    portable.lay_out(bundle, cgroups_path)
}

/// One bind-mounted regular file of a container (Docker's resolv.conf, hosts, hostname), by
/// its index in the config's `mounts`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BoundFile {
    pub mount: usize,
    pub name: String,
    pub bytes: Vec<u8>,
}

/// What another host needs, besides the image's root filesystem, to make a bundle that restores
/// a checkpoint of a container: its OCI config and its bind-mounted files, a few KiB, so it can
/// travel in one frame. Why not the rootfs too: the target has the task's image and makes the
/// rootfs from it (e.g. `docker export` of a created container), which carries the image but
/// not what the container wrote into its writable layer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortableBundle {
    /// The config as JSON text.
    pub config: String,
    pub files: Vec<BoundFile>,
}

impl PortableBundle {
    /// Reads a container's OCI config and the regular files it bind-mounts.
    pub fn read(config: &Path) -> Result<Self, CheckpointError> {
        let text =
            std::fs::read_to_string(config).map_err(files("read the bundle config", config))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| CheckpointError::Config {
                path: config.to_path_buf(),
                why: format!("not JSON: {e}"),
            })?;
        let mut out = Vec::new();
        if let Some(mounts) = json.get("mounts").and_then(|m| m.as_array()) {
            for (i, m) in mounts.iter().enumerate() {
                let Some(source) = m.get("source").and_then(|s| s.as_str()).map(PathBuf::from)
                else {
                    continue;
                };
                let bind = m.get("type").and_then(|t| t.as_str()) == Some("bind");
                if !bind || !source.is_file() {
                    continue;
                }
                let name = source
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let bytes =
                    std::fs::read(&source).map_err(files("read a bind-mounted file", &source))?;
                out.push(BoundFile {
                    mount: i,
                    name,
                    bytes,
                });
            }
        }
        Ok(PortableBundle {
            config: text,
            files: out,
        })
    }

    /// The source container's root filesystem (`root.path`), `config` naming it in errors.
    fn root_path(&self, config: &Path) -> Result<PathBuf, CheckpointError> {
        let json: serde_json::Value =
            serde_json::from_str(&self.config).map_err(|e| CheckpointError::Config {
                path: config.to_path_buf(),
                why: format!("not JSON: {e}"),
            })?;
        json.get("root")
            .and_then(|r| r.get("path"))
            .and_then(|p| p.as_str())
            .map(PathBuf::from)
            .ok_or_else(|| CheckpointError::Config {
                path: config.to_path_buf(),
                why: "no root.path".into(),
            })
    }

    /// Writes the bundle's `config.json` in `bundle`, whose `rootfs` the caller has filled: root
    /// at `bundle/rootfs`, the bind-mounted files written to `bundle/files/` and mounted from
    /// there, the cgroup set to `cgroups_path` (a new one: the old one is Docker's), the hooks
    /// removed (Docker's network hook would wire a veth for a container Docker does not know),
    /// and an `org.criu.config` annotation naming `bundle/criu.conf` with `mntns-compat-mode`
    /// (criu 4.1.1's mount-v2 engine fails this restore with `Failed to copy sharing`). A
    /// network namespace with a path (Docker's host network: `/var/run/docker/netns/default`)
    /// is kept: runc dumps it as external and the restore joins that path's namespace here.
    pub fn lay_out(&self, bundle: &Path, cgroups_path: &str) -> Result<(), CheckpointError> {
        let path = bundle.join("config.json");
        let config_error = |why: String| CheckpointError::Config {
            path: path.clone(),
            why,
        };
        let mut json: serde_json::Value = serde_json::from_str(&self.config)
            .map_err(|e| config_error(format!("not JSON: {e}")))?;
        let obj = json
            .as_object_mut()
            .ok_or_else(|| config_error("not a JSON object".into()))?;
        std::fs::create_dir_all(bundle).map_err(files("create the bundle", bundle))?;
        let rootfs = bundle.join("rootfs");
        match obj.get_mut("root").and_then(|r| r.as_object_mut()) {
            Some(root) => {
                root.insert("path".into(), rootfs.display().to_string().into());
            }
            None => return Err(config_error("no root".into())),
        }
        let copies = bundle.join("files");
        if let Some(mounts) = obj.get_mut("mounts").and_then(|m| m.as_array_mut()) {
            for f in &self.files {
                let Some(m) = mounts.get_mut(f.mount).and_then(|m| m.as_object_mut()) else {
                    return Err(config_error(format!("no mount {}", f.mount)));
                };
                std::fs::create_dir_all(&copies).map_err(files("create", &copies))?;
                // The name came from another host: only its last component is used.
                let name = Path::new(&f.name)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let copy = copies.join(format!("{}-{name}", f.mount));
                std::fs::write(&copy, &f.bytes)
                    .map_err(files("write a bind-mounted file", &copy))?;
                m.insert("source".into(), copy.display().to_string().into());
            }
        }
        obj.remove("hooks");
        let linux = obj
            .get_mut("linux")
            .and_then(|l| l.as_object_mut())
            .ok_or_else(|| config_error("no linux section".into()))?;
        linux.insert("cgroupsPath".into(), cgroups_path.into());
        let criu_conf = bundle.join("criu.conf");
        std::fs::write(&criu_conf, "mntns-compat-mode\n")
            .map_err(files("write the CRIU config", &criu_conf))?;
        let mut annotations = serde_json::Map::new();
        annotations.insert(
            "org.criu.config".into(),
            criu_conf.display().to_string().into(),
        );
        obj.insert("annotations".into(), annotations.into());
        let bytes = serde_json::to_vec(&json).map_err(|e| config_error(e.to_string()))?;
        std::fs::write(&path, bytes).map_err(files("write the bundle config", &path))
    }
}

/// Copies a directory tree: directories, regular files and symlinks (sockets, fifos and devices
/// are skipped: CRIU recreates the sockets, runc mounts /dev).
fn copy_tree(from: &Path, to: &Path) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(to).map_err(files("create", to))?;
    for entry in std::fs::read_dir(from).map_err(files("read", from))? {
        let entry = entry.map_err(files("read", from))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(files("stat", &path))?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&path, &target)?;
        } else if kind.is_file() {
            std::fs::copy(&path, &target).map_err(files("copy", &path))?;
        } else if kind.is_symlink() {
            let link = std::fs::read_link(&path).map_err(files("read link", &path))?;
            std::os::unix::fs::symlink(&link, &target).map_err(files("symlink", &target))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Docker-like config becomes a restorable bundle: rootfs and bind-mounted files copied,
    /// own cgroup, no hooks, the CRIU config annotation.
    #[test]
    fn a_docker_config_becomes_a_restore_bundle() {
        let tmp = crate::testing::temp_dir("bundle");
        let dir = tmp.path().to_path_buf();
        let src_root = dir.join("merged");
        std::fs::create_dir_all(src_root.join("etc")).expect("mkdir");
        std::fs::write(src_root.join("workload"), b"binary").expect("write");
        std::os::unix::fs::symlink("workload", src_root.join("link")).expect("symlink");
        std::fs::write(dir.join("resolv.conf"), b"nameserver 1.1.1.1\n").expect("write");
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": src_root},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/resolv.conf", "type": "bind",
                 "source": dir.join("resolv.conf"), "options": ["rbind"]},
            ],
            "hooks": {"prestart": [{"path": "/proc/1/exe", "args": ["libnetwork-setkey"]}]},
            "linux": {"cgroupsPath": "/docker/abc", "namespaces": [{"type": "network"}]},
        });
        std::fs::write(dir.join("config.json"), config.to_string()).expect("write");
        let bundle = dir.join("bundle");
        prepare_bundle(&dir.join("config.json"), &bundle, "/brume-x").expect("bundle");
        let out: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bundle.join("config.json")).expect("read"))
                .expect("json");
        assert_eq!(
            out["root"]["path"].as_str(),
            Some(bundle.join("rootfs").to_str().expect("utf8"))
        );
        assert!(out.get("hooks").is_none());
        assert_eq!(out["linux"]["cgroupsPath"], "/brume-x");
        let conf = out["annotations"]["org.criu.config"]
            .as_str()
            .expect("conf");
        assert_eq!(
            std::fs::read_to_string(conf).expect("conf"),
            "mntns-compat-mode\n"
        );
        let resolv = out["mounts"][1]["source"].as_str().expect("source");
        assert!(resolv.starts_with(bundle.join("files").to_str().expect("utf8")));
        assert_eq!(
            std::fs::read(resolv).expect("copied"),
            b"nameserver 1.1.1.1\n"
        );
        assert_eq!(out["mounts"][0]["source"], "proc");
        assert_eq!(
            std::fs::read(bundle.join("rootfs/workload")).expect("copied"),
            b"binary"
        );
        assert_eq!(
            std::fs::read_link(bundle.join("rootfs/link")).expect("link"),
            PathBuf::from("workload")
        );
    }

    /// The config and bind-mounted files read on one host make a bundle on another around a
    /// rootfs the caller filled; a host network namespace (a path) is kept.
    #[test]
    fn a_portable_bundle_is_laid_out_around_a_rootfs_made_elsewhere() {
        let tmp = crate::testing::temp_dir("portable");
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("hosts"), b"127.0.0.1 localhost\n").expect("write");
        let config = serde_json::json!({
            "root": {"path": dir.join("merged")},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": dir.join("hosts")},
                {"destination": "/gone", "type": "bind", "source": dir.join("missing")},
            ],
            "hooks": {"prestart": []},
            "linux": {"namespaces": [{"type": "network", "path": "/var/run/docker/netns/default"}]},
        });
        std::fs::write(dir.join("config.json"), config.to_string()).expect("write");
        let portable = PortableBundle::read(&dir.join("config.json")).expect("read");
        assert_eq!(
            portable.files.len(),
            1,
            "only existing regular files travel"
        );
        assert_eq!(portable.files[0].mount, 1);
        // Over the wire and back.
        let portable: PortableBundle =
            serde_json::from_slice(&serde_json::to_vec(&portable).expect("ser")).expect("de");
        let bundle = dir.join("elsewhere");
        std::fs::create_dir_all(bundle.join("rootfs")).expect("rootfs");
        portable.lay_out(&bundle, "/brume-y").expect("lay out");
        let out: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bundle.join("config.json")).expect("read"))
                .expect("json");
        assert_eq!(
            out["root"]["path"].as_str(),
            Some(bundle.join("rootfs").to_str().expect("utf8"))
        );
        let hosts = out["mounts"][1]["source"].as_str().expect("source");
        assert!(hosts.starts_with(bundle.join("files").to_str().expect("utf8")));
        assert_eq!(
            std::fs::read(hosts).expect("hosts"),
            b"127.0.0.1 localhost\n"
        );
        assert_eq!(
            out["linux"]["namespaces"][0]["path"],
            "/var/run/docker/netns/default"
        );
        assert_eq!(out["linux"]["cgroupsPath"], "/brume-y");
        assert!(out.get("hooks").is_none());
        assert!(out["annotations"]["org.criu.config"].is_string());
    }

    #[test]
    fn transient_failures_are_recognised_from_runc_too() {
        let status = Command::new("false").status().expect("run false");
        let runc = CheckpointError::Runc {
            action: "checkpoint",
            container: "c".into(),
            status,
            stderr: "criu failed".into(),
            criu_errors: vec![
                "Error (criu/sk-unix.c:1): unix: External socket is used. Consider --ext-unix-sk"
                    .into(),
            ],
            log_file: PathBuf::from("/w/dump.log"),
        };
        assert!(runc.transient());
        assert!(runc.to_string().contains("External socket"));
        let tcp = CheckpointError::Runc {
            action: "checkpoint",
            container: "c".into(),
            status,
            stderr: "criu failed".into(),
            criu_errors: vec![
                "Error (criu/sk-inet.c:200): inet: Connected TCP socket, consider using \
                 --tcp-established option."
                    .into(),
            ],
            log_file: PathBuf::from("/w/dump.log"),
        };
        assert!(tcp.transient(), "a call in flight passes");
        let other = CheckpointError::Runc {
            action: "checkpoint",
            container: "c".into(),
            status,
            stderr: "criu failed".into(),
            criu_errors: vec!["Error (criu/cr-dump.c:1): Dumping FAILED.".into()],
            log_file: PathBuf::from("/w/dump.log"),
        };
        assert!(!other.transient());
        assert!(!CheckpointError::Unsupported("x".into()).transient());
    }
}
