//! One line of the checkpoint trace, testnet/bench/traces/checkpoints.csv (the file
//! `brume bench predictor` replays): the features a node reads before a dump, CRIU's own
//! statistics of it, and the dump's wall time. The columns, in order:
//!
//! - `dump` (0-based, in the order taken), `task` (the workload instance), `workload` (its
//!   shape: dirtier, threads, files, forks), `mem_mib` (its configured size);
//! - features, read before the dump starts: `rss_bytes` (VmRSS summed over the task's
//!   processes), `dirty_pps` (pages written per second over the last tracked interval, as the
//!   dirty-page tracker counted them; 0 when untracked), `written_pages` (pages written since
//!   the last round or dump, as the tracker counts; all present pages for a first dump),
//!   `processes`, `threads`, `open_files` (fds), `sockets` (socket fds), `mappings` (lines of
//!   /proc/PID/maps), `age_s` (since the task started), `since_last_s` (since the previous dump
//!   of the task began; empty for the first), `tracked` (1 if tracked pre-copy rounds came
//!   right before);
//! - labels: CRIU's stats-dump `freezing_ms`, `frozen_ms`, `memdump_ms`, `memwrite_ms`,
//!   `pages_scanned`, `pages_written` (empty when the image could not be read), and `dump_ms`,
//!   the wall time of the `criu dump` call as brume measures it;
//! - appended later (a reader treats them as unknown when a trace lacks them or a field is
//!   empty), the machine's load read right before the dump (`brume_migration::predictor::load`):
//!   `load1` (/proc/loadavg's 1-minute average), `procs_running` (/proc/stat, runnable threads
//!   then, the reader included), `cpus` (online CPUs), `cpu_busy` (share of all CPUs' time busy
//!   between the start of the wait before this dump and the dump, two /proc/stat samples) and
//!   `cpu_pressure` (/proc/pressure/cpu `some avg10` as a share; empty without PSI).

use brume_migration::criu::DumpStats;
use brume_migration::predictor::load::MachineLoad;

/// The header line, in the schema's column order.
pub const HEADER: &str = "dump,task,workload,mem_mib,rss_bytes,dirty_pps,written_pages,processes,\
threads,open_files,sockets,mappings,age_s,since_last_s,tracked,freezing_ms,frozen_ms,memdump_ms,\
memwrite_ms,pages_scanned,pages_written,dump_ms,load1,procs_running,cpus,cpu_busy,cpu_pressure";

/// One dump.
#[derive(Clone, Debug)]
pub struct Row {
    pub dump: usize,
    pub task: usize,
    pub workload: &'static str,
    pub mem_mib: usize,
    pub rss_bytes: u64,
    pub dirty_pps: f64,
    pub written_pages: u64,
    pub processes: u64,
    pub threads: u64,
    pub open_files: u64,
    pub sockets: u64,
    pub mappings: u64,
    pub age_s: f64,
    pub since_last_s: Option<f64>,
    pub tracked: bool,
    pub stats: Option<DumpStats>,
    pub dump_ms: f64,
    pub load: MachineLoad,
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn ms(d: std::time::Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

impl Row {
    /// The CSV line (no newline). Times in ms and s with 3 decimals (CRIU's are whole µs).
    pub fn csv(&self) -> String {
        let stats = match &self.stats {
            Some(s) => format!(
                "{},{},{},{},{},{}",
                ms(s.freezing),
                ms(s.frozen),
                ms(s.memdump),
                ms(s.memwrite),
                s.pages_scanned,
                s.pages_written
            ),
            None => ",,,,,".to_string(),
        };
        format!(
            "{},{},{},{},{},{:.1},{},{},{},{},{},{},{:.3},{},{},{},{:.3},{},{},{},{},{}",
            self.dump,
            self.task,
            self.workload,
            self.mem_mib,
            self.rss_bytes,
            self.dirty_pps,
            self.written_pages,
            self.processes,
            self.threads,
            self.open_files,
            self.sockets,
            self.mappings,
            self.age_s,
            self.since_last_s
                .map(|s| format!("{s:.3}"))
                .unwrap_or_default(),
            u8::from(self.tracked),
            stats,
            self.dump_ms,
            opt(self.load.load1),
            opt(self.load.procs_running),
            opt(self.load.cpus),
            opt(self.load.cpu_busy.map(|b| format!("{b:.4}"))),
            opt(self.load.cpu_pressure.map(|p| format!("{p:.4}"))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn row() -> Row {
        Row {
            dump: 3,
            task: 1,
            workload: "files",
            mem_mib: 64,
            rss_bytes: 70_000_000,
            dirty_pps: 1024.26,
            written_pages: 512,
            processes: 1,
            threads: 2,
            open_files: 20,
            sockets: 4,
            mappings: 40,
            age_s: 2.5,
            since_last_s: None,
            tracked: true,
            stats: None,
            dump_ms: 123.4567,
            load: MachineLoad::default(),
        }
    }

    #[test]
    fn a_row_has_one_field_per_column() {
        let columns = HEADER.split(',').count();
        assert_eq!(columns, 27);
        let mut r = row();
        assert_eq!(r.csv().split(',').count(), columns);
        assert_eq!(
            r.csv(),
            "3,1,files,64,70000000,1024.3,512,1,2,20,4,40,2.500,,1,,,,,,,123.457,,,,,"
        );
        r.since_last_s = Some(1.0);
        r.stats = Some(DumpStats {
            freezing: Duration::from_micros(1500),
            frozen: Duration::from_micros(20_001),
            memdump: Duration::from_micros(7000),
            memwrite: Duration::from_micros(9000),
            pages_scanned: 17000,
            pages_written: 16500,
        });
        r.load = MachineLoad {
            load1: Some(3.03),
            procs_running: Some(3),
            cpus: Some(2),
            cpu_busy: Some(0.5),
            cpu_pressure: Some(0.0344),
        };
        assert_eq!(r.csv().split(',').count(), columns);
        assert!(r.csv().ends_with(
            ",1.000,1,1.500,20.001,7.000,9.000,17000,16500,123.457,3.03,3,2,0.5000,0.0344"
        ));
    }
}
