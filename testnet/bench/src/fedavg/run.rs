//! One run of the federated-learning service on real `brume node` daemons: start the nodes,
//! deploy the manifest from node 0, follow the aggregator's log, move the aggregator live and
//! kill a trainer's node when the plan says, wait for the last round.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::nodes::Nodes;
pub use super::nodes::TestnetPlan;
use super::timeline::Log;
use crate::chaos::strip_ansi;
use anyhow::Context;

/// The service's name in the manifest.
pub const SERVICE: &str = "fedavg";
/// How often the aggregator's log is read (each read is one `brume logs` command).
pub const POLL: Duration = Duration::from_millis(100);
/// How long the deployed service may take to run.
const READY: Duration = Duration::from_secs(120);
/// How long one round may take before the run gives up waiting (a round whose trainer is dead
/// waits through the aggregator's retries, about 6 s, before counting without it).
const PER_ROUND: Duration = Duration::from_secs(45);
/// How long the killed trainer may take to be placed again.
const HEAL: Duration = Duration::from_secs(90);

/// What one run does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub nodes: usize,
    pub rounds: u64,
    /// Move the aggregator live after this round.
    pub move_after: Option<u64>,
    /// SIGKILL the node of a trainer (not the aggregator's, not node 0) after this round.
    pub kill_after: Option<u64>,
    /// The manifest (examples/fedavg/service.toml) and the directory its builds are under.
    pub manifest: PathBuf,
    /// The aggregator's call bound, if not the manifest's.
    pub call_bound_ms: Option<u32>,
    /// `brume migrate --max-downtime`, if given.
    pub max_downtime: Option<String>,
    /// The nodes' engine: `process` or `docker`.
    pub engine: String,
    /// Run on the node containers of a `brume testnet` (process engine inside), not on
    /// loopback daemons.
    pub testnet: Option<TestnetPlan>,
}

/// The live move, as measured.
#[derive(Debug, Clone, Default)]
pub struct Move {
    /// The last round seen before `brume migrate` ran.
    pub after_round: u64,
    /// When `brume migrate` started and returned (s from the run's start).
    pub start_s: f64,
    pub end_s: f64,
    pub from: String,
    pub to: String,
    /// From its report: "callers held", "move took", and the target's measured downtime.
    pub callers_held_ms: Option<u64>,
    pub move_ms: Option<u64>,
    pub downtime_ms: Option<u64>,
    /// The report line, or why the move failed.
    pub report: String,
    pub ok: bool,
}

/// The killed trainer's node, and the healing.
#[derive(Debug, Clone, Default)]
pub struct Kill {
    pub after_round: u64,
    pub at_s: f64,
    pub node: usize,
    pub host: String,
    pub replica: u64,
    /// When (s after the kill) node 0's `ps` first showed the trainer running elsewhere, and
    /// where; `None` if it never did within the limit.
    pub healed_s: Option<f64>,
    pub new_host: Option<String>,
    /// How long the host had been silent (since its last heartbeat answer, so partly before
    /// the kill) when node 0 declared it dead, from node 0's "placed again" log line.
    pub detect_ms: Option<u64>,
    /// The first round after the kill that all trainers answered.
    pub full_round: Option<u64>,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub log: Log,
    pub moved: Option<Move>,
    pub kill: Option<Kill>,
    /// Whether the last round came.
    pub finished: bool,
    /// Where the aggregator and each trainer ran at first (task, replica, host).
    pub placed: Vec<(String, u64, String)>,
    /// When (s from the run's start) the daemons were connected and mapped, `brume deploy`
    /// returned, and node 0's `ps` first showed every instance running.
    pub nodes_up_s: f64,
    /// The aggregator's own accuracy history at the end (its CHECKPOINT state line), if it
    /// answered.
    pub history: Option<Vec<f64>>,
    pub deployed_s: f64,
    pub running_s: f64,
}

/// (task, replica, host, state) of every instance of the service node 0's `ps` shows.
fn ps(net: &Nodes) -> Vec<(String, u64, String, String)> {
    let Ok(out) = net.brume(0, &["ps", "--json"]) else {
        return Vec::new();
    };
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    rows.iter()
        .filter(|r| r["service"].as_str() == Some(SERVICE))
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (
                s("task"),
                r["replica"].as_u64().unwrap_or(0),
                s("host"),
                s("state"),
            )
        })
        .collect()
}

fn node_id(net: &Nodes, i: usize) -> anyhow::Result<String> {
    let out = net.brume(i, &["status", "--json"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let id = v["node_id"].as_u64().context("no node_id in status")?;
    Ok(format!("n{id}"))
}

/// The last eight characters of node `i`'s peer id, which end the names of its tasks.
fn peer_tag(net: &Nodes, i: usize) -> anyhow::Result<String> {
    let out = net.brume(i, &["status", "--json"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let peer = v["peer_id"].as_str().context("no peer_id in status")?;
    Ok(peer
        .chars()
        .skip(peer.chars().count().saturating_sub(8))
        .collect())
}

/// On drop, removes this run's containers of the service that are still there (the run's
/// nodes' tags): `brume stop` reaches every live node, but a killed node's container outlives
/// it (Docker, not the node, runs it), and a run that fails midway stops nothing.
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        remove_containers(&self.0);
    }
}

fn remove_containers(tags: &[String]) {
    let Ok(out) = std::process::Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Names}}", "--filter"])
        .arg(format!("label=brume.service={SERVICE}"))
        .output()
    else {
        return;
    };
    let ours: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|n| tags.iter().any(|t| n.ends_with(&format!("-{t}"))))
        .map(str::to_string)
        .collect();
    if !ours.is_empty() {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f"])
            .args(&ours)
            .output();
    }
}

/// The aggregator's address and host as node 0's `ps` shows them (the address is reachable
/// from the host node: this machine's loopback, or the testnet node's namespace).
fn aggregator_address(net: &Nodes) -> Option<(String, String)> {
    let out = net.brume(0, &["ps", "--json"]).ok()?;
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
    rows.into_iter()
        .find(|r| {
            r["service"].as_str() == Some(SERVICE) && r["task"].as_str() == Some("aggregator")
        })
        .and_then(|r| {
            Some((
                r["address"].as_str()?.to_string(),
                r["host"].as_str()?.to_string(),
            ))
        })
}

/// The aggregator's state line (`CHECKPOINT` on its port), parsed.
fn checkpoint(address: &str) -> anyhow::Result<brume_fedavg::wire::State> {
    use std::io::{BufRead, BufReader, Write};
    let s = std::net::TcpStream::connect(address)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    (&s).write_all(b"CHECKPOINT\n")?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    brume_fedavg::wire::State::parse(line.trim_end())
        .map_err(|e| anyhow::anyhow!("the aggregator's CHECKPOINT: {e}"))
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

fn number_after(line: &str, key: &str) -> Option<u64> {
    let at = line.find(key)? + key.len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The manifest with `ROUNDS` set (and the call bound, if given), written with copies of its
/// build contexts under `dir` (their static binaries included: scripts/build-static.sh puts
/// them there).
fn manifest(
    dir: &Path,
    source: &Path,
    rounds: u64,
    call_bound_ms: Option<u32>,
) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(source)
        .with_context(|| format!("cannot read {}", source.display()))?;
    let from = source.parent().context("the manifest has no directory")?;
    for task in ["aggregator", "trainer"] {
        let bin = from.join(task).join(task);
        anyhow::ensure!(
            bin.is_file(),
            "no {} binary at {}: run scripts/build-static.sh first",
            task,
            bin.display()
        );
        std::fs::create_dir_all(dir.join(task))?;
        for file in ["Dockerfile", task] {
            std::fs::copy(from.join(task).join(file), dir.join(task).join(file))
                .with_context(|| format!("cannot copy {task}/{file}"))?;
        }
    }
    let old = "ROUNDS = \"10\"";
    anyhow::ensure!(
        text.contains(old),
        "{} no longer sets {old}: the bench sets the rounds there",
        source.display()
    );
    let mut text = text.replace(old, &format!("ROUNDS = \"{rounds}\""));
    if let Some(ms) = call_bound_ms {
        let bound = "latency_ms = 40 ";
        anyhow::ensure!(
            text.matches(bound).count() == 1,
            "{} no longer has one `{bound}`: the bench sets the call bound there",
            source.display()
        );
        text = text.replace(bound, &format!("latency_ms = {ms} "));
    }
    let m = dir.join("service.toml");
    std::fs::write(&m, text)?;
    Ok(m)
}

/// Reads the aggregator's log through node 0 every [`POLL`] into `log` until `stop`.
fn follow(
    exe: PathBuf,
    sock: PathBuf,
    t0: Instant,
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let out = Command::new(&exe)
                .args(["logs", "aggregator", "--service", SERVICE, "--tail", "5000"])
                .arg("--control")
                .arg(&sock)
                .output();
            let at = t0.elapsed().as_secs_f64();
            if let Ok(out) = out {
                if out.status.success() {
                    log.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .absorb(&String::from_utf8_lossy(&out.stdout), at);
                }
            }
            std::thread::sleep(POLL);
        }
    })
}

/// Stops the log follower when dropped (also on an early return).
struct Follower {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Runs `plan`; `t0` is taken before the first node starts (what `up_s` counts from).
pub fn run(exe: &Path, plan: &Plan) -> anyhow::Result<Outcome> {
    let t0 = Instant::now();
    // Room for the aggregator beside a trainer (after the move) on every node, not two trainers.
    let mut args = vec!["--cpu-millis", "2000", "--memory-mb", "2048"];
    // A testnet's nodes run the process engine already (its node containers hold no Docker).
    if plan.testnet.is_none() {
        args.extend(["--engine", plan.engine.as_str()]);
    }
    let mut net = Nodes::start(exe, plan.nodes, &args, plan.testnet.as_ref())?;
    let nodes_up_s = t0.elapsed().as_secs_f64();
    let ids: Vec<String> = (0..plan.nodes)
        .map(|i| node_id(&net, i))
        .collect::<anyhow::Result<_>>()?;
    // The ends of this run's task names (`brume-<service>-...-<last 8 of the peer id>`).
    let tags: Vec<String> = (0..plan.nodes)
        .map(|i| peer_tag(&net, i))
        .collect::<anyhow::Result<_>>()?;
    let _containers = (plan.engine == "docker").then(|| Containers(tags));
    let dir = net.service_dir();
    std::fs::create_dir_all(&dir)?;
    let m = manifest(&dir, &plan.manifest, plan.rounds, plan.call_bound_ms)?;
    let out = net.deploy(&m)?;
    anyhow::ensure!(
        out.status.success(),
        "deploy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deployed_s = t0.elapsed().as_secs_f64();
    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let _follower = Follower {
        stop: stop.clone(),
        handle: Some(follow(
            exe.to_path_buf(),
            net.sock(0),
            t0,
            log.clone(),
            stop,
        )),
    };
    let last = || {
        log.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_round()
    };
    let placed = poll(READY, || {
        let rows = ps(&net);
        let running = rows.iter().filter(|r| r.3 == "running").count();
        (running >= 5 && rows.iter().any(|r| r.0 == "aggregator")).then_some(rows)
    })
    .context("the aggregator and its trainers did not run within 120 s")?;
    let running_s = t0.elapsed().as_secs_f64();
    let placed: Vec<(String, u64, String)> =
        placed.into_iter().map(|(t, r, h, _)| (t, r, h)).collect();
    let wait_round = |r: u64| poll(PER_ROUND * r.max(1) as u32, || (last() >= r).then_some(()));

    let mut moved = None;
    if let Some(after) = plan.move_after {
        wait_round(after).with_context(|| format!("round {after} did not come"))?;
        let from = ps(&net)
            .into_iter()
            .find(|r| r.0 == "aggregator")
            .map(|r| r.2)
            .unwrap_or_default();
        let after_round = last();
        let start_s = t0.elapsed().as_secs_f64();
        let mut args = vec!["migrate", "aggregator", "--service", SERVICE];
        if let Some(d) = &plan.max_downtime {
            args.extend(["--max-downtime", d.as_str()]);
        }
        let out = net.brume(0, &args)?;
        let end_s = t0.elapsed().as_secs_f64();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let report = stdout
            .lines()
            .find(|l| l.contains(" now runs on "))
            .map(str::to_string);
        let mut mv = Move {
            after_round,
            start_s,
            end_s,
            from,
            ok: out.status.success() && report.is_some(),
            report: report.unwrap_or_else(|| format!("{}{}", stdout.trim(), stderr.trim())),
            ..Move::default()
        };
        mv.callers_held_ms = number_after(&mv.report, "callers held ");
        mv.move_ms = number_after(&mv.report, "move took ");
        mv.downtime_ms = stderr
            .lines()
            .filter(|l| l.contains("restored on the target: "))
            .find_map(|l| number_after(l, "downtime "));
        mv.to = poll(Duration::from_secs(30), || {
            ps(&net)
                .into_iter()
                .find(|r| r.0 == "aggregator" && r.2 != mv.from && r.3 == "running")
                .map(|r| r.2)
        })
        .unwrap_or_default();
        moved = Some(mv);
    }

    let mut kill = None;
    if let Some(after) = plan.kill_after {
        wait_round(after).with_context(|| format!("round {after} did not come"))?;
        let rows = ps(&net);
        let aggregator = rows
            .iter()
            .find(|r| r.0 == "aggregator")
            .map(|r| r.2.clone())
            .unwrap_or_default();
        // A trainer's node that is neither node 0 (the initiator, which heals) nor the
        // aggregator's.
        let (node, replica) = (1..plan.nodes)
            .filter(|&i| ids[i] != aggregator)
            .find_map(|i| {
                rows.iter()
                    .find(|r| r.0 == "trainer" && r.2 == ids[i])
                    .map(|r| (i, r.1))
            })
            .context("no trainer runs on a node other than node 0 and the aggregator's")?;
        let after_round = last();
        let at = Instant::now();
        net.kill(node)
            .with_context(|| format!("cannot kill node {node}"))?;
        let mut k = Kill {
            after_round,
            at_s: t0.elapsed().as_secs_f64(),
            node,
            host: ids[node].clone(),
            replica,
            ..Kill::default()
        };
        if let Some(host) = poll(HEAL, || {
            ps(&net)
                .into_iter()
                .find(|r| r.0 == "trainer" && r.1 == replica && r.2 != k.host && r.3 == "running")
                .map(|r| r.2)
        }) {
            k.healed_s = Some(at.elapsed().as_secs_f64());
            k.new_host = Some(host);
        }
        kill = Some(k);
    }

    let remaining = plan.rounds.saturating_sub(last()).max(1);
    let finished = poll(PER_ROUND * remaining as u32, || {
        log.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .done
            .is_some()
            .then_some(())
    })
    .is_some();
    let log = log.lock().unwrap_or_else(PoisonError::into_inner).clone();
    // The first round seen after the trainer ran again with every trainer answering; node 0's
    // log line of the re-placement (read now: it may be written after `ps` shows the trainer).
    if let Some(k) = kill.as_mut() {
        k.detect_ms = net
            .log_text(0)
            .lines()
            .map(strip_ansi)
            .filter(|l| l.contains("placed again") && l.contains(&k.host))
            .find_map(|l| number_after(&l, "detect_ms="));
        if let Some(healed) = k.healed_s {
            k.full_round = log
                .rounds()
                .iter()
                .find(|r| r.seen_s > k.at_s + healed && r.trainers.0 == r.trainers.1)
                .map(|r| r.round);
        }
    }
    let history = aggregator_address(&net)
        .and_then(|(address, host)| {
            let i = ids.iter().position(|id| *id == host)?;
            net.near(i, move || checkpoint(&address).ok()).ok()?
        })
        .map(|s| s.history);
    let _ = net.brume(0, &["stop", SERVICE]);
    Ok(Outcome {
        log,
        moved,
        kill,
        finished,
        placed,
        nodes_up_s,
        history,
        deployed_s,
        running_s,
    })
}
