//! `brume bench predictor --drain-trials N`: issue 14's drain test on the testbed, the part of
//! the predictor bench that runs real daemons (the replay of the trace needs none).
//!
//! Each trial starts four `brume node` daemons on loopback (process engine, 150 mCPU each, so
//! the relay chain's three 100 mCPU tasks land on three nodes and one node is free), deploys
//! the chain (`front`, the service's root task, `-> mid -> back`) with `mid` moved live
//! (`checkpoint = "criu"`, `user = "root"`, `downtime_budget_ms` = `--drain-budget-ms`), waits
//! until the chain answers, then runs `brume drain --deadline D` on the node hosting `mid`.
//! The drain starts each move at D minus the node's predicted move duration minus its margin
//! (the drain's default, 1 s), so a bad prediction shows as a late move.
//!
//! What is measured, per trial, and from where:
//! * the drain's own verdict: every line of its report says "(before the deadline)", counted
//!   by the node from its receipt of the request;
//! * independently, by this program: from just before it runs `brume drain` (earlier than the
//!   node's clock starts), it polls node 0's `brume ps` every 100 ms and records when each task
//!   of the drained node is first seen `running` on another host. That time is an upper bound
//!   of the true one (poll interval and `ps` latency are added), so a trial it calls on time
//!   was on time;
//! * the final freeze: the predicted downtime the node reported after its last pre-copy round
//!   (the prediction the freeze was entered on) and the downtime the target measured, from the
//!   drain's progress lines; a freeze over the budget is counted;
//! * the node's predicted move duration and scheduled start, from its "drain: move scheduled"
//!   log line, beside the move's measured duration.
//!
//! A trial is met when both verdicts say every task ran on its new host before D. A trial whose
//! setup fails counts as not met and says why.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use brume_testnet::localnet::LocalNet;

use crate::chaos::strip_ansi;
use brume_testnet::relay_service::ask;

const NODES: usize = 4;
const TASKS: [&str; 3] = ["front", "mid", "back"];
/// How long the deployed chain may take to run and answer.
const READY: Duration = Duration::from_secs(60);
/// How often the trial polls `brume ps` during the drain.
const POLL: Duration = Duration::from_millis(100);
/// How long after the drain's deadline the trial keeps looking for the moved tasks.
const AFTER: Duration = Duration::from_secs(30);

/// The drain trials' settings.
#[derive(Debug, Clone)]
pub struct DrainSetup {
    pub trials: usize,
    pub deadline: Duration,
    pub budget_ms: u64,
    pub relay: PathBuf,
}

/// What one trial measured.
#[derive(Debug, Clone, Default)]
pub struct Trial {
    /// Why the trial could not drain (setup failed), if so.
    pub error: Option<String>,
    /// The drain's report lines and how many said "(before the deadline)".
    pub lines: usize,
    pub on_time_lines: usize,
    /// Lines whose task moved (mode criu).
    pub moved_criu: usize,
    /// The tasks the drained node ran, and the latest time (s from before the drain) this
    /// program first saw one of them running elsewhere; `None` if one never was.
    pub tasks: usize,
    pub seen_s: Option<f64>,
    /// From the node's log: the predicted move and its scheduled start.
    pub predicted_move_ms: Option<u64>,
    pub start_in_ms: Option<u64>,
    /// The move's measured duration (the drain's "move took").
    pub move_ms: Option<u64>,
    /// The predicted downtime the final freeze was entered on, and the measured one.
    pub predicted_downtime_ms: Option<u64>,
    pub downtime_ms: Option<u64>,
    /// A line that said a task stays (deferred or failed).
    pub stayed: Option<String>,
}

impl Trial {
    /// The drain's own verdict: a line per task, each before the deadline.
    pub fn drain_says_on_time(&self) -> bool {
        self.error.is_none() && self.lines > 0 && self.on_time_lines == self.lines
    }

    /// This program's verdict: every task seen running elsewhere before the deadline.
    pub fn seen_on_time(&self, deadline: Duration) -> bool {
        self.error.is_none()
            && self.tasks > 0
            && self.seen_s.is_some_and(|s| s <= deadline.as_secs_f64())
    }

    pub fn met(&self, deadline: Duration) -> bool {
        self.drain_says_on_time() && self.seen_on_time(deadline)
    }

    pub fn over_budget(&self, budget_ms: u64) -> bool {
        self.downtime_ms.is_some_and(|d| d > budget_ms)
    }
}

/// Root and CRIU >= 4.2, or why not.
pub fn check_system() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "--drain-trials needs root (CRIU dumps and restores the task)"
    );
    let v = brume_migration::criu::Criu::new()
        .version()
        .map_err(|e| anyhow::anyhow!("--drain-trials needs CRIU >= 4.2: {e}"))?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    anyhow::ensure!(
        version >= (4, 2),
        "--drain-trials needs CRIU >= 4.2, found {v}"
    );
    Ok(())
}

/// The drain's stdout and stderr (progress lines; not `--json`, which hides them) read for
/// the tasks of `service`.
pub fn parse_drain(stdout: &str, stderr: &str, service: &str, trial: &mut Trial) {
    let me = format!("{service}/");
    for l in stdout.lines().filter(|l| l.starts_with(&me)) {
        if l.contains(" now runs on ") {
            trial.lines += 1;
            if l.ends_with("(before the deadline)") {
                trial.on_time_lines += 1;
            }
            if l.contains(" (criu, ") {
                trial.moved_criu += 1;
            }
            if let Some(ms) = number_after(l, "move took ") {
                trial.move_ms = Some(trial.move_ms.unwrap_or(0).max(ms));
            }
        } else if l.contains(" stays here: ") {
            trial.lines += 1;
            trial.stayed = Some(l.to_string());
        }
    }
    let mut last_prediction = None;
    for l in stderr.lines().filter(|l| l.starts_with(&me)) {
        if l.contains(": pre-copy round ") {
            last_prediction = number_after(l, "predicted downtime ");
        } else if l.contains(": final round ") {
            trial.predicted_downtime_ms = last_prediction;
        } else if l.contains(": restored on the target: ") {
            let d = number_after(l, "downtime ");
            trial.downtime_ms = trial.downtime_ms.max(d);
        }
    }
}

/// The node's "drain: move scheduled" line(s) in its log: the predicted move (summed over the
/// instances) and the first start.
pub fn parse_schedule(log: &str, trial: &mut Trial) {
    for l in log.lines() {
        let l = strip_ansi(l);
        if !l.contains("drain: move scheduled") {
            continue;
        }
        if let Some(ms) = number_after(&l, "predicted_move_ms=") {
            trial.predicted_move_ms = Some(trial.predicted_move_ms.unwrap_or(0) + ms);
        }
        if let Some(ms) = number_after(&l, "start_in_ms=") {
            trial.start_in_ms = Some(trial.start_in_ms.map_or(ms, |s| s.min(ms)));
        }
    }
}

fn number_after(line: &str, key: &str) -> Option<u64> {
    let at = line.find(key)? + key.len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// (task, host, state) of every instance of `service` node 0's `ps` shows.
fn ps(net: &LocalNet, service: &str) -> Vec<(String, String, String)> {
    let Ok(out) = net.brume(0, &["ps", "--json"]) else {
        return Vec::new();
    };
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    rows.iter()
        .filter(|r| r["service"].as_str() == Some(service))
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (s("task"), s("host"), s("state"))
        })
        .collect()
}

fn node_id(net: &LocalNet, i: usize) -> anyhow::Result<String> {
    let out = net.brume(i, &["status", "--json"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let id = v["node_id"].as_u64().context("no node_id in status")?;
    Ok(format!("n{id}"))
}

/// Polls every [`POLL`] until `ready` gives a value or `limit` passes.
fn poll<T>(limit: Duration, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = ready() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// The chain's manifest with `mid` moved live under `budget_ms`.
fn manifest(dir: &Path, relay: &Path, service: &str, budget_ms: u64) -> anyhow::Result<PathBuf> {
    brume_testnet::relay_service::context(dir, relay, service)?;
    let m = brume_testnet::relay_service::manifest(dir, service)?;
    let text = std::fs::read_to_string(&m)?;
    let old = "name = \"mid\"\nbuild = \"ctx\"\n";
    anyhow::ensure!(text.contains(old), "the relay manifest changed: {text}");
    let text = text.replace(
        old,
        &format!(
            "{old}stateful = true\ncheckpoint = \"criu\"\nuser = \"root\"\n\
             downtime_budget_ms = {budget_ms}\n"
        ),
    );
    std::fs::write(&m, text)?;
    Ok(m)
}

/// One trial; an error is a setup that failed before the drain.
fn trial(exe: &Path, s: &DrainSetup, service: &str) -> anyhow::Result<Trial> {
    let args = ["--engine", "process", "--cpu-millis", "150"];
    // The drain's schedule is an info line of brume::migrate::control.
    let net =
        LocalNet::start_logged_with_filter(exe, NODES, &args, "warn,brume::migrate::control=info")?;
    let dir = net.dir().join("svc");
    std::fs::create_dir_all(&dir)?;
    let m = manifest(&dir, &s.relay, service, s.budget_ms)?;
    let out = net.brume(0, &["deploy", &m.to_string_lossy(), "--json"])?;
    anyhow::ensure!(
        out.status.success(),
        "deploy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = poll(READY, || {
        let rows = ps(&net, service);
        let all = TASKS
            .iter()
            .all(|t| rows.iter().any(|r| r.0 == *t && r.2 == "running"));
        all.then_some(rows)
    })
    .context("the deployed chain did not run within 60 s")?;
    let front =
        serde_json::from_slice::<Vec<serde_json::Value>>(&net.brume(0, &["ps", "--json"])?.stdout)?
            .into_iter()
            .find(|r| r["service"].as_str() == Some(service) && r["task"].as_str() == Some("front"))
            .and_then(|r| r["address"].as_str().map(str::to_string))
            .context("no front in ps")?;
    poll(READY, || {
        (ask(&front, "hello").ok()? == "front(mid(back))").then_some(())
    })
    .context("the chain did not answer front(mid(back)) within 60 s")?;
    let host = rows
        .iter()
        .find(|r| r.0 == "mid")
        .map(|r| r.1.clone())
        .context("no mid in ps")?;
    let mut source = None;
    for i in 0..NODES {
        if node_id(&net, i)? == host {
            source = Some(i);
        }
    }
    let source = source.with_context(|| format!("mid runs on {host}, not one of the nodes"))?;
    let on_source: Vec<String> = rows
        .iter()
        .filter(|r| r.1 == host)
        .map(|r| r.0.clone())
        .collect();

    let deadline = format!("{}ms", s.deadline.as_millis());
    let t0 = Instant::now();
    let (drained, seen) = std::thread::scope(|scope| {
        let drain = scope.spawn(|| net.brume(source, &["drain", "--deadline", &deadline]));
        let mut seen: Vec<Option<f64>> = vec![None; on_source.len()];
        let limit = s.deadline + AFTER;
        while t0.elapsed() < limit {
            let done = drain.is_finished();
            let rows = ps(&net, service);
            let at = t0.elapsed().as_secs_f64();
            for (task, when) in on_source.iter().zip(seen.iter_mut()) {
                let moved = rows
                    .iter()
                    .any(|r| r.0 == *task && r.1 != host && r.2 == "running");
                if moved && when.is_none() {
                    *when = Some(at);
                }
            }
            if done && seen.iter().all(Option::is_some) {
                break;
            }
            std::thread::sleep(POLL);
        }
        (drain.join(), seen)
    });
    let drained = drained
        .map_err(|_| anyhow::anyhow!("the drain thread panicked"))?
        .context("run brume drain")?;
    let mut t = Trial {
        tasks: on_source.len(),
        seen_s: seen.iter().try_fold(0.0f64, |acc, s| s.map(|s| acc.max(s))),
        ..Trial::default()
    };
    parse_drain(
        &String::from_utf8_lossy(&drained.stdout),
        &String::from_utf8_lossy(&drained.stderr),
        service,
        &mut t,
    );
    parse_schedule(
        &std::fs::read_to_string(net.log(source)).unwrap_or_default(),
        &mut t,
    );
    if t.lines == 0 {
        t.error = Some(format!(
            "the drain reported nothing: {}",
            String::from_utf8_lossy(&drained.stderr).trim()
        ));
    }
    Ok(t)
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

/// Runs the trials, printing a row per trial; each trial's net is stopped before the next.
pub fn run(s: &DrainSetup) -> anyhow::Result<Vec<Trial>> {
    anyhow::ensure!(
        s.relay.exists(),
        "no relay binary at {}: run scripts/build-static.sh first (or pass --relay PATH)",
        s.relay.display()
    );
    let exe = crate::brume_exe()?;
    let tag = format!("{:08x}", rand::random::<u32>());
    println!();
    println!(
        "drain trials: 4 local nodes (process engine), chain front -> mid -> back, mid moved \
         live (criu, downtime_budget_ms = {}), `brume drain --deadline {} s` (margin 1 s) on \
         mid's node",
        s.budget_ms,
        s.deadline.as_secs_f64()
    );
    println!(
        "{:>5} {:>9} {:>9} {:>4} {:>10} {:>9} {:>8} {:>10} {:>11} {:>5}  note",
        "trial",
        "drain ok",
        "seen (s)",
        "met",
        "pred move",
        "start at",
        "move ms",
        "pred down",
        "downtime ms",
        "over"
    );
    let mut trials = Vec::new();
    for i in 0..s.trials {
        let service = format!("drain-{tag}-{i}");
        let t = trial(&exe, s, &service).unwrap_or_else(|e| Trial {
            error: Some(format!("{e:#}")),
            ..Trial::default()
        });
        let note = t
            .error
            .clone()
            .or_else(|| t.stayed.clone())
            .unwrap_or_default();
        println!(
            "{:>5} {:>9} {:>9} {:>4} {:>10} {:>9} {:>8} {:>10} {:>11} {:>5}  {note}",
            i + 1,
            if t.drain_says_on_time() {
                "on-time"
            } else {
                "LATE"
            },
            t.seen_s.map_or("never".into(), |s| format!("{s:.2}")),
            if t.met(s.deadline) { "yes" } else { "NO" },
            opt(t.predicted_move_ms),
            opt(t.start_in_ms),
            opt(t.move_ms),
            opt(t.predicted_downtime_ms),
            opt(t.downtime_ms),
            if t.over_budget(s.budget_ms) {
                "YES"
            } else {
                "no"
            },
        );
        trials.push(t);
    }
    println!(
        "drain ok: every line of the drain's report said \"(before the deadline)\" (node's clock, \
         from the request); seen: when this program's `ps` poll (every {} ms, clock started \
         before `brume drain` ran) first showed every drained task running on another host, an \
         upper bound; met: both within the deadline",
        POLL.as_millis()
    );
    println!(
        "pred move / start at: the node's predicted move and scheduled start (ms after the \
         request); pred down: the downtime predicted after the last pre-copy round, on which the \
         freeze was entered; downtime: measured by the target; over: downtime above the budget"
    );
    Ok(trials)
}

/// `drain_deadline_met_pct` and `over_budget_freezes` of the trials.
pub fn summary(s: &DrainSetup, trials: &[Trial]) -> (f64, usize) {
    let met = trials.iter().filter(|t| t.met(s.deadline)).count();
    let pct = if trials.is_empty() {
        0.0
    } else {
        100.0 * met as f64 / trials.len() as f64
    };
    let over = trials.iter().filter(|t| t.over_budget(s.budget_ms)).count();
    (pct, over)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_output_is_read_for_verdicts_and_downtimes() {
        let stdout = "svc/mid#0 now runs on …4kx6nXTN at 127.0.0.1:4000 (criu, 100 bytes of \
                      state, callers held 90 ms, move took 2345 ms, 3 node(s) rerouted) (before \
                      the deadline)\nother/mid#0 now runs on x (AFTER the deadline)\n";
        let stderr = "svc/mid#0: pre-copy round 1: dumped 4.0 MiB in 30 ms, delta 4.00 MiB, \
                      wire 1.00 MiB, 100.0 MiB/s, predicted downtime 300 ms\n\
                      svc/mid#0: pre-copy round 2: dumped 4.0 MiB in 30 ms, delta 0.10 MiB, \
                      wire 0.10 MiB, 100.0 MiB/s, predicted downtime 120 ms\n\
                      svc/mid#0: final round 3: dumped 4.0 MiB in 30 ms, delta 0.01 MiB, wire \
                      0.01 MiB, 100.0 MiB/s\n\
                      svc/mid#0: restored on the target: downtime 150 ms (criu restore 60 ms), \
                      3 round(s), 1.11 MiB sent\n";
        let mut t = Trial {
            tasks: 1,
            seen_s: Some(19.5),
            ..Trial::default()
        };
        parse_drain(stdout, stderr, "svc", &mut t);
        assert_eq!((t.lines, t.on_time_lines, t.moved_criu), (1, 1, 1));
        assert_eq!(t.move_ms, Some(2345));
        assert_eq!(t.predicted_downtime_ms, Some(120));
        assert_eq!(t.downtime_ms, Some(150));
        assert!(t.met(Duration::from_secs(20)));
        assert!(!t.met(Duration::from_secs(19)), "seen after the deadline");
        assert!(!t.over_budget(2000));
        assert!(t.over_budget(100));

        let mut late = Trial {
            tasks: 1,
            seen_s: Some(1.0),
            ..Trial::default()
        };
        parse_drain(
            "svc/mid#0 now runs on x (criu, move took 5 ms) (AFTER the deadline)\n\
             svc/back#0 stays here: deferred: the predicted downtime 3000 ms exceeds the \
             downtime budget of 2000 ms\n",
            "",
            "svc",
            &mut late,
        );
        assert_eq!((late.lines, late.on_time_lines), (2, 0));
        assert!(late.stayed.is_some());
        assert!(!late.met(Duration::from_secs(20)));
    }

    #[test]
    fn the_schedule_is_read_from_the_node_log() {
        let log = "2026-12-04T01:00:00Z  INFO brume::migrate::control: drain: move scheduled \
                   instance=svc/mid#0 predicted_move_ms=2100 start_in_ms=16900 \
                   deadline_ms=20000 margin_ms=1000\n";
        let mut t = Trial::default();
        parse_schedule(log, &mut t);
        assert_eq!(
            (t.predicted_move_ms, t.start_in_ms),
            (Some(2100), Some(16900))
        );
    }
}
