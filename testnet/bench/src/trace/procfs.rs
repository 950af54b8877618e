//! What a node can read about a task from `/proc` before it checkpoints it: the trace's
//! features that do not come from the dirty-page tracker, summed over the task's processes.

use std::path::Path;

use brume_migration::predictor::load::{self, MachineLoad};

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

/// How many pages of the `[start, end)` runs of process `pid` are resident, from
/// `/proc/PID/pagemap` (bit 63 of each page's entry).
///
/// Why not the tracker's own count for runs it reports whole (mappings new to it): those come
/// from `PAGEMAP_SCAN` asking for present or swapped pages, and the write-protect markers that
/// arming leaves on a mapping's unpopulated entries are swap entries to it, so an armed thread
/// stack counts as all present. A first dump's "all present pages" must be what is resident.
pub fn resident_pages(pid: i32, runs: &[(u64, u64)]) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    const PAGE: u64 = 4096;
    let file = std::fs::File::open(format!("/proc/{pid}/pagemap"))?;
    let mut buf = vec![0u8; 8 * 4096];
    let mut resident = 0;
    for &(start, end) in runs {
        let mut page = start / PAGE;
        let last = end.div_ceil(PAGE);
        while page < last {
            let n = ((last - page) as usize).min(buf.len() / 8);
            let chunk = &mut buf[..n * 8];
            file.read_exact_at(chunk, page * 8)?;
            resident += chunk.chunks_exact(8).filter(|e| e[7] & 0x80 != 0).count() as u64;
            page += n as u64;
        }
    }
    Ok(resident)
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
    fn the_machine_load_is_read() {
        let l = machine_load(cpu_jiffies());
        assert!(l.load1.is_some() && l.cpus.is_some_and(|c| c >= 1));
        assert!(l.procs_running.is_some_and(|r| r >= 1));
    }

    #[test]
    fn touched_pages_are_resident_and_untouched_ones_not() {
        let mut v = vec![0u8; 64 * 4096];
        for i in (0..v.len()).step_by(4096 * 2) {
            v[i] = 1;
        }
        let start = (v.as_ptr() as u64).div_ceil(4096) * 4096;
        let me = std::process::id() as i32;
        let n = resident_pages(me, &[(start, start + 32 * 4096)]).expect("pagemap");
        std::hint::black_box(&v);
        // Every other page was written; the vec's allocation may have faulted in more.
        assert!((16..=32).contains(&n), "{n}");
        assert_eq!(resident_pages(me, &[]).expect("nothing"), 0);
    }
}
