//! What the CRIU tests share: a tiny workload program, built from source by the test with
//! `rustc`, and a client for it.
//!
//! The workload (std only, one thread) calls `setsid` so CRIU can dump it without the test's
//! terminal or session, fills N MiB with a xorshift stream from a seed (so the test knows what
//! the memory must hold), then serves a Unix socket line protocol: `TICK` adds one to a counter
//! in memory and answers it, `SUM` answers a checksum of the whole buffer, `PID` its pid. A
//! checkpoint that keeps memory keeps both the counter and the checksum. Clients must close
//! their connection before a dump (a connection to a peer outside the tree would need
//! `--ext-unix-sk`), and reconnect after the restore, which re-creates the listening socket.
//!
//! Used as a module by the `criu_*` test files; on its own it is an empty test target.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workload's source. `checksum` and `fill` are mirrored by [`expected_checksum`].
pub const WORKLOAD_SRC: &str = r#"
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
extern "C" { fn setsid() -> i32; }
fn checksum(mem: &[u64]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &w in mem { h = (h ^ w).wrapping_mul(0x100000001b3); }
    h
}
fn main() {
    unsafe { setsid(); }
    let args: Vec<String> = std::env::args().collect();
    let sock = &args[1];
    let mib: usize = args[2].parse().expect("MiB");
    let seed: u64 = args[3].parse().expect("seed");
    let mut mem = vec![0u64; mib * 1024 * 1024 / 8];
    let mut x = seed | 1;
    for w in mem.iter_mut() { x ^= x << 13; x ^= x >> 7; x ^= x << 17; *w = x; }
    let _ = std::fs::remove_file(sock);
    let listener = UnixListener::bind(sock).expect("bind");
    let mut counter: u64 = 0;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let Ok(read_half) = conn.try_clone() else { continue };
        let mut reader = BufReader::new(read_half);
        let mut w = conn;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 { break; }
            let reply = match line.trim() {
                "TICK" => { counter += 1; counter.to_string() }
                "SUM" => checksum(&mem).to_string(),
                "PID" => std::process::id().to_string(),
                _ => "?".to_string(),
            };
            if writeln!(w, "{reply}").is_err() { break; }
        }
    }
}
"#;

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

/// Builds the workload once per test binary (optimised; `static_glibc` links it statically,
/// for `FROM scratch` images). The file name carries this process's pid, so test binaries
/// running at once do not overwrite each other's.
pub fn workload_binary(static_glibc: bool) -> PathBuf {
    static DYNAMIC: OnceLock<PathBuf> = OnceLock::new();
    static STATIC: OnceLock<PathBuf> = OnceLock::new();
    let cell = if static_glibc { &STATIC } else { &DYNAMIC };
    cell.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let src = dir.join(format!("criu-workload-{}.rs", std::process::id()));
        let bin = dir.join(format!(
            "criu-workload-{}{}",
            std::process::id(),
            if static_glibc { "-static" } else { "" }
        ));
        std::fs::write(&src, WORKLOAD_SRC).expect("write workload source");
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
        let mut cmd = Command::new(rustc);
        cmd.args(["--edition", "2021", "-O", "-o"])
            .arg(&bin)
            .arg(&src);
        if static_glibc {
            cmd.args([
                "-C",
                "target-feature=+crt-static",
                "--target",
                "x86_64-unknown-linux-gnu",
            ]);
        }
        let out = cmd.output().expect("run rustc");
        assert!(
            out.status.success(),
            "rustc failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
    .clone()
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "brume-{tag}-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
    /// Starts the workload with `mib` MiB from `seed`, listening on `socket`, and waits (up to
    /// 20 s) until it answers.
    pub fn start(socket: &Path, mib: usize, seed: u64) -> Workload {
        let child = Command::new(workload_binary(false))
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
        wait_ready(socket, Duration::from_secs(20));
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

/// Waits until a Unix socket accepts connections.
pub fn wait_ready(socket: &Path, timeout: Duration) {
    let started = Instant::now();
    loop {
        if UnixStream::connect(socket).is_ok() {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "workload at {} not ready after {timeout:?}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends one command on a fresh connection and returns the answer; the connection is closed
/// on return, so a dump right after sees no connection to the outside.
pub fn ask(socket: &Path, command: &str) -> String {
    let mut stream =
        UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    writeln!(stream, "{command}").expect("send");
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .expect("read answer");
    line.trim().to_string()
}

/// Whether this test process can run CRIU (root and a `criu` binary). Tests fail, not skip,
/// when it cannot: CI runs them as root after scripts/install-criu.sh.
pub fn require_criu() {
    let out = Command::new("criu").arg("--version").output();
    assert!(
        matches!(&out, Ok(o) if o.status.success()),
        "criu is not installed: run scripts/install-criu.sh (tests need root and CRIU >= 4)"
    );
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
