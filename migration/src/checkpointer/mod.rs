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

mod bundle;
mod runc;

pub use bundle::{prepare_bundle, BoundFile, PortableBundle};
pub use runc::{
    runc_usable, RuncContainer, RuncRestore, DOCKER_BUNDLES, DOCKER_RUNC_ROOT, OUTPUT_FILE,
};

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

#[cfg(test)]
mod tests {
    use super::*;

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
