//! What the CRIU tests share: the workload (examples/dirtier/src/bin/criu-workload.rs, built
//! static by scripts/build-static.sh) and a client for it.
//!
//! The workload (std only, one thread) calls `setsid` so CRIU can dump it without the test's
//! terminal or session, fills N MiB with a xorshift stream from a seed (so the test knows what
//! the memory must hold: [`expected_checksum`] mirrors it), then serves a Unix socket line
//! protocol: `TICK` adds one to a counter in memory and answers it, `SUM` answers a checksum of
//! the whole buffer, `PID` its pid. A checkpoint that keeps memory keeps both the counter and
//! the checksum. Clients must close their connection before a dump (a connection to a peer
//! outside the tree would need `--ext-unix-sk`), and reconnect after the restore, which
//! re-creates the listening socket.
//!
//! Used as a module by the `criu_*` test files; on its own it is an empty test target.
// Each test file uses part of it (and of what it re-exports).
#![allow(dead_code, unused_imports)]

#[path = "common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub use common::{
    docker_label, run_id, static_binary, unique, wait_for, workload_command, TempDir, LIVENESS,
    PREFIX, TEST_BUDGET,
};

/// The workload binary (static; the same file runs as a process and in a `FROM scratch` image).
pub fn workload_binary() -> PathBuf {
    static_binary("criu-workload")
}

/// The checksum the workload must report for `mib` MiB filled from `seed`.
pub fn expected_checksum(mib: usize, seed: u64) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut x = seed | 1;
    for _ in 0..mib * 1024 * 1024 / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        h = (h ^ x).wrapping_mul(0x100000001b3);
    }
    h
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Sends SIGKILL to `pid` (for restored processes, which are not our children).
pub fn kill_pid(pid: u32) {
    // SAFETY: kill(2) has no memory effects; a stale pid just yields ESRCH.
    unsafe {
        kill(pid as i32, 9);
    }
}

/// Kills a pid on drop: restored workloads are reparented away from the test, so only their pid
/// is known.
pub struct KillOnDrop(pub Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            kill_pid(pid);
        }
    }
}

/// A running workload the test started; killed and reaped on drop.
pub struct Workload {
    pub child: Option<Child>,
    pub pid: u32,
    pub socket: PathBuf,
}

impl Workload {
    /// Starts the workload with `mib` MiB from `seed`, listening on `socket`, and waits until it
    /// answers.
    pub fn start(socket: &Path, mib: usize, seed: u64) -> Workload {
        let child = workload_command(workload_binary())
            .arg(socket)
            .arg(mib.to_string())
            .arg(seed.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn workload");
        let w = Workload {
            pid: child.id(),
            child: Some(child),
            socket: socket.to_path_buf(),
        };
        wait_ready(socket);
        w
    }

    /// Kills the original process and reaps it, so its pid is free.
    pub fn kill_and_reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Reaps a process CRIU killed at the end of its dump.
    pub fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// Waits (up to [`LIVENESS`]) until a Unix socket accepts connections.
pub fn wait_ready(socket: &Path) {
    wait_for(
        &format!("the workload at {} accepting", socket.display()),
        LIVENESS,
        || UnixStream::connect(socket).map(drop),
    );
}

/// Sends one command on a fresh connection and returns the answer; the connection is closed
/// on return, so a dump right after sees no connection to the outside.
pub fn ask(socket: &Path, command: &str) -> String {
    let mut stream =
        UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    stream.set_read_timeout(Some(LIVENESS)).expect("timeout");
    writeln!(stream, "{command}").expect("send");
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("{command} to {}: {e}", socket.display()));
    line.trim().to_string()
}

/// Runs `program` with `args` (no stdin) and returns what it did; panics if it cannot start.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

/// Runs `program` and returns its trimmed stdout; panics, with its output, if it fails.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Builds the `FROM scratch` image `image` of the workload in `context` (created), with a file
/// of `unique` bytes so no layer is shared with another test's image, started as
/// `/workload /w.sock <mib> <seed>`. Labelled [`docker_label`].
///
/// `--no-cache`: with the cache on, Docker 20.10's legacy builder probes it by listing every
/// image built on the same parent (for FROM scratch: every such image on the host) and loading
/// each; another test's `docker rmi` at that moment fails this build with `unable to find
/// image "sha256:..."` (CI lost a run to it). These images are unique per test, so the cache
/// never had anything to offer.
pub fn build_workload_image(context: &Path, image: &str, unique: &str, mib: usize, seed: u64) {
    std::fs::create_dir_all(context).expect("context");
    std::fs::copy(workload_binary(), context.join("workload")).expect("copy workload");
    std::fs::write(context.join("unique"), unique).expect("unique");
    std::fs::write(
        context.join("Dockerfile"),
        format!(
            "FROM scratch\nCOPY workload unique /\nENTRYPOINT [\"/workload\", \"/w.sock\", \"{mib}\", \"{seed}\"]\n"
        ),
    )
    .expect("Dockerfile");
    run_ok(
        "docker",
        &[
            "build",
            "--no-cache",
            "--label",
            &docker_label(),
            "-q",
            "-t",
            image,
            &context.display().to_string(),
        ],
    );
}

/// Removes cgroup `path` (e.g. `/brume-test-...`) from every cgroup v1 controller (and the
/// unified hierarchy). Its processes must be gone.
pub fn remove_cgroup(path: &str) {
    let rel = path.trim_start_matches('/');
    if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
        for c in controllers.flatten() {
            let _ = std::fs::remove_dir(c.path().join(rel));
        }
    }
    let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(rel));
}

/// Removes runc container `id` under runc root `root`: `runc delete -f` (which kills a running
/// container and waits for it, up to 10 s, before deleting it), then waits until `runc state`
/// no longer knows it. For Drop guards: reports a container it could not remove, never panics.
pub fn remove_runc_container(root: &Path, id: &str) {
    let root_arg = root.display().to_string();
    let gone = || {
        !run("runc", &["--root", &root_arg, "state", id])
            .status
            .success()
    };
    let deadline = std::time::Instant::now() + LIVENESS;
    while !gone() {
        if std::time::Instant::now() >= deadline {
            eprintln!("leftover: runc container {id} under {root_arg} could not be removed");
            return;
        }
        let _ = run("runc", &["--root", &root_arg, "delete", "-f", id]);
        if !gone() {
            // A retry interval, not a wait for an event: delete -f itself waits for the kill.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs `test` only when root, criu, runc and Docker are all here; records the skip otherwise
/// (a failure under `BRUME_REQUIRE`, see `brume_testnet::require`).
pub fn have_criu_runc_docker(test: &str) -> bool {
    use brume_testnet::require::{self, Need};
    require::criu(test)
        && require::program(test, Need::Runc, "runc", "--version")
        && require::docker(test)
}
