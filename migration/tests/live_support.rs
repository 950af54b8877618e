//! What the live-migration tests share: the `dirtier` workload (examples/dirtier, built here
//! from its source with `rustc -O`), a handle that starts and reaps it, and a poller that asks it
//! for its counter every few milliseconds so a move's downtime and the counter's continuity can
//! be read off afterwards.
//!
//! Used as a module by the `live_*` test files; on its own it is an empty test target.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use brume_testnet::poller::{Answer, Poller};

/// The workload's source, shared with `brume bench migration`.
pub const DIRTIER_SRC: &str = include_str!("../../examples/dirtier/src/main.rs");

/// Whether criu can run here; prints SKIPPED and returns false when it cannot.
pub fn criu_or_skip(test: &str) -> bool {
    let ok = matches!(
        Command::new("criu").arg("--version").output(),
        Ok(o) if o.status.success()
    );
    let root = unsafe { libc::geteuid() } == 0;
    if !ok || !root {
        eprintln!("SKIPPED: {test}: needs root and criu (scripts/install-criu.sh)");
    }
    ok && root
}

/// Builds the dirtier once per test binary.
pub fn dirtier() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let src = dir.join(format!("dirtier-{}.rs", std::process::id()));
        let bin = dir.join(format!("dirtier-{}", std::process::id()));
        std::fs::write(&src, DIRTIER_SRC).expect("write dirtier source");
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
        let out = Command::new(rustc)
            .args(["--edition", "2021", "-O", "-o"])
            .arg(&bin)
            .arg(&src)
            .output()
            .expect("run rustc");
        assert!(
            out.status.success(),
            "rustc failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
    .clone()
}

/// A directory under /dev/shm (tmpfs, like the node's) or the temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
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

/// A running dirtier. A thread reaps it as soon as it exits (CRIU's final dump kills it, and a
/// zombie would hold its PID against the restore). Whatever holds its PID is killed on drop:
/// the original or the restored task.
pub struct Dirtier {
    pub pid: u32,
    pub socket: PathBuf,
    pub mib: usize,
    pub seed: u64,
    reaper: Option<JoinHandle<()>>,
    /// The original is gone for good (a post-copy ended it): its PID may belong to anyone now.
    moved_away: bool,
}

impl Dirtier {
    pub fn start(socket: &Path, mib: usize, seed: u64, dirty_mib_s: f64) -> Dirtier {
        let mut cmd = Command::new(dirtier());
        let child = Dirtier::serve(&mut cmd, socket, mib, seed, dirty_mib_s)
            .spawn()
            .expect("spawn dirtier");
        let pid = child.id();
        Dirtier::ready(child, pid, socket, mib, seed)
    }

    /// Like [`Dirtier::start`], but the dirtier is the init of its own PID namespace
    /// (`brume_testnet::pidns`), as a task must be when it is restored on the host it was dumped
    /// on while the original still exists (post-copy). `pid` is its host PID.
    pub fn start_in_pid_namespace(
        socket: &Path,
        mib: usize,
        seed: u64,
        dirty_mib_s: f64,
    ) -> Dirtier {
        let mut cmd = brume_testnet::pidns::command(dirtier());
        let (child, pid) =
            brume_testnet::pidns::spawn(Dirtier::serve(&mut cmd, socket, mib, seed, dirty_mib_s))
                .expect("spawn unshare");
        Dirtier::ready(child, pid, socket, mib, seed)
    }

    fn serve<'a>(
        cmd: &'a mut Command,
        socket: &Path,
        mib: usize,
        seed: u64,
        dirty_mib_s: f64,
    ) -> &'a mut Command {
        cmd.arg("serve")
            .arg(socket)
            .arg(mib.to_string())
            .arg(seed.to_string())
            .arg(dirty_mib_s.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
    }

    /// Reaps `child` from a thread as soon as it exits (CRIU's final dump kills the task, and a
    /// zombie would hold its PID against the restore) and waits until the socket answers.
    fn ready(
        mut child: std::process::Child,
        pid: u32,
        socket: &Path,
        mib: usize,
        seed: u64,
    ) -> Dirtier {
        let reaper = std::thread::spawn(move || {
            let _ = child.wait();
        });
        let started = Instant::now();
        while UnixStream::connect(socket).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "dirtier not ready"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Dirtier {
            pid,
            socket: socket.to_path_buf(),
            mib,
            seed,
            reaper: Some(reaper),
            moved_away: false,
        }
    }

    /// Waits (bounded) until the original process is gone and reaped, and stops killing its PID
    /// on drop: after a post-copy the task runs elsewhere under another PID, and this one may be
    /// reused.
    pub fn wait_moved_away(&mut self) {
        if let Some(r) = self.reaper.take() {
            let _ = r.join();
        }
        self.moved_away = true;
    }

    /// `SUM`: (steps, checksum) of the memory now.
    pub fn sum(&self) -> (u64, u64) {
        let line = ask(&self.socket, "SUM").expect("SUM");
        let mut it = line
            .split_whitespace()
            .map(|v| v.parse::<u64>().expect("number"));
        (it.next().expect("steps"), it.next().expect("checksum"))
    }

    /// The checksum the memory must have after `steps` dirty steps, rebuilt in a fresh process.
    pub fn expected(&self, steps: u64) -> u64 {
        let out = Command::new(dirtier())
            .args(["expect", &self.mib.to_string(), &self.seed.to_string()])
            .arg(steps.to_string())
            .output()
            .expect("run dirtier expect");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("checksum")
    }

    /// Asserts that the memory is exactly what `steps` dirty steps from the seed make.
    pub fn assert_state_consistent(&self) -> u64 {
        let (steps, sum) = self.sum();
        assert_eq!(
            sum,
            self.expected(steps),
            "the memory after {steps} steps is not what the seed and those steps make"
        );
        steps
    }
}

impl Drop for Dirtier {
    fn drop(&mut self) {
        if !self.moved_away {
            // SAFETY: kill(2) has no memory effects.
            unsafe {
                libc::kill(self.pid as i32, libc::SIGKILL);
            }
        }
        if let Some(r) = self.reaper.take() {
            let _ = r.join();
        }
    }
}

/// One request on a fresh connection (closed on return, so a dump never sees it open).
pub fn ask(socket: &Path, command: &str) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    writeln!(stream, "{command}")?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::other("closed without an answer"));
    }
    Ok(line.trim().to_string())
}

/// Asks the task at `socket` for `TICK` every `every`, recording each answer with its time and
/// the PID that gave it; never gives a request up on a process that may still answer it, so
/// the counter must go up by one per answer (`brume_testnet::poller`).
pub fn poll(socket: &Path, every: Duration) -> Poller {
    Poller::start(socket, "TICK", every, || true)
}

/// The longest silence between two answers, as (gap, answer before, answer after).
pub fn longest_gap(log: &[Answer]) -> Option<(Duration, u64, u64)> {
    log.windows(2)
        .map(|w| (w[1].at - w[0].at, w[0].value, w[1].value))
        .max_by_key(|g| g.0)
}

/// Asserts the counter went up by exactly one from each answer to the next.
pub fn assert_counter_continues(log: &[Answer]) {
    for w in log.windows(2) {
        assert_eq!(
            w[1].value,
            w[0].value + 1,
            "the counter jumped from {} to {} ({:?} apart)",
            w[0].value,
            w[1].value,
            w[1].at - w[0].at
        );
    }
}
