//! The service records' replicas, as I/O: the owner pushes, holders keep, watch and take over
//! (the decisions are [`super::takeover`]'s and [`super::record_replicas`]'s).
//!
//! * **Owner.** Every heartbeat period, each finished service of the ledger whose placement
//!   (epoch, and each instance's host and generation) changed since it was last pushed (a
//!   deploy, a re-placement, a move; and once after a start) is pushed as a
//!   [`ServiceRecord`] to the `record_replicas` nearest connected peers (smallest smoothed
//!   RTT), with a [`Delegation`] naming them nearest first at a new version. The holders that
//!   took it are written to the ledger entry.
//! * **Holder** ([`Holder`], in [`super::holder`]). Keeps the records (bounded, on disk),
//!   fetches and pins their artifacts (so it can serve the new hosts), and watches every owner, host and fellow holder
//!   its records name with the healer's heartbeats and detector. When the owner and a host of a
//!   service are both declared dead and [`my_turn`] says so, it re-places the lost instances
//!   as the owner would ([`plan`]): the owner-signed spec at the next generation, its calls
//!   pointed at the current hosts; then `Moved` with the delegation to every connected node,
//!   and the updated record to the other holders.
//! * **Owner back** ([`super::owner_return`]). On start, before its healer runs, the owner asks the holders its ledger
//!   names for their records ([`learn_from_holders`]): an instance a holder re-placed (a newer
//!   generation) is relocated in the ledger, the copy left on its old host is put in the
//!   retirement book (the healer asks that host to remove it), and the owner's own stale copy
//!   (started again by its restart) is removed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use brume_overlay::{Multiaddr, PeerId};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::delegation::Delegation;
use super::healer::{candidates, retire_copies, REPLACE_BUDGET};
use super::holder::Holder;
use super::record_replicas::ServiceRecord;
use super::replace::{plan, Demands};
use super::retire::Stale;
use super::takeover::my_turn;
use super::watch::{Watch, WatchConfig};
use crate::deploy::client::ask;
use crate::deploy::deployer::Deployer;
use crate::deploy::initiator::Initiator;
use crate::deploy::ledger::{Entry, Placed, State};
use crate::deploy::wire::{CallTarget, CheckpointMode, Reply, Request};
use crate::migrate::mover::Mover;

/// How long a holder is given to take a record (it fetches the artifacts first).
const PUSH_TIMEOUT: Duration = Duration::from_secs(120);
/// Pushes of one placement that some holders did not take, before the owner settles for the
/// holders that did: a holder that missed a push (a timeout, a connection lost) gets it on a
/// later heartbeat, and one that keeps refusing is not asked every period for good.
const PARTIAL_PUSHES: u32 = 5;
/// How long a holder is given to answer an owner back from the dead.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// How many heartbeat periods a holder waits per live holder ranked before it.
const STEP_PERIODS: u32 = 20;

/// A service's placement as last pushed: its epoch and each instance's host and generation.
type Fingerprint = (u64, Vec<(String, u32, PeerId, u64)>);

/// How a push of a service record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pushed {
    /// Every holder asked took it.
    All,
    /// Some did: pushed again on a later heartbeat, up to [`PARTIAL_PUSHES`] times.
    Some,
    /// None did (or there was no one to ask): pushed again on the next heartbeat.
    None,
}

fn fingerprint(e: &Entry) -> Fingerprint {
    let mut v: Vec<_> = e
        .instances
        .iter()
        .map(|p| (p.task.clone(), p.replica, p.peer, p.generation.0))
        .collect();
    v.sort();
    (e.epoch, v)
}

/// The owner's pushes and the holder's watch, every heartbeat period.
pub struct Replicator {
    pub initiator: Arc<Initiator>,
    pub deployer: Arc<Deployer>,
    pub mover: Arc<Mover>,
    pub holder: Arc<Holder>,
    /// How many holders each record is pushed to (0: none).
    pub copies: usize,
    pub interval: Duration,
}

impl Replicator {
    /// Runs until the overlay stops.
    pub async fn run(self) {
        let this = Arc::new(self);
        let overlay = this.initiator.overlay().clone();
        let me = overlay.peer_id();
        let interval = this.interval;
        let probe_timeout = (interval * 4).max(Duration::from_secs(2));
        let step = interval * STEP_PERIODS;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pushed: BTreeMap<String, Fingerprint> = BTreeMap::new();
        // The holders of each service pushed, to tell them when it is stopped.
        let mut held_by: BTreeMap<String, Vec<(PeerId, Vec<Multiaddr>)>> = BTreeMap::new();
        let mut pushing: BTreeSet<String> = BTreeSet::new();
        let (push_tx, mut push_done) = mpsc::channel::<(String, Fingerprint, Pushed)>(64);
        // Partial pushes so far of the placement last pushed, per service.
        let mut partial: BTreeMap<String, (Fingerprint, u32)> = BTreeMap::new();
        let mut version = 0u64;
        let mut watch = Watch::new(WatchConfig::for_interval(interval));
        let mut probing: BTreeSet<PeerId> = BTreeSet::new();
        let (beat_tx, mut beats) = mpsc::channel::<(PeerId, Option<Instant>)>(256);
        let mut declared: BTreeMap<PeerId, Instant> = BTreeMap::new();
        let mut job: Option<tokio::task::JoinHandle<()>> = None;
        let avoided: Arc<Mutex<BTreeMap<PeerId, Instant>>> = Arc::default();
        // Old hosts asked to retire a copy right now (one request at a time per host).
        let retiring: Arc<Mutex<BTreeSet<PeerId>>> = Arc::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some((service, f, outcome)) = push_done.recv() => {
                    pushing.remove(&service);
                    let tries = match partial.get(&service) {
                        Some((g, n)) if *g == f => n + 1,
                        _ => 1,
                    };
                    match outcome {
                        Pushed::All => {
                            partial.remove(&service);
                            pushed.insert(service, f);
                        }
                        Pushed::Some if tries >= PARTIAL_PUSHES => {
                            partial.remove(&service);
                            pushed.insert(service, f);
                        }
                        Pushed::Some => {
                            partial.insert(service, (f, tries));
                        }
                        Pushed::None => {}
                    }
                    continue;
                }
                Some((peer, at)) = beats.recv() => {
                    probing.remove(&peer);
                    if let Some(at) = at {
                        if declared.remove(&peer).is_some() {
                            // Back (an owner restarted): judged afresh from now on.
                            info!(%peer, "a node declared dead answers again");
                            watch.forget(&peer);
                        } else {
                            watch.heartbeat(peer, at);
                        }
                    }
                    continue;
                }
            }
            // Owner: push what changed.
            let ledger = this.initiator.ledger().all();
            for (service, entry) in &ledger {
                if !entry.holders.is_empty() {
                    held_by.insert(service.clone(), entry.holders.clone());
                }
            }
            let stopped: Vec<String> = held_by
                .keys()
                .filter(|s| !ledger.contains_key(*s))
                .cloned()
                .collect();
            for service in stopped {
                pushed.remove(&service);
                partial.remove(&service);
                let holders = held_by.remove(&service).unwrap_or_default();
                let this = this.clone();
                tokio::spawn(async move { this.forget(&service, &holders).await });
            }
            if this.copies > 0 {
                for (service, entry) in ledger {
                    let f = fingerprint(&entry);
                    let due = entry.state == State::Done
                        && !entry.specs.is_empty()
                        && pushed.get(&service) != Some(&f)
                        && !pushing.contains(&service);
                    if !due {
                        continue;
                    }
                    let now_ms = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0);
                    version = now_ms.max(version + 1);
                    pushing.insert(service.clone());
                    let (this, tx) = (this.clone(), push_tx.clone());
                    tokio::spawn(async move {
                        let outcome = this.push(&service, entry, version).await;
                        let _ = tx.send((service, f, outcome)).await;
                    });
                }
            }
            // Holder: watch the owners, hosts and holders of the records kept here.
            let records = this.holder.book().all();
            this.retire(&records, &retiring);
            let mut addrs: BTreeMap<PeerId, Vec<Multiaddr>> = BTreeMap::new();
            for r in &records {
                addrs
                    .entry(r.owner)
                    .or_insert_with(|| r.owner_addrs.clone());
                for p in &r.instances {
                    addrs.entry(p.peer).or_insert_with(|| p.addrs.clone());
                }
                for (i, h) in r.delegation.holders.iter().enumerate() {
                    let a = r.holder_addrs.get(i).cloned().unwrap_or_default();
                    addrs.entry(*h).or_insert(a);
                }
            }
            addrs.remove(&me);
            let watched: BTreeSet<PeerId> = addrs.keys().copied().collect();
            watch.track(&watched, Instant::now());
            declared.retain(|p, _| watched.contains(p));
            if watched.is_empty() {
                continue;
            }
            let Ok(peers) = overlay.peers().await else {
                return;
            };
            let up: BTreeSet<PeerId> = peers.into_iter().map(|p| p.peer_id).collect();
            for (&peer, a) in &addrs {
                watch.connection(peer, up.contains(&peer));
                if !probing.insert(peer) {
                    continue;
                }
                let (initiator, tx, a) = (this.initiator.clone(), beat_tx.clone(), a.clone());
                tokio::spawn(async move {
                    let req = Request::List {
                        service: Some(String::new()),
                    };
                    let asked = initiator.ask_host(peer, &a, &req);
                    let answer = tokio::time::timeout(probe_timeout, asked).await;
                    let at = matches!(answer, Ok(Ok(Reply::Instances(_)))).then(Instant::now);
                    let _ = tx.send((peer, at)).await;
                });
            }
            let now = Instant::now();
            for v in watch.judge(now) {
                warn!(peer = %v.peer, phi = %format!("{:.1}", v.phi), silent_ms = v.silent.as_millis() as u64,
                    connected = v.connected, "a node named in a service record held here is declared dead");
                declared.insert(v.peer, now);
            }
            if job.as_ref().is_some_and(|j| !j.is_finished()) {
                continue;
            }
            let due: Vec<ServiceRecord> = records
                .into_iter()
                .filter(|r| {
                    my_turn(
                        r.owner,
                        &r.delegation.holders,
                        &r.instances,
                        me,
                        &declared,
                        step,
                        now,
                    )
                })
                .collect();
            if !due.is_empty() {
                let dead: BTreeSet<PeerId> = declared.keys().copied().collect();
                let (this, avoided) = (this.clone(), avoided.clone());
                job = Some(tokio::spawn(async move {
                    for r in due {
                        this.take_over(r, &dead, &avoided).await;
                    }
                }));
            }
        }
    }

    /// Pushes `service`'s record to the nearest connected peers; whether all, some or none
    /// of them took it.
    async fn push(&self, service: &str, entry: Entry, version: u64) -> Pushed {
        let overlay = self.initiator.overlay();
        let me = overlay.peer_id();
        let Ok(mut peers) = overlay.peers().await else {
            return Pushed::None;
        };
        peers.retain(|p| p.peer_id != me);
        peers.sort_by(|a, b| {
            let rtt = |p: &brume_overlay::PeerInfo| p.srtt_ms.unwrap_or(f64::MAX);
            rtt(a).total_cmp(&rtt(b)).then(a.peer_id.cmp(&b.peer_id))
        });
        peers.truncate(self.copies.min(super::delegation::MAX_HOLDERS));
        if peers.is_empty() {
            return Pushed::None;
        }
        let holders: Vec<PeerId> = peers.iter().map(|p| p.peer_id).collect();
        let holder_addrs: Vec<Vec<Multiaddr>> = peers
            .iter()
            .map(|p| p.addr.iter().cloned().collect())
            .collect();
        let record = ServiceRecord {
            service: service.to_string(),
            owner: me,
            owner_addrs: Vec::new(),
            epoch: entry.epoch,
            specs: entry.specs.clone(),
            instances: entry.instances.clone(),
            artifacts: entry.artifacts.clone().unwrap_or_default(),
            holder_addrs: holder_addrs.clone(),
            delegation: Delegation::sign(
                overlay.keypair(),
                service,
                entry.epoch,
                version,
                holders.clone(),
            ),
        };
        // Write-ahead: the holders are in the ledger before any hears of the record, so that an
        // owner killed right after a holder took it still asks that holder when it starts
        // again. Those named before stay named (one of them may hold a newer record).
        let mut named: Vec<(PeerId, Vec<Multiaddr>)> = holders
            .iter()
            .copied()
            .zip(holder_addrs.iter().cloned())
            .collect();
        for old in entry.holders.iter() {
            if !named.iter().any(|(p, _)| *p == old.0) {
                named.push(old.clone());
            }
        }
        named.truncate(2 * super::delegation::MAX_HOLDERS);
        if let Err(e) = self
            .initiator
            .ledger()
            .set_holders(service, entry.epoch, named)
            .await
        {
            warn!(%service, "cannot record the record's holders in the ledger: {e:#}");
            return Pushed::None;
        }
        let req = Request::Replica(Box::new(record));
        let asks = holders.iter().zip(&holder_addrs).map(|(&peer, a)| {
            let req = &req;
            async move {
                let asked = self.initiator.ask_host(peer, a, req);
                match tokio::time::timeout(PUSH_TIMEOUT, asked).await {
                    Ok(Ok(Reply::Taken)) => true,
                    Ok(other) => {
                        let other = said(&other);
                        warn!(%service, %peer, %other, "a neighbour did not take the service record");
                        false
                    }
                    Err(_) => {
                        warn!(%service, %peer, "a neighbour did not take the service record in time");
                        false
                    }
                }
            }
        });
        let took = futures::future::join_all(asks).await;
        if !took.iter().any(|t| *t) {
            return Pushed::None;
        }
        info!(%service, epoch = entry.epoch, version, holders = ?holders.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
            took = took.iter().filter(|t| **t).count(), "service record replicated");
        if took.iter().all(|t| *t) {
            Pushed::All
        } else {
            Pushed::Some
        }
    }

    /// Tells `holders` that `service` was stopped (once each; one that does not hear it keeps
    /// the record until the service is deployed again).
    async fn forget(&self, service: &str, holders: &[(PeerId, Vec<Multiaddr>)]) {
        let req = Request::ForgetRecord {
            service: service.to_string(),
        };
        for (peer, addrs) in holders {
            let asked = self.initiator.ask_host(*peer, addrs, &req);
            if !matches!(
                tokio::time::timeout(ASK_TIMEOUT, asked).await,
                Ok(Ok(Reply::Taken))
            ) {
                warn!(%service, %peer, "a holder did not hear that the service was stopped");
            }
        }
    }

    /// Re-places `r`'s instances on dead hosts, for its dead owner.
    async fn take_over(
        &self,
        r: ServiceRecord,
        dead: &BTreeSet<PeerId>,
        avoided: &Mutex<BTreeMap<PeerId, Instant>>,
    ) {
        let overlay = self.initiator.overlay();
        let map = match overlay.map_with(REPLACE_BUDGET, true).await {
            Ok(outcome) => outcome.map,
            Err(e) => {
                warn!("cannot map the neighbourhood to take over for a dead owner: {e}");
                return;
            }
        };
        let mut avoid: BTreeSet<PeerId> = {
            let mut a = avoided.lock().unwrap_or_else(|e| e.into_inner());
            a.retain(|_, at| at.elapsed() < super::healer::AVOID_FOR);
            a.keys().copied().collect()
        };
        avoid.insert(r.owner);
        let candidates = candidates(&map, overlay.node_id(), &avoid);
        let mut dead = dead.clone();
        dead.insert(r.owner);
        let entry = Entry {
            epoch: r.epoch,
            manifest: PathBuf::new(),
            instances: r.instances.clone(),
            state: State::Done,
            previous: None,
            artifacts: None,
            specs: Vec::new(),
            holders: Vec::new(),
        };
        let ledger: BTreeMap<String, Entry> = [(r.service.clone(), entry)].into();
        let mut demands = Demands::new();
        for s in &r.specs {
            demands.insert(
                (r.service.clone(), s.id.task.clone()),
                (s.cpu_millis, s.memory_mb),
            );
        }
        let mut current = r.instances.clone();
        for step in plan(&ledger, &dead, &candidates, &demands) {
            let from = &step.from;
            let to = match step.to {
                Ok(c) => c,
                Err(why) => {
                    warn!(service = %r.service, task = %from.task, replica = from.replica,
                        "cannot re-place for the dead owner: {why}; trying again");
                    continue;
                }
            };
            let Some(spec) = r.spec_of(&from.task, from.replica) else {
                warn!(service = %r.service, task = %from.task, "the record holds no spec of this instance");
                continue;
            };
            let to = Placed {
                task: from.task.clone(),
                replica: from.replica,
                host: to.host,
                peer: to.peer,
                addrs: to.addrs,
                generation: from.generation.next(),
            };
            if let Some(p) = current
                .iter_mut()
                .find(|p| p.task == to.task && p.replica == to.replica)
            {
                *p = to.clone();
            }
            let mut spec = spec.clone();
            // A stateful instance starts from the latest checkpoint its owner passed on here
            // (app checkpoints only: a host restores CRIU images only from the owner itself).
            spec.restore = self
                .holder
                .latest_checkpoint(r.owner, &spec.id, spec.epoch)
                .filter(|_| spec.checkpoint == CheckpointMode::App)
                .map(|c| {
                    warn!(service = %r.service, task = %from.task, replica = from.replica,
                        bytes = c.state.len(), from_generation = %c.generation,
                        "restored from the checkpoint the owner passed on {} ms ago: writes since then are lost",
                        c.age_ms());
                    c.state
                });
            spec.generation = to.generation;
            spec.calls = calls_now(&spec.calls, &current);
            let req = Request::Deploy(spec.clone());
            let started = ask(&self.deployer, to.peer, &to.addrs, &req, |_| async {}).await;
            match started {
                Ok(Reply::Started { .. }) => {}
                other => {
                    let other = said(&other);
                    avoided
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(to.peer, Instant::now());
                    warn!(service = %r.service, task = %from.task, to = %to.host, %other,
                        "re-placing for the dead owner failed; trying again elsewhere");
                    continue;
                }
            }
            let updated = self.holder.book().relocate(r.owner, &r.service, &to);
            self.mover
                .moved(&spec.id, to.peer, &to.host, to.addrs.clone())
                .await;
            let told = self
                .mover
                .tell_moved(&spec, to.peer, &to.host, &to.addrs, Some(&r.delegation))
                .await;
            // The old host may only have been frozen or cut off: its copy must not run on
            // beside this one. It is asked (with the owner's delegation) until it answers.
            self.holder.retiring().record(Stale::left_by(&spec, from));
            if let Some(updated) = updated {
                self.forward(&updated).await;
            }
            warn!(service = %r.service, task = %from.task, replica = from.replica, from = %from.host,
                to = %to.host, generation = %to.generation, owner = %r.owner, told,
                "instance placed again by a holder of its record: its owner and its host are dead");
        }
    }

    /// Asks each old host of a copy this holder re-placed to remove it, with the owner's
    /// delegation from the record; a copy whose record is gone, or whose instance the record
    /// places on that host again, is dropped ([`super::retire::Retirements::due_with`]). With
    /// several owners' records of one service name, the first of that name and epoch speaks.
    fn retire(
        self: &Arc<Self>,
        records: &[ServiceRecord],
        retiring: &Arc<Mutex<BTreeSet<PeerId>>>,
    ) {
        let book = self.holder.retiring();
        if book.is_empty() {
            return;
        }
        let due = book.due_with(|service| {
            records
                .iter()
                .find(|r| r.service == service)
                .map(|r| (r.epoch, r.instances.as_slice()))
        });
        for (peer, copies) in due {
            if !retiring
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(peer)
            {
                continue;
            }
            let copies: Vec<(Stale, Option<Box<Delegation>>)> = copies
                .into_iter()
                .map(|s| {
                    let d = records
                        .iter()
                        .find(|r| r.service == s.instance.service && r.epoch == s.epoch)
                        .map(|r| Box::new(r.delegation.clone()));
                    (s, d)
                })
                .collect();
            let (this, retiring) = (self.clone(), retiring.clone());
            tokio::spawn(async move {
                let answers = retire_copies(&this.initiator, copies).await;
                this.holder.retiring().answered(&answers);
                retiring
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&peer);
            });
        }
    }

    /// Hands `r` (updated here) to the other holders, so that they see it done.
    async fn forward(&self, r: &ServiceRecord) {
        let me = self.initiator.overlay().peer_id();
        let req = Request::Replica(Box::new(r.clone()));
        for (i, &peer) in r.delegation.holders.iter().enumerate() {
            if peer == me {
                continue;
            }
            let a = r.holder_addrs.get(i).cloned().unwrap_or_default();
            let asked = self.initiator.ask_host(peer, &a, &req);
            if let Ok(other) = tokio::time::timeout(ASK_TIMEOUT, asked).await {
                if !matches!(other, Ok(Reply::Taken)) {
                    let other = said(&other);
                    warn!(%peer, %other, "a fellow holder did not take the updated record");
                }
            }
        }
    }
}

/// A short account of an answer for the log (no backtrace).
fn said(r: &anyhow::Result<Reply>) -> String {
    match r {
        Ok(Reply::Refused { reason }) => format!("refused: {reason}"),
        Ok(other) => format!("answered {other:?}"),
        Err(e) => format!("{e:#}"),
    }
}

/// `calls` pointed at where the called tasks' replicas run in `instances`.
fn calls_now(calls: &[CallTarget], instances: &[Placed]) -> Vec<CallTarget> {
    calls
        .iter()
        .map(|c| {
            let mut replicas: Vec<&Placed> =
                instances.iter().filter(|p| p.task == c.task).collect();
            replicas.sort_by_key(|p| p.replica);
            if replicas.is_empty() {
                return c.clone();
            }
            CallTarget {
                task: c.task.clone(),
                hosts: replicas.iter().map(|p| p.peer).collect(),
                addrs: replicas.iter().map(|p| p.addrs.clone()).collect(),
            }
        })
        .collect()
}
