//! What a node can read about a task from `/proc` before it checkpoints it: the features of
//! [`super::Features`] that do not come from the dirty-page tracker, summed over the task's
//! processes, and the machine's load.
//!
//! Why here: the trace generator (`brume trace checkpoints`) and the node read them the same
//! way, so a model learned from the shipped trace and one learned from a node's own dumps see
//! the same numbers.

use std::path::Path;

use super::load::{self, MachineLoad};

/// One look at a process tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Look {
    pub rss_bytes: u64,
    pub processes: u64,
    pub threads: u64,
    pub open_files: u64,
    pub sockets: u64,
    pub mappings: u64,
}

/// `VmRSS` (bytes) and `Threads` from a `/proc/PID/status` text.
pub fn status_fields(status: &str) -> (u64, u64) {
    let mut rss = 0;
    let mut threads = 0;
    for line in status.lines() {
        let mut it = line.split_whitespace();
        match it.next() {
            Some("VmRSS:") => {
                rss = it.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024
            }
            Some("Threads:") => threads = it.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            _ => {}
        }
    }
    (rss, threads)
}

/// Looks at `pids` (a process that ended meanwhile counts for nothing).
pub fn look(pids: &[i32]) -> Look {
    let mut l = Look::default();
    for &pid in pids {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let (rss, threads) = status_fields(&status);
        l.processes += 1;
        l.rss_bytes += rss;
        l.threads += threads;
        if let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) {
            l.mappings += maps.lines().count() as u64;
        }
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                l.open_files += 1;
                if is_socket(&fd.path()) {
                    l.sockets += 1;
                }
            }
        }
    }
    l
}

/// `root` and its descendants, looked at (empty when `root` is gone).
pub fn look_tree(root: i32) -> Look {
    look(&crate::track::task::descendants(root).unwrap_or_default())
}

/// Seconds since process `pid` started (its start time in `/proc/PID/stat` against
/// `/proc/uptime`), `None` when unreadable.
pub fn age_s(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    parse_age(&stat, &uptime, ticks as f64)
}

/// The age in seconds from a `/proc/PID/stat` text (field 22: start time in clock ticks after
/// boot), a `/proc/uptime` text and the clock ticks per second.
pub fn parse_age(stat: &str, uptime: &str, ticks_per_s: f64) -> Option<f64> {
    // The command name may hold spaces and parentheses: the fields after it follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let start: f64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let up: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    (ticks_per_s > 0.0).then(|| (up - start / ticks_per_s).max(0.0))
}

/// The `(busy, total)` CPU jiffies now, from /proc/stat (`None` if unreadable).
pub fn cpu_jiffies() -> Option<(u64, u64)> {
    load::parse_cpu_jiffies(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The machine's load now, with the busy share since `busy_since` (a [`cpu_jiffies`] sample):
/// what a node reads right before it dumps. Each field is `None` when its file is unreadable.
pub fn machine_load(busy_since: Option<(u64, u64)>) -> MachineLoad {
    let stat = std::fs::read_to_string("/proc/stat").ok();
    let now = stat.as_deref().and_then(load::parse_cpu_jiffies);
    MachineLoad {
        load1: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|t| load::parse_loadavg(&t)),
        procs_running: stat.as_deref().and_then(load::parse_procs_running),
        cpus: std::thread::available_parallelism()
            .ok()
            .and_then(|n| u32::try_from(n.get()).ok()),
        cpu_busy: busy_since
            .zip(now)
            .and_then(|(a, b)| load::busy_share(a, b)),
        cpu_pressure: std::fs::read_to_string("/proc/pressure/cpu")
            .ok()
            .and_then(|t| load::parse_cpu_pressure(&t)),
    }
}

fn is_socket(fd: &Path) -> bool {
    std::fs::read_link(fd).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_gives_rss_and_threads() {
        let status = "Name:\tx\nThreads:\t3\nVmRSS:\t   2048 kB\nVmSwap:\t0 kB\n";
        assert_eq!(status_fields(status), (2048 * 1024, 3));
        assert_eq!(status_fields("garbage"), (0, 0));
    }

    #[test]
    fn this_process_is_seen() {
        let me = std::process::id() as i32;
        let l = look(&[me]);
        assert_eq!(l.processes, 1);
        assert!(l.rss_bytes > 0 && l.threads >= 1 && l.open_files >= 1 && l.mappings > 0);
        assert_eq!(look(&[]), Look::default());
    }

    #[test]
    fn the_age_is_read_from_the_start_time() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 1500 1000 \
                    100 18446744073709551615";
        assert_eq!(parse_age(stat, "30.50 100.00\n", 100.0), Some(15.5));
        assert_eq!(parse_age("garbage", "30.5 1", 100.0), None);
        let me = age_s(std::process::id() as i32).expect("this process's age");
        assert!(me >= 0.0 && me.is_finite(), "{me}");
    }

    #[test]
    fn the_machine_load_is_read() {
        let l = machine_load(cpu_jiffies());
        assert!(l.load1.is_some() && l.cpus.is_some_and(|c| c >= 1));
        assert!(l.procs_running.is_some_and(|r| r >= 1));
    }
}
