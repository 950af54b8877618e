//! `brume-bench trace checkpoints` (what `brume trace checkpoints` runs) on a tiny plan: 4 real
//! CRIU dumps of two 16-32 MiB workloads into a temp file. It checks the CSV, not the timings:
//! the header is exactly the trace schema, every field of every row parses, every dump took
//! some time, resident memory follows the workloads' sizes, and a tracked dump's written pages
//! are at most the task's resident pages.
//!
//! Needs root, CRIU and the dirty-page tracker (Linux >= 6.7): a missing one is a skip, a
//! failure under `BRUME_REQUIRE`.

use std::collections::BTreeMap;
use std::process::Command;

use brume_migration::track::{self, Method};
use brume_testnet::require::{self, Need};

mod common;

/// The schema, spelled out here on purpose: the predictor bench reads these names.
const SCHEMA: &str = "dump,task,workload,mem_mib,rss_bytes,dirty_pps,written_pages,processes,threads,open_files,sockets,mappings,age_s,since_last_s,tracked,freezing_ms,frozen_ms,memdump_ms,memwrite_ms,pages_scanned,pages_written,dump_ms,load1,procs_running,cpus,cpu_busy,cpu_pressure";

fn int(v: &str, what: &str, line: &str) -> u64 {
    v.parse()
        .unwrap_or_else(|e| panic!("{what}={v:?} is not a whole number ({e}): {line}"))
}

fn num(v: &str, what: &str, line: &str) -> f64 {
    let x: f64 = v
        .parse()
        .unwrap_or_else(|e| panic!("{what}={v:?} is not a number ({e}): {line}"));
    assert!(x.is_finite() && x >= 0.0, "{what}={x}: {line}");
    x
}

#[test]
fn a_tiny_checkpoint_trace_is_well_formed() {
    let test = "a_tiny_checkpoint_trace_is_well_formed";
    if !require::criu(test) {
        return;
    }
    let support = track::probe();
    if support.method != Method::Tracked {
        require::missing(test, Need::Tracking, &support.why);
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("brume-test-trace-")
        .tempdir()
        .expect("temp dir");
    let csv = tmp.path().join("checkpoints.csv");
    let out = Command::new(env!("CARGO_BIN_EXE_brume-bench"))
        .args(["trace", "checkpoints", "--dumps", "4", "--max-mib", "32"])
        .args(["--max-dumps-per-task", "2", "--seed", "1", "--out"])
        .arg(&csv)
        .output()
        .expect("the brume-bench binary runs");
    let bench = common::bench_line(&out, "trace_checkpoints");
    assert_eq!(bench.get("dumps"), Some(&4.0), "{bench:?}");
    let text = std::fs::read_to_string(&csv).expect("the trace was written");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(SCHEMA));
    let columns: Vec<&str> = SCHEMA.split(',').collect();
    let mut rss_by_size: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut seen_tasks = Vec::new();
    let mut rows = 0;
    for (i, line) in lines.enumerate() {
        let f: BTreeMap<&str, &str> = columns.iter().copied().zip(line.split(',')).collect();
        assert_eq!(line.split(',').count(), columns.len(), "{line}");
        assert_eq!(int(f["dump"], "dump", line), i as u64, "dumps in order");
        let task = int(f["task"], "task", line);
        assert!(
            ["dirtier", "threads", "files", "forks"].contains(&f["workload"]),
            "{line}"
        );
        let mib = int(f["mem_mib"], "mem_mib", line);
        assert!((16..=32).contains(&mib), "{line}");
        let rss = int(f["rss_bytes"], "rss_bytes", line);
        let dirty_pps = num(f["dirty_pps"], "dirty_pps", line);
        let written = int(f["written_pages"], "written_pages", line);
        for c in ["processes", "threads", "mappings"] {
            assert!(int(f[c], c, line) >= 1, "{line}");
        }
        let open_files = int(f["open_files"], "open_files", line);
        assert!(int(f["sockets"], "sockets", line) <= open_files, "{line}");
        num(f["age_s"], "age_s", line);
        // The first dump of a task has no previous one.
        let first = !seen_tasks.contains(&task);
        seen_tasks.push(task);
        assert_eq!(f["since_last_s"].is_empty(), first, "{line}");
        if !first {
            num(f["since_last_s"], "since_last_s", line);
        }
        let tracked = int(f["tracked"], "tracked", line);
        assert!(tracked <= 1, "{line}");
        if tracked == 1 {
            assert!(written <= rss / 4096, "written > resident pages: {line}");
        } else {
            assert_eq!(
                dirty_pps, 0.0,
                "an untracked dump has no dirty rate: {line}"
            );
        }
        // CRIU's statistics: all there or all empty.
        let stats = [
            "freezing_ms",
            "frozen_ms",
            "memdump_ms",
            "memwrite_ms",
            "pages_scanned",
            "pages_written",
        ];
        if !f["frozen_ms"].is_empty() {
            for c in stats {
                num(f[c], c, line);
            }
            assert!(int(f["pages_written"], "pages_written", line) > 0, "{line}");
        } else {
            assert!(stats.iter().all(|c| f[c].is_empty()), "{line}");
        }
        assert!(num(f["dump_ms"], "dump_ms", line) > 0.0, "{line}");
        // The machine's load, read before the dump: /proc/loadavg and /proc/stat are always
        // there, PSI may not be (an empty cpu_pressure is allowed).
        num(f["load1"], "load1", line);
        assert!(
            int(f["procs_running"], "procs_running", line) >= 1,
            "{line}"
        );
        assert!(int(f["cpus"], "cpus", line) >= 1, "{line}");
        let busy = num(f["cpu_busy"], "cpu_busy", line);
        assert!((0.0..=1.0).contains(&busy), "{line}");
        if !f["cpu_pressure"].is_empty() {
            let p = num(f["cpu_pressure"], "cpu_pressure", line);
            assert!((0.0..=1.0).contains(&p), "{line}");
        }
        // Every page of the workload's memory was written before its first dump.
        assert!(rss >= mib << 20, "rss below the workload's size: {line}");
        rss_by_size.entry(mib).or_default().push(rss);
        rows += 1;
    }
    assert_eq!(rows, 4);
    // The plan deals both sizes (16 and 32 MiB); the larger task holds more.
    let means: Vec<f64> = rss_by_size
        .values()
        .map(|v| v.iter().sum::<u64>() as f64 / v.len() as f64)
        .collect();
    assert_eq!(means.len(), 2, "{rss_by_size:?}");
    assert!(means[0] < means[1], "{rss_by_size:?}");
}
