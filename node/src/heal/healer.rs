//! The initiator's watch over the hosts of the services it deployed, and the re-placement of
//! the instances of a host declared dead. The decisions are [`Watch`]'s and [`plan`]'s; this
//! is their I/O.
//!
//! Every period, each host the ledger names (other than this node) is sent a heartbeat: a
//! `List` request of the deploy protocol for the service with the empty name, which no service
//! has (so the host answers an empty list from its instance table, without asking its engine
//! anything), at most one in flight per host, bounded in time. An answer is a heartbeat arrival. The overlay's peer list says whether a connection
//! to the host is up. A host declared dead is logged with its phi and silence; then a fresh map
//! is taken, [`plan`] chooses new hosts, and each instance is deployed there (signed by this
//! node, its owner, at the next generation), recorded in the ledger, and announced with `Moved`
//! to every connected node, so that callers' routes follow. The old copy is remembered
//! ([`Retirements`]) and its host asked to remove it every period until it answers: a host that
//! was only cut off or frozen comes back with its old copy still running, and the newer
//! generation must win (the host keeps the loser's logs and state, see
//! [`super::retired`]). An instance no host fits is tried again at the next period.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use brume_overlay::{Multiaddr, PeerId};
use brume_plan::manifest::Manifest;
use tokio::sync::mpsc;
use tracing::warn;

use super::delegation::Delegation;
use super::owner_return::learn_from_holders;
use super::replace::{plan, Candidate, Demands};
use super::retire::{Answer, Stale};
use super::retire_book::RetireBook;
use super::watch::{Watch, WatchConfig};
use crate::deploy::initiator::Initiator;
use crate::deploy::ledger::{Placed, State};
use crate::deploy::wire::{Reply, Request};
use crate::migrate::mover::Mover;

/// The latency budget of the map new hosts are chosen from: wide, since a running copy far
/// away beats none (a silent node is given up by the map well before it).
pub const REPLACE_BUDGET: Duration = Duration::from_secs(2);

/// How long the old host of a re-placed instance is given to answer its removal.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The stale copies, shared by the watch loop (which asks) and a recovery (which records), on
/// disk between restarts.
type StaleBook = Arc<RetireBook>;

/// How long a re-placement waits for the holders of the records to say what they did.
const LEARN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a host that refused or failed a re-placement is not chosen again.
pub const AVOID_FOR: Duration = Duration::from_secs(10);

/// Hosts that refused a re-placement lately, and when.
type Avoided = Arc<std::sync::Mutex<BTreeMap<PeerId, Instant>>>;

/// Watches the hosts of the services deployed from this node, and re-places what dies.
pub struct Healer {
    initiator: Arc<Initiator>,
    mover: Arc<Mover>,
    config: WatchConfig,
    /// Where the stale copies are kept ([`RetireBook`]).
    data_dir: PathBuf,
}

/// A host declared dead: when, and what was known then.
#[derive(Debug, Clone, Copy)]
struct Dead {
    declared: Instant,
    /// The silence when it was declared.
    silent: Duration,
}

impl Healer {
    /// Heartbeats every `interval`; the stale copies are kept in `data_dir`.
    pub fn new(
        initiator: Arc<Initiator>,
        mover: Arc<Mover>,
        interval: Duration,
        data_dir: PathBuf,
    ) -> Healer {
        Healer {
            initiator,
            mover,
            config: WatchConfig::for_interval(interval),
            data_dir,
        }
    }

    /// Runs until the overlay stops.
    pub async fn run(self) {
        let overlay = self.initiator.overlay().clone();
        let me = overlay.peer_id();
        let interval = self.config.interval;
        // A probe may take a few periods on a loaded machine; its answer still counts.
        let probe_timeout = (interval * 4).max(Duration::from_secs(2));
        let mut watch = Watch::new(self.config);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (beat_tx, mut beats) = mpsc::channel::<(PeerId, Option<Instant>)>(256);
        let mut probing: BTreeSet<PeerId> = BTreeSet::new();
        let mut dead: BTreeMap<PeerId, Dead> = BTreeMap::new();
        let mut recovery: Option<tokio::task::JoinHandle<()>> = None;
        let avoided = Avoided::default();
        let stale: StaleBook = Arc::new(RetireBook::open(&self.data_dir));
        if !stale.is_empty() {
            warn!(
                copies = stale.len(),
                "stale copies left on hosts declared dead before the restart: asking their hosts to stop them"
            );
        }
        let (retired_tx, mut retired) = mpsc::channel::<(PeerId, Vec<(Stale, Answer)>)>(64);
        let mut retiring: BTreeSet<PeerId> = BTreeSet::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some((peer, answers)) = retired.recv() => {
                    retiring.remove(&peer);
                    stale.answered(&answers);
                    continue;
                }
                Some((peer, at)) = beats.recv() => {
                    probing.remove(&peer);
                    if let Some(at) = at {
                        watch.heartbeat(peer, at);
                    }
                    continue;
                }
            }
            self.retire(&stale, &mut retiring, &retired_tx);
            let hosts = hosts(&self.initiator, me);
            let watched: BTreeSet<PeerId> = hosts.keys().copied().collect();
            watch.track(&watched, Instant::now());
            dead.retain(|p, _| watched.contains(p));
            if hosts.is_empty() {
                continue;
            }
            let Ok(peers) = overlay.peers().await else {
                return;
            };
            let up: BTreeSet<PeerId> = peers.into_iter().map(|p| p.peer_id).collect();
            for (&peer, addrs) in &hosts {
                watch.connection(peer, up.contains(&peer));
                if watch.is_declared(&peer) || !probing.insert(peer) {
                    continue;
                }
                let (initiator, tx) = (self.initiator.clone(), beat_tx.clone());
                let (addrs, req) = (
                    addrs.clone(),
                    Request::List {
                        service: Some(String::new()),
                    },
                );
                tokio::spawn(async move {
                    let asked = initiator.ask_host(peer, &addrs, &req);
                    let answer = tokio::time::timeout(probe_timeout, asked).await;
                    let at = matches!(answer, Ok(Ok(Reply::Instances(_)))).then(Instant::now);
                    let _ = tx.send((peer, at)).await;
                });
            }
            let now = Instant::now();
            for v in watch.judge(now) {
                warn!(
                    peer = %v.peer,
                    phi = %format!("{:.1}", v.phi),
                    silent_ms = v.silent.as_millis() as u64,
                    connected = v.connected,
                    "host declared dead: its instances are placed again"
                );
                dead.insert(
                    v.peer,
                    Dead {
                        declared: now,
                        silent: v.silent,
                    },
                );
            }
            let idle = recovery.as_ref().is_none_or(|r| r.is_finished());
            if !dead.is_empty() && idle {
                let job = Recovery {
                    initiator: self.initiator.clone(),
                    mover: self.mover.clone(),
                    dead: dead.clone(),
                    avoided: avoided.clone(),
                    stale: stale.clone(),
                };
                recovery = Some(tokio::spawn(job.run()));
            }
        }
    }
}

impl Healer {
    /// Asks every old host with stale copies (one request at a time per host) to remove them;
    /// the answers come back on `done`.
    fn retire(
        &self,
        stale: &StaleBook,
        retiring: &mut BTreeSet<PeerId>,
        done: &mpsc::Sender<(PeerId, Vec<(Stale, Answer)>)>,
    ) {
        let ledger = self.initiator.ledger().all();
        let due = stale.due(&ledger);
        for (peer, copies) in due {
            if !retiring.insert(peer) {
                continue;
            }
            let (initiator, done) = (self.initiator.clone(), done.clone());
            tokio::spawn(async move {
                let copies = copies.into_iter().map(|s| (s, None)).collect();
                let answers = retire_copies(&initiator, copies).await;
                let _ = done.send((peer, answers)).await;
            });
        }
    }
}

/// Asks the old host of `copies` (one host) to remove each, in turn, until one goes
/// unanswered; each with the delegation given beside it (a holder acting for a dead owner).
pub(crate) async fn retire_copies(
    initiator: &Initiator,
    copies: Vec<(Stale, Option<Box<Delegation>>)>,
) -> Vec<(Stale, Answer)> {
    let mut answers = Vec::new();
    for (s, delegation) in copies {
        let remove = Request::Remove {
            instance: s.instance.clone(),
            epoch: s.epoch,
            back_to: None,
            delegation,
        };
        let asked = initiator.ask_host(s.peer, &s.addrs, &remove);
        let answer = match tokio::time::timeout(REMOVE_TIMEOUT, asked).await {
            Ok(Ok(Reply::Stopped { instances })) => {
                if !instances.is_empty() {
                    warn!(host = %s.host, service = %s.instance.service,
                        task = %s.instance.task, replica = s.instance.replica,
                        generation = %s.generation, ?instances,
                        "a host declared dead is heard again: its old copy is retired");
                }
                Answer::Done
            }
            Ok(Ok(Reply::Refused { reason })) => {
                warn!(host = %s.host, "the old host refused to retire its copy: {reason}");
                Answer::Refused
            }
            _ => Answer::Silent,
        };
        let silent = answer == Answer::Silent;
        answers.push((s, answer));
        if silent {
            break;
        }
    }
    answers
}

/// The hosts the ledger names (but this node), with their addresses.
fn hosts(initiator: &Initiator, me: PeerId) -> BTreeMap<PeerId, Vec<Multiaddr>> {
    let mut out = BTreeMap::new();
    for entry in initiator.ledger().all().into_values() {
        for p in entry.instances {
            if p.peer != me {
                out.entry(p.peer).or_insert(p.addrs);
            }
        }
    }
    out
}

/// The nodes of `map` (`me` its centre) a lost instance may go to, but those in `avoid`.
pub(crate) fn candidates(
    map: &brume_overlay::neighbourhood::NeighbourhoodMap,
    me: brume_overlay::ids::NodeId,
    avoid: &BTreeSet<PeerId>,
) -> Vec<Candidate> {
    map.nodes
        .iter()
        .filter_map(|n| {
            let peer = n.peer.filter(|p| !avoid.contains(p))?;
            let rtt_ms = if n.id == me {
                0.0
            } else {
                map.proof(n.id).map(|p| p.rtt_ms).unwrap_or(f64::MAX)
            };
            Some(Candidate {
                peer,
                host: n.id.to_string(),
                addrs: n.addrs.clone(),
                cpu_free_milli: u64::from(n.cpu_free_milli),
                mem_free_mb: n.mem_free_mb,
                rtt_ms,
            })
        })
        .collect()
}

/// One round of re-placing the instances of the dead hosts.
struct Recovery {
    initiator: Arc<Initiator>,
    mover: Arc<Mover>,
    dead: BTreeMap<PeerId, Dead>,
    avoided: Avoided,
    stale: StaleBook,
}

impl Recovery {
    async fn run(self) {
        let overlay = self.initiator.overlay();
        let me = overlay.node_id();
        let map = match overlay.map_with(REPLACE_BUDGET, true).await {
            Ok(outcome) => outcome.map,
            Err(e) => {
                warn!("cannot map the neighbourhood to re-place instances: {e}");
                return;
            }
        };
        let avoid: BTreeSet<PeerId> = {
            let mut avoided = self.avoided.lock().unwrap_or_else(|e| e.into_inner());
            avoided.retain(|_, at| at.elapsed() < AVOID_FOR);
            avoided.keys().copied().collect()
        };
        let candidates = candidates(&map, me, &avoid);
        // A holder may have re-placed them already, while this node was frozen or cut off
        // (it then judged this node dead): its newer placement is taken, not doubled.
        let _ = tokio::time::timeout(
            LEARN_TIMEOUT,
            learn_from_holders(
                &self.initiator,
                &self.mover.deployer,
                &self.stale,
                &self.dead.keys().copied().collect(),
            ),
        )
        .await;
        // A deploy still under way (or left pending by a crash) is its initiator's to finish
        // or undo: only finished ones are healed.
        let ledger: BTreeMap<_, _> = self
            .initiator
            .ledger()
            .all()
            .into_iter()
            .filter(|(_, e)| e.state == State::Done)
            .collect();
        let mut demands = Demands::new();
        let mut stateful = BTreeSet::new();
        for (service, entry) in &ledger {
            let Ok(m) = Manifest::load(&entry.manifest) else {
                continue;
            };
            for t in &m.tasks {
                demands.insert(
                    (service.clone(), t.name.clone()),
                    (t.cpu_millis, t.memory_mb),
                );
                if t.stateful || !matches!(t.checkpoint, brume_plan::manifest::Checkpoint::None) {
                    stateful.insert((service.clone(), t.name.clone()));
                }
            }
        }
        let dead: BTreeSet<PeerId> = self.dead.keys().copied().collect();
        for r in plan(&ledger, &dead, &candidates, &demands) {
            let (service, from) = (&r.service, &r.from);
            let to = match r.to {
                Ok(c) => c,
                Err(why) => {
                    warn!(%service, task = %from.task, replica = from.replica, "cannot re-place: {why}; trying again");
                    continue;
                }
            };
            if stateful.contains(&(service.clone(), from.task.clone())) {
                // A checkpointed task starts from the latest checkpoint kept here, and
                // `replace` says so; any other stateful one starts fresh.
                warn!(%service, task = %from.task, replica = from.replica,
                    "re-placing a stateful task: only a task with checkpoint_every_s keeps its state (up to its last checkpoint)");
            }
            let to = Placed {
                task: from.task.clone(),
                replica: from.replica,
                host: to.host,
                peer: to.peer,
                addrs: to.addrs,
                generation: from.generation.next(),
            };
            match self.initiator.replace(service, from, &to).await {
                Ok(spec) => {
                    // This node's own routes (a caller may run here), then everyone else's.
                    self.mover
                        .moved(&spec.id, to.peer, &to.host, to.addrs.clone())
                        .await;
                    let told = self
                        .mover
                        .tell_moved(&spec, to.peer, &to.host, &to.addrs, None)
                        .await;
                    // If the old host was only cut off or slow, its copy must not run on: it
                    // is asked to remove it until it answers (a dead host does not).
                    self.stale.record(Stale::left_by(&spec, from));
                    let dead = self.dead.get(&from.peer);
                    let recover_ms = dead.map(|d| d.declared.elapsed().as_millis() as u64);
                    let detect_ms = dead.map(|d| d.silent.as_millis() as u64);
                    // A warning: an incident an operator wants to see at the default level.
                    warn!(
                        %service,
                        task = %from.task,
                        replica = from.replica,
                        from = %from.host,
                        to = %to.host,
                        generation = %to.generation,
                        detect_ms,
                        recover_ms,
                        told,
                        "instance of a dead host placed again"
                    );
                }
                Err(e) => {
                    self.avoided
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(to.peer, Instant::now());
                    warn!(%service, task = %from.task, replica = from.replica, to = %to.host, "re-placing failed: {e:#}; trying again elsewhere");
                }
            }
        }
    }
}
