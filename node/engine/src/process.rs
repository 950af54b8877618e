//! The process engine: brume's tasks as plain child processes, for hosts without Docker.
//!
//! Layout under the engine's root directory:
//!
//! ```text
//!  <root>/images/<16 hex>/rootfs/      the image's files (see rootfs.rs), image.json beside it
//!  <root>/tasks/<instance>/rootfs/     the task's own copy (hard links) of its image's rootfs
//!  <root>/tasks/<instance>/task.log    its stdout and stderr
//!  <root>/tasks/<instance>/restore     the state it starts from, if any (`BRUME_RESTORE_FILE`)
//! ```
//!
//! (`LaunchSpec::workdir` replaces `<root>/tasks/<instance>` when given.) A task runs the image's
//! entrypoint and command, with the program path and working directory mapped into its rootfs,
//! and an environment made of the image's ENV, then the spec's (`PORT`, `BRUME_*`). Nothing is
//! isolated (but CRIU-mode tasks, below): no chroot, namespaces or resource limits
//! (`cpu_millis`/`memory_mb` are not enforced); it is for static programs on a laptop or a
//! device with nothing installed.
//!
//! A task's log is capped (`with_log_max_bytes`, default 16 MiB): a sweep every 10 s moves its
//! end to `task.log.1` and truncates it ([`super::logcap`]); `logs` reads across both.
//!
//! Each task has a supervisor (a tokio task) that spawns the child, waits for it, and applies the
//! restart policy with a doubling back-off (100 ms to 5 s). `stop` asks the supervisor to send
//! SIGTERM to the task's process group, wait the grace period, then SIGKILL it. Children never
//! outlive the engine: each runs in its own process group with `PR_SET_PDEATHSIG` = SIGKILL (the
//! kernel kills it if the node dies, even by SIGKILL; the signal follows the spawning thread,
//! and tokio's worker threads live as long as the runtime), `kill_on_drop`, and dropping the
//! last clone of the engine SIGKILLs every task's process group.
//!
//! Tasks with `checkpoint = "criu"` are the exception ([`super::criu_task`]): started with
//! [`ProcessEngine::start_checkpointable`] at `/run/brume/tasks/<service>.<task>.<replica>`
//! ([`super::taskroot`]) as the init of their own PID namespace, in a mount namespace of their
//! own with their rootfs as root (`confine.rs`), with their output through a
//! pipe, and without the death signal (they may outlive a node killed by SIGKILL). A task CRIU
//! restored here is taken over with [`ProcessEngine::adopt`] and watched through `/proc`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::confine::Confinement;
use super::criu_task;
use super::dockerfile::join_abs;
use super::error::EngineError;
use super::logcap;
use super::ready::{ensure_port_free, tail_lines, wait_until_ready, Readiness};
use super::rootfs::{self, ImageConfig};
use super::taskroot;
use super::types::{
    ImageInput, ImageRef, LaunchSpec, RestartPolicy, TaskState, TaskStatus, TaskSummary,
    RESTORE_FILE_ENV,
};
use super::Engine;

/// How long `start` waits for a task to accept on its port before reporting it started anyway.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The file in a task's directory holding its state to start from.
const RESTORE_FILE: &str = "restore";
/// A CRIU-mode task's state file, inside its rootfs (it sees nothing outside).
const ROOTED_RESTORE_FILE: &str = ".brume-restore";
/// Log lines quoted in a start failure.
const FAILURE_LOG_LINES: usize = 20;
/// The most of a log file `logs` reads (from its end).
const MAX_LOG_READ: u64 = 1 << 20;
/// How often task logs are checked against their cap.
const LOG_SWEEP: Duration = Duration::from_secs(10);
/// Docker's default PATH, for images that set none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The process engine. Cheap to clone; the tasks die with the last clone.
#[derive(Clone)]
pub struct ProcessEngine {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    ready_timeout: Duration,
    tasks: Mutex<HashMap<String, Arc<Task>>>,
    /// Each task's log is rotated past this many bytes ([`logcap`]).
    log_max_bytes: u64,
    /// Whether the sweep that rotates logs runs (started with the first task).
    log_keeper: AtomicBool,
}

/// How a task's process came to be, which decides how it is watched and stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The engine's child, in its own process group.
    Plain,
    /// The engine's child (a waiter), whose child is the task as the init of its own PID
    /// namespace (see [`criu_task`]).
    Checkpointable,
    /// Restored here by CRIU: not a child; the pid is the namespace's init.
    Adopted,
}

/// One task instance and its supervisor.
struct Task {
    spec: LaunchSpec,
    kind: Kind,
    /// Set while the task is being checkpointed away: its exit is then not restarted.
    migrating: AtomicBool,
    dir: PathBuf,
    log: PathBuf,
    status: Mutex<Status>,
    /// `Some(grace)` asks the supervisor to stop the task.
    stop_tx: watch::Sender<Option<Duration>>,
    /// Becomes true (or closed) when the supervisor is done.
    done_rx: watch::Receiver<bool>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug, Clone, Copy)]
struct Status {
    state: TaskState,
    restarts: u32,
    /// The running child's pid, which is also its process group id.
    pid: Option<u32>,
    last_code: Option<i64>,
}

/// Everything the supervisor needs to (re)spawn the task.
#[derive(Debug, Clone)]
struct Launch {
    program: PathBuf,
    argv0: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: PathBuf,
    log: PathBuf,
    restart: RestartPolicy,
    /// A CRIU-mode task: in its own namespaces with its rootfs as root ([`Confinement`]), its
    /// output through a pipe (see [`criu_task`]). `program` is then a path inside, and `cwd`
    /// (a host path) goes unused: the task changes to its working directory inside its root.
    confine: Option<Confinement>,
}

impl Launch {
    fn criu(&self) -> bool {
        self.confine.is_some()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sends `signal` to the process group led by `pid`.
fn signal_group(pid: Option<u32>, signal: libc::c_int) {
    if let Some(pid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) {
        if pid > 1 {
            // SAFETY: kill(2) with a negative pid signals a process group; no memory involved.
            unsafe {
                libc::kill(-pid, signal);
            }
        }
    }
}

impl Task {
    /// The process CRIU dumps: the namespace init under the waiter, or the adopted one.
    fn checkpoint_pid(&self) -> Option<u32> {
        let pid = self.snapshot().pid?;
        match self.kind {
            Kind::Plain => None,
            Kind::Checkpointable => criu_task::namespace_init(pid, Duration::from_secs(2)),
            Kind::Adopted => Some(pid),
        }
    }

    /// SIGKILLs whatever runs of the task now.
    fn kill_now(&self) {
        let pid = self.snapshot().pid;
        match self.kind {
            Kind::Plain => {}
            Kind::Checkpointable => {
                if let Some(init) = pid.and_then(|p| criu_task::namespace_init(p, Duration::ZERO)) {
                    criu_task::kill(init, libc::SIGKILL);
                }
            }
            Kind::Adopted => {
                if let Some(p) = pid {
                    criu_task::kill(p, libc::SIGKILL);
                }
            }
        }
        signal_group(pid, libc::SIGKILL);
    }

    fn snapshot(&self) -> Status {
        *lock(&self.status)
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut lock(&self.status));
    }

    /// Waits (bounded) until the supervisor has finished.
    async fn wait_done(&self, bound: Duration) -> bool {
        let mut rx = self.done_rx.clone();
        let finished = tokio::time::timeout(bound, rx.wait_for(|done| *done)).await;
        finished.is_ok()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in tasks.values() {
            task.kill_now();
            if let Some(handle) = lock(&task.supervisor).take() {
                handle.abort();
            }
        }
    }
}

/// Exit code of a finished child: its status, or 128+N when killed by signal N.
fn code_of(status: std::io::Result<std::process::ExitStatus>) -> i64 {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => i64::from(code),
            (None, Some(sig)) => 128 + i64::from(sig),
            (None, None) => -1,
        },
        Err(_) => -1,
    }
}

fn spawn_child(l: &Launch) -> std::io::Result<tokio::process::Child> {
    let mut output = None;
    let mut cmd = if let Some(confine) = &l.confine {
        // stdout and stderr: one pipe, drained into the log (a restore hands a new one back).
        let (reader, writer) = std::io::pipe()?;
        let mut cmd = tokio::process::Command::new(&l.program);
        cmd.arg0(&l.argv0)
            .args(&l.args)
            .stdout(Stdio::from(writer.try_clone()?))
            .stderr(Stdio::from(writer))
            // The host side of the rootfs; the task's own working directory is set inside.
            .current_dir(confine.host_root());
        output = Some(reader);
        cmd
    } else {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&l.log)?;
        let err = log.try_clone()?;
        let mut cmd = tokio::process::Command::new(&l.program);
        cmd.arg0(&l.argv0)
            .args(&l.args)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .current_dir(&l.cwd);
        cmd
    };
    cmd.env_clear()
        .envs(&l.env)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .process_group(0);
    // SAFETY: getpid is async-signal-safe; it runs before the fork.
    let parent = unsafe { libc::getpid() };
    let confine = l.confine.clone();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (prctl, getppid, _exit, close_range, and Confinement::enter's, on strings built before
    // the fork); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The node died between fork and prctl: do not run orphaned.
            if libc::getppid() != parent {
                libc::_exit(137);
            }
            // Descriptors the node inherited without close-on-exec would reach the task, and
            // CRIU cannot dump one opened outside the node's mount namespace.
            if let Some(confine) = &confine {
                libc::close_range(
                    3,
                    libc::c_uint::MAX,
                    libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
                );
                confine.enter()?;
            }
            Ok(())
        });
    }
    // PR_SET_PDEATHSIG is not inherited across fork: it reaches the waiter, never the task
    // under it, which CRIU may restore under a parent that exits at once.
    let child = cmd.spawn()?;
    // The Command (and its copies of the pipe's write end) is gone: the pump sees the end of
    // the output when the task's own copies close.
    drop(cmd);
    if let Some(reader) = output {
        criu_task::drain(reader, &l.log);
    }
    Ok(child)
}

/// Spawns, retrying "text file busy": the image's files were just written, and a fork in
/// another thread can briefly hold a write descriptor to them.
async fn spawn_retrying(l: &Launch) -> std::io::Result<tokio::process::Child> {
    let mut tries = 0;
    loop {
        match spawn_child(l) {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 20 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            other => return other,
        }
    }
}

/// Waits for a stop request and returns its grace period.
async fn stop_requested(rx: &mut watch::Receiver<Option<Duration>>) -> Duration {
    match rx.wait_for(|g| g.is_some()).await {
        Ok(grace) => grace.unwrap_or(Duration::ZERO),
        Err(_) => Duration::ZERO,
    }
}

fn note_in_log(log: &Path, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(f, "brume: {line}");
    }
}

/// Runs the task until it exits for good or is stopped, restarting it by its policy.
async fn supervise(
    task: Arc<Task>,
    launch: Launch,
    mut stop_rx: watch::Receiver<Option<Duration>>,
    done_tx: watch::Sender<bool>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let mut child = match spawn_retrying(&launch).await {
            Ok(child) => child,
            Err(e) => {
                note_in_log(
                    &launch.log,
                    &format!("cannot run {}: {e}", launch.program.display()),
                );
                task.update(|s| {
                    s.state = TaskState::Exited { code: 127 };
                    s.last_code = Some(127);
                    s.pid = None;
                });
                break;
            }
        };
        let pid = child.id();
        task.update(|s| {
            s.state = TaskState::Running;
            s.pid = pid;
        });
        let stop = tokio::select! {
            status = child.wait() => Err(code_of(status)),
            grace = stop_requested(&mut stop_rx) => Ok(grace),
        };
        let code = match stop {
            Ok(grace) => {
                if launch.criu() {
                    // The task is the namespace's init, out of the waiter's group.
                    if let Some(init) =
                        pid.and_then(|p| criu_task::namespace_init(p, Duration::ZERO))
                    {
                        criu_task::terminate(init, None, grace).await;
                    }
                }
                signal_group(pid, libc::SIGTERM);
                let code = match tokio::time::timeout(grace, child.wait()).await {
                    Ok(status) => code_of(status),
                    Err(_) => {
                        signal_group(pid, libc::SIGKILL);
                        code_of(child.wait().await)
                    }
                };
                signal_group(pid, libc::SIGKILL);
                task.update(|s| {
                    s.state = TaskState::Exited { code };
                    s.last_code = Some(code);
                    s.pid = None;
                });
                break;
            }
            Err(code) => code,
        };
        // Whatever the task left in its group goes with it.
        signal_group(pid, libc::SIGKILL);
        let restarts = task.snapshot().restarts;
        // A task checkpointed away (the final dump ends it) is not brought back here.
        let again = !task.migrating.load(Ordering::SeqCst)
            && matches!(launch.restart,
                RestartPolicy::OnFailure { max_restarts } if code != 0 && restarts < max_restarts);
        if !again {
            task.update(|s| {
                s.state = TaskState::Exited { code };
                s.last_code = Some(code);
                s.pid = None;
            });
            break;
        }
        tracing::info!(task = %task.spec.name, code, restarts = restarts + 1, "task exited; restarting it");
        task.update(|s| {
            s.state = TaskState::Restarting;
            s.restarts += 1;
            s.last_code = Some(code);
            s.pid = None;
        });
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop_requested(&mut stop_rx) => {
                task.update(|s| s.state = TaskState::Exited { code });
                break;
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    let _ = done_tx.send(true);
}

/// Watches a task CRIU restored here (not a child: polled through `/proc`) until it exits or
/// is stopped.
async fn watch_adopted(
    task: Arc<Task>,
    pid: u32,
    mut stop_rx: watch::Receiver<Option<Duration>>,
    done_tx: watch::Sender<bool>,
) {
    let born = criu_task::start_time(pid);
    task.update(|s| {
        s.state = TaskState::Running;
        s.pid = Some(pid);
    });
    let code = loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if !criu_task::alive(pid, born) {
                    // Not our child: its status is not ours to read.
                    note_in_log(&task.log, "the restored task exited (status unknown)");
                    break -1;
                }
            }
            grace = stop_requested(&mut stop_rx) => {
                criu_task::terminate(pid, born, grace).await;
                break 128 + i64::from(libc::SIGTERM);
            }
        }
    };
    task.update(|s| {
        s.state = TaskState::Exited { code };
        s.last_code = Some(code);
        s.pid = None;
    });
    let _ = done_tx.send(true);
}

/// Reads at most the last [`MAX_LOG_READ`] bytes of a task's output (across a rotation).
fn read_log_tail(path: &Path) -> std::io::Result<String> {
    logcap::read_tail(path, MAX_LOG_READ)
}

/// Rotates each log over `cap`; returns how many were.
fn rotate_all(paths: &[PathBuf], cap: u64) -> usize {
    let mut rotated = 0;
    for log in paths {
        match logcap::rotate_if_over(log, cap) {
            Ok(true) => rotated += 1,
            Ok(false) => {}
            Err(e) => tracing::warn!(log = %log.display(), error = %e, "cannot rotate a task log"),
        }
    }
    rotated
}

/// The task's state to start from, in `dir/file` (readable by the node's user only, as the task
/// runs as that user): `<task dir>/restore`, or for a CRIU-mode task `.brume-restore` in its
/// rootfs; the file [`RESTORE_FILE_ENV`] names.
fn write_restore(dir: &Path, file: &str, state: &str) -> Result<PathBuf, EngineError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(file);
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(state.as_bytes()))
        .map_err(|e| EngineError::io("write the state to start from into", &path, e))?;
    Ok(path)
}

/// Finds the program of `argv0` inside `rootfs` the way the kernel and Docker would inside the
/// image: absolute, relative to the working directory, or along PATH.
fn resolve_program(rootfs: &Path, workdir: &str, argv0: &str, path_var: &str) -> Option<PathBuf> {
    let in_rootfs = |abs: &str| rootfs.join(abs.trim_start_matches('/'));
    if argv0.contains('/') {
        let p = in_rootfs(&join_abs(workdir, argv0));
        return p.is_file().then_some(p);
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| in_rootfs(&join_abs(d, argv0)))
        .find(|p| p.is_file())
}

impl ProcessEngine {
    /// An engine keeping its images and task directories under `root` (created if needed).
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, EngineError> {
        let root = root.into();
        for dir in [root.join("images"), root.join("tasks")] {
            std::fs::create_dir_all(&dir).map_err(|e| EngineError::io("create", &dir, e))?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                ready_timeout: DEFAULT_READY_TIMEOUT,
                tasks: Mutex::default(),
                log_max_bytes: logcap::DEFAULT_LOG_MAX_BYTES,
                log_keeper: AtomicBool::new(false),
            }),
        })
    }

    /// How long `start` waits for the task to accept on its port. Call before cloning.
    pub fn with_ready_timeout(self, bound: Duration) -> Self {
        match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                inner.ready_timeout = bound;
                Self {
                    inner: Arc::new(inner),
                }
            }
            Err(inner) => Self { inner },
        }
    }

    /// Caps each task's log at `bytes` (with one older file beside it, see [`logcap`]); only
    /// before the first task starts.
    pub fn with_log_max_bytes(self, bytes: u64) -> Self {
        match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                inner.log_max_bytes = bytes.max(1);
                Self {
                    inner: Arc::new(inner),
                }
            }
            Err(inner) => Self { inner },
        }
    }

    /// Rotates every task log over the cap now; returns how many were rotated. The engine
    /// does this on its own every [`LOG_SWEEP`].
    pub fn rotate_logs(&self) -> usize {
        rotate_all(&self.log_paths(), self.inner.log_max_bytes)
    }

    fn log_paths(&self) -> Vec<PathBuf> {
        lock(&self.inner.tasks)
            .values()
            .map(|t| t.log.clone())
            .collect()
    }

    /// Starts the periodic log sweep, once, on the current runtime. It holds the engine only
    /// weakly, and ends with it.
    fn keep_logs(&self) {
        if self.inner.log_keeper.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.inner.log_keeper.store(false, Ordering::SeqCst);
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(LOG_SWEEP).await;
                let (paths, cap) = match weak.upgrade() {
                    Some(inner) => {
                        let paths: Vec<PathBuf> =
                            lock(&inner.tasks).values().map(|t| t.log.clone()).collect();
                        (paths, inner.log_max_bytes)
                    }
                    None => break,
                };
                let _ = tokio::task::spawn_blocking(move || rotate_all(&paths, cap)).await;
            }
        });
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    fn images(&self) -> PathBuf {
        self.inner.root.join("images")
    }

    /// Claims `name` for `task`, unless a task of that name exists.
    fn register(&self, name: &str, task: &Arc<Task>) -> Result<(), EngineError> {
        let mut tasks = lock(&self.inner.tasks);
        if tasks.contains_key(name) {
            return Err(EngineError::AlreadyExists {
                name: name.to_string(),
            });
        }
        tasks.insert(name.to_string(), Arc::clone(task));
        drop(tasks);
        self.keep_logs();
        Ok(())
    }

    fn task(&self, name: &str) -> Option<Arc<Task>> {
        lock(&self.inner.tasks).get(name).cloned()
    }

    /// Builds everything the supervisor needs: the task's rootfs copy, program, env, cwd.
    /// `rooted`: a CRIU-mode task, which runs with the rootfs as its root ([`Confinement`]),
    /// so its program, working directory and state file are given as paths inside it.
    async fn stage(
        &self,
        spec: &LaunchSpec,
        dir: &Path,
        rooted: bool,
    ) -> Result<Launch, EngineError> {
        let start_failed = |reason: String| EngineError::StartFailed {
            name: spec.name.clone(),
            reason,
            last_logs: String::new(),
        };
        let (image_dir, config): (PathBuf, ImageConfig) =
            rootfs::load_config(&self.images(), &spec.image)?;
        let argv = config.argv();
        let Some(argv0) = argv.first().cloned() else {
            return Err(start_failed(format!(
                "the image {} has neither ENTRYPOINT nor CMD, so there is nothing to run",
                spec.image
            )));
        };
        let rootfs = dir.join("rootfs");
        let image_rootfs = image_dir.join("rootfs");
        let (rootfs_c, dir_c) = (rootfs.clone(), dir.to_path_buf());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir_c)?;
            if rootfs_c.exists() {
                std::fs::remove_dir_all(&rootfs_c)?;
            }
            rootfs::clone_tree(&image_rootfs, &rootfs_c)
        })
        .await
        .map_err(|e| EngineError::io("copy the image into", &rootfs, std::io::Error::other(e)))?
        .map_err(|e| EngineError::io("copy the image into", &rootfs, e))?;

        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("PATH".into(), DEFAULT_PATH.into());
        env.extend(config.env.iter().cloned());
        env.extend(spec.task_env());
        match &spec.restore {
            Some(state) if rooted => {
                write_restore(&rootfs, ROOTED_RESTORE_FILE, state)?;
                env.insert(RESTORE_FILE_ENV.into(), format!("/{ROOTED_RESTORE_FILE}"));
            }
            Some(state) => {
                let file = write_restore(dir, RESTORE_FILE, state)?;
                env.insert(RESTORE_FILE_ENV.into(), file.display().to_string());
            }
            // A state left by an earlier task of this name is not this one's.
            None => {
                let _ = std::fs::remove_file(dir.join(RESTORE_FILE));
            }
        }
        let path_var = env.get("PATH").cloned().unwrap_or_default();
        let program =
            resolve_program(&rootfs, &config.workdir, &argv0, &path_var).ok_or_else(|| {
                start_failed(format!(
                    "its entrypoint {argv0} is not in the image {} (workdir {})",
                    spec.image, config.workdir
                ))
            })?;
        let cwd = rootfs.join(config.workdir.trim_start_matches('/'));
        std::fs::create_dir_all(&cwd).map_err(|e| EngineError::io("create", &cwd, e))?;
        let log = dir.join("task.log");
        std::fs::write(&log, b"").map_err(|e| EngineError::io("create", &log, e))?;
        let (program, confine) = if rooted {
            // The mountpoints the task's namespace has: made here, not only by the task, since
            // a CRIU restore into a copy laid out for it needs them in place.
            for d in Confinement::MOUNTPOINTS {
                let p = rootfs.join(d);
                std::fs::create_dir_all(&p).map_err(|e| EngineError::io("create", &p, e))?;
            }
            let inside = program
                .strip_prefix(&rootfs)
                .map(|p| Path::new("/").join(p))
                .map_err(|_| {
                    start_failed(format!("{} is outside its rootfs", program.display()))
                })?;
            let confine = Confinement::new(&rootfs, &join_abs("/", &config.workdir))
                .map_err(|e| start_failed(format!("its paths: {e}")))?;
            (inside, Some(confine))
        } else {
            (program, None)
        };
        Ok(Launch {
            program,
            argv0,
            args: argv[1..].to_vec(),
            env,
            cwd,
            log,
            restart: spec.restart,
            confine,
        })
    }

    /// Kills the task, waits for its supervisor, forgets it and deletes its files.
    async fn discard(&self, name: &str) {
        let task = lock(&self.inner.tasks).remove(name);
        let Some(task) = task else { return };
        task.kill_now();
        task.stop_tx.send_replace(Some(Duration::ZERO));
        if !task.wait_done(Duration::from_secs(5)).await {
            tracing::warn!(task = %name, "the supervisor did not finish within 5 s; aborting it");
        }
        if let Some(handle) = lock(&task.supervisor).take() {
            handle.abort();
        }
        let dir = task.dir.clone();
        let removed = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(dir.join("rootfs"));
            let _ = std::fs::remove_file(dir.join("task.log"));
            let _ = std::fs::remove_file(dir.join(RESTORE_FILE));
            // Only if nothing else is in it: a caller-given workdir may hold more.
            let _ = std::fs::remove_dir(&dir);
        })
        .await;
        if removed.is_err() {
            tracing::warn!(task = %name, "could not delete the task's files");
        }
    }

    /// Starts a task of `kind` (plain or checkpointable) and waits until it accepts.
    async fn start_as(&self, spec: &LaunchSpec, kind: Kind) -> Result<(), EngineError> {
        spec.validate()?;
        if spec.cpu_millis > 0 || spec.memory_mb > 0 {
            tracing::debug!(task = %spec.name, "the process engine does not enforce CPU or memory limits");
        }
        let dir = match kind {
            Kind::Plain => spec
                .workdir
                .clone()
                .unwrap_or_else(|| self.inner.root.join("tasks").join(&spec.name)),
            _ => taskroot::dir_for(&spec.service, &spec.task, spec.replica),
        };
        let (stop_tx, stop_rx) = watch::channel(None);
        let (done_tx, done_rx) = watch::channel(false);
        let task = Arc::new(Task {
            spec: spec.clone(),
            kind,
            migrating: AtomicBool::new(false),
            log: dir.join("task.log"),
            dir: dir.clone(),
            status: Mutex::new(Status {
                state: TaskState::Created,
                restarts: 0,
                pid: None,
                last_code: None,
            }),
            stop_tx,
            done_rx,
            supervisor: Mutex::new(None),
        });
        self.register(&spec.name, &task)?;
        // From here on the name is taken: any failure discards the task and its files.
        let launch = match ensure_port_free(spec.port) {
            Ok(()) => self.stage(spec, &dir, kind == Kind::Checkpointable).await,
            Err(e) => Err(e),
        };
        let launch = match launch {
            Ok(l) => l,
            Err(e) => {
                // No supervisor will run: nothing to wait for.
                drop(done_tx);
                self.discard(&spec.name).await;
                return Err(e);
            }
        };
        let handle = tokio::spawn(supervise(Arc::clone(&task), launch, stop_rx, done_tx));
        *lock(&task.supervisor) = Some(handle);
        let readiness = wait_until_ready(spec.port, self.inner.ready_timeout, || {
            let s = task.snapshot();
            let exited = match s.state {
                TaskState::Exited { code } => Some(code),
                TaskState::Restarting => Some(s.last_code.unwrap_or(-1)),
                _ if s.restarts > 0 => Some(s.last_code.unwrap_or(-1)),
                _ => None,
            };
            std::future::ready(exited)
        })
        .await;
        match readiness {
            Readiness::Accepting => Ok(()),
            Readiness::TimedOut => {
                tracing::warn!(
                    task = %spec.name, port = spec.port,
                    "task runs but did not accept on its port within {:?}; reporting it started",
                    self.inner.ready_timeout
                );
                Ok(())
            }
            Readiness::Exited(code) => {
                let last_logs = read_log_tail(&task.log)
                    .map(|t| tail_lines(&t, FAILURE_LOG_LINES))
                    .unwrap_or_default();
                self.discard(&spec.name).await;
                Err(EngineError::StartFailed {
                    name: spec.name.clone(),
                    reason: format!(
                        "it exited with code {code} before accepting connections on port {}",
                        spec.port
                    ),
                    last_logs,
                })
            }
        }
    }

    /// Starts a task that CRIU can move (`checkpoint = "criu"`): at its fixed path, as the init
    /// of its own PID namespace, its output through a pipe (see [`criu_task`]). Needs the fixed
    /// task directory ([`taskroot::available`]).
    pub async fn start_checkpointable(&self, spec: &LaunchSpec) -> Result<(), EngineError> {
        taskroot::available().map_err(|why| EngineError::BadSpec {
            name: spec.name.clone(),
            why,
        })?;
        self.start_as(spec, Kind::Checkpointable).await
    }

    /// Lays a checkpointable task's files out at its fixed path without starting it: what a
    /// CRIU restore of it here needs (its executable and working directory by path).
    pub async fn lay_out(&self, spec: &LaunchSpec) -> Result<(), EngineError> {
        spec.validate()?;
        taskroot::available().map_err(|why| EngineError::BadSpec {
            name: spec.name.clone(),
            why,
        })?;
        if self.task(&spec.name).is_some() {
            return Err(EngineError::AlreadyExists {
                name: spec.name.clone(),
            });
        }
        let dir = taskroot::dir_for(&spec.service, &spec.task, spec.replica);
        self.stage(spec, &dir, true).await.map(|_| ())
    }

    /// Where a CRIU-mode task's rootfs is on this node: its root, which `criu restore --root`
    /// needs (the task ran in a mount namespace of its own with it as `/`).
    pub fn rootfs_of(spec: &LaunchSpec) -> PathBuf {
        taskroot::dir_for(&spec.service, &spec.task, spec.replica).join("rootfs")
    }

    /// Deletes what [`ProcessEngine::lay_out`] made, unless a task of that name runs.
    pub async fn drop_layout(&self, spec: &LaunchSpec) {
        if self.task(&spec.name).is_some() {
            return;
        }
        let dir = taskroot::dir_for(&spec.service, &spec.task, spec.replica);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
    }

    /// Takes `pid`, a task CRIU restored from `spec`'s files (laid out at its fixed path), as
    /// the task `spec.name`, with its output drained from `output` (`None`: a drain already
    /// reads it, as after a restart of the node). A task of that name that was there (its
    /// process ended by the dump) is replaced; its files stay.
    pub async fn adopt(
        &self,
        spec: &LaunchSpec,
        pid: u32,
        output: Option<std::io::PipeReader>,
    ) -> Result<(), EngineError> {
        let dir = taskroot::dir_for(&spec.service, &spec.task, spec.replica);
        let old = lock(&self.inner.tasks).remove(&spec.name);
        if let Some(old) = old {
            old.stop_tx.send_replace(Some(Duration::ZERO));
            if !old.wait_done(Duration::from_secs(5)).await {
                tracing::warn!(task = %spec.name, "the old supervisor did not finish; aborting it");
            }
            if let Some(handle) = lock(&old.supervisor).take() {
                handle.abort();
            }
        }
        let (stop_tx, stop_rx) = watch::channel(None);
        let (done_tx, done_rx) = watch::channel(false);
        let task = Arc::new(Task {
            spec: spec.clone(),
            kind: Kind::Adopted,
            migrating: AtomicBool::new(false),
            log: dir.join("task.log"),
            dir,
            status: Mutex::new(Status {
                state: TaskState::Running,
                restarts: 0,
                pid: Some(pid),
                last_code: None,
            }),
            stop_tx,
            done_rx,
            supervisor: Mutex::new(None),
        });
        self.register(&spec.name, &task)?;
        note_in_log(&task.log, &format!("restored by CRIU as pid {pid}"));
        match output {
            Some(output) => criu_task::drain(output, &task.log),
            None => note_in_log(&task.log, "its output is still drained into this log"),
        }
        let handle = tokio::spawn(watch_adopted(Arc::clone(&task), pid, stop_rx, done_tx));
        *lock(&task.supervisor) = Some(handle);
        Ok(())
    }

    /// How task `name` was started.
    pub fn spec_of(&self, name: &str) -> Option<LaunchSpec> {
        self.task(name).map(|t| t.spec.clone())
    }

    /// The pid CRIU must dump to move task `name` (the init of its PID namespace).
    pub fn checkpoint_pid(&self, name: &str) -> Result<u32, EngineError> {
        let task = self.task(name).ok_or_else(|| EngineError::NotFound {
            name: name.to_string(),
        })?;
        if task.kind == Kind::Plain {
            return Err(EngineError::BadSpec {
                name: name.to_string(),
                why: "it was not started checkpointable (at the fixed task path, in a PID \
                      namespace of its own)"
                    .to_string(),
            });
        }
        task.checkpoint_pid().ok_or_else(|| EngineError::BadSpec {
            name: name.to_string(),
            why: "it does not run".to_string(),
        })
    }

    /// Marks task `name` as being checkpointed away: when the final dump ends it, it is not
    /// restarted. Cleared when the move gave up.
    pub fn set_migrating(&self, name: &str, yes: bool) {
        if let Some(task) = self.task(name) {
            task.migrating.store(yes, Ordering::SeqCst);
        }
    }
}

impl Engine for ProcessEngine {
    fn kind(&self) -> &'static str {
        "process"
    }

    async fn prepare(&self, input: &ImageInput) -> Result<ImageRef, EngineError> {
        let image = input.image_ref()?;
        let (images, input_c, image_c) = (self.images(), input.clone(), image.clone());
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || rootfs::prepare(&images, &input_c, &image_c))
            .await
            .map_err(|e| EngineError::io("prepare", &input.tar, std::io::Error::other(e)))??;
        tracing::debug!(%image, elapsed = ?started.elapsed(), "image ready");
        Ok(image)
    }

    async fn start(&self, spec: &LaunchSpec) -> Result<(), EngineError> {
        self.start_as(spec, Kind::Plain).await
    }

    async fn state(&self, name: &str) -> Result<TaskStatus, EngineError> {
        Ok(match self.task(name) {
            Some(task) => {
                let s = task.snapshot();
                TaskStatus {
                    state: s.state,
                    restarts: s.restarts,
                    pid: s.pid,
                }
            }
            None => TaskStatus::MISSING,
        })
    }

    async fn logs(&self, name: &str, tail_lines_n: usize) -> Result<String, EngineError> {
        let task = self.task(name).ok_or_else(|| EngineError::NotFound {
            name: name.to_string(),
        })?;
        let log = task.log.clone();
        let text = tokio::task::spawn_blocking(move || read_log_tail(&log))
            .await
            .map_err(|e| EngineError::io("read", &task.log, std::io::Error::other(e)))?;
        match text {
            Ok(text) => Ok(tail_lines(&text, tail_lines_n)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(EngineError::io("read", &task.log, e)),
        }
    }

    async fn stop(&self, name: &str, grace: Duration) -> Result<(), EngineError> {
        let task = self.task(name).ok_or_else(|| EngineError::NotFound {
            name: name.to_string(),
        })?;
        task.stop_tx.send_replace(Some(grace));
        let bound = grace + Duration::from_secs(5);
        if !task.wait_done(bound).await {
            return Err(EngineError::Timeout {
                what: format!("stopping task {name}"),
                secs: bound.as_secs(),
            });
        }
        Ok(())
    }

    async fn remove(&self, name: &str) -> Result<(), EngineError> {
        self.discard(name).await;
        Ok(())
    }

    async fn list(&self) -> Result<Vec<TaskSummary>, EngineError> {
        let tasks: Vec<Arc<Task>> = lock(&self.inner.tasks).values().cloned().collect();
        let mut out: Vec<TaskSummary> = tasks
            .iter()
            .map(|t| TaskSummary {
                name: t.spec.name.clone(),
                service: t.spec.service.clone(),
                task: t.spec.task.clone(),
                replica: t.spec.replica,
                epoch: t.spec.epoch,
                port: t.spec.port,
                state: t.snapshot().state,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}
