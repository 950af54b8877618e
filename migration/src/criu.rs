//! A thin wrapper over the `criu` command line: checkpoint a process tree into an images
//! directory ([`Criu::dump`]) and bring it back from there ([`Criu::restore`]).
//!
//! This is the one I/O edge of the crate: it runs a program and reads a clock, everything else
//! in `brume-migration` is pure. Data flow: the caller names a process and an images directory;
//! `criu dump` freezes the tree, writes its memory pages and state as image files into the
//! directory (and, with `leave_running`, lets it go on); the images travel (chunked, compressed,
//! elsewhere in this crate); `criu restore` on the target recreates the tree from them with the
//! same PIDs and writes the root's PID into a pidfile that [`Criu::restore`] reads back. Every
//! call is timed, and every call writes a full CRIU log file; when CRIU fails, its own `Error`
//! lines and the log's tail are put into [`CriuError::Failed`], so the caller sees why.
//!
//! Why the CLI and not the `rust-criu` crate: `rust-criu` speaks CRIU's RPC protocol (`criu
//! swrk`) through generated protobuf code, which pulls the `protobuf` crate into the build for
//! what is here a handful of flags; the RPC also reports failures only as a code, so the log file
//! must be read anyway. The CLI is what `runc` and the CRIU docs use, and what an operator can
//! rerun by hand from the logged command line.
//!
//! What works on these machines (Debian bookworm, kernel 6.18, criu 4.2.1 built from source by
//! scripts/install-criu.sh; see docs/criu.md): dump and restore of processes, TCP listeners
//! included. criu 4.1.1 and older cannot dump a TCP or UDP socket on kernels >= 6.16 (`Can't get
//! 1:16 opt: Operation not supported`, fixed in 4.2); [`CriuError::hint`] says so. Lazy pages through a page server need
//! `fs.pipe-max-size` >= 4 MiB, because root here lacks CAP_SYS_RESOURCE. Every call logs a
//! harmless `rlimit: Can't setup RLIMIT_NOFILE` error (the same missing capability), which is not
//! reported as a failure line.

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How many lines of the log's end go into [`CriuError::Failed`].
const LOG_TAIL_LINES: usize = 15;

/// The line CRIU logs on every command here, which does not make it fail.
const HARMLESS_ERROR: &str = "Can't setup RLIMIT_NOFILE";

/// How CRIU keeps the network quiet between dump and restore of TCP connections or network
/// namespaces (`--network-lock`). These machines have no iptables, so [`NetworkLock::Nftables`]
/// is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkLock {
    /// `nftables` (needs the `nft` tool).
    #[default]
    Nftables,
    /// `iptables`, CRIU's own default.
    Iptables,
    /// `skip`: no lock, the caller makes sure nothing talks to the process.
    Skip,
}

impl NetworkLock {
    fn as_arg(self) -> &'static str {
        match self {
            NetworkLock::Nftables => "nftables",
            NetworkLock::Iptables => "iptables",
            NetworkLock::Skip => "skip",
        }
    }
}

/// What to checkpoint and how; build with [`DumpOptions::new`] and the setters.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Where the images go (`-D`); created if missing.
    pub images_dir: PathBuf,
    /// The root of the process tree (`-t`).
    pub pid: u32,
    /// Let the tree run on after the dump (`--leave-running`), instead of killing it.
    pub leave_running: bool,
    /// Checkpoint established TCP connections (`--tcp-established`).
    pub tcp_established: bool,
    /// The tree belongs to a shell's session or process group (`--shell-job`).
    pub shell_job: bool,
    /// Allow Unix sockets connected to peers outside the tree (`--ext-unix-sk`).
    pub ext_unix_sk: bool,
    /// `--network-lock`.
    pub network_lock: NetworkLock,
    /// The log file (`-o`); `<images_dir>/dump.log` when `None`.
    pub log_file: Option<PathBuf>,
    /// Log verbosity (`-v<n>`, 0..=4); 4 gives everything, which is what a failure needs.
    pub verbosity: u8,
    /// In a lazy dump ([`Criu::dump_lazy`]), leave the lazy pages in the frozen task and read
    /// each one when the target asks (`--lazy-pages-defer-read`, brume's patch to CRIU; see
    /// [`Criu::defers_lazy_reads`]), so the freeze does not grow with memory.
    pub defer_lazy_reads: bool,
}

impl DumpOptions {
    /// Dump `pid` into `images_dir`, killing it afterwards (CRIU's default), with an nftables
    /// network lock and a full log in the images directory.
    pub fn new(images_dir: impl Into<PathBuf>, pid: u32) -> Self {
        DumpOptions {
            images_dir: images_dir.into(),
            pid,
            leave_running: false,
            tcp_established: false,
            shell_job: false,
            ext_unix_sk: false,
            network_lock: NetworkLock::default(),
            log_file: None,
            verbosity: 4,
            defer_lazy_reads: false,
        }
    }

    /// Sets [`DumpOptions::defer_lazy_reads`].
    pub fn defer_lazy_reads(mut self, yes: bool) -> Self {
        self.defer_lazy_reads = yes;
        self
    }

    /// Sets [`DumpOptions::leave_running`].
    pub fn leave_running(mut self, yes: bool) -> Self {
        self.leave_running = yes;
        self
    }

    /// Sets [`DumpOptions::tcp_established`].
    pub fn tcp_established(mut self, yes: bool) -> Self {
        self.tcp_established = yes;
        self
    }

    /// Sets [`DumpOptions::shell_job`].
    pub fn shell_job(mut self, yes: bool) -> Self {
        self.shell_job = yes;
        self
    }

    /// Sets [`DumpOptions::ext_unix_sk`].
    pub fn ext_unix_sk(mut self, yes: bool) -> Self {
        self.ext_unix_sk = yes;
        self
    }

    /// Sets [`DumpOptions::network_lock`].
    pub fn network_lock(mut self, lock: NetworkLock) -> Self {
        self.network_lock = lock;
        self
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.log_file
            .clone()
            .unwrap_or_else(|| self.images_dir.join("dump.log"))
    }

    pub(crate) fn args(&self) -> Vec<String> {
        let mut args = vec![
            "dump".to_string(),
            "-t".to_string(),
            self.pid.to_string(),
            "-D".to_string(),
            self.images_dir.display().to_string(),
            "-o".to_string(),
            self.log_path().display().to_string(),
            format!("-v{}", self.verbosity.min(4)),
            "--network-lock".to_string(),
            self.network_lock.as_arg().to_string(),
        ];
        push_flag(&mut args, self.leave_running, "--leave-running");
        push_flag(&mut args, self.tcp_established, "--tcp-established");
        push_flag(&mut args, self.shell_job, "--shell-job");
        push_flag(&mut args, self.ext_unix_sk, "--ext-unix-sk");
        args
    }
}

/// A file descriptor of the caller that `criu restore` gives the restored tree in place of a
/// file it cannot recreate (`--inherit-fd fd[N]:KEY`): a pipe whose other end was outside the
/// dumped tree, such as the pipe an engine reads the task's stdout from. Without it CRIU makes a
/// new pipe nobody reads, and the task's next write fails or blocks. `key` names the dumped file
/// as CRIU does, e.g. `pipe:[123456]` (the link `/proc/<pid>/fd/1` had at dump time); `fd` must
/// stay open until [`Criu::restore`] returns. This is how runc hands stdio back to a restored
/// container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InheritFd {
    pub key: String,
    pub fd: RawFd,
}

/// What to restore and how; build with [`RestoreOptions::new`] and the setters.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Where the images are (`-D`).
    pub images_dir: PathBuf,
    /// Let CRIU exit once the tree runs (`-d`, `--restore-detached`); the tree is then
    /// reparented to the nearest subreaper (or init). Without it `criu restore` waits for the
    /// tree to exit, and so does [`Criu::restore`].
    pub detached: bool,
    /// Restore the tree's mount namespace on top of this root (`--root`); needed when the tree
    /// was dumped in its own mount namespace (`/` restores it onto the host's root).
    pub root: Option<PathBuf>,
    /// Restore established TCP connections (`--tcp-established`).
    pub tcp_established: bool,
    /// The tree was dumped with `--shell-job`.
    pub shell_job: bool,
    /// The tree was dumped with `--ext-unix-sk`.
    pub ext_unix_sk: bool,
    /// `--network-lock`; must match the dump's.
    pub network_lock: NetworkLock,
    /// Where CRIU writes the root's new PID (`--pidfile`); `<images_dir>/restore.pid` when `None`.
    pub pidfile: Option<PathBuf>,
    /// The log file (`-o`); `<images_dir>/restore.log` when `None`.
    pub log_file: Option<PathBuf>,
    /// Log verbosity (`-v<n>`, 0..=4).
    pub verbosity: u8,
    /// Descriptors handed to the restored tree (`--inherit-fd`), see [`InheritFd`].
    pub inherit_fds: Vec<InheritFd>,
    /// Memory was dumped lazily: pages come from a `criu lazy-pages` daemon running on the
    /// same images directory (`--lazy-pages`), see [`crate::lazy`].
    pub lazy_pages: bool,
}

impl RestoreOptions {
    /// Restore from `images_dir`, detached, onto the current root, with an nftables network
    /// lock, a pidfile and a full log in the images directory.
    pub fn new(images_dir: impl Into<PathBuf>) -> Self {
        RestoreOptions {
            images_dir: images_dir.into(),
            detached: true,
            root: None,
            tcp_established: false,
            shell_job: false,
            ext_unix_sk: false,
            network_lock: NetworkLock::default(),
            pidfile: None,
            log_file: None,
            verbosity: 4,
            inherit_fds: Vec::new(),
            lazy_pages: false,
        }
    }

    /// Adds an [`InheritFd`].
    pub fn inherit_fd(mut self, key: impl Into<String>, fd: RawFd) -> Self {
        self.inherit_fds.push(InheritFd {
            key: key.into(),
            fd,
        });
        self
    }

    /// Sets [`RestoreOptions::detached`].
    pub fn detached(mut self, yes: bool) -> Self {
        self.detached = yes;
        self
    }

    /// Sets [`RestoreOptions::root`].
    pub fn root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = Some(root.into());
        self
    }

    /// Sets [`RestoreOptions::tcp_established`].
    pub fn tcp_established(mut self, yes: bool) -> Self {
        self.tcp_established = yes;
        self
    }

    /// Sets [`RestoreOptions::shell_job`].
    pub fn shell_job(mut self, yes: bool) -> Self {
        self.shell_job = yes;
        self
    }

    /// Sets [`RestoreOptions::ext_unix_sk`].
    pub fn ext_unix_sk(mut self, yes: bool) -> Self {
        self.ext_unix_sk = yes;
        self
    }

    /// Sets [`RestoreOptions::network_lock`].
    pub fn network_lock(mut self, lock: NetworkLock) -> Self {
        self.network_lock = lock;
        self
    }

    fn log_path(&self) -> PathBuf {
        self.log_file
            .clone()
            .unwrap_or_else(|| self.images_dir.join("restore.log"))
    }

    fn pidfile_path(&self) -> PathBuf {
        self.pidfile
            .clone()
            .unwrap_or_else(|| self.images_dir.join("restore.pid"))
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "restore".to_string(),
            "-D".to_string(),
            self.images_dir.display().to_string(),
            "-o".to_string(),
            self.log_path().display().to_string(),
            format!("-v{}", self.verbosity.min(4)),
            "--pidfile".to_string(),
            self.pidfile_path().display().to_string(),
            "--network-lock".to_string(),
            self.network_lock.as_arg().to_string(),
        ];
        push_flag(&mut args, self.detached, "--restore-detached");
        if let Some(root) = &self.root {
            args.push("--root".to_string());
            args.push(root.display().to_string());
        }
        push_flag(&mut args, self.tcp_established, "--tcp-established");
        push_flag(&mut args, self.shell_job, "--shell-job");
        push_flag(&mut args, self.ext_unix_sk, "--ext-unix-sk");
        push_flag(&mut args, self.lazy_pages, "--lazy-pages");
        for i in &self.inherit_fds {
            args.push("--inherit-fd".to_string());
            args.push(format!("fd[{}]:{}", i.fd, i.key));
        }
        args
    }
}

fn push_flag(args: &mut Vec<String>, on: bool, flag: &str) {
    if on {
        args.push(flag.to_string());
    }
}

/// A finished dump.
#[derive(Debug, Clone)]
pub struct DumpReport {
    /// Wall time of the `criu dump` command, start to exit.
    pub elapsed: Duration,
    /// Total size of the image files written.
    pub image_bytes: u64,
    /// The log file.
    pub log_file: PathBuf,
    /// CRIU's own timings from the `stats-dump` image, when it could be read.
    pub stats: Option<DumpStats>,
}

/// CRIU's dump statistics (the `stats-dump` image): how long the tree was frozen, which is the
/// downtime a final dump costs, and how the time was spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpStats {
    /// Time to freeze the tree.
    pub freezing: Duration,
    /// Time the tree stayed frozen (with `leave_running`, until it ran again).
    pub frozen: Duration,
    /// Time to collect the memory pages.
    pub memdump: Duration,
    /// Time to write them out.
    pub memwrite: Duration,
    /// Pages CRIU looked at (present in the tree's dumpable mappings).
    pub pages_scanned: u64,
    /// Pages written to the images.
    pub pages_written: u64,
}

impl DumpStats {
    /// Reads `<images_dir>/stats-dump`: two magic numbers, a little-endian u32 size, then a
    /// protobuf `StatsEntry { DumpStatsEntry dump = 1 }` whose fields 1-4 are the times in
    /// microseconds, field 5 the pages scanned and field 7 the pages written. `None` if the file is missing or malformed.
    pub fn read(images_dir: &Path) -> Option<DumpStats> {
        let bytes = std::fs::read(images_dir.join("stats-dump")).ok()?;
        let size = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?) as usize;
        let entry = bytes.get(12..12 + size)?;
        let dump = protobuf_fields(entry)?
            .into_iter()
            .find_map(|(field, value)| match (field, value) {
                (1, Field::Bytes(b)) => Some(b),
                _ => None,
            })?;
        let mut stats = DumpStats {
            freezing: Duration::ZERO,
            frozen: Duration::ZERO,
            memdump: Duration::ZERO,
            memwrite: Duration::ZERO,
            pages_scanned: 0,
            pages_written: 0,
        };
        for (field, value) in protobuf_fields(dump)? {
            let Field::Varint(v) = value else { continue };
            match field {
                1 => stats.freezing = Duration::from_micros(v),
                2 => stats.frozen = Duration::from_micros(v),
                3 => stats.memdump = Duration::from_micros(v),
                4 => stats.memwrite = Duration::from_micros(v),
                5 => stats.pages_scanned = v,
                7 => stats.pages_written = v,
                _ => {}
            }
        }
        Some(stats)
    }
}

/// A protobuf field value, as far as the images brume reads need (stats, pagemaps).
pub(crate) enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// The (field number, value) pairs of a protobuf message; `None` on anything unexpected.
pub(crate) fn protobuf_fields(mut buf: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    fn varint(buf: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = buf.split_first()?;
            *buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    let mut fields = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let value = match key & 7 {
            0 => Field::Varint(varint(&mut buf)?),
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let (bytes, rest) = (buf.get(..len)?, buf.get(len..)?);
                buf = rest;
                Field::Bytes(bytes)
            }
            _ => return None,
        };
        fields.push((key >> 3, value));
    }
    Some(fields)
}

/// A finished restore.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// The restored root process's PID (CRIU restores PIDs, so it is the dumped one's).
    pub pid: u32,
    /// Wall time of the `criu restore` command, start to exit.
    pub elapsed: Duration,
    /// The log file.
    pub log_file: PathBuf,
}

/// Why a CRIU call failed.
#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    /// The `criu` program could not be started.
    #[error(
        "could not run {binary}: {source} (is CRIU installed? scripts/install-criu.sh installs it)"
    )]
    Spawn {
        /// The program that was run.
        binary: PathBuf,
        /// Why it did not start.
        source: io::Error,
    },
    /// The images directory could not be created or read.
    #[error("images directory {path}: {source}")]
    ImagesDir {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// CRIU ran and failed.
    #[error("{}", FailedDisplay(self))]
    Failed {
        /// `dump`, `restore`, `check`, ...
        action: &'static str,
        /// CRIU's exit status.
        status: ExitStatus,
        /// How long it ran.
        elapsed: Duration,
        /// CRIU's own `Error (...)` lines from the log (and stderr), without the harmless
        /// RLIMIT_NOFILE one.
        errors: Vec<String>,
        /// The last lines of the log.
        log_tail: Vec<String>,
        /// The log file, to read in full.
        log_file: PathBuf,
    },
    /// `criu restore` succeeded but its pidfile could not be read.
    #[error("criu restore succeeded but its pidfile {path} could not be read: {why}")]
    Pidfile {
        /// The pidfile.
        path: PathBuf,
        /// What was wrong with it.
        why: String,
    },
    /// A PID is still taken (alive or a zombie) after waiting for it to go: CRIU restores PIDs,
    /// so a tree cannot be restored on the host it was dumped on while its old root exists.
    #[error("pid {pid} is still taken after {waited:?}; kill and reap the dumped process before restoring here")]
    PidTaken {
        /// The PID.
        pid: u32,
        /// How long it was waited for.
        waited: Duration,
    },
    /// `fs.pipe-max-size` is below what CRIU's page server needs for lazy pages.
    #[error("lazy pages need fs.pipe-max-size >= {needed} (it is {current}): root here lacks CAP_SYS_RESOURCE, so CRIU's page server cannot grow its pipe; run `sysctl -w fs.pipe-max-size={needed}` (scripts/install-deps.sh sets it)")]
    PipeMaxSize {
        /// The current setting, bytes.
        current: u64,
        /// What the page server needs, bytes.
        needed: u64,
    },
}

/// Formats [`CriuError::Failed`]: the action, status, CRIU's error lines, a hint when one is
/// known, and the log's tail.
struct FailedDisplay<'a>(&'a CriuError);

impl fmt::Display for FailedDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let CriuError::Failed {
            action,
            status,
            elapsed,
            errors,
            log_tail,
            log_file,
        } = self.0
        else {
            return Ok(());
        };
        write!(
            f,
            "criu {action} failed ({status}) after {} ms",
            elapsed.as_millis()
        )?;
        if errors.is_empty() {
            write!(f, "; no Error line in the log")?;
        } else {
            write!(f, ": {}", errors.join(" | "))?;
        }
        if let Some(hint) = self.0.hint() {
            write!(f, "\nhint: {hint}")?;
        }
        write!(f, "\nlast lines of {}:", log_file.display())?;
        for line in log_tail {
            write!(f, "\n  {line}")?;
        }
        Ok(())
    }
}

impl CriuError {
    /// What to do about a failure CRIU reports on these machines, when it is a known one.
    pub fn hint(&self) -> Option<&'static str> {
        let CriuError::Failed { errors, .. } = self else {
            return None;
        };
        let has = |needle: &str| errors.iter().any(|e| e.contains(needle));
        if has("Can't get 1:16 opt") || has("Can't get 1:34 opt") {
            Some(
                "criu 4.1.1 and older cannot dump TCP/UDP sockets on Linux >= 6.16 (SO_PASSCRED/SO_PASSSEC \
                 are refused on inet sockets; criu issue #2718); close inet sockets before the \
                 dump, or install criu >= 4.2 (scripts/install-criu.sh does)",
            )
        } else if has("page-pipe: tee") || has("page-pipe: splice") {
            Some(
                "CRIU could not size its 4 MiB page pipe: root here lacks CAP_SYS_RESOURCE, so \
                 pipes cannot grow past fs.pipe-max-size (1 MiB); run \
                 `sysctl fs.pipe-max-size=4194304` (see docs/criu.md)",
            )
        } else if has("External socket is used") {
            Some(
                "the task held a Unix connection to a process outside the dumped tree at the \
                 moment of the dump; criu resumed it, so try again (or dump with --ext-unix-sk)",
            )
        } else if has("not found") && has("nix socket") {
            Some("run criu in the task's network namespace (nsenter --net=...)")
        } else if has("iptables") {
            Some("iptables is missing here: use NetworkLock::Nftables (needs `nft`)")
        } else if has("File exists") || has("Can't fork for") {
            Some("a PID of the tree is taken: wait until the dumped process is gone (Criu::wait_pid_gone)")
        } else {
            None
        }
    }
}

/// Runs the `criu` program.
#[derive(Debug, Clone)]
pub struct Criu {
    binary: PathBuf,
}

impl Default for Criu {
    fn default() -> Self {
        Criu::new()
    }
}

impl Criu {
    /// `criu` from `PATH`.
    pub fn new() -> Self {
        Criu {
            binary: PathBuf::from("criu"),
        }
    }

    /// A given `criu` binary.
    pub fn with_binary(binary: impl Into<PathBuf>) -> Self {
        Criu {
            binary: binary.into(),
        }
    }

    /// `criu --version`'s version, e.g. `4.1.1`.
    pub fn version(&self) -> Result<String, CriuError> {
        let out = self
            .command()
            .arg("--version")
            .output()
            .map_err(|e| self.spawn_error(e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .lines()
            .find_map(|l| l.strip_prefix("Version:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| text.trim().to_string());
        Ok(version)
    }

    /// Whether this CRIU carries brume's `dump --lazy-pages-defer-read` (scripts/criu-patches,
    /// built by scripts/install-criu.sh): its `--help` names the option. A CRIU without it
    /// still moves tasks; its lazy dumps copy every page while the task is frozen.
    pub fn defers_lazy_reads(&self) -> Result<bool, CriuError> {
        let out = self
            .command()
            .arg("--help")
            .output()
            .map_err(|e| self.spawn_error(e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text.contains("--lazy-pages-defer-read"))
    }

    /// `criu check`: whether this kernel can checkpoint at all. On failure the error carries
    /// CRIU's output as its error lines.
    pub fn check(&self) -> Result<(), CriuError> {
        let started = Instant::now();
        let out = self
            .command()
            .arg("check")
            .output()
            .map_err(|e| self.spawn_error(e))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() && text.contains("Looks good") {
            return Ok(());
        }
        Err(CriuError::Failed {
            action: "check",
            status: out.status,
            elapsed: started.elapsed(),
            errors: error_lines(&text),
            log_tail: tail(&text, LOG_TAIL_LINES),
            log_file: PathBuf::new(),
        })
    }

    /// Checkpoints a process tree into `opts.images_dir` (created if missing).
    pub fn dump(&self, opts: &DumpOptions) -> Result<DumpReport, CriuError> {
        std::fs::create_dir_all(&opts.images_dir).map_err(|source| CriuError::ImagesDir {
            path: opts.images_dir.clone(),
            source,
        })?;
        let log_file = opts.log_path();
        let elapsed = self.run("dump", &opts.args(), &log_file)?;
        let image_bytes = dir_bytes(&opts.images_dir).map_err(|source| CriuError::ImagesDir {
            path: opts.images_dir.clone(),
            source,
        })?;
        let stats = DumpStats::read(&opts.images_dir);
        Ok(DumpReport {
            elapsed,
            image_bytes,
            log_file,
            stats,
        })
    }

    /// Restores a process tree from `opts.images_dir` and returns its root's PID.
    ///
    /// On the host the tree was dumped on, its PIDs must be free first: see
    /// [`Criu::wait_pid_gone`].
    pub fn restore(&self, opts: &RestoreOptions) -> Result<RestoreReport, CriuError> {
        let pidfile = opts.pidfile_path();
        // A stale pidfile from an earlier restore would be read as this one's.
        let _ = std::fs::remove_file(&pidfile);
        let log_file = opts.log_path();
        let elapsed = match opts.inherit_fds.as_slice() {
            // One descriptor (a task's output pipe) goes in as criu's stdin, so no code of ours
            // runs in the child and std uses posix_spawn: a fork would copy the page tables of
            // this process, which on a migration target holds the task's replica (docs/criu.md,
            // "Starting criu from a process that holds the replica"). A shell job's stdin is
            // its terminal, so it keeps the numbers.
            [one] if !opts.shell_job => {
                // SAFETY: the caller keeps `one.fd` open until this returns (InheritFd's
                // contract); it is only duplicated here.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(one.fd) }
                    .try_clone_to_owned()
                    .map_err(|e| self.spawn_error(e))?;
                let mut on_stdin = opts.clone();
                on_stdin.inherit_fds = vec![InheritFd {
                    key: one.key.clone(),
                    fd: 0,
                }];
                let mut cmd = self.command();
                cmd.args(on_stdin.args()).stdin(Stdio::from(fd));
                self.run_command("restore", cmd, &log_file)?
            }
            _ => {
                let keep: Vec<RawFd> = opts.inherit_fds.iter().map(|i| i.fd).collect();
                self.run_keeping("restore", &opts.args(), &log_file, &keep)?
            }
        };
        let text = std::fs::read_to_string(&pidfile).map_err(|e| CriuError::Pidfile {
            path: pidfile.clone(),
            why: e.to_string(),
        })?;
        let pid = text.trim().parse::<u32>().map_err(|e| CriuError::Pidfile {
            path: pidfile.clone(),
            why: format!("{text:?} is not a pid: {e}"),
        })?;
        Ok(RestoreReport {
            pid,
            elapsed,
            log_file,
        })
    }

    /// Waits until `pid` is gone from `/proc` (a zombie still holds its PID), polling every
    /// 5 ms, for at most `timeout`.
    pub fn wait_pid_gone(pid: u32, timeout: Duration) -> Result<(), CriuError> {
        let started = Instant::now();
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        while proc_dir.exists() {
            if started.elapsed() >= timeout {
                return Err(CriuError::PidTaken {
                    pid,
                    waited: started.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    pub(crate) fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.stdin(Stdio::null());
        cmd
    }

    pub(crate) fn spawn_error(&self, source: io::Error) -> CriuError {
        CriuError::Spawn {
            binary: self.binary.clone(),
            source,
        }
    }

    /// Runs `criu <args>`, timed; on failure reads CRIU's error lines from stderr and the log.
    fn run(
        &self,
        action: &'static str,
        args: &[String],
        log_file: &Path,
    ) -> Result<Duration, CriuError> {
        self.run_keeping(action, args, log_file, &[])
    }

    /// [`Criu::run`], with the descriptors `keep` left open (same numbers) in `criu`.
    fn run_keeping(
        &self,
        action: &'static str,
        args: &[String],
        log_file: &Path,
        keep: &[RawFd],
    ) -> Result<Duration, CriuError> {
        let mut cmd = self.command_keeping(keep);
        cmd.args(args);
        self.run_command(action, cmd, log_file)
    }

    /// Runs `cmd` (a criu), timed; on failure reads CRIU's error lines from stderr and the log.
    fn run_command(
        &self,
        action: &'static str,
        mut cmd: Command,
        log_file: &Path,
    ) -> Result<Duration, CriuError> {
        let started = Instant::now();
        let out = cmd.output().map_err(|e| self.spawn_error(e))?;
        let elapsed = started.elapsed();
        if out.status.success() {
            return Ok(elapsed);
        }
        Err(failed(
            action,
            out.status,
            elapsed,
            &String::from_utf8_lossy(&out.stderr),
            log_file,
        ))
    }

    /// `criu` with the descriptors `keep` left open (same numbers) in it.
    pub(crate) fn command_keeping(&self, keep: &[RawFd]) -> Command {
        let mut cmd = self.command();
        if !keep.is_empty() {
            use std::os::unix::process::CommandExt;
            let keep = keep.to_vec();
            // SAFETY: runs in the forked child before exec and only calls fcntl(2), which is
            // async-signal-safe; clearing FD_CLOEXEC there (not in the parent) keeps the
            // descriptors out of every other program this process starts meanwhile.
            unsafe {
                cmd.pre_exec(move || {
                    for &fd in &keep {
                        if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        cmd
    }
}

/// [`CriuError::Failed`] for a `criu` that exited with `status`: CRIU's error lines from its
/// stderr and its log, and the log's tail.
pub(crate) fn failed(
    action: &'static str,
    status: ExitStatus,
    elapsed: Duration,
    stderr: &str,
    log_file: &Path,
) -> CriuError {
    let log = std::fs::read_to_string(log_file).unwrap_or_default();
    let mut errors = error_lines(stderr);
    errors.extend(error_lines(&log));
    errors.dedup();
    CriuError::Failed {
        action,
        status,
        elapsed,
        errors,
        log_tail: tail(&log, LOG_TAIL_LINES),
        log_file: log_file.to_path_buf(),
    }
}

/// CRIU's `Error (file:line): ...` lines, without the harmless RLIMIT_NOFILE one.
pub(crate) fn error_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.contains("Error") && !l.contains(HARMLESS_ERROR))
        .map(|l| l.trim().to_string())
        .collect()
}

fn tail(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// Total size of the regular files in `dir` (CRIU's images are flat).
pub(crate) fn dir_bytes(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let meta = entry?.metadata()?;
        if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_args_carry_every_option() {
        let args = DumpOptions::new("/imgs", 42)
            .leave_running(true)
            .tcp_established(true)
            .args();
        let line = args.join(" ");
        assert!(
            line.starts_with("dump -t 42 -D /imgs -o /imgs/dump.log -v4 --network-lock nftables")
        );
        assert!(line.contains("--leave-running") && line.contains("--tcp-established"));
        assert!(!line.contains("--shell-job") && !line.contains("--ext-unix-sk"));
    }

    #[test]
    fn restore_args_are_detached_with_pidfile_and_root() {
        let line = RestoreOptions::new("/imgs")
            .root("/")
            .network_lock(NetworkLock::Skip)
            .args()
            .join(" ");
        assert_eq!(
            line,
            "restore -D /imgs -o /imgs/restore.log -v4 --pidfile /imgs/restore.pid --network-lock skip \
             --restore-detached --root /"
        );
    }

    #[test]
    fn inherited_fds_become_inherit_fd_flags() {
        let line = RestoreOptions::new("/imgs")
            .inherit_fd("pipe:[4242]", 7)
            .inherit_fd("pipe:[17]", 9)
            .args()
            .join(" ");
        assert!(
            line.ends_with("--inherit-fd fd[7]:pipe:[4242] --inherit-fd fd[9]:pipe:[17]"),
            "{line}"
        );
        assert!(!RestoreOptions::new("/imgs")
            .args()
            .join(" ")
            .contains("--inherit-fd"));
    }

    /// The descriptors to keep reach the program under the same numbers, and only those.
    #[test]
    fn kept_descriptors_stay_open_in_the_child() {
        let (r, w) = std::io::pipe().expect("pipe");
        use std::os::fd::AsRawFd;
        let fd = w.as_raw_fd();
        let tmp = crate::testing::temp_dir("criu-keep");
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(&dir).expect("mkdir");
        let log = dir.join("log");
        // `sh -c` stands in for criu: it writes into the kept descriptor by number.
        let sh = Criu::with_binary("sh");
        let script = format!("echo kept > /proc/self/fd/{fd}");
        sh.run_keeping("test", &["-c".into(), script.clone()], &log, &[fd])
            .expect("the kept descriptor is open in the child");
        drop(w);
        let mut got = String::new();
        use std::io::Read;
        (&r).read_to_string(&mut got).expect("read");
        assert_eq!(got, "kept\n");
        // Without keeping it, the same number is closed in the child (close-on-exec).
        let (_r2, w2) = std::io::pipe().expect("pipe");
        let script = format!("echo lost > /proc/self/fd/{}", w2.as_raw_fd());
        assert!(sh.run("test", &["-c".into(), script], &log).is_err());
    }

    #[test]
    fn stats_dump_is_decoded() {
        // A real stats-dump written by criu 4.1.1 (runc checkpoint of an 8 MiB workload).
        let bytes: &[u8] = &[
            0x40, 0x59, 0x10, 0x55, 0x06, 0x33, 0x09, 0x57, 0x27, 0x00, 0x00, 0x00, 0x0a, 0x25,
            0x08, 0xd9, 0x32, 0x10, 0x92, 0xec, 0x10, 0x18, 0xec, 0xdb, 0x01, 0x20, 0xa7, 0xd0,
            0x01, 0x28, 0xa0, 0x10, 0x30, 0x00, 0x38, 0x97, 0x10, 0x40, 0x00, 0x48, 0x00, 0x50,
            0x08, 0x58, 0x08, 0x60, 0x00, 0x68, 0x00, 0x70, 0x00,
        ];
        let tmp = crate::testing::temp_dir("criu-stats");
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("stats-dump"), bytes).expect("write");
        let stats = DumpStats::read(&dir).expect("decoded");
        assert_eq!(stats.freezing, Duration::from_micros(0x59 | 0x32 << 7));
        assert_eq!(
            stats.frozen,
            Duration::from_micros(0x12 | 0x6c << 7 | 0x10 << 14)
        );
        assert_eq!(stats.pages_written, 0x17 | 0x10 << 7);
        assert_eq!(stats.pages_scanned, 0x20 | 0x10 << 7);
        assert!(DumpStats::read(Path::new("/nonexistent")).is_none());
    }

    #[test]
    fn known_failures_get_hints() {
        let failed = |line: &str| CriuError::Failed {
            action: "dump",
            status: std::process::Command::new("false")
                .status()
                .expect("run false"),
            elapsed: Duration::ZERO,
            errors: vec![line.to_string()],
            log_tail: vec![],
            log_file: PathBuf::from("/x/dump.log"),
        };
        let tcp = failed(
            "Error (criu/sockets.c:628): sockets: Can't get 1:16 opt: Operation not supported",
        );
        assert!(tcp.hint().is_some_and(|h| h.contains("#2718")));
        assert!(tcp.to_string().contains("hint: criu 4.1.1"));
        let lazy =
            failed("Error (criu/page-pipe.c:424): page-pipe: splice: -1: Bad file descriptor");
        assert!(lazy.hint().is_some_and(|h| h.contains("pipe-max-size")));
        let external = failed("Error (criu/sk-unix.c:1): unix: External socket is used. Consider using --ext-unix-sk option.");
        assert!(external.hint().is_some_and(|h| h.contains("try again")));
        let netns = failed("Error (criu/sk-unix.c:2): unix: Unix socket 0x1234 not found");
        assert!(netns
            .hint()
            .is_some_and(|h| h.contains("network namespace")));
        assert!(failed("Error (criu/x.c:1): something else")
            .hint()
            .is_none());
    }

    #[test]
    fn error_lines_skip_the_harmless_rlimit_one() {
        let log = "(00.04) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n\
                   (00.05) Error (criu/sockets.c:628): sockets: Can't get 1:16 opt: Operation not supported\n\
                   (00.06) Info ok\n";
        let errors = error_lines(log);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("1:16"));
    }
}
