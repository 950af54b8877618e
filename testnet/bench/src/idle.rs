//! What a node at rest costs: resident memory and CPU of a real `brume node` process.
//!
//! The simulation cannot say this, so the bench starts three daemons of this very binary on
//! loopback (the second and third join through the first), lets them settle, and then reads the
//! first one's `VmRSS` and CPU time from `/proc` over a window in which nothing is asked of it:
//! only its own pings (every 5 s), state exchanges (10 s) and shuffles run. The daemons are
//! killed when the measurement ends, however it ends.

use std::time::{Duration, Instant};

use anyhow::Context;

use brume_testnet::localnet::LocalNet;

/// Resident memory and CPU use of an idle node.
#[derive(Debug, Clone, Copy)]
pub struct Idle {
    pub rss_mb: f64,
    /// CPU time over wall time in the window, in percent of one core.
    pub cpu_pct: f64,
    pub window: Duration,
}

fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).context("no utime")?;
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).context("no stime")?;
    Ok(utime + stime)
}

/// Starts three daemons, waits `settle`, then measures the first over `window`.
pub fn measure(settle: Duration, window: Duration) -> anyhow::Result<Idle> {
    let exe = crate::brume_exe()?;
    let mut net = LocalNet::start(&exe, 3, &[])?;
    std::thread::sleep(settle);
    let pid = net.pid(0).context("no daemon")?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let t0 = Instant::now();
    let c0 = cpu_ticks(pid)?;
    std::thread::sleep(window);
    let c1 = cpu_ticks(pid)?;
    let wall = t0.elapsed().as_secs_f64();
    let rss = rss_kb(pid)?;
    if !net.alive() {
        anyhow::bail!("a daemon exited during the measurement");
    }
    Ok(Idle {
        rss_mb: rss as f64 / 1024.0,
        cpu_pct: 100.0 * (c1.saturating_sub(c0)) as f64 / hz / wall,
        window,
    })
}
