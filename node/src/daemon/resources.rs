//! What this device offers, read from `/proc`: the numbers a node advertises in its state record
//! so that placement can judge it as a host. Operators may cap what brume may use (`--cpu-millis`,
//! `--memory-mb`), since the device usually has other work to do.

use std::path::Path;

/// CPU and memory of this device, total and free, and its load per core.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resources {
    pub cpu_total_milli: u32,
    pub cpu_free_milli: u32,
    pub mem_total_mb: u64,
    pub mem_free_mb: u64,
    /// One-minute load average divided by the number of cores.
    pub load: f32,
}

/// Why the device's resources could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no `{field}` line")]
    Missing { path: String, field: &'static str },
}

/// Reads the live figures from `/proc`.
pub fn read() -> Result<Resources, ResourceError> {
    read_from(Path::new("/proc"))
}

/// Reads from a directory laid out like `/proc` (tests give a fake one).
pub fn read_from(proc_dir: &Path) -> Result<Resources, ResourceError> {
    let text = |name: &str| {
        let path = proc_dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| ResourceError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    let meminfo = text("meminfo")?;
    let kib = |field: &'static str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .ok_or(ResourceError::Missing {
                path: proc_dir.join("meminfo").display().to_string(),
                field,
            })
    };
    let mem_total_mb = kib("MemTotal")? / 1024;
    let mem_free_mb = kib("MemAvailable")? / 1024;
    let cores = text("cpuinfo")?
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count()
        .max(1) as u32;
    let load1: f32 = text("loadavg")?
        .split_whitespace()
        .next()
        .and_then(|x| x.parse().ok())
        .unwrap_or(0.0);
    let load = load1 / cores as f32;
    let cpu_total_milli = cores * 1000;
    let busy = (load.clamp(0.0, 1.0) * cpu_total_milli as f32) as u32;
    Ok(Resources {
        cpu_total_milli,
        cpu_free_milli: cpu_total_milli - busy.min(cpu_total_milli),
        mem_total_mb,
        mem_free_mb: mem_free_mb.min(mem_total_mb),
        load,
    })
}

impl Resources {
    /// The same figures with totals capped by what the operator lets brume use.
    pub fn capped(mut self, cpu_millis: Option<u32>, memory_mb: Option<u64>) -> Self {
        if let Some(c) = cpu_millis {
            self.cpu_total_milli = self.cpu_total_milli.min(c);
            self.cpu_free_milli = self.cpu_free_milli.min(c);
        }
        if let Some(m) = memory_mb {
            self.mem_total_mb = self.mem_total_mb.min(m);
            self.mem_free_mb = self.mem_free_mb.min(m);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_fake_proc_and_the_real_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("meminfo"),
            "MemTotal:        4096000 kB\nMemFree: 1 kB\nMemAvailable:    2048000 kB\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("cpuinfo"),
            "processor\t: 0\nx\nprocessor\t: 1\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("loadavg"), "0.50 0.4 0.3 1/100 42\n").unwrap();
        let r = read_from(dir.path()).unwrap();
        assert_eq!(r.cpu_total_milli, 2000);
        assert_eq!(r.cpu_free_milli, 1500, "a quarter of two cores busy");
        assert_eq!(r.mem_total_mb, 4000);
        assert_eq!(r.mem_free_mb, 2000);
        let capped = r.capped(Some(1000), Some(512));
        assert_eq!((capped.cpu_total_milli, capped.mem_free_mb), (1000, 512));

        let real = read().unwrap();
        assert!(real.cpu_total_milli >= 1000 && real.mem_total_mb > 0);
    }

    #[test]
    fn missing_field_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("meminfo"), "MemTotal: 1 kB\n").unwrap();
        let err = read_from(dir.path()).unwrap_err();
        assert!(err.to_string().contains("MemAvailable"), "{err}");
    }
}
