//! What the live-migration tests share: the `dirtier` workload (examples/dirtier, built static
//! by scripts/build-static.sh; tests never compile it), a handle that starts and reaps it, and
//! the shared poller (`brume_testnet::poller`, also `brume bench migration`'s) that asks it for
//! its counter every few milliseconds so the counter's continuity across a move can be checked
//! afterwards, with waits on its answers instead of sleeps.
//!
//! Used as a module by the `live_*` test files; on its own it is an empty test target.
// Each test file uses part of it (and of what it re-exports).
#![allow(dead_code, unused_imports)]

#[path = "common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub use brume_testnet::poller::{Answer, Poller};
pub use common::{static_binary, wait_for, LIVENESS, TEST_BUDGET};

/// Whether criu can run here (root and criu); records the skip otherwise, which fails the test
/// under `BRUME_REQUIRE` (`brume_testnet::require`).
pub fn have_criu(test: &str) -> bool {
    brume_testnet::require::criu(test)
}

/// The static dirtier from scripts/build-static.sh.
pub fn dirtier() -> PathBuf {
    static_binary("dirtier")
}

/// A directory `brume-test-<tag>-...` under /dev/shm (tmpfs, like the node's) or the temp
/// dir, removed on drop.
pub struct TempDir(common::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        TempDir(common::TempDir::in_shm(tag))
    }
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// A running dirtier. A thread reaps it as soon as it exits (CRIU's final dump kills it, and a
/// zombie would hold its PID against the restore) and says so on `exited`. Whatever holds its
/// PID is killed on drop: the original or the restored task.
pub struct Dirtier {
    pub pid: u32,
    pub socket: PathBuf,
    pub mib: usize,
    pub seed: u64,
    exited: Option<mpsc::Receiver<()>>,
    /// The original is gone for good (a post-copy ended it): its PID may belong to anyone now.
    moved_away: bool,
}

impl Dirtier {
    pub fn start(socket: &Path, mib: usize, seed: u64, dirty_mib_s: f64) -> Dirtier {
        let mut cmd = common::workload_command(dirtier());
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
        common::close_inherited_fds(&mut cmd);
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
        let (tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = child.wait();
            let _ = tx.send(());
        });
        let d = Dirtier {
            pid,
            socket: socket.to_path_buf(),
            mib,
            seed,
            exited: Some(exited),
            moved_away: false,
        };
        wait_for("the dirtier answering", LIVENESS, || {
            UnixStream::connect(socket).map(drop)
        });
        d
    }

    /// Waits until the original process is gone and reaped, and stops killing its PID on drop:
    /// after a post-copy the task runs elsewhere under another PID, and this one may be reused.
    pub fn wait_moved_away(&mut self) {
        if let Some(exited) = self.exited.take() {
            if let Err(mpsc::RecvTimeoutError::Timeout) = exited.recv_timeout(LIVENESS) {
                panic!(
                    "the original dirtier (pid {}) still runs {LIVENESS:?} after the move",
                    self.pid
                );
            }
        }
        self.moved_away = true;
    }

    /// Waits until the task has made more than `steps` dirty steps (it dirties by the clock, so
    /// it does, unless it stopped running) and returns the steps it reported.
    pub fn wait_dirtying_past(&self, steps: u64) -> u64 {
        wait_for("the task dirtying on", LIVENESS, || {
            let (now, _) = self.sum();
            if now > steps {
                Ok(now)
            } else {
                Err(format!("{now} steps, not past {steps}"))
            }
        })
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
        if let Some(exited) = self.exited.take() {
            // The reaper says when the killed process (or the `unshare` above it) is reaped.
            let _ = exited.recv_timeout(LIVENESS);
        }
    }
}

/// One request on a fresh connection (closed on return, so a dump never sees it open). Waits
/// for the answer as long as [`LIVENESS`]: a pre-copy round freezes the task for a while, and
/// an answer that comes after the freeze is the right answer (this used to give up after
/// 500 ms, and failed under load).
pub fn ask(socket: &Path, command: &str) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(LIVENESS))?;
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

/// Waits until the poller holds at least `n` answers; panics with the last ones seen.
pub fn wait_answers(poller: &Poller, what: &str, n: usize) {
    let (done, seen) = poller.wait_until(LIVENESS, |log| log.len() >= n);
    assert!(
        done,
        "{what}: {} answers after {LIVENESS:?}, waiting for {n}; the last: {:?}",
        seen.len(),
        seen.iter().rev().take(3).collect::<Vec<_>>()
    );
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
