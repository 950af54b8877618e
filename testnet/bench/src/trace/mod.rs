//! `brume trace checkpoints` (`brume-bench trace checkpoints`): real CRIU dumps of varied
//! workloads on this machine, with the features a node can read before each dump and what the
//! dump then cost, written as CSV ([`row`]); the data `brume bench predictor` learns from.
//!
//! Why a trace of real dumps: a checkpoint's duration depends on the machine, the kernel, CRIU
//! and the load beside it, and a predictor judged on a formula's output would only learn the
//! formula. So the generator runs each planned task ([`plan`]: memory 16 MiB..1 GiB, dirty
//! rate, threads, processes, open files and sockets; brume-trace-workload, [`workload`]),
//! attaches brume's dirty-page tracker to it (`brume_migration::track`, anonymous memory as the
//! tracked live migration does), and takes several dumps of it at increasing ages. Before a
//! dump it either runs tracked pre-copy rounds (the tracker's count over the last interval gives
//! the dirty rate and the pages written) or, for a plain dump, one round that only counts what
//! was written since the last dump; it reads `/proc` ([`procfs`]), runs `criu dump`, times the
//! call and reads CRIU's `stats-dump`.
//!
//! Why `--leave-running` and not dump-then-restore: the task then goes on exactly as it was, so
//! one task gives dumps at several ages and dirty histories at the cost of the dumps alone,
//! and no dump waits for a PID to be freed or pays for a restore that is not measured. A
//! leave-running dump freezes, collects and writes exactly what a final dump does; only the
//! kill at its end is missing, which is not in what a predictor must foresee (the freeze and
//! the write). Images go to `--work-dir` (tmpfs by default, as brume's migrations stage them)
//! and each is removed as soon as its statistics are read.
//!
//! Everything this starts is cleaned up on the way out, error or Ctrl-C ([`interrupt`]): the
//! workloads are killed by their guards and the work directory is a temp dir. The output is
//! written and flushed row by row, so an interrupted run leaves the dumps it took.

pub mod interrupt;
pub mod plan;
pub mod procfs;
pub mod row;
pub mod workload;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use brume_migration::criu::{Criu, DumpOptions, NetworkLock};
use brume_migration::track::{self, task::descendants, Method, Scope, TaskTracker, Why};
use clap::{Args, Subcommand};

use super::median;
use plan::{DumpPlan, Plan, TaskPlan};
use row::Row;
use workload::Workload;

/// Options of `brume-bench trace`.
#[derive(Args, Debug, Clone)]
pub struct TraceArgs {
    #[command(subcommand)]
    pub what: TraceWhat,
}

/// The traces.
#[derive(Subcommand, Debug, Clone)]
pub enum TraceWhat {
    /// Real CRIU dumps (leave-running) of workloads of varied memory, dirty rate, threads,
    /// processes, open files and sockets, some after tracked pre-copy rounds: features and
    /// measured durations as CSV, one row per dump. Needs root and CRIU.
    Checkpoints(CheckpointsArgs),
}

/// Options of `brume trace checkpoints`.
#[derive(Args, Debug, Clone)]
pub struct CheckpointsArgs {
    /// The CSV to write (replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// How many dumps.
    #[arg(long, default_value_t = 320)]
    pub dumps: usize,
    /// The largest task, MiB (tasks are 16, 32, ... 1024 MiB up to this).
    #[arg(long, default_value_t = 1024)]
    pub max_mib: usize,
    /// Seed of the plan (tasks, their shapes, when each dump is taken): the same seed and
    /// options run the same plan.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The most dumps of one task (large tasks get fewer: at most 5 from 256 MiB, 3 at 1 GiB).
    #[arg(long, default_value_t = 8)]
    pub max_dumps_per_task: usize,
    /// Where the workloads' files and the images go (a temp dir is made inside and removed).
    #[arg(long, default_value = "/dev/shm")]
    pub work_dir: PathBuf,
    /// The criu program.
    #[arg(long, default_value = "criu")]
    pub criu: PathBuf,
}

/// Runs `brume-bench trace ...`.
pub fn run(args: &TraceArgs) -> anyhow::Result<()> {
    match &args.what {
        TraceWhat::Checkpoints(a) => checkpoints(a),
    }
}

/// How many failed dumps a trace tolerates before it stops: CRIU on a loaded machine may fail
/// now and then, and a trace that leaves a failure out says so; one that fails often is broken.
fn failure_budget(dumps: usize) -> usize {
    (dumps / 20).max(3)
}

fn checkpoints(a: &CheckpointsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.dumps > 0, "--dumps must be at least 1");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "brume trace checkpoints needs root (criu dump, and ptrace for the dirty-page tracker)"
        );
    }
    let criu = Criu::with_binary(&a.criu);
    let version = criu
        .version()
        .context("the trace needs CRIU for its dumps")?;
    let support = track::probe();
    if support.method != Method::Tracked {
        bail!(
            "the dirty-page tracker is not available here ({}): the trace needs it",
            support.why
        );
    }
    let exe = workload::binary()?;
    let plan = plan::plan(a.seed, a.dumps, a.max_mib, a.max_dumps_per_task);
    let largest = plan.tasks.iter().map(|t| t.mib).max().unwrap_or(0);
    check_memory(largest)?;
    interrupt::install();
    eprintln!(
        "trace: {} dumps over {} tasks (seed {}, {}..{} MiB), criu {version}, images in {}",
        plan.dumps(),
        plan.tasks.len(),
        a.seed,
        plan.tasks.iter().map(|t| t.mib).min().unwrap_or(0),
        largest,
        a.work_dir.display()
    );
    let work = tempfile::Builder::new()
        .prefix("brume-trace-")
        .tempdir_in(&a.work_dir)
        .with_context(|| format!("make a temp dir in {}", a.work_dir.display()))?;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&a.out).with_context(|| format!("create {}", a.out.display()))?,
    );
    writeln!(out, "{}", row::HEADER)?;
    out.flush()?;
    let started = Instant::now();
    let mut trace = Trace {
        criu: &criu,
        exe: &exe,
        work: work.path(),
        out,
        rows: Vec::new(),
        failed: 0,
        budget: failure_budget(a.dumps),
        planned: plan.dumps(),
    };
    let result = trace.run(&plan);
    let written = trace.rows.len();
    let result = result.and_then(|()| {
        anyhow::ensure!(written > 0, "no dump succeeded");
        Ok(())
    });
    if let Err(e) = result {
        bail!(
            "{e:#} ({written} dumps written to {}, {} failed)",
            a.out.display(),
            trace.failed
        );
    }
    summary(&trace.rows, trace.failed, started.elapsed(), &a.out);
    Ok(())
}

/// Refuses a plan whose largest task (and its images, on tmpfs) would not fit in the memory
/// available now.
fn check_memory(largest_mib: usize) -> anyhow::Result<()> {
    let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") else {
        return Ok(());
    };
    let available_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    let need_kib = (largest_mib as u64 * 5 / 2 + 256) * 1024;
    if available_kib < need_kib {
        bail!(
            "a {largest_mib} MiB task and its images need about {} MiB, and {} MiB are available: \
             use a smaller --max-mib",
            need_kib / 1024,
            available_kib / 1024
        );
    }
    Ok(())
}

/// A trace under way.
struct Trace<'a> {
    criu: &'a Criu,
    exe: &'a Path,
    work: &'a Path,
    out: std::io::BufWriter<std::fs::File>,
    rows: Vec<Row>,
    failed: usize,
    budget: usize,
    planned: usize,
}

impl Trace<'_> {
    fn run(&mut self, plan: &Plan) -> anyhow::Result<()> {
        for (ti, task) in plan.tasks.iter().enumerate() {
            interrupt::check()?;
            if let Err(e) = self.task(ti, task) {
                interrupt::check()?;
                self.failed += 1;
                eprintln!("trace: task {ti} failed: {e:#}");
                if self.failed > self.budget {
                    bail!(
                        "{} failures, more than {} allowed: stopped",
                        self.failed,
                        self.budget
                    );
                }
            }
        }
        Ok(())
    }

    /// Runs one task's dumps; a failed dump is counted and the task goes on.
    fn task(&mut self, ti: usize, task: &TaskPlan) -> anyhow::Result<()> {
        let dir = self.work.join(format!("task-{ti}"));
        let w = Workload::start(self.exe, &dir, task, Duration::from_secs(120))?;
        let mut tracker = TaskTracker::attach(w.pid, Scope::Anonymous)
            .context("attach the dirty-page tracker")?;
        let mut last_dump: Option<Instant> = None;
        for (di, d) in task.dumps.iter().enumerate() {
            let images = dir.join(format!("images-{di}"));
            let result = self.dump(ti, task, d, &w, &mut tracker, &images, &mut last_dump);
            let _ = std::fs::remove_dir_all(&images);
            if let Err(e) = result {
                interrupt::check()?;
                self.failed += 1;
                eprintln!("trace: task {ti} dump {di} failed: {e:#}");
                if self.failed > self.budget {
                    bail!(
                        "{} failures, more than {} allowed: stopped",
                        self.failed,
                        self.budget
                    );
                }
            }
        }
        drop(tracker);
        drop(w);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// One dump: wait, rounds, features, `criu dump`, statistics, the row.
    #[allow(clippy::too_many_arguments)]
    fn dump(
        &mut self,
        ti: usize,
        task: &TaskPlan,
        d: &DumpPlan,
        w: &Workload,
        tracker: &mut TaskTracker,
        images: &Path,
        last_dump: &mut Option<Instant>,
    ) -> anyhow::Result<()> {
        let busy_since = procfs::cpu_jiffies();
        let spent: f64 = d.rounds.iter().sum();
        interrupt::sleep(Duration::from_secs_f64((d.gap_s - spent).max(0.0)))?;
        let (written_pages, dirty_pps) = if d.rounds.is_empty() {
            (written(tracker)?, 0.0)
        } else {
            // The first round copies (here: counts) what was written since the last one; each
            // later one what was written during its interval.
            let mut at = Instant::now();
            written(tracker)?;
            let mut last = (0, 0.0);
            for &interval in &d.rounds {
                interrupt::sleep(Duration::from_secs_f64(interval))?;
                let now = Instant::now();
                let pages = written(tracker)?;
                last = (pages, pages as f64 / (now - at).as_secs_f64());
                at = now;
            }
            last
        };
        let pids = descendants(w.pid).context("list the task's processes")?;
        let look = procfs::look(&pids);
        let load = procfs::machine_load(busy_since);
        let begun = Instant::now();
        let age_s = (begun - w.started).as_secs_f64();
        let since_last_s = last_dump.map(|t| (begun - t).as_secs_f64());
        *last_dump = Some(begun);
        let opts = DumpOptions::new(images, w.pid as u32)
            .leave_running(true)
            .network_lock(NetworkLock::Skip);
        let report = self.criu.dump(&opts)?;
        let row = Row {
            dump: self.rows.len(),
            task: ti,
            workload: task.workload,
            mem_mib: task.mib,
            rss_bytes: look.rss_bytes,
            dirty_pps,
            written_pages,
            processes: look.processes,
            threads: look.threads,
            open_files: look.open_files,
            sockets: look.sockets,
            mappings: look.mappings,
            age_s,
            since_last_s,
            tracked: !d.rounds.is_empty(),
            stats: report.stats,
            dump_ms: report.elapsed.as_secs_f64() * 1000.0,
            load,
        };
        writeln!(self.out, "{}", row.csv())?;
        self.out.flush()?;
        eprintln!("{}", progress(&row, task, d, self.planned));
        self.rows.push(row);
        Ok(())
    }
}

/// One tracker round; the pages written since the last one: those it reports written, and the
/// resident ones of the mappings it reports whole (new to it: all of them on a first round).
fn written(tracker: &mut TaskTracker) -> anyhow::Result<u64> {
    let rounds = tracker.round().context("a dirty-page tracker round")?;
    let mut pages = 0;
    for (pid, round) in &rounds {
        pages += round.pages(Why::Written);
        let whole: Vec<(u64, u64)> = round
            .regions
            .iter()
            .filter(|r| r.why != Why::Written)
            .map(|r| (r.start, r.end))
            .collect();
        if !whole.is_empty() {
            pages += procfs::resident_pages(*pid, &whole)
                .with_context(|| format!("read /proc/{pid}/pagemap"))?;
        }
    }
    Ok(pages)
}

fn progress(row: &Row, task: &TaskPlan, d: &DumpPlan, planned: usize) -> String {
    let kind = if d.rounds.is_empty() {
        "plain".to_string()
    } else {
        format!(
            "tracked ({} rounds, {:.0} pages/s)",
            d.rounds.len() + 1,
            row.dirty_pps
        )
    };
    let frozen = row
        .stats
        .map(|s| format!(" (frozen {:.1} ms)", s.frozen.as_secs_f64() * 1000.0))
        .unwrap_or_default();
    format!(
        "trace: dump {}/{planned} task {} {} {} MiB ({} MiB/s, {}x{} threads, {} files, {} sockets) \
         age {:.1} s, {kind}, rss {:.0} MiB, written {} pages, load {}: {:.1} ms{frozen}",
        row.dump + 1,
        row.task,
        task.workload,
        task.mib,
        task.dirty_mib_s,
        task.procs,
        task.threads,
        task.files,
        task.sockets,
        row.age_s,
        row.rss_bytes as f64 / 1048576.0,
        row.written_pages,
        row.load.load1.map(|l| format!("{l:.2}")).unwrap_or_else(|| "?".into()),
        row.dump_ms,
    )
}

/// The table on stdout and the `BENCH trace_checkpoints` line.
fn summary(rows: &[Row], failed: usize, took: Duration, out: &Path) {
    println!(
        "checkpoint trace: {} dumps written to {}",
        rows.len(),
        out.display()
    );
    println!(
        "{:>8} {:>6} {:>10} {:>10} {:>10}",
        "MiB", "dumps", "min ms", "median ms", "max ms"
    );
    let mut sizes: Vec<usize> = rows.iter().map(|r| r.mem_mib).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for size in &sizes {
        let mut ms: Vec<f64> = rows
            .iter()
            .filter(|r| r.mem_mib == *size)
            .map(|r| r.dump_ms)
            .collect();
        let (min, max) = min_max(&ms);
        let n = ms.len();
        println!(
            "{size:>8} {n:>6} {min:>10.1} {:>10.1} {max:>10.1}",
            median(&mut ms)
        );
    }
    let mut all: Vec<f64> = rows.iter().map(|r| r.dump_ms).collect();
    let (min, max) = min_max(&all);
    let med = median(&mut all);
    let tasks = {
        let mut t: Vec<usize> = rows.iter().map(|r| r.task).collect();
        t.dedup();
        t.len()
    };
    let tracked = rows.iter().filter(|r| r.tracked).count();
    println!(
        "{:>8} {:>6} {min:>10.1} {med:>10.1} {max:>10.1}",
        "all",
        rows.len()
    );
    println!(
        "{tasks} tasks, {tracked} dumps after tracked rounds, {failed} failed, {:.0} s",
        took.as_secs_f64()
    );
    println!(
        "BENCH trace_checkpoints dumps={} tasks={tasks} tracked={tracked} failed={failed} \
         mem_mib_min={} mem_mib_max={} dump_ms_min={min:.3} dump_ms_median={med:.3} \
         dump_ms_max={max:.3} seconds={:.1}",
        rows.len(),
        sizes.first().copied().unwrap_or(0),
        sizes.last().copied().unwrap_or(0),
        took.as_secs_f64()
    );
}

fn min_max(xs: &[f64]) -> (f64, f64) {
    xs.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}
