//! The host side of periodic checkpoints: every instance running here whose spec asks for
//! them (`checkpoint_every_s`) has its state captured every period and sent to the service's
//! owner as a `Checkpointed` request of the deploy protocol ([`super::checkpoints`] keeps it
//! there). A `checkpoint = "app"` task is captured the way a move captures it (`CHECKPOINT` on
//! its port); a `checkpoint = "criu"` task is dumped by CRIU and left running (`criu dump
//! --leave-running` of a process, `runc checkpoint --leave-running` of a Docker container), its
//! images packed ([`super::criu_images`]). When the
//! owner is this node, the request goes straight to its own deployer.
//!
//! A CRIU dump fails while the task holds an established TCP connection (a call in flight):
//! callers are not held for a periodic checkpoint, which would cut their calls every period, so
//! such a dump is tried again a few times a moment later, then the next period.
//!
//! Bounded: at most one capture (and send) in flight per instance, each bounded in time; a
//! state over [`MAX_CHECKPOINT`] is not sent; a failed capture or send is tried again the next
//! period, and a run of failures is told once, reminded every minute and its end told
//! ([`FailureLog`]). Which instances are due is [`Schedule`]'s and what to tell is
//! [`FailureLog`]'s (no I/O, no clock of their own); this is their I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use brume_engine::{criu_task, taskroot, AnyEngine};
use brume_migration::app::{self as app, CHECKPOINT_TIMEOUT};
use brume_migration::checkpointer::{
    runc_usable, Checkpointer, CriuProcess, CriuRestore, PortableBundle,
};
use brume_migration::criu::{Criu, NetworkLock};
use brume_migration::live::scratch_dir;
use brume_tunnel::InstanceId;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::checkpoints::{now_unix_ms, MAX_CHECKPOINT};
use super::criu_images::{pack, CriuImages};
use crate::deploy::client::ask;
use crate::deploy::deployer::Deployer;
use crate::deploy::wire::{CheckpointMode, Generation, Reply, Request};
use crate::migrate::live::docker::checkpoint_running;

/// How often the table is looked at (periods are whole seconds).
const TICK: Duration = Duration::from_millis(250);

/// How long the owner is given to take one checkpoint.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// A CRIU dump that caught a connection is tried this many times in one period...
const DUMP_TRIES: u32 = 4;

/// ...this long apart.
const DUMP_RETRY: Duration = Duration::from_millis(150);

/// One instance that asks for checkpoints, as the table shows it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub id: InstanceId,
    pub generation: Generation,
    pub port: u16,
    /// Dumped by CRIU (`checkpoint = "criu"`), not asked for its state line.
    pub criu: bool,
}

/// When each instance is next due, and which have a capture in flight.
#[derive(Debug, Default)]
pub struct Schedule {
    next: BTreeMap<(InstanceId, Generation), Instant>,
    in_flight: BTreeSet<(InstanceId, Generation)>,
}

impl Schedule {
    /// Of the instances running now (with their periods), those to capture at `now`; each is
    /// then in flight until [`Schedule::done`]. The first capture of an instance is one period
    /// after it is first seen.
    pub fn due(&mut self, running: &[(Due, Duration)], now: Instant) -> Vec<Due> {
        let keys: BTreeSet<_> = running
            .iter()
            .map(|(d, _)| (d.id.clone(), d.generation))
            .collect();
        self.next.retain(|k, _| keys.contains(k));
        let mut out = Vec::new();
        for (d, period) in running {
            let key = (d.id.clone(), d.generation);
            let next = *self.next.entry(key.clone()).or_insert(now + *period);
            if now >= next && !self.in_flight.contains(&key) {
                self.next.insert(key.clone(), now + *period);
                self.in_flight.insert(key);
                out.push(d.clone());
            }
        }
        out
    }

    /// The capture of `id` at `generation` ended (either way).
    pub fn done(&mut self, id: &InstanceId, generation: Generation) {
        self.in_flight.remove(&(id.clone(), generation));
    }
}

/// Runs until the task is aborted.
pub async fn run(deployer: Arc<Deployer>) {
    let mut schedule = Schedule::default();
    let (done_tx, mut done) = mpsc::channel::<(InstanceId, Generation, Outcome)>(64);
    let mut failures = FailureLog::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Whether each CRIU-mode instance can be dumped here, judged once when it is first seen
    // (Docker's runc state exists only once it runs a container).
    let mut judged: BTreeMap<(InstanceId, Generation), bool> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some((id, g, outcome)) = done.recv() => {
                schedule.done(&id, g);
                if let Some(m) = deployer.metrics() {
                    match outcome {
                        Outcome::Kept => m.record_checkpoint(brume_metrics::Outcome::Ok),
                        Outcome::Failed(_) => m.record_checkpoint(brume_metrics::Outcome::Failed),
                        Outcome::Skipped => {}
                    }
                }
                match failures.record(&id, &outcome, Instant::now()) {
                    Say::Nothing => {}
                    Say::Warn(what) => warn!(instance = %id, "{what}"),
                    Say::Recovered(n) => {
                        info!(instance = %id, failures = n, "periodic checkpoints work again")
                    }
                }
                if let Outcome::Failed(why) = &outcome {
                    debug!(instance = %id, "periodic checkpoint failed: {why}");
                }
                continue;
            }
        }
        let running: Vec<(Due, Duration, u64, Option<brume_overlay::PeerId>)> = deployer
            .instances
            .lock()
            .values()
            .filter_map(|i| {
                let every = i.spec.checkpoint_every_s?;
                let criu = match i.spec.checkpoint {
                    CheckpointMode::App => false,
                    CheckpointMode::Criu => true,
                    CheckpointMode::None => return None,
                };
                let due = Due {
                    id: i.spec.id.clone(),
                    generation: i.spec.generation,
                    port: i.port,
                    criu,
                };
                let period = Duration::from_secs(u64::from(every.max(1)));
                Some((due, period, i.spec.epoch, i.spec.initiator))
            })
            .collect();
        failures.retain(|id| running.iter().any(|(d, ..)| d.id == *id));
        judged.retain(|k, _| {
            running
                .iter()
                .any(|(d, ..)| (&d.id, d.generation) == (&k.0, k.1))
        });
        for (d, ..) in running.iter().filter(|(d, ..)| d.criu) {
            judged
                .entry((d.id.clone(), d.generation))
                .or_insert_with(|| match criu_dumps_here(&deployer) {
                    Ok(()) => true,
                    Err(why) => {
                        warn!(instance = %d.id, "no periodic checkpoints: {why}");
                        false
                    }
                });
        }
        let running: Vec<_> = running
            .into_iter()
            .filter(|(d, ..)| !d.criu || judged.get(&(d.id.clone(), d.generation)) == Some(&true))
            .collect();
        let table: Vec<(Due, Duration)> =
            running.iter().map(|(d, p, _, _)| (d.clone(), *p)).collect();
        for d in schedule.due(&table, Instant::now()) {
            let Some((_, _, epoch, owner)) = running.iter().find(|r| r.0 == d) else {
                continue;
            };
            let (epoch, owner) = (*epoch, *owner);
            let (deployer, done_tx) = (deployer.clone(), done_tx.clone());
            tokio::spawn(async move {
                let outcome = match owner {
                    Some(owner) => checkpoint_one(&deployer, &d, epoch, owner).await,
                    None => Outcome::Skipped,
                };
                let _ = done_tx.send((d.id, d.generation, outcome)).await;
            });
        }
    }
}

/// Why this node cannot take CRIU checkpoints of its tasks, if it cannot.
fn criu_dumps_here(deployer: &Deployer) -> Result<(), String> {
    match &*deployer.engine {
        AnyEngine::Process(_) => taskroot::available(),
        AnyEngine::Docker(_) => runc_usable(),
    }
}

/// Dumps a `checkpoint = "criu"` instance with CRIU, leaving it running, and packs the images;
/// `Ok(None)` when a live move of it is dumping it (the next period tries again).
async fn capture_criu(deployer: &Deployer, d: &Due) -> Result<Option<CriuImages>, String> {
    let Some(_claim) = deployer.dumps.try_claim(&d.id) else {
        debug!(instance = %d.id, "a move is dumping it: no periodic checkpoint this period");
        return Ok(None);
    };
    let (name, call_ports) = deployer
        .instances
        .lock()
        .get(&d.id)
        .map(|i| {
            let ports = i.forwarders.iter().map(|f| f.local_addr().port()).collect();
            (i.name.clone(), ports)
        })
        .ok_or("it no longer runs here")?;
    let dir = scratch_dir("checkpoint");
    let mut tries = 0;
    loop {
        tries += 1;
        let dumped = match dump_once(deployer, &name, &dir).await {
            Ok(facts) => {
                let images = dir.clone();
                tokio::task::spawn_blocking(move || pack(&images))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|packed| packed.map_err(|e| e.to_string()))
                    .map(|archive| (facts, archive))
                    .map_err(|e| (format!("cannot pack the images: {e}"), false))
            }
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_dir_all(&dir);
        match dumped {
            Ok(((dumped_pid, stdout_key, bundle), archive)) => {
                return Ok(Some(CriuImages {
                    dumped_pid,
                    port: d.port,
                    call_ports,
                    stdout_key,
                    archive,
                    bundle,
                }))
            }
            Err((e, true)) if tries < DUMP_TRIES => {
                debug!(instance = %d.id, "the dump caught a connection ({e}); again shortly");
                tokio::time::sleep(DUMP_RETRY).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// What a dump found besides the images: the task's PID, its output pipe's CRIU key (process
/// engine) and its runc bundle's portable part (Docker).
type Dumped = (u32, Option<String>, Option<PortableBundle>);

/// One dump of the task `name` into `dir`, left running, on this node's engine; the error says
/// whether only a connection was in the way.
async fn dump_once(
    deployer: &Deployer,
    name: &str,
    dir: &std::path::Path,
) -> Result<Dumped, (String, bool)> {
    match &*deployer.engine {
        AnyEngine::Process(p) => {
            let pid = p.checkpoint_pid(name).map_err(|e| (e.to_string(), false))?;
            let stdout_key = criu_task::stdout_key(pid);
            let dir = dir.to_path_buf();
            tokio::task::spawn_blocking(move || dump_process(pid, &dir))
                .await
                .map_err(|e| (format!("the dump's thread failed: {e}"), false))??;
            Ok((pid, stdout_key, None))
        }
        AnyEngine::Docker(docker) => {
            let (pid, bundle) = checkpoint_running(docker, name, dir).await?;
            Ok((pid, None, Some(bundle)))
        }
    }
}

/// `criu dump --leave-running` of the process engine's task `pid` into `dir` (created);
/// CRIU's log beside it is removed.
fn dump_process(pid: u32, dir: &std::path::Path) -> Result<(), (String, bool)> {
    let log = dir.with_extension("log");
    let dumper = CriuProcess {
        criu: Criu::new(),
        pid,
        network_lock: NetworkLock::Skip,
        local: CriuRestore {
            criu: Criu::new(),
            network_lock: NetworkLock::Skip,
            pid_wait: Duration::ZERO,
            inherit_fds: Vec::new(),
            pid_namespace: true,
            root: None,
        },
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| (format!("cannot make {}: {e}", dir.display()), false))?;
    let dumped = dumper.dump(dir, true, &log);
    let _ = std::fs::remove_file(&log);
    dumped
        .map(|_| ())
        .map_err(|e| (e.to_string(), e.transient()))
}

/// Captures one instance's state and sends it to its owner; what came of it.
async fn checkpoint_one(
    deployer: &Deployer,
    d: &Due,
    epoch: u64,
    owner: brume_overlay::PeerId,
) -> Outcome {
    let seq = now_unix_ms();
    let captured = if d.criu {
        let started = Instant::now();
        match capture_criu(deployer, d).await {
            Ok(Some(images)) => {
                debug!(instance = %d.id, bytes = images.archive.len(),
                       ms = started.elapsed().as_millis() as u64, "CRIU checkpoint taken");
                Ok((String::new(), Some(Box::new(images))))
            }
            Ok(None) => return Outcome::Skipped,
            Err(e) => Err(e),
        }
    } else {
        app::capture(d.port, CHECKPOINT_TIMEOUT)
            .await
            .map(|s| (s, None))
            .map_err(|e| e.to_string())
    };
    let (state, images) = match captured {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(e),
    };
    let bytes = state.len() + images.as_ref().map_or(0, |i| i.archive.len());
    if bytes > MAX_CHECKPOINT {
        return Outcome::Failed(format!(
            "not sent: {bytes} bytes, more than the {MAX_CHECKPOINT} kept"
        ));
    }
    let req = Request::Checkpointed {
        instance: d.id.clone(),
        generation: d.generation,
        epoch,
        seq,
        state,
        images,
    };
    let sent =
        tokio::time::timeout(SEND_TIMEOUT, ask(deployer, owner, &[], &req, |_| async {})).await;
    match sent {
        Ok(Ok(Reply::Taken)) => {
            debug!(instance = %d.id, bytes, "periodic checkpoint kept by the owner");
            Outcome::Kept
        }
        Ok(Ok(Reply::Refused { reason })) => {
            Outcome::Failed(format!("the owner refused it: {reason}"))
        }
        Ok(Ok(other)) => Outcome::Failed(format!("the owner answered {other:?}")),
        Ok(Err(e)) => Outcome::Failed(format!("cannot send it: {e:#}")),
        Err(_) => Outcome::Failed("the owner did not take it in time".into()),
    }
}

/// What one capture came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The owner keeps it.
    Kept,
    /// Not taken this period (a move was dumping the task).
    Skipped,
    /// Why it failed.
    Failed(String),
}

/// What to tell the operator about one outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Say {
    Nothing,
    /// A warning: the first failure of a run, or a reminder that they go on.
    Warn(String),
    /// Checkpoints work again after this many failures in a row.
    Recovered(u32),
}

/// How often a run of failures is told again.
const REMIND: Duration = Duration::from_secs(60);

/// Failures in a row per instance, so that a task whose checkpoints keep failing (every
/// period, perhaps every second) is told once, reminded every [`REMIND`], and told when they
/// work again, not logged every period. No I/O, no clock of its own.
#[derive(Debug, Default)]
pub struct FailureLog {
    runs: BTreeMap<InstanceId, (u32, Instant)>,
}

impl FailureLog {
    /// Records `outcome` for `id` at `now`; what to say.
    pub fn record(&mut self, id: &InstanceId, outcome: &Outcome, now: Instant) -> Say {
        match outcome {
            Outcome::Skipped => Say::Nothing,
            Outcome::Kept => match self.runs.remove(id) {
                Some((n, _)) => Say::Recovered(n),
                None => Say::Nothing,
            },
            Outcome::Failed(why) => match self.runs.get_mut(id) {
                None => {
                    self.runs.insert(id.clone(), (1, now));
                    Say::Warn(format!(
                        "periodic checkpoint failed: {why}; trying again every period"
                    ))
                }
                Some((n, told)) => {
                    *n += 1;
                    if now.duration_since(*told) < REMIND {
                        return Say::Nothing;
                    }
                    *told = now;
                    Say::Warn(format!(
                        "periodic checkpoints still fail ({n} in a row): {why}"
                    ))
                }
            },
        }
    }

    /// Forgets the instances not in `keep` (no longer running here).
    pub fn retain(&mut self, keep: impl Fn(&InstanceId) -> bool) {
        self.runs.retain(|id, _| keep(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(replica: u32, generation: u64) -> Due {
        Due {
            id: InstanceId::new("web", "db", replica),
            generation: Generation(generation),
            port: 1000 + replica as u16,
            criu: false,
        }
    }

    #[test]
    fn a_run_of_failures_is_told_once_reminded_and_its_end_told() {
        let mut log = FailureLog::default();
        let (id, other) = (due(0, 0).id, due(1, 0).id);
        let t0 = Instant::now();
        let failed = Outcome::Failed("a connection".into());
        assert!(matches!(log.record(&id, &failed, t0), Say::Warn(w) if w.contains("a connection")));
        // Every period after it: quiet, until a reminder is due.
        for s in 1..60 {
            assert_eq!(
                log.record(&id, &failed, t0 + Duration::from_secs(s)),
                Say::Nothing
            );
        }
        let reminded = log.record(&id, &failed, t0 + REMIND);
        assert!(matches!(reminded, Say::Warn(w) if w.contains("61 in a row")));
        // Another instance has its own run; a skipped period changes nothing.
        assert!(matches!(log.record(&other, &failed, t0), Say::Warn(_)));
        assert_eq!(
            log.record(&id, &Outcome::Skipped, t0 + REMIND),
            Say::Nothing
        );
        assert_eq!(
            log.record(&id, &Outcome::Kept, t0 + REMIND),
            Say::Recovered(61)
        );
        assert_eq!(log.record(&id, &Outcome::Kept, t0 + REMIND), Say::Nothing);
        // An instance gone is forgotten.
        log.retain(|i| *i != other);
        assert_eq!(log.record(&other, &Outcome::Kept, t0), Say::Nothing);
    }

    #[test]
    fn one_capture_per_period_and_none_while_one_is_in_flight() {
        let mut s = Schedule::default();
        let t0 = Instant::now();
        let p = Duration::from_secs(1);
        let table = vec![(due(0, 0), p)];
        assert!(s.due(&table, t0).is_empty(), "first one a period after");
        assert_eq!(s.due(&table, t0 + p), vec![due(0, 0)]);
        // Still in flight a period later: not started again.
        assert!(s.due(&table, t0 + 3 * p).is_empty());
        s.done(&due(0, 0).id, Generation(0));
        assert_eq!(s.due(&table, t0 + 3 * p), vec![due(0, 0)]);
        s.done(&due(0, 0).id, Generation(0));
        assert!(s.due(&table, t0 + 3 * p + p / 2).is_empty());
        // A new generation is a new instance; the old one is forgotten.
        let table = vec![(due(0, 1), p)];
        assert!(s.due(&table, t0 + 4 * p).is_empty());
        assert_eq!(s.next.len(), 1);
    }
}
