//! What a node reads about its machine's load right before a dump, and the parsers of the
//! `/proc` texts it comes from (the reading itself is the caller's: this module stays pure).
//!
//! Why: on a shared machine a dump's duration varies up to tenfold at one memory size, with the
//! load beside it (CRIU's page collection and writing are CPU work that stretches with
//! contention). A node can read that load before it acts, cheaply: the 1-minute load average
//! (`/proc/loadavg`), the runnable threads now (`procs_running` in `/proc/stat`), the online
//! CPUs, the share of CPU time that was busy over the last interval (two `/proc/stat` samples)
//! and the CPU pressure stall share (`/proc/pressure/cpu`, `some avg10`). Every field is
//! optional: a trace written before these columns existed, or a kernel without PSI, gives
//! `None`, which the feature vector treats explicitly as "unknown" (see
//! [`super::features::vector`]).

use serde::{Deserialize, Serialize};

/// The machine's load as read just before a dump; `None` = not known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineLoad {
    /// 1-minute load average.
    pub load1: Option<f64>,
    /// Runnable threads at the moment of reading (includes the reader).
    pub procs_running: Option<u32>,
    /// Online CPUs.
    pub cpus: Option<u32>,
    /// Share (0..=1) of all CPUs' time that was busy over the last interval.
    pub cpu_busy: Option<f64>,
    /// CPU pressure: share (0..=1) of the last 10 s in which some runnable task waited for a CPU.
    pub cpu_pressure: Option<f64>,
}

impl MachineLoad {
    /// CPUs to divide the load by: the known count, at least 1.
    fn cpus_or_one(&self) -> f64 {
        f64::from(self.cpus.unwrap_or(1).max(1))
    }

    /// The 1-minute load average per online CPU, if the load is known.
    pub fn load_per_cpu(&self) -> Option<f64> {
        self.load1
            .filter(|l| l.is_finite() && *l >= 0.0)
            .map(|l| l / self.cpus_or_one())
    }

    /// Runnable threads per online CPU besides the reader itself, if known.
    pub fn running_per_cpu(&self) -> Option<f64> {
        self.procs_running
            .map(|r| f64::from(r.saturating_sub(1)) / self.cpus_or_one())
    }
}

/// The 1-minute load average from a `/proc/loadavg` text.
pub fn parse_loadavg(text: &str) -> Option<f64> {
    text.split_whitespace()
        .next()?
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
}

/// `procs_running` from a `/proc/stat` text.
pub fn parse_procs_running(stat: &str) -> Option<u32> {
    stat.lines()
        .find_map(|l| l.strip_prefix("procs_running "))?
        .trim()
        .parse()
        .ok()
}

/// (busy, total) jiffies summed over all CPUs, from the `cpu ` line of a `/proc/stat` text
/// (idle and iowait are not busy; guest time is already inside user and nice).
pub fn parse_cpu_jiffies(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 4 {
        return None;
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// The busy share between two `(busy, total)` samples, if time passed between them.
pub fn busy_share(before: (u64, u64), after: (u64, u64)) -> Option<f64> {
    let total = after.1.checked_sub(before.1)?;
    let busy = after.0.checked_sub(before.0)?;
    (total > 0).then(|| (busy as f64 / total as f64).clamp(0.0, 1.0))
}

/// `some avg10` (as a share, 0..=1) from a `/proc/pressure/cpu` text.
pub fn parse_cpu_pressure(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    let v = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))?
        .parse::<f64>()
        .ok()?;
    (v.is_finite() && v >= 0.0).then(|| (v / 100.0).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  514214 0 63522 141738 694 0 495 848 0 0\n\
                        cpu0 1 2 3 4 5 6 7 8 0 0\nintr 5\nprocs_running 3\nprocs_blocked 0\n";

    #[test]
    fn parses_the_proc_texts() {
        assert_eq!(parse_loadavg("3.03 3.95 4.51 3/129 20609\n"), Some(3.03));
        assert_eq!(parse_loadavg(""), None);
        assert_eq!(parse_procs_running(STAT), Some(3));
        assert_eq!(parse_procs_running("cpu 1 2 3 4\n"), None);
        let (busy, total) = parse_cpu_jiffies(STAT).unwrap();
        assert_eq!(total, 514214 + 63522 + 141738 + 694 + 495 + 848);
        assert_eq!(busy, total - 141738 - 694);
        assert_eq!(parse_cpu_jiffies("cpu x\n"), None);
        let psi = "some avg10=3.44 avg60=33.14 avg300=67.17 total=2210152773\n\
                   full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert!((parse_cpu_pressure(psi).unwrap() - 0.0344).abs() < 1e-12);
        assert_eq!(parse_cpu_pressure("full avg10=1\n"), None);
    }

    #[test]
    fn busy_share_needs_time_to_pass() {
        assert_eq!(busy_share((10, 100), (60, 200)), Some(0.5));
        assert_eq!(busy_share((10, 100), (10, 100)), None);
        assert_eq!(busy_share((10, 100), (5, 90)), None);
    }

    #[test]
    fn per_cpu_values_divide_by_the_known_cpus() {
        let l = MachineLoad {
            load1: Some(4.0),
            procs_running: Some(3),
            cpus: Some(2),
            ..MachineLoad::default()
        };
        assert_eq!(l.load_per_cpu(), Some(2.0));
        assert_eq!(l.running_per_cpu(), Some(1.0));
        let unknown = MachineLoad::default();
        assert_eq!(
            (unknown.load_per_cpu(), unknown.running_per_cpu()),
            (None, None)
        );
    }
}
