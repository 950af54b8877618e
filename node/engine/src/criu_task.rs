//! What the process engine does differently for a task brume may checkpoint with CRIU
//! (`checkpoint = "criu"`), and for a task CRIU restored here.
//!
//! Such a task must be restorable on another node, so three things a plain child process gets
//! would break it. It runs as the init of its own PID namespace, in a mount namespace of its
//! own whose root is its rootfs (`confine.rs`): CRIU restores its PIDs inside a fresh
//! namespace, so they never clash with the target's, and every path it holds is one inside its
//! image, which `criu restore --root` puts back in the target's copy. Its directory is also at
//! the same absolute path on every node ([`super::taskroot`]). And its stdout and
//! stderr are one pipe drained into `task.log` by a process of the task's own (`drain`,
//! which outlives the node): a regular log file
//! could not be restored at a different size, while a pipe is handed back by `criu restore
//! --inherit-fd` under the key [`stdout_key`] read at dump time. It gets no `PR_SET_PDEATHSIG`
//! (`criu restore` would be its parent, and exits): it may outlive a node killed by SIGKILL.
//!
//! A restored task is not the engine's child, so it is watched through `/proc` (`alive`):
//! gone, a zombie, or a new process under the same PID (another start time) all mean it
//! exited. Without a reaper of ours, its exit code is unknown.

use std::path::Path;
use std::time::{Duration, Instant};

/// The children of `pid` (all its threads'), from `/proc`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// The task under the engine's child (its only child: see `confine.rs`), waiting up to
/// `bound` for the fork.
pub(crate) fn namespace_init(waiter: u32, bound: Duration) -> Option<u32> {
    let started = Instant::now();
    loop {
        if let Some(&pid) = children(waiter).first() {
            return Some(pid);
        }
        if started.elapsed() >= bound {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Field 3 (state) and 22 (start time, in clock ticks since boot) of `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// The start time of `pid`, which tells it from a later process under the same PID.
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|(_, t)| t)
}

/// Whether `pid` still runs as the process that started at `born` (not a zombie, not reused).
pub(crate) fn alive(pid: u32, born: Option<u64>) -> bool {
    match stat(pid) {
        Some(('Z' | 'X' | 'x', _)) | None => false,
        Some((_, t)) => born.is_none_or(|b| b == t),
    }
}

/// Whether `pid` handles `signal` (bit in SigCgt): a namespace init that does not is immune
/// to it, so a stop goes straight to SIGKILL.
pub(crate) fn catches(pid: u32, signal: libc::c_int) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| signal > 0 && mask & (1u64 << (signal - 1)) != 0)
}

/// Sends `signal` to `pid` (one process: a namespace init takes its namespace with it).
pub fn kill(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        if pid > 1 {
            // SAFETY: kill(2) on one pid; no memory involved.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }
}

/// SIGTERM (when the task handles it), up to `grace` for it to go, then SIGKILL; waits
/// (bounded) until it is gone.
pub(crate) async fn terminate(pid: u32, born: Option<u64>, grace: Duration) {
    if catches(pid, libc::SIGTERM) {
        kill(pid, libc::SIGTERM);
        let until = Instant::now() + grace;
        while alive(pid, born) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    if alive(pid, born) {
        kill(pid, libc::SIGKILL);
    }
    let until = Instant::now() + Duration::from_secs(2);
    while alive(pid, born) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The key CRIU gives the task's stdout (`pipe:[INODE]`), for `--inherit-fd` at restore.
pub fn stdout_key(pid: u32) -> Option<String> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/1")).ok()?;
    let key = link.to_str()?;
    key.starts_with("pipe:[").then(|| key.to_string())
}

/// Hands the task's output pipe to a drain of its own (`brume_migration::drain`), which
/// appends it to `log` for as long as the task writes, whatever becomes of the node: a reader
/// that died with the node would end the task with SIGPIPE at its next line.
pub(crate) fn drain(output: std::io::PipeReader, log: &Path) {
    if let Err(e) = brume_migration::drain::start(output, log) {
        tracing::warn!(log = %log.display(), error = %e, "cannot start the drain of a task's output");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn proc_tells_a_live_process_from_a_gone_one() {
        let me = std::process::id();
        let born = start_time(me);
        assert!(born.is_some());
        assert!(alive(me, born));
        assert!(!alive(me, born.map(|b| b + 1)), "another start time");
        assert!(!alive(u32::MAX - 1, None));
    }

    #[test]
    fn the_drain_copies_output_into_the_log() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = dir.path().join("task.log");
        std::fs::write(&log, b"").expect("log");
        let (r, mut w) = std::io::pipe().expect("pipe");
        drain(r, &log);
        w.write_all(b"hello\n").expect("write");
        drop(w);
        // A liveness bound: the drain copies as soon as it is scheduled.
        let until = Instant::now() + Duration::from_secs(60);
        while std::fs::read_to_string(&log).unwrap_or_default() != "hello\n" {
            assert!(Instant::now() < until, "the log never got the output");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
