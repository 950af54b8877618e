//! What every real-system test of this crate shares: the workload binaries scripts/build-static.sh
//! builds (tests never compile anything), temp dirs removed even when a test panics, the names
//! and label of what a test leaves in Docker, runc and cgroups, and a bounded wait on an event.
//!
//! Loaded by criu_support.rs and live_support.rs (`#[path = "common/mod.rs"]`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where scripts/build-static.sh puts the static workloads, relative to the workspace root.
const STATIC_DIR: &str = "target/static/x86_64-unknown-linux-gnu/release";

/// The static binary `name` built by scripts/build-static.sh (`dirtier`, `criu-workload`,
/// `brume-relay`). Static glibc, so one build serves as a plain process, under CRIU and as the
/// only file of a `FROM scratch` image. Panics when it is missing: scripts/test.sh builds every
/// workload before any test runs, and a test must not build one itself (under cargo-nextest
/// each test is its own process, so it would build once per test, competing with the others).
pub fn static_binary(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(STATIC_DIR)
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `bash scripts/build-static.sh` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A command for a process CRIU will dump: it starts with no descriptor beyond stdin, stdout and
/// stderr. Whatever runs the tests (a shell holding a lock, a CI agent's pipes) may leave
/// descriptors open without close-on-exec; a workload would inherit them, and CRIU refuses to
/// dump a task holding, say, another program's file lock ("Some file locks are hold by dumping
/// tasks"). The node's process engine does the same for its tasks.
pub fn workload_command(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    close_inherited_fds(&mut cmd);
    cmd
}

/// Makes `cmd`'s child close every descriptor above stderr before it runs (see
/// [`workload_command`]).
pub fn close_inherited_fds(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: close_range is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::close_range(
                3,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
            );
            Ok(())
        });
    }
}

/// Every name a test gives to something outside its process (Docker containers and images,
/// runc containers, cgroups, temp dirs) starts with this, so scripts/sweep-test-leftovers.sh
/// can find what a killed run left behind.
pub const PREFIX: &str = "brume-test";

/// The run these tests belong to: `BRUME_TEST_RUN` (scripts/test.sh sets it), else `local`.
pub fn run_id() -> String {
    std::env::var("BRUME_TEST_RUN")
        .ok()
        .filter(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric()))
        .unwrap_or_else(|| "local".to_string())
}

/// The Docker label every container and image a test makes carries (`docker build --label`,
/// `docker run --label`): `brume.test=<run>`.
pub fn docker_label() -> String {
    format!("brume.test={}", run_id())
}

/// A unique suffix for this test's names: the process id and 32 random bits.
pub fn unique() -> String {
    format!("{}-{:08x}", std::process::id(), rand::random::<u32>())
}

/// A directory `brume-test-<tag>-<random>` (tempfile's), removed on drop, a panic too.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    /// Under the system temp dir.
    pub fn new(tag: &str) -> TempDir {
        TempDir::under(&std::env::temp_dir(), tag)
    }

    /// Under /dev/shm (tmpfs, like a node's work dir) when there is one, else the temp dir.
    pub fn in_shm(tag: &str) -> TempDir {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            TempDir::under(shm, tag)
        } else {
            TempDir::new(tag)
        }
    }

    fn under(base: &Path, tag: &str) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}-{tag}-"))
            .tempdir_in(base)
            .unwrap_or_else(|e| panic!("create a temp dir in {}: {e}", base.display()));
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// How long a test waits for something that must happen (a process answering, a file
/// appearing, a process leaving): long enough for a loaded two-core machine, short enough that
/// a hang fails with the last state seen rather than at the runner's kill.
pub const LIVENESS: Duration = Duration::from_secs(60);

/// Calls `probe` until it returns `Ok`, then returns that value; panics after `timeout` with
/// `what` and the last `Err` the probe gave (the state last seen). The probe runs every 5 ms:
/// it reads state (a socket, /proc, a file), it is not a sleep standing in for an event.
pub fn wait_for<T, E: std::fmt::Display>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, E>,
) -> T {
    let started = Instant::now();
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) => {
                if started.elapsed() >= timeout {
                    panic!("{what}: not after {timeout:?}; last seen: {last}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The downtime budget the live tests give the planner. What they test is the move (counter and
/// memory exact, failures leaving the task running), not the budget, which `brume bench
/// migration` measures; so it is far above any freeze a loaded machine makes, and the planner
/// never aborts a test's move because a dump ran slowly.
pub const TEST_BUDGET: Duration = Duration::from_secs(120);
