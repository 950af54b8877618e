//! `brume bench migration`: live migration (iterative pre-copy with CRIU, chunk deltas, adaptive
//! compression) against stop-and-copy of the same task, in the same run, over shaped links.
//!
//! The setup: a 2-host brume-testnet testbed (network namespaces joined by the userspace TUN
//! router, since this kernel has no netem) with host A's link shaped to the rate under test.
//! The workload is the `dirtier` (examples/dirtier, compiled here with rustc): M MiB of half-zero
//! pages (about 2:1 compressible), rewritten at `--dirty-mib-s`. It runs in host A's namespace
//! and is dumped there (criu runs through `nsenter --net`); the target receives over a TCP
//! connection from A to B and restores it in host B's namespace. Both are on this machine, so
//! the restore waits for the dumped PID to be reaped (CRIU restores PIDs).
//!
//! Measured per move: downtime as a client sees it (a poller asks the task for its counter every
//! 1 ms over its Unix socket; downtime is the gap from the last answer before the final dump to
//! the first answer after it), broken into the final dump (with CRIU's frozen time), the
//! transfer (hash, compress, send, the target's in-place rebuild) and the restore; total time;
//! the longest pause the task took during pre-copy (a `--leave-running` dump freezes it too);
//! pre-copy rounds and wire bytes. Strategies: live with adaptive compression, stop-and-copy
//! (freeze, full dump, copy every image byte uncompressed, restore) and live with fixed levels,
//! whose best total (chosen in hindsight) is the yardstick for the adaptive choice. After every
//! move the counter must have gone up by exactly one between consecutive answers and the memory
//! must be exactly what the seed and the task's step count make; otherwise the bench fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener as StdListener, TcpStream as StdStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use brume_migration::compress::Level;
use brume_migration::criu::{Criu, NetworkLock};
use brume_migration::live::{
    migrate_in, migrate_out, Compression, Mode, RoundStats, SourceOptions, TargetOptions,
};
use brume_migration::planner::PlannerConfig;
use brume_testnet::poller::Poller;
use brume_testnet::{Shaping, Testbed};
use clap::Args;

use super::median;

/// The workload's source (std only), compiled at run time so the bench needs no extra build step.
const DIRTIER_SRC: &str = include_str!("../../../examples/dirtier/src/main.rs");
const MIB: f64 = 1048576.0;

/// Options of `brume bench migration`.
#[derive(Args, Debug, Clone)]
pub struct MigrationArgs {
    /// Link rates to measure, Mbit/s (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [100u64, 1000])]
    pub mbit: Vec<u64>,
    /// Task sizes, MiB (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [32usize, 64, 128, 256, 512])]
    pub sizes: Vec<usize>,
    /// How fast the task rewrites its memory, MiB/s (random pages).
    #[arg(long, default_value_t = 8.0)]
    pub dirty_mib_s: f64,
    /// Repetitions; every figure is the median over them.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Round-trip time between the two hosts, ms.
    #[arg(long, default_value_t = 2.0)]
    pub rtt_ms: f64,
    /// Fixed levels to run live migrations at, for adaptive_vs_best_static (comma-separated:
    /// none, zstd1, zstd3, zstd9; empty to skip).
    #[arg(long, value_delimiter = ',', default_values_t = ["none".to_string(), "zstd1".to_string(), "zstd3".to_string()])]
    pub levels: Vec<String>,
    /// A smoke run: 32 MiB, 100 Mbit/s, one run.
    #[arg(long)]
    pub quick: bool,
    /// Post-copy: the most one page request of the target's lazy-pages daemon may ask for, KiB
    /// (what a page fault may wait behind); 0 = what the link carries in 2 ms, at least 16.
    #[arg(long, default_value_t = 0)]
    pub page_request_kib: u64,
    /// Leave out post-copy (CRIU lazy pages, which need fs.pipe-max-size >= 4 MiB).
    #[arg(long)]
    pub no_post_copy: bool,
    /// Only post-copy (with stop-and-copy as the baseline): skips pre-copy and `--levels`.
    #[arg(long, conflicts_with = "no_post_copy")]
    pub post_copy_only: bool,
    /// Tracked post-copy with its baselines only: today's full-dump pre-copy (adaptive) and
    /// stop-and-copy; skips plain post-copy and `--levels`.
    #[arg(long, conflicts_with_all = ["no_post_copy", "post_copy_only"])]
    pub tracked_only: bool,
    /// Leave out the byte movers' link-speed ratios (`transfer_ratio_100mbit`,
    /// `transfer_ratio_1gbit`: `brume bench transfer --link` at this RTT, about a minute).
    #[arg(long)]
    pub no_link_ratio: bool,
    /// Moves of Debian's redis under a client counting acknowledged writes, per engine
    /// (`server_lost_writes`, the client's pause; needs scripts/build-static.sh's relay and
    /// the `brume` binary beside this one); 0 skips them, as `--quick` does.
    #[arg(long, default_value_t = 3)]
    pub server_runs: usize,
    /// Run only these strategies (comma-separated: live, post-copy, tracked, tracked-copying,
    /// tracked-inline, stop-and-copy), of those the other flags chose; figures of the others are
    /// left out of the BENCH line.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Where images are dumped and staged (tmpfs).
    #[arg(long, default_value = "/dev/shm")]
    pub work_dir: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Strategy {
    /// Iterative pre-copy at a compression.
    Live(Compression),
    /// CRIU lazy pages: a frozen dump without memory, pages after the restore.
    PostCopy,
    /// Post-copy after tracked pre-copy rounds (`brume_migration::track`): the target holds
    /// the pages before the freeze and answers the lazy restore from them.
    Tracked,
    /// Tracked post-copy whose lazy dump copies every page while the task is frozen (CRIU
    /// without `--lazy-pages-defer-read`): the baseline of deferred reads.
    TrackedCopying,
    /// Tracked post-copy whose last round's pages always cross the link before the restore
    /// (`TrackedPlan::final_inline = None`): the baseline of sending them after it.
    TrackedInline,
    StopAndCopy,
}

/// The names `--only` takes.
const ALL_STRATEGIES: [&str; 6] = [
    "live",
    "post-copy",
    "tracked",
    "tracked-copying",
    "tracked-inline",
    "stop-and-copy",
];

impl Strategy {
    /// Its name for `--only`.
    fn key(&self) -> &'static str {
        match self {
            Strategy::Live(_) => "live",
            Strategy::PostCopy => "post-copy",
            Strategy::Tracked => "tracked",
            Strategy::TrackedCopying => "tracked-copying",
            Strategy::TrackedInline => "tracked-inline",
            Strategy::StopAndCopy => "stop-and-copy",
        }
    }

    fn name(&self) -> String {
        match self {
            Strategy::Live(Compression::Adaptive) => "live adaptive".into(),
            Strategy::Live(Compression::Fixed(l)) => format!("live {}", level_name(*l)),
            Strategy::PostCopy => "post-copy".into(),
            Strategy::Tracked => "tracked".into(),
            Strategy::TrackedCopying => "tracked, copying dump".into(),
            Strategy::TrackedInline => "tracked, last pages before restore".into(),
            Strategy::StopAndCopy => "stop-and-copy".into(),
        }
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::None => "none",
        Level::Zstd1 => "zstd1",
        Level::Zstd3 => "zstd3",
        Level::Zstd9 => "zstd9",
    }
}

/// One move, in ms and MiB.
#[derive(Clone, Debug, Default)]
struct Move {
    downtime: f64,
    dump: f64,
    frozen: f64,
    transfer: f64,
    rebuild: f64,
    restore: f64,
    total: f64,
    /// Post-copy: from the restore to the last page on the target.
    pages: f64,
    /// Tracked post-copy: the last tracked round (scan, read, send) while frozen, and its pages.
    final_round: f64,
    final_pages: f64,
    /// Post-copy: sending the dump's images while frozen.
    images: f64,
    precopy_pause: f64,
    rounds: f64,
    wire_mib: f64,
    level: String,
    /// Dumps tried again because they caught the task mid-connection (final round, all rounds).
    final_retries: u32,
    retries: u32,
}

/// Medians over runs of one (rate, size, strategy).
#[derive(Clone, Debug)]
struct Row {
    mbit: u64,
    mib: usize,
    strategy: Strategy,
    m: Move,
}

/// Runs the bench and prints the table and the BENCH line.
pub fn run(args: &MigrationArgs) -> anyhow::Result<()> {
    let mut args = args.clone();
    if args.quick {
        args.sizes = vec![32];
        args.mbit = vec![100];
        args.runs = 1;
        args.server_runs = 0;
    }
    if unsafe { libc::geteuid() } != 0 {
        bail!("brume bench migration needs root (network namespaces and criu)");
    }
    let criu_version = Criu::new()
        .version()
        .context("criu is needed: run scripts/install-criu.sh")?;
    let defers = if Criu::new().defers_lazy_reads().unwrap_or(false) {
        "defers lazy reads"
    } else {
        "copies lazy pages at the dump: no --lazy-pages-defer-read (scripts/install-criu.sh)"
    };
    let work = args
        .work_dir
        .join(format!("brume-bench-migration-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    let _cleanup = RemoveOnDrop(work.clone());
    let dirtier = build_dirtier(&work, false)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut strategies = vec![Strategy::Live(Compression::Adaptive), Strategy::StopAndCopy];
    if args.post_copy_only {
        strategies = vec![Strategy::StopAndCopy];
        args.levels.clear();
    }
    if args.tracked_only {
        args.levels.clear();
    }
    let tracking = brume_migration::track::probe();
    if !args.no_post_copy {
        brume_migration::lazy::check_pipe_max_size()
            .context("post-copy needs this (or --no-post-copy)")?;
        if !args.tracked_only {
            strategies.insert(1, Strategy::PostCopy);
        }
        if tracking.method == brume_migration::track::Method::Tracked && !args.post_copy_only {
            strategies.insert(1, Strategy::Tracked);
            if args.tracked_only {
                strategies.insert(2, Strategy::TrackedCopying);
                strategies.insert(3, Strategy::TrackedInline);
            }
        } else if !args.post_copy_only {
            println!("no tracked post-copy here: {}", tracking.why);
        }
    }
    if !args.only.is_empty() {
        for name in &args.only {
            if !ALL_STRATEGIES.contains(&name.as_str()) {
                bail!("--only {name:?}: use one of {}", ALL_STRATEGIES.join(", "));
            }
        }
        strategies.retain(|s| args.only.iter().any(|n| n == s.key()));
        args.levels.clear();
    }
    for name in args.levels.iter().filter(|n| !n.is_empty()) {
        let l = match name.as_str() {
            "none" => Level::None,
            "zstd1" => Level::Zstd1,
            "zstd3" => Level::Zstd3,
            "zstd9" => Level::Zstd9,
            other => bail!("unknown level {other:?}: use none, zstd1, zstd3 or zstd9"),
        };
        strategies.push(Strategy::Live(Compression::Fixed(l)));
    }
    println!(
        "brume bench migration: criu {criu_version} ({defers}), sizes {:?} MiB, dirtied at {} MiB/s, rtt {} ms, medians of {} run(s)",
        args.sizes, args.dirty_mib_s, args.rtt_ms, args.runs
    );
    let mut rows: Vec<Row> = Vec::new();
    let mut goodputs = Vec::new();
    for &mbit in &args.mbit {
        let rtt = args.rtt_ms;
        let bed = Testbed::builder(2, |i, j| if i == j { 0.0 } else { rtt })
            .bandwidth(0, Shaping::mbit(mbit))
            .build()
            .context("build the 2-host testbed (needs root, ip, /dev/net/tun)")?;
        let goodput = measure_goodput(&bed, mbit)?;
        println!(
            "\nlink shaped at {mbit} Mbit/s: raw TCP goodput A->B measured {goodput:.0} Mbit/s"
        );
        goodputs.push((mbit, goodput));
        let criu_a = nsenter_criu(&work, &bed, 0)?;
        let criu_b = nsenter_criu(&work, &bed, 1)?;
        for &mib in &args.sizes {
            for &strategy in &strategies {
                let mut moves = Vec::new();
                for run in 0..args.runs {
                    let seed = 0x5eed_0000 + (mib as u64) * 100 + run as u64;
                    let ctx = MoveCtx {
                        bed: &bed,
                        rt: &rt,
                        dirtier: &dirtier,
                        work: &work,
                        criu_a: &criu_a,
                        criu_b: &criu_b,
                        mbit,
                        dirty_mib_s: args.dirty_mib_s,
                        page_request_kib: args.page_request_kib,
                    };
                    let m = one_move(&ctx, mib, seed, strategy).with_context(|| {
                        format!(
                            "{} of {mib} MiB at {mbit} Mbit/s, run {run}",
                            strategy.name()
                        )
                    })?;
                    eprintln!(
                        "  {mbit} Mbit/s {mib} MiB {} run {run}: downtime {:.0} ms (dump {:.0}, frozen {:.0}, final round {:.0} for {:.0} pages, images {:.0}, transfer {:.0}, rebuild {:.0}, restore {:.0}), total {:.0} ms (pages after the restore {:.0}), {} rounds, {:.1} MiB on the wire, precopy pause {:.0} ms, level {}, dumps retried {} (final {})",
                        strategy.name(), m.downtime, m.dump, m.frozen, m.final_round, m.final_pages, m.images, m.transfer, m.rebuild, m.restore, m.total, m.pages, m.rounds, m.wire_mib, m.precopy_pause, m.level, m.retries, m.final_retries
                    );
                    moves.push(m);
                }
                rows.push(Row {
                    mbit,
                    mib,
                    strategy,
                    m: medians(&moves),
                });
            }
        }
        print_table(&rows, mbit, goodput);
        drop(bed);
    }
    let headline = args
        .mbit
        .iter()
        .copied()
        .find(|&m| m == 100)
        .or(args.mbit.first().copied());
    let Some(h) = headline else {
        bail!("no link rate given");
    };
    let find = |mib: usize, s: Strategy| {
        rows.iter()
            .find(|r| r.mbit == h && r.mib == mib && r.strategy == s)
            .map(|r| r.m.clone())
    };
    let live = Strategy::Live(Compression::Adaptive);
    let dt = |mib, s| find(mib, s).map(|m| m.downtime).unwrap_or(f64::NAN);
    // brume's live migration: the best of its modes at each size (those that ran).
    let best = |mib| {
        [live, Strategy::PostCopy, Strategy::Tracked]
            .into_iter()
            .map(|s| dt(mib, s))
            .filter(|d| !d.is_nan())
            .fold(f64::NAN, f64::min)
    };
    // Tracked post-copy's whole move against a plain TCP copy of the task's memory over the
    // same link (the goodput measured in the same run).
    let goodput = goodputs
        .iter()
        .find(|g| g.0 == h)
        .map(|g| g.1)
        .unwrap_or(f64::NAN);
    let copy_ms = |mib: usize| mib as f64 * MIB * 8.0 / (goodput * 1e6) * 1e3;
    let total_vs_transfer = |mib: usize| {
        find(mib, Strategy::Tracked)
            .map(|m| m.total / copy_ms(mib))
            .unwrap_or(f64::NAN)
    };
    let tracked = u8::from(tracking.method == brume_migration::track::Method::Tracked);
    let links = if args.no_link_ratio {
        Vec::new()
    } else {
        super::linkspeed::for_migration(args.rtt_ms, args.quick, args.runs)?
    };
    let servers = if args.server_runs == 0 {
        Vec::new()
    } else {
        let exe = crate::brume_exe()?;
        let relay = super::relay_default()?;
        super::server::measure(&exe, &relay, args.server_runs)?
    };
    if !servers.is_empty() {
        println!("\nDebian's redis moved live by `brume migrate` (medians; pause: the longest gap between two acknowledged writes)");
        println!(
            "| engine | runs | lost writes | client pause ms | downtime ms (brume) | move ms |"
        );
        println!("|---|---|---|---|---|---|");
        for f in &servers {
            println!(
                "| {} | {} | {} | {:.0} | {:.0} | {:.0} |",
                f.engine, f.runs, f.lost_writes, f.pause_ms, f.downtime_ms, f.move_ms
            );
        }
    }
    let mut line = format!("BENCH migration tracked={tracked}");
    let mut key = |k: String, v: f64, digits: usize| {
        // Numbers only: a figure this run did not measure is left out, not faked.
        if v.is_finite() {
            line.push_str(&format!(" {k}={v:.digits$}"));
        }
    };
    for mib in [32, 128, 512] {
        key(format!("downtime_ms_{mib}"), best(mib), 0);
    }
    key("stopcopy_ms_512".into(), dt(512, Strategy::StopAndCopy), 0);
    key("total_vs_transfer_512".into(), total_vs_transfer(512), 3);
    key("total_vs_transfer_128".into(), total_vs_transfer(128), 3);
    key(
        "adaptive_vs_best_static".into(),
        adaptive_vs_best_static(&rows, h),
        3,
    );
    for mib in [128, 512] {
        key(format!("precopy_ms_{mib}"), dt(mib, live), 0);
        key(format!("postcopy_ms_{mib}"), dt(mib, Strategy::PostCopy), 0);
        key(format!("tracked_ms_{mib}"), dt(mib, Strategy::Tracked), 0);
        key(
            format!("tracked_copying_ms_{mib}"),
            dt(mib, Strategy::TrackedCopying),
            0,
        );
        key(
            format!("tracked_inline_ms_{mib}"),
            dt(mib, Strategy::TrackedInline),
            0,
        );
    }
    for l in &links {
        key(format!("transfer_ratio_{}", l.label()), l.ratio_key(), 3);
    }
    if !servers.is_empty() {
        let lost: u64 = servers.iter().map(|f| f.lost_writes).sum();
        key("server_lost_writes".into(), lost as f64, 0);
        for f in &servers {
            key(format!("server_pause_ms_{}", f.engine), f.pause_ms, 0);
        }
    }
    println!("\n{line}");
    Ok(())
}

/// Adaptive total over the best fixed level's total, both summed over every size at `mbit`.
fn adaptive_vs_best_static(rows: &[Row], mbit: u64) -> f64 {
    let total = |s: Strategy| -> f64 {
        rows.iter()
            .filter(|r| r.mbit == mbit && r.strategy == s)
            .map(|r| r.m.total)
            .sum()
    };
    let adaptive = total(Strategy::Live(Compression::Adaptive));
    let best = Level::ALL
        .into_iter()
        .map(|l| total(Strategy::Live(Compression::Fixed(l))))
        .filter(|t| *t > 0.0)
        .fold(f64::INFINITY, f64::min);
    if best.is_finite() {
        adaptive / best
    } else {
        f64::NAN
    }
}

fn print_table(rows: &[Row], mbit: u64, goodput: f64) {
    println!(
        "\n{mbit} Mbit/s (measured {goodput:.0} Mbit/s). Times in ms; downtime as the polling client saw it = dump + transfer + restore (+ a poll interval)"
    );
    println!(
        "{:>5} {:<21} {:>9} {:>8} {:>8} {:>6} {:>7} {:>7} {:>9} {:>8} {:>8} {:>9} {:>7} {:>9} {:>7} {:>9} {:>6}",
        "MiB",
        "strategy",
        "downtime",
        "dump",
        "frozen",
        "final",
        "fpages",
        "images",
        "transfer",
        "rebuild",
        "restore",
        "total",
        "pages",
        "pre-pause",
        "rounds",
        "wire MiB",
        "level"
    );
    for r in rows.iter().filter(|r| r.mbit == mbit) {
        let m = &r.m;
        println!(
            "{:>5} {:<21} {:>9.0} {:>8.0} {:>8.0} {:>6.0} {:>7.0} {:>7.0} {:>9.0} {:>8.0} {:>8.0} {:>9.0} {:>7.0} {:>9.0} {:>7.1} {:>9.1} {:>6}",
            r.mib,
            r.strategy.name(),
            m.downtime,
            m.dump,
            m.frozen,
            m.final_round,
            m.final_pages,
            m.images,
            m.transfer,
            m.rebuild,
            m.restore,
            m.total,
            m.pages,
            m.precopy_pause,
            m.rounds,
            m.wire_mib,
            m.level
        );
    }
    let live = Strategy::Live(Compression::Adaptive);
    for mib in rows
        .iter()
        .filter(|r| r.mbit == mbit && r.strategy == Strategy::StopAndCopy)
        .map(|r| r.mib)
    {
        let get = |s: Strategy| {
            rows.iter()
                .find(|r| r.mbit == mbit && r.mib == mib && r.strategy == s)
                .map(|r| r.m.clone())
        };
        let Some(s) = get(Strategy::StopAndCopy) else {
            continue;
        };
        if let Some(t) = get(Strategy::Tracked) {
            println!(
                "{mib:>5} MiB: stop-and-copy downtime / tracked downtime = {:.1}x, tracked total / stop-and-copy total = {:.2}",
                s.downtime / t.downtime,
                t.total / s.total
            );
            if let Some(c) = get(Strategy::TrackedCopying) {
                println!(
                    "{mib:>5} MiB: tracked with a copying dump / with deferred reads: downtime {:.2}x, frozen dump {:.2}x",
                    c.downtime / t.downtime,
                    c.dump / t.dump
                );
            }
            if let Some(i) = get(Strategy::TrackedInline) {
                println!(
                    "{mib:>5} MiB: tracked with the last pages before the restore / after it: downtime {:.2}x",
                    i.downtime / t.downtime
                );
            }
        }
        let Some(l) = get(live) else {
            continue;
        };
        let best = Level::ALL
            .into_iter()
            .filter_map(|lv| get(Strategy::Live(Compression::Fixed(lv))).map(|m| (lv, m.total)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let best_text = match best {
            Some((lv, t)) => format!(
                ", best fixed level {} {:.0} ms (adaptive/best {:.3})",
                level_name(lv),
                t,
                l.total / t
            ),
            None => String::new(),
        };
        let post = get(Strategy::PostCopy)
            .map(|p| format!(", / post-copy downtime = {:.1}x", s.downtime / p.downtime))
            .unwrap_or_default();
        println!(
            "{mib:>5} MiB: stop-and-copy downtime / live downtime = {:.1}x{post}{best_text}",
            s.downtime / l.downtime
        );
    }
    println!(
        "adaptive_vs_best_static at {mbit} Mbit/s (sums over sizes): {:.3}",
        adaptive_vs_best_static(rows, mbit)
    );
}

fn medians(moves: &[Move]) -> Move {
    let med = |f: fn(&Move) -> f64| median(&mut moves.iter().map(f).collect::<Vec<_>>());
    Move {
        downtime: med(|m| m.downtime),
        dump: med(|m| m.dump),
        frozen: med(|m| m.frozen),
        transfer: med(|m| m.transfer),
        rebuild: med(|m| m.rebuild),
        restore: med(|m| m.restore),
        total: med(|m| m.total),
        pages: med(|m| m.pages),
        final_round: med(|m| m.final_round),
        final_pages: med(|m| m.final_pages),
        images: med(|m| m.images),
        precopy_pause: med(|m| m.precopy_pause),
        rounds: med(|m| m.rounds),
        wire_mib: med(|m| m.wire_mib),
        level: moves.last().map(|m| m.level.clone()).unwrap_or_default(),
        final_retries: moves.iter().map(|m| m.final_retries).sum(),
        retries: moves.iter().map(|m| m.retries).sum(),
    }
}

struct MoveCtx<'a> {
    bed: &'a Testbed,
    rt: &'a tokio::runtime::Runtime,
    dirtier: &'a Path,
    work: &'a Path,
    criu_a: &'a Path,
    criu_b: &'a Path,
    mbit: u64,
    dirty_mib_s: f64,
    page_request_kib: u64,
}

/// Starts a fresh task in host A, moves it to host B with `strategy`, verifies it, kills it.
fn one_move(ctx: &MoveCtx<'_>, mib: usize, seed: u64, strategy: Strategy) -> anyhow::Result<Move> {
    let dir = ctx
        .work
        .join(format!("move-{seed:x}-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveOnDrop(dir.clone());
    let socket = dir.join("w.sock");
    let mut task = Task::start(ctx, &socket, mib, seed)?;
    // Let it dirty for a while before the move starts.
    std::thread::sleep(Duration::from_millis(500));
    let before = task.verify(ctx.dirtier)?;
    // Polls from inside host A's namespace, so the sockets a dump may find half-connected to
    // the task belong to the namespace CRIU looks at.
    let netns = ctx.bed.netns(0).to_string();
    let poller = Poller::start(&socket, "TICK", Duration::from_millis(1), move || {
        brume_testnet::netns::enter(&netns).is_ok()
    });
    std::thread::sleep(Duration::from_millis(100));

    let listener = ctx
        .bed
        .run_in(1, || StdListener::bind((ctx.bed.addr(1), 0)))??;
    let addr = listener.local_addr()?;
    let stream = ctx.bed.run_in(0, || StdStream::connect(addr))??;
    stream.set_nodelay(true)?;
    let bytes_per_sec = ctx.mbit as f64 * 1e6 / 8.0;
    let mut src = SourceOptions::new(dir.join("source"));
    src.criu = Criu::with_binary(ctx.criu_a);
    // As the node moves tasks (brume's `migrate::live`): no network lock. The dirtier holds no
    // TCP connection (its poller talks over a Unix socket), so CRIU's lock would only set up
    // nftables tables while the task is frozen (34-69 ms on a loaded machine, measured).
    src.network_lock = NetworkLock::Skip;
    src.bandwidth = Some(bytes_per_sec);
    src.planner = PlannerConfig {
        max_downtime: Duration::from_secs(120),
        ..PlannerConfig::default()
    };
    match strategy {
        Strategy::Live(c) => src.compression = c,
        Strategy::PostCopy => src.mode = Mode::PostCopy,
        Strategy::Tracked | Strategy::TrackedCopying | Strategy::TrackedInline => {
            src.mode = Mode::PostCopy;
            src.track = true;
            src.defer_lazy_reads = strategy != Strategy::TrackedCopying;
            if strategy == Strategy::TrackedInline {
                src.tracked.final_inline = None;
            }
        }
        Strategy::StopAndCopy => {
            src.mode = Mode::StopAndCopy;
            src.compression = Compression::Fixed(Level::None);
        }
    }
    let mut dst = TargetOptions::new(dir.join("staging"));
    dst.criu = Criu::with_binary(ctx.criu_b);
    dst.network_lock = NetworkLock::Skip;
    // The task is the init of its own PID namespace: restored as a new namespace, it needs no
    // free PID, so post-copy can restore it while the frozen original still exists.
    dst.pid_namespace = true;
    let kib = match ctx.page_request_kib {
        0 => ((bytes_per_sec * 0.002 / 1024.0) as u64).max(16),
        k => k,
    };
    dst.page_request_cap = (kib / 4).max(1);
    // Two capped answers in flight ahead of a fault: the background sweep keeps about half of
    // this link busy while a fault waits behind at most 2 caps (measured: 16 caps in flight
    // fetched 32 MiB with the link's speed but kept the woken task waiting 3 s on its faults).
    dst.prefetch_window = dst.page_request_cap * 2;
    let pid = task.pid;
    let mut rounds: Vec<RoundStats> = Vec::new();
    let (out, received) = ctx.rt.block_on(async {
        listener.set_nonblocking(true)?;
        stream.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let stream = tokio::net::TcpStream::from_std(stream)?;
        let target = tokio::spawn(async move {
            let (s, _) = listener.accept().await?;
            s.set_nodelay(true)?;
            Ok::<_, anyhow::Error>(migrate_in(s, dst).await)
        });
        let out = migrate_out(stream, pid, src, |r| rounds.push(r.clone())).await;
        let received = target.await?;
        Ok::<_, anyhow::Error>((out, received))
    })?;
    if let Ok(Ok(r)) = &received {
        task.restored = Some(r.pid);
    }
    std::thread::sleep(Duration::from_millis(300));
    let log = poller.finish();
    let migrated = out.context("the migration failed")?;
    received?.context("the target failed")?;
    task.original_gone()?;
    // The counter went up by exactly one between consecutive answers, across the move too.
    for w in log.windows(2) {
        if w[1].value != w[0].value + 1 {
            bail!(
                "the counter went from {} to {} across the move: the task's state did not continue",
                w[0].value,
                w[1].value
            );
        }
    }
    let after = task.verify(ctx.dirtier)?;
    if after <= before {
        bail!("the task stopped dirtying ({before} steps, then {after})");
    }
    let last = migrated.rounds.last().cloned().context("no final round")?;
    // The switch: the original's last answer and the restored task's first (told apart by the
    // PID behind the socket, so a client stuck on the frozen original does not blur it).
    let (old, new) = brume_testnet::poller::switch(&log, task.pid)
        .context("the poller saw no answer from the original or none from the restored task")?;
    let downtime = new.at - old.at;
    let precopy_pause = log
        .windows(2)
        .filter(|w| w[1].peer == task.pid)
        .map(|w| w[1].at - w[0].at)
        .max()
        .unwrap_or_default();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let rebuild = ms(migrated.rebuild);
    let restore = ms(migrated.restore);
    let level = match strategy {
        Strategy::Live(Compression::Adaptive) => rounds
            .iter()
            .map(|r| level_name(r.main_level()))
            .collect::<Vec<_>>()
            .join(","),
        Strategy::Live(Compression::Fixed(l)) => level_name(l).into(),
        Strategy::PostCopy
        | Strategy::Tracked
        | Strategy::TrackedCopying
        | Strategy::TrackedInline => level_name(last.main_level()).into(),
        Strategy::StopAndCopy => "none".into(),
    };
    let (final_round, final_pages, images) = migrated
        .post_copy
        .as_ref()
        .map(|p| (ms(p.final_round), p.final_pages as f64, ms(p.images)))
        .unwrap_or((0.0, 0.0, 0.0));
    Ok(Move {
        downtime: ms(downtime),
        dump: ms(last.dump),
        frozen: last.frozen.map(ms).unwrap_or(f64::NAN),
        // What the frozen part spent beyond the parts named: the link, the relay, the target.
        transfer: ms(last.transfer) - rebuild - restore - final_round - images,
        final_round,
        final_pages,
        images,
        rebuild,
        restore,
        total: ms(migrated.total),
        pages: migrated
            .post_copy
            .as_ref()
            .map(|p| ms(p.pages_done))
            .unwrap_or(0.0),
        precopy_pause: ms(precopy_pause),
        rounds: (migrated.rounds.len() - 1) as f64,
        wire_mib: migrated.wire_bytes as f64 / MIB,
        level,
        final_retries: last.dump_attempts - 1,
        retries: migrated.rounds.iter().map(|r| r.dump_attempts - 1).sum(),
    })
}

/// A dirtier started in host A as the init of its own PID namespace; killed on drop, the
/// original and its restored copy.
struct Task {
    /// The original's host PID.
    pid: u32,
    /// The restored copy's host PID, once there is one.
    restored: Option<u32>,
    /// The original is gone and reaped: its PID may belong to anyone now.
    gone: bool,
    socket: PathBuf,
    mib: usize,
    seed: u64,
    reaper: Option<JoinHandle<()>>,
}

impl Task {
    fn start(ctx: &MoveCtx<'_>, socket: &Path, mib: usize, seed: u64) -> anyhow::Result<Task> {
        let (mut child, pid) = ctx.bed.run_in(0, || {
            let mut cmd = brume_testnet::pidns::command(ctx.dirtier);
            cmd.arg("serve")
                .arg(socket)
                .arg(mib.to_string())
                .arg(seed.to_string())
                .arg(ctx.dirty_mib_s.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            brume_testnet::pidns::spawn(&mut cmd)
        })??;
        // `unshare` exits when the dirtier (its only child) dies: reaped at once.
        let reaper = std::thread::spawn(move || {
            let _ = child.wait();
        });
        let started = Instant::now();
        let task = Task {
            pid,
            restored: None,
            gone: false,
            socket: socket.to_path_buf(),
            mib,
            seed,
            reaper: Some(reaper),
        };
        while UnixStream::connect(socket).is_err() {
            if started.elapsed() > Duration::from_secs(60) {
                bail!("the dirtier did not come up on {}", socket.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(task)
    }

    /// Checks that the memory is what the seed and the task's step count make; returns steps.
    fn verify(&self, dirtier: &Path) -> anyhow::Result<u64> {
        verify_dirtier(&self.socket, dirtier, self.mib, self.seed)
    }
}

/// Asks the dirtier serving on `socket` for its memory's checksum and checks it is what its
/// seed and step count make (`dirtier expect`); returns the steps.
pub(crate) fn verify_dirtier(
    socket: &Path,
    dirtier: &Path,
    mib: usize,
    seed: u64,
) -> anyhow::Result<u64> {
    let line = ask(socket, "SUM")?;
    let mut it = line.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(steps)), Some(Ok(sum))) = (it.next(), it.next()) else {
        bail!("the task answered {line:?} to SUM");
    };
    let out = Command::new(dirtier)
        .args(["expect", &mib.to_string(), &seed.to_string()])
        .arg(steps.to_string())
        .output()?;
    let expected: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("dirtier expect")?;
    if expected != sum {
        bail!("after {steps} steps the task's checksum is {sum}, but the seed and steps make {expected}: its memory did not survive");
    }
    Ok(steps)
}

impl Task {
    /// Waits (bounded) until the original is gone and reaped, as after a finished move.
    fn original_gone(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        while self.reaper.as_ref().is_some_and(|r| !r.is_finished()) {
            if started.elapsed() > Duration::from_secs(10) {
                bail!("the original (pid {}) still runs after the move", self.pid);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(r) = self.reaper.take() {
            let _ = r.join();
        }
        self.gone = true;
        Ok(())
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        let pids = [(!self.gone).then_some(self.pid), self.restored];
        for pid in pids.into_iter().flatten() {
            // SAFETY: kill(2) has no memory effects.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        if let Some(r) = self.reaper.take() {
            let _ = r.join();
        }
    }
}

fn ask(socket: &Path, command: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    writeln!(s, "{command}")?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// A `criu` that runs in host `i`'s network namespace (same mount namespace, so images and
/// Unix socket paths are shared): the task is dumped in A and restored in B.
fn nsenter_criu(work: &Path, bed: &Testbed, i: usize) -> anyhow::Result<PathBuf> {
    let path = work.join(format!("criu-host{i}.sh"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nexec nsenter --net={}/{} criu \"$@\"\n",
            brume_testnet::netns::NETNS_DIR,
            bed.netns(i)
        ),
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// The dirtier, compiled with `rustc -O` into the bench's work directory; `static_binary`: with
/// the C library linked in (crt-static), so a `FROM scratch` image runs it
/// ([`crate::docker_moves`]).
pub(crate) fn build_dirtier(work: &Path, static_binary: bool) -> anyhow::Result<PathBuf> {
    let src = work.join("dirtier.rs");
    let bin = work.join("dirtier");
    std::fs::write(&src, DIRTIER_SRC)?;
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let mut cmd = Command::new(&rustc);
    cmd.args(["--edition", "2021", "-O"]);
    if static_binary {
        cmd.args(["-C", "target-feature=+crt-static"]);
    }
    let out = cmd
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .with_context(|| format!("run {rustc} to build the dirtier workload"))?;
    if !out.status.success() {
        bail!(
            "rustc could not build the dirtier: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(bin)
}

/// Raw TCP goodput from host A to host B through the shaped link, Mbit/s (1.5 s worth of bytes).
fn measure_goodput(bed: &Testbed, mbit: u64) -> anyhow::Result<f64> {
    let bytes = (mbit as usize * 1_000_000 / 8 * 3 / 2).max(1 << 20);
    let listener = bed.run_in(1, || StdListener::bind((bed.addr(1), 0)))??;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<(usize, Instant)> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0;
        loop {
            let k = s.read(&mut buf)?;
            if k == 0 {
                return Ok((n, Instant::now()));
            }
            n += k;
        }
    });
    let mut s = bed.run_in(0, || StdStream::connect(addr))??;
    let started = Instant::now();
    let chunk = vec![0x5au8; 1 << 16];
    let mut sent = 0;
    while sent < bytes {
        s.write_all(&chunk)?;
        sent += chunk.len();
    }
    drop(s);
    let (got, ended) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the goodput reader panicked"))??;
    Ok(got as f64 * 8.0 / 1e6 / (ended - started).as_secs_f64())
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
