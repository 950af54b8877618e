//! `brume bench chaos`: what failures cost a deployed service (issue 15). Four `brume node`
//! daemons on loopback (process engine, 150 mCPU each, so the three relay tasks
//! `front -> mid -> back` land on three nodes and one node is free), deployed from node 0, a
//! fresh net for each experiment of each run:
//!
//! * crash: the node hosting `back` is killed with SIGKILL (its tasks die with it).
//!   `detect_s` is the silence at which node 0 declared it dead (`detect_ms` of node 0's
//!   "instance of a dead host placed again" log line); `recover_s` the time from the kill until
//!   node 0's `brume ps` shows every instance running on a live node; `lost_tasks` the
//!   instances not running again within `--bound-s`.
//! * partition: the node hosting `back` is frozen with SIGSTOP for `--partition-s` (its tasks
//!   keep running: the old copy still serves), then thawed with SIGCONT.
//!   `duplicates_after_heal` is how many more processes of the service run on the machine than
//!   it has instances, once `ps` shows every instance running and the count settled (or
//!   `--bound-s` after the thaw).
//! * restart: the node hosting `back` is killed and started again on its data directory.
//!   `orphans_after_restart` is how many processes of the service run that no running
//!   instance in `ps` explains, once `ps` shows every instance running (or `--bound-s` after).
//! * crash with state: `back` is `stateful`, `checkpoint = "criu"`, `checkpoint_every_s = 1`
//!   (its count of calls lives only in its memory; its host dumps it with CRIU every second).
//!   Calls go through `front` for [`CALLING`], then back's host and back's process are killed
//!   with SIGKILL (a device that dies takes its processes along). `state_recover_s` is the
//!   time from the kill until `ps` shows back running on another node; `state_lost_calls` how
//!   many of the calls back had answered its restored copy no longer counts (what it did since
//!   the last checkpoint the owner kept; all of them if it started fresh);
//!   `state_lost_beyond_checkpoint` how many of those were answered before the capture of the
//!   latest checkpoint node 0 keeps (its `seq`, the host's clock, which is this machine's): the
//!   loss the checkpoints should have prevented, 0 when it works. Needs CRIU (root).
//!
//! Every wait polls `brume ps` (or /proc); the only sleep that is not a poll is the partition
//! itself. Figures are medians over `--runs`. Needs scripts/build-static.sh's relay binary;
//! counting processes reads /proc/<pid>/environ, so run it as the user the tasks run as (root).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::median;
use brume_testnet::localnet::LocalNet;
use brume_testnet::relay_service::ask;

/// Options of `brume bench chaos`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// Runs of each experiment; figures are medians.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// How long the partitioned node stays frozen.
    #[arg(long, default_value_t = 30)]
    pub partition_s: u64,
    /// How long an instance may take to run again before it counts as lost.
    #[arg(long, default_value_t = 60)]
    pub bound_s: u64,
    /// The nodes' heartbeat interval.
    #[arg(long, default_value_t = 500)]
    pub heartbeat_ms: u64,
    /// The static relay binary (built by scripts/build-static.sh).
    #[arg(long)]
    pub relay: Option<PathBuf>,
    /// Leave out the crash of a CRIU-checkpointed task (which needs CRIU >= 4.2 and root).
    #[arg(long)]
    pub no_state: bool,
}

/// How long calls go through the chain before the crash with state (three checkpoints).
const CALLING: Duration = Duration::from_secs(3);

/// back's lines for the crash with state.
const CRIU_BACK: &str = "stateful = true\ncheckpoint = \"criu\"\ncheckpoint_every_s = 1\n";

const NODES: usize = 4;
const TASKS: [&str; 3] = ["front", "mid", "back"];

/// One instance as node 0's `ps` shows it.
#[derive(Debug, Clone)]
struct Row {
    task: String,
    host: String,
    state: String,
    /// Where it listens, `host:port`.
    address: String,
}

fn ps(net: &LocalNet) -> Vec<Row> {
    let Ok(out) = net.brume(0, &["ps", "--json"]) else {
        return Vec::new();
    };
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    rows.iter()
        .map(|r| Row {
            task: r["task"].as_str().unwrap_or_default().to_string(),
            host: r["host"].as_str().unwrap_or_default().to_string(),
            state: r["state"].as_str().unwrap_or_default().to_string(),
            address: r["address"].as_str().unwrap_or_default().to_string(),
        })
        .collect()
}

/// The tasks running, on a host other than `not_on`.
fn running(rows: &[Row], not_on: Option<&str>) -> usize {
    TASKS
        .iter()
        .filter(|t| {
            rows.iter().any(|r| {
                r.task == **t && r.state == "running" && not_on.is_none_or(|h| r.host != h)
            })
        })
        .count()
}

fn node_id(net: &LocalNet, i: usize) -> anyhow::Result<String> {
    let out = net.brume(i, &["status", "--json"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let id = v["node_id"].as_u64().context("no node_id in status")?;
    Ok(format!("n{id}"))
}

/// The pids of the live processes (not zombies, not the `unshare` the process engine starts a
/// task through) whose environment says they are a task of `service`.
fn processes_of(service: &str) -> Vec<u32> {
    brume_testnet::processes::processes_with_env(&[&format!("BRUME_SERVICE={service}")])
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?
        .success();
    anyhow::ensure!(ok, "kill {sig} {pid} failed");
    Ok(())
}

/// A fresh net with the chain deployed and running; the index of the node hosting `back`.
fn setup(
    exe: &Path,
    relay: &Path,
    args: &[&str],
    service: &str,
) -> anyhow::Result<(LocalNet, usize, String)> {
    setup_with(exe, relay, args, service, "")
}

/// [`setup`] with `back_lines` added to back's task table.
fn setup_with(
    exe: &Path,
    relay: &Path,
    args: &[&str],
    service: &str,
    back_lines: &str,
) -> anyhow::Result<(LocalNet, usize, String)> {
    let net = LocalNet::start_logged(exe, NODES, args)?;
    let dir = net.dir().join("svc");
    std::fs::create_dir_all(&dir)?;
    brume_testnet::relay_service::context(&dir, relay, service)?;
    let m = brume_testnet::relay_service::manifest(&dir, service)?;
    let back = "name = \"back\"\nbuild = \"ctx\"\ncpu_millis = 100\nmemory_mb = 64\n";
    let text = std::fs::read_to_string(&m)?;
    anyhow::ensure!(text.contains(back), "the relay manifest changed: {text}");
    std::fs::write(&m, text.replace(back, &format!("{back}{back_lines}")))?;
    let out = net.brume(0, &["deploy", &m.to_string_lossy(), "--json"])?;
    anyhow::ensure!(
        out.status.success(),
        "deploy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = poll(Duration::from_secs(60), || {
        let rows = ps(&net);
        (running(&rows, None) == TASKS.len()).then_some(rows)
    })
    .context("the deployed chain did not run within 60 s")?;
    let (victim, host) = back_host(&net, &rows)?;
    Ok((net, victim, host))
}

/// The node (index, id) `rows` show back running on: one of nodes 1.. (node 0 is where the
/// bench asks, and keeps the checkpoints).
fn back_host(net: &LocalNet, rows: &[Row]) -> anyhow::Result<(usize, String)> {
    let host = rows
        .iter()
        .find(|r| r.task == "back" && r.state == "running")
        .map(|r| r.host.clone())
        .context("no running back in ps")?;
    for i in 1..NODES {
        if node_id(net, i)? == host {
            return Ok((i, host));
        }
    }
    anyhow::bail!("back runs on {host}, none of nodes 1..{NODES}")
}

/// Polls every 100 ms until `ready` gives a value or `limit` passes.
fn poll<T>(limit: Duration, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = ready() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `log` says an instance of `host` was placed again.
fn placed_again(log: &Path, host: &str) -> bool {
    std::fs::read_to_string(log).is_ok_and(|text| {
        text.lines().any(|l| {
            let l = strip_ansi(l);
            l.contains("instance of a dead host placed again")
                && l.contains(&format!("from={host}"))
        })
    })
}

/// The `detect_ms` of the last "placed again" line in `log`, in seconds.
fn detect_from_log(log: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("instance of a dead host placed again"))?;
    let plain = strip_ansi(line);
    let at = plain.find("detect_ms=")? + "detect_ms=".len();
    let digits: String = plain[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse::<f64>().ok().map(|ms| ms / 1000.0)
}

pub(crate) fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

struct Crash {
    detect_s: f64,
    recover_s: f64,
    lost: usize,
}

fn crash(
    exe: &Path,
    relay: &Path,
    args: &[&str],
    a: &ChaosArgs,
    service: &str,
) -> anyhow::Result<Crash> {
    let (mut net, victim, host) = setup(exe, relay, args, service)?;
    let t0 = Instant::now();
    net.kill(victim)
        .with_context(|| format!("cannot kill node {victim}"))?;
    let bound = Duration::from_secs(a.bound_s);
    let back = poll(bound, || {
        (running(&ps(&net), Some(&host)) == TASKS.len()).then(|| t0.elapsed())
    });
    let lost = match back {
        Some(_) => 0,
        None => TASKS.len() - running(&ps(&net), Some(&host)),
    };
    // `ps` shows the new placement as soon as node 0's ledger has it; node 0 logs the line
    // with the detection time only after it has told the other nodes, so it is waited for.
    let detect_s = match back {
        Some(_) => poll(bound, || detect_from_log(&net.log(0))).unwrap_or(f64::NAN),
        None => detect_from_log(&net.log(0)).unwrap_or(f64::NAN),
    };
    Ok(Crash {
        detect_s,
        recover_s: back.map_or(f64::NAN, |d| d.as_secs_f64()),
        lost,
    })
}

/// Duplicates after the heal, and whether `back` was placed again while its host was frozen
/// (a partition shorter than the detection re-places nothing).
fn partition(
    exe: &Path,
    relay: &Path,
    args: &[&str],
    a: &ChaosArgs,
    service: &str,
) -> anyhow::Result<(usize, bool)> {
    let (net, victim, host) = setup(exe, relay, args, service)?;
    let pid = net.pid(victim).context("victim pid")?;
    signal(pid, "-STOP")?;
    // The partition itself lasts its time whatever happens; meanwhile ps is watched.
    let freeze = Duration::from_secs(a.partition_s);
    let t0 = Instant::now();
    let mut replaced = false;
    while t0.elapsed() < freeze {
        // From node 0's log: a `ps` asked of the frozen host waits on it.
        replaced = replaced || placed_again(&net.log(0), &host);
        std::thread::sleep(Duration::from_millis(200).min(freeze.saturating_sub(t0.elapsed())));
    }
    signal(pid, "-CONT")?;
    let bound = Duration::from_secs(a.bound_s);
    let settled = poll(bound, || {
        let rows = ps(&net);
        let n = processes_of(service).len();
        (running(&rows, None) == TASKS.len() && n <= TASKS.len()).then_some(0)
    });
    let dups = settled.unwrap_or_else(|| processes_of(service).len().saturating_sub(TASKS.len()));
    Ok((dups, replaced))
}

/// Orphan processes after the restart, and the instances not running again within the bound.
fn restart(
    exe: &Path,
    relay: &Path,
    args: &[&str],
    a: &ChaosArgs,
    service: &str,
) -> anyhow::Result<(usize, usize)> {
    let (mut net, victim, _) = setup(exe, relay, args, service)?;
    net.kill(victim)?;
    net.restart(victim)?;
    let bound = Duration::from_secs(a.bound_s);
    let explained = |rows: &[Row]| rows.iter().filter(|r| r.state == "running").count();
    let settled = poll(bound, || {
        let rows = ps(&net);
        (running(&rows, None) == TASKS.len() && processes_of(service).len() <= explained(&rows))
            .then_some(0)
    });
    let rows = ps(&net);
    let orphans =
        settled.unwrap_or_else(|| processes_of(service).len().saturating_sub(explained(&rows)));
    Ok((orphans, TASKS.len() - running(&rows, None)))
}

/// `task`'s pid on the node whose data directory is `data` (its hosted file).
fn hosted_pid(data: &Path, task: &str) -> anyhow::Result<u32> {
    let file = data.join("hosted.json");
    let text = std::fs::read_to_string(&file)?;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text)?;
    let record = rows
        .iter()
        .find(|r| r["spec"]["id"]["task"] == task)
        .with_context(|| {
            let tasks: Vec<&serde_json::Value> =
                rows.iter().map(|r| &r["spec"]["id"]["task"]).collect();
            format!(
                "no record of {task} in {} (tasks: {tasks:?})",
                file.display()
            )
        })?;
    record["process"]["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .with_context(|| format!("{task}'s record in {} has no pid: {record}", file.display()))
}

struct Kept {
    recover_s: f64,
    lost_calls: u64,
    lost_beyond: u64,
    answered: u64,
}

/// Milliseconds since 1970.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The `seq` (the host's capture time, ms since 1970) of the checkpoint node 0 keeps of
/// `service`'s back.
fn kept_seq(net: &LocalNet, service: &str) -> anyhow::Result<u64> {
    use ciborium::Value;
    let path = net.data(0).join("checkpoints").join(service).join("back.0");
    let bytes =
        std::fs::read(&path).with_context(|| format!("no checkpoint {}", path.display()))?;
    let v: Value = ciborium::from_reader(bytes.as_slice())?;
    v.into_map()
        .ok()
        .and_then(|m| {
            m.into_iter()
                .find(|(k, _)| k.as_text() == Some("seq"))
                .and_then(|(_, v)| v.into_integer().ok())
                .and_then(|i| u64::try_from(i).ok())
        })
        .with_context(|| format!("no seq in {}", path.display()))
}

fn crash_with_state(
    exe: &Path,
    relay: &Path,
    args: &[&str],
    a: &ChaosArgs,
    service: &str,
) -> anyhow::Result<Kept> {
    let (mut net, _, placed_on) = setup_with(exe, relay, args, service, CRIU_BACK)?;
    let front = ps(&net)
        .into_iter()
        .find(|r| r.task == "front")
        .context("no front in ps")?
        .address;
    // When each call back answered came back (ms since 1970).
    let mut answered_at: Vec<u64> = Vec::new();
    let calling = Instant::now();
    while calling.elapsed() < CALLING {
        if ask(&front, "hello").ok().as_deref() == Some("front(mid(back))") {
            answered_at.push(unix_ms());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let answered = answered_at.len() as u64;
    // The crash comes once node 0 keeps a checkpoint (on a slow machine the first may take
    // longer than the calls).
    let bound = Duration::from_secs(a.bound_s);
    poll(bound, || kept_seq(&net, service).ok())
        .context("node 0 kept no checkpoint of back within the bound")?;
    // Where back runs now: on a loaded machine a node may have been suspected dead meanwhile
    // and back placed again from its checkpoint elsewhere.
    let (victim, host) = poll(bound, || back_host(&net, &ps(&net)).ok())
        .context("back ran on none of nodes 1.. within the bound")?;
    if host != placed_on {
        eprintln!("  crash with state: back moved from {placed_on} to {host} before the crash");
    }
    let pid = hosted_pid(&net.data(victim), "back")?;
    let t0 = Instant::now();
    net.kill(victim)
        .with_context(|| format!("cannot kill node {victim}"))?;
    signal(pid, "-KILL")?;
    // The host is dead: the latest checkpoint node 0 keeps is the one back comes back from.
    let seq = kept_seq(&net, service)?;
    let since = answered_at.iter().filter(|&&t| t > seq).count() as u64;
    let moved = poll(bound, || {
        let rows = ps(&net);
        let row = rows
            .into_iter()
            .find(|r| r.task == "back" && r.host != host && r.state == "running")?;
        Some((row, t0.elapsed()))
    });
    let Some((moved, took)) = moved else {
        return Ok(Kept {
            recover_s: f64::NAN,
            lost_calls: answered,
            lost_beyond: answered.saturating_sub(since),
            answered,
        });
    };
    let counted: u64 = poll(bound, || ask(&moved.address, "STATE").ok()?.parse().ok())
        .context("the re-placed back does not answer STATE")?;
    let lost_calls = answered.saturating_sub(counted);
    Ok(Kept {
        recover_s: took.as_secs_f64(),
        lost_calls,
        lost_beyond: lost_calls.saturating_sub(since),
        answered,
    })
}

pub fn run(a: &ChaosArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; timings will be slow (use --release)");
    }
    let relay = match &a.relay {
        Some(p) => p.clone(),
        None => super::relay_default()?,
    };
    anyhow::ensure!(
        relay.exists(),
        "no relay binary at {}: run scripts/build-static.sh first (or pass --relay PATH)",
        relay.display()
    );
    if !a.no_state {
        brume_migration::criu::Criu::new().check().map_err(|e| {
            anyhow::anyhow!(
                "the crash with state needs CRIU: {e} (scripts/install-criu.sh installs it; \
                 --no-state leaves that experiment out)"
            )
        })?;
    }
    let exe = crate::brume_exe()?;
    let hb = a.heartbeat_ms.to_string();
    let args = [
        "--engine",
        "process",
        "--cpu-millis",
        "150",
        "--heartbeat-interval-ms",
        &hb,
    ];
    let runs = a.runs.max(1);
    let tag = format!("{:08x}", rand::random::<u32>());
    let (mut replaced, mut missing) = (0usize, Vec::new());
    let (mut detect, mut recover, mut lost, mut dups, mut orphans) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut state_recover, mut state_lost, mut state_beyond, mut state_answered) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..runs {
        eprintln!("run {}/{runs}: crash", r + 1);
        let c = crash(&exe, &relay, &args, a, &format!("chaos-{tag}-c{r}"))?;
        eprintln!(
            "  detect {:.2} s, recover {:.2} s, lost {}",
            c.detect_s, c.recover_s, c.lost
        );
        detect.push(c.detect_s);
        recover.push(c.recover_s);
        lost.push(c.lost as f64);
        eprintln!("run {}/{runs}: partition of {} s", r + 1, a.partition_s);
        let (d, re) = partition(&exe, &relay, &args, a, &format!("chaos-{tag}-p{r}"))?;
        eprintln!("  duplicates after the heal: {d} (back placed again while frozen: {re})");
        dups.push(d as f64);
        replaced += usize::from(re);
        eprintln!("run {}/{runs}: restart", r + 1);
        let (o, m) = restart(&exe, &relay, &args, a, &format!("chaos-{tag}-r{r}"))?;
        eprintln!("  orphans after the restart: {o}, instances not running again: {m}");
        orphans.push(o as f64);
        missing.push(m as f64);
        if !a.no_state {
            eprintln!("run {}/{runs}: crash with state (CRIU every second)", r + 1);
            let k = crash_with_state(&exe, &relay, &args, a, &format!("chaos-{tag}-s{r}"))?;
            eprintln!(
                "  back running again after {:.2} s; of {} calls it answered, its copy lost {} \
                 ({} answered before the latest checkpoint)",
                k.recover_s, k.answered, k.lost_calls, k.lost_beyond
            );
            state_recover.push(k.recover_s);
            state_lost.push(k.lost_calls as f64);
            state_beyond.push(k.lost_beyond as f64);
            state_answered.push(k.answered as f64);
        }
    }
    let (detect_s, recover_s) = (median(&mut detect), median(&mut recover));
    let (lost_tasks, dup, orph) = (median(&mut lost), median(&mut dups), median(&mut orphans));
    println!(
        "Failures of a 3-task chain on {NODES} local nodes (process engine, heartbeat {} ms), \
         medians of {runs}",
        a.heartbeat_ms
    );
    println!("  crash (SIGKILL): detected after a silence of     {detect_s:>8.2} s");
    println!("  crash (SIGKILL): every instance running again    {recover_s:>8.2} s");
    println!(
        "  crash: instances not back within {:>3} s          {lost_tasks:>8.0}",
        a.bound_s
    );
    println!(
        "  partition (SIGSTOP {:>3} s): duplicates after heal {dup:>8.0}",
        a.partition_s
    );
    println!(
        "    (back placed again while frozen in {replaced} of {runs} runs: a partition shorter \
         than the detection places nothing again)"
    );
    println!("  restart: orphan task processes                   {orph:>8.0}");
    println!(
        "  restart: instances not running within {:>3} s     {:>8.0}",
        a.bound_s,
        median(&mut missing)
    );
    let mut state = String::new();
    if !a.no_state {
        let (rec, lost, beyond, calls) = (
            median(&mut state_recover),
            median(&mut state_lost),
            median(&mut state_beyond),
            median(&mut state_answered),
        );
        println!("  crash with state: back running again             {rec:>8.2} s");
        println!(
            "  crash with state: calls lost of {calls:>4.0} answered    {lost:>8.0}   (CRIU \
             checkpoint every 1 s; calls for {} s)",
            CALLING.as_secs()
        );
        println!("  crash with state: of those, before the checkpoint {beyond:>8.0}");
        state = format!(
            " state_recover_s={rec:.3} state_lost_calls={lost:.0} \
             state_lost_beyond_checkpoint={beyond:.0}"
        );
    }
    println!(
        "BENCH chaos detect_s={detect_s:.3} recover_s={recover_s:.3} duplicates_after_heal={dup:.0} \
         lost_tasks={lost_tasks:.0} orphans_after_restart={orph:.0}{state}"
    );
    Ok(())
}
