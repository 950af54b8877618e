//! The initiator side of a deployment: `brume deploy` as the node carries it out.
//!
//! Load the manifest, pack every task's artifact into this node's chunk store (hosts fetch
//! from it), map the neighbourhood, place the call graph, then ask every chosen host at once to
//! run its instances, relaying each host's phases as progress. The all-or-nothing rule is
//! [`Rollout`]'s (no I/O, tested on its own): if any instance is refused or its host cannot be
//! reached, every host is told to stop that epoch of the service, so the deploy either runs
//! whole or leaves nothing. The deploy is written to the [`Ledger`] as pending before any
//! host is asked and marked done once it runs whole (a rolled-back one is dropped); a pending
//! one found on start is undone ([`Initiator::undo_pending`]). `ps`, `logs` and `stop` read
//! the ledger.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use brume_overlay::{OverlayHandle, PeerId};
use brume_tunnel::InstanceId;
use futures::future::join_all;
use tokio::sync::mpsc;

use super::client::ask;
use super::deployer::Deployer;
use super::ledger::{Entry, Ledger, Placed, State};
use super::rollout::{Decision, Outcome, RollBack, Rollout, Slot};
use super::wire::{
    CallTarget, CheckpointMode, InstanceSpec, InstanceView, Payload, Phase, Reply, Request,
};
use brume_artifact::{self as artifact, ChunkStore};
use brume_control::{Deployed, Event, Row, Step};
use brume_plan::manifest::{Artifact, Checkpoint, Manifest};
use brume_plan::onmap::{self, Assignment, PlaceOptions};

use brume_control::NodeName;

/// Restarts allowed to a crashed task.
const MAX_RESTARTS: u32 = 5;

/// The services deployed from this node: `brume deploy`, `ps`, `logs` and `stop`.
pub struct Initiator {
    overlay: OverlayHandle,
    store: ChunkStore,
    ledger: Arc<Ledger>,
    deployer: Arc<Deployer>,
}

impl Initiator {
    pub fn new(
        overlay: OverlayHandle,
        store: ChunkStore,
        ledger: Arc<Ledger>,
        deployer: Arc<Deployer>,
    ) -> Self {
        Initiator {
            overlay,
            store,
            ledger,
            deployer,
        }
    }

    /// Deploys the service in the manifest at `manifest` on the hosts placement picks from a
    /// fresh map within `budget`, sending each instance's steps to `progress` as they happen.
    pub async fn deploy(
        &self,
        manifest_path: &Path,
        budget: Duration,
        options: &PlaceOptions,
        progress: mpsc::Sender<Event>,
    ) -> anyhow::Result<Deployed> {
        let started = Instant::now();
        let manifest = Manifest::load(manifest_path)?;
        let payloads = self.pack(&manifest, None).await?;
        // Its artifacts stay while hosts fetch them; then the ledger entry keeps them.
        let _pin = self.pin(&payloads);
        let outcome = self
            .overlay
            .map_with(budget, true)
            .await
            .context("cannot map the neighbourhood")?;
        let assignments = onmap::place(&manifest, &outcome.map, self.overlay.node_id(), options)?;
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        let service = manifest.service.name.clone();
        let report = Reporter(progress);

        // Every instance at once; each host fetches what it lacks from us.
        // Each signed: the hosts run only what the service's owner vouches for.
        let specs: Vec<anyhow::Result<InstanceSpec>> = assignments
            .iter()
            .map(|a| {
                instance_spec(
                    &manifest,
                    &payloads,
                    &assignments,
                    a,
                    epoch,
                    self.overlay.peer_id(),
                )
                .map(|spec| spec.signed(self.overlay.keypair()))
            })
            .collect();
        // Write-ahead: the deploy is in the ledger before any host hears of it, so an initiator
        // that dies from here on finds it pending when it starts again and undoes it.
        let pending = Entry {
            epoch,
            manifest: manifest_path.to_path_buf(),
            instances: assignments.iter().map(placed).collect(),
            state: State::Pending,
            previous: None,
            artifacts: Some(artifacts_of(&payloads)),
            // Kept for the replicas of the service's record (crate::heal::record_replicas).
            specs: specs
                .iter()
                .filter_map(|s| s.as_ref().ok().cloned())
                .collect(),
            holders: Vec::new(),
        };
        self.ledger.begin(&service, pending).await?;
        let runs = assignments
            .iter()
            .zip(specs)
            .map(|(a, spec)| self.run_one(a, spec, &report));
        let outcomes = join_all(runs).await;

        let slots = assignments
            .iter()
            .map(|a| Slot {
                task: a.task.clone(),
                replica: a.replica,
                peer: a.peer,
                host: NodeName::of(a.peer).to_string(),
            })
            .collect();
        let mut rollout = Rollout::new(&service, slots);
        let mut decision = None;
        for (i, outcome) in outcomes.into_iter().enumerate() {
            decision = rollout.report(i, outcome);
        }
        let instances = match decision {
            Some(Decision::Record(instances)) => instances,
            Some(Decision::RollBack(back)) => {
                let message = self
                    .roll_back(back, &service, epoch, &assignments, &report)
                    .await;
                self.ledger.undo_pending(&service, epoch).await?;
                anyhow::bail!(message);
            }
            // No instance at all: placement never returns an empty plan.
            None => {
                self.ledger.undo_pending(&service, epoch).await?;
                anyhow::bail!("placement put no instance of {service} anywhere")
            }
        };
        self.ledger.finish(&service, epoch).await?;
        Ok(Deployed {
            service,
            epoch,
            elapsed_ms: started.elapsed().as_millis() as u64,
            map_nodes: outcome.map.nodes.len(),
            instances: assignments
                .iter()
                .zip(&instances)
                .map(|(a, i)| row(a.node.to_string(), a.peer, i))
                .collect(),
        })
    }

    /// Asks one host to run one instance, reporting its steps; what it came to, for the
    /// [`Rollout`].
    async fn run_one(
        &self,
        a: &Assignment,
        spec: anyhow::Result<InstanceSpec>,
        report: &Reporter,
    ) -> Outcome {
        report.step(a, Step::Placed).await;
        let on_phase = |phase: Phase| {
            report.step(
                a,
                match phase {
                    Phase::Fetching { done, total } => Step::Fetching { done, total },
                    Phase::Building => Step::Building,
                    Phase::Starting => Step::Starting,
                },
            )
        };
        let reply = match spec {
            Ok(spec) => {
                ask(
                    &self.deployer,
                    a.peer,
                    &a.addrs,
                    &Request::Deploy(spec),
                    on_phase,
                )
                .await
            }
            Err(e) => Err(e),
        };
        let outcome = match reply {
            Ok(Reply::Started { instance, reused }) => {
                let port = instance.port;
                report.step(a, Step::Running { port, reused }).await;
                return Outcome::Running(instance);
            }
            Ok(Reply::Refused { reason }) => Outcome::Refused(reason),
            Ok(other) => Outcome::Refused(format!("the host answered {other:?} to a deploy")),
            Err(e) => Outcome::Unreachable(format!("{e:#}")),
        };
        if let Outcome::Refused(reason) | Outcome::Unreachable(reason) = &outcome {
            let reason = reason.clone();
            report.step(a, Step::Failed { reason }).await;
        }
        outcome
    }

    /// Tells every host the rollout names to stop this epoch of the service; what the user is
    /// told.
    async fn roll_back(
        &self,
        back: RollBack,
        service: &str,
        epoch: u64,
        assignments: &[Assignment],
        report: &Reporter,
    ) -> String {
        let stop = Request::Stop {
            service: service.to_string(),
            epoch: Some(epoch),
        };
        let addrs: BTreeMap<PeerId, _> = assignments.iter().map(|a| (a.peer, &a.addrs)).collect();
        let stops = back.hosts.iter().map(|peer| {
            let addrs = addrs.get(peer).map(|a| a.as_slice()).unwrap_or_default();
            ask(&self.deployer, *peer, addrs, &stop, |_| async {})
        });
        let stopped = join_all(stops).await;
        let unreachable: Vec<PeerId> = back
            .hosts
            .iter()
            .zip(&stopped)
            .filter(|(_, r)| r.is_err())
            .map(|(p, _)| *p)
            .collect();
        let end = back.finish(&unreachable);
        for &i in &end.stopped {
            report.step(&assignments[i], Step::RolledBack).await;
        }
        end.message
    }

    /// Packs every task's artifact (or only `only`'s) into the chunk store (hosts fetch from
    /// it).
    async fn pack(
        &self,
        manifest: &Manifest,
        only: Option<&str>,
    ) -> anyhow::Result<BTreeMap<String, Payload>> {
        // Chunks are written before their manifest exists: none is collected meanwhile.
        let _packing = self.deployer.gc().map(|gc| {
            gc.pins()
                .freeze_chunks(format!("packing {}", manifest.service.name))
        });
        let mut out = BTreeMap::new();
        let wanted = manifest
            .tasks
            .iter()
            .filter(|t| only.is_none_or(|o| o == t.name));
        for t in wanted {
            let payload = match &t.artifact {
                Artifact::Command(argv) => Payload::Command(argv.clone()),
                Artifact::Build(dir) | Artifact::Image(dir) => {
                    let is_build = matches!(t.artifact, Artifact::Build(_));
                    let dir = dir.clone();
                    let store = self.store.clone();
                    let task = t.name.clone();
                    let m = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                        let a = if is_build {
                            artifact::pack_context(&dir)
                        } else {
                            artifact::read_image_tar(&dir)
                        }
                        .with_context(|| format!("task {task}"))?;
                        Ok(store.put_artifact(&a)?)
                    })
                    .await??;
                    Payload::Artifact(m)
                }
            };
            out.insert(t.name.clone(), payload);
        }
        Ok(out)
    }

    /// Keeps `payloads`' artifacts from being collected while the guard lives.
    fn pin(&self, payloads: &BTreeMap<String, Payload>) -> Option<crate::gc::PinGuard> {
        let gc = self.deployer.gc()?;
        Some(gc.pins().pin(artifacts_of(payloads)))
    }

    /// Every instance of every service deployed from here (and with `all`, whatever this node
    /// runs for others), as (service, row). A host that does not answer within
    /// [`LIST_TIMEOUT`] (frozen, cut off) shows its instances `unreachable`.
    pub async fn ps(&self, all: bool) -> Vec<(String, Row)> {
        let mut out = Vec::new();
        let ledger = self.ledger.all();
        // Every host of every service asked at once: a dead host costs one timeout, not one
        // per host in turn.
        let asks = ledger.iter().flat_map(|(service, entry)| {
            let hosts: BTreeMap<PeerId, &Placed> =
                entry.instances.iter().map(|p| (p.peer, p)).collect();
            hosts.into_values().map(move |p| {
                let req = Request::List {
                    service: Some(service.clone()),
                };
                async move {
                    let asked = tokio::time::timeout(LIST_TIMEOUT, self.ask_placed(p, &req)).await;
                    let answer = asked.unwrap_or_else(|_| {
                        Err(anyhow::anyhow!("no answer within {LIST_TIMEOUT:?}"))
                    });
                    (service.clone(), p, answer)
                }
            })
        });
        let answers = futures::future::join_all(asks).await;
        for (service, entry) in &ledger {
            let mut views: BTreeMap<(String, u32), (String, InstanceView)> = BTreeMap::new();
            let mut unreachable = BTreeSet::new();
            for (s, p, answer) in &answers {
                if s != service {
                    continue;
                }
                match answer {
                    Ok(Reply::Instances(list)) => {
                        for v in list {
                            views.insert((v.task.clone(), v.replica), (p.host.clone(), v.clone()));
                        }
                    }
                    _ => {
                        unreachable.insert(p.peer);
                    }
                }
            }
            for p in &entry.instances {
                let r = match views.get(&(p.task.clone(), p.replica)) {
                    Some((host, v)) => row(host.clone(), p.peer, v),
                    None => Row {
                        task: p.task.clone(),
                        replica: p.replica,
                        host: p.host.clone(),
                        peer: p.peer.to_string(),
                        engine: "-".into(),
                        state: if unreachable.contains(&p.peer) {
                            "unreachable".into()
                        } else {
                            "missing".into()
                        },
                        address: "-".into(),
                        checkpoint_age_ms: None,
                    },
                };
                let id = InstanceId::new(service, &p.task, p.replica);
                let kept = self
                    .deployer
                    .keeper()
                    .and_then(|k| k.latest(&id, entry.epoch));
                let r = Row {
                    checkpoint_age_ms: kept.map(|c| c.age_ms()),
                    ..r
                };
                out.push((service.clone(), r));
            }
        }
        if all {
            let me = self.overlay.node_id().to_string();
            let peer = self.overlay.peer_id();
            let mine: BTreeSet<String> = self.ledger.all().into_keys().collect();
            for v in self.deployer.list(None).await {
                if !mine.contains(&v.service) {
                    out.push((v.service.clone(), row(me.clone(), peer, &v)));
                }
            }
        }
        out
    }

    pub async fn logs(
        &self,
        service: Option<String>,
        task: String,
        replica: u32,
        tail: usize,
    ) -> anyhow::Result<String> {
        let mut candidates = self.ledger.locate(service.as_deref(), &task, replica);
        let (service, placed) = match candidates.len() {
            1 => candidates.remove(0),
            0 => anyhow::bail!(
                "no task {task} (replica {replica}) in the services deployed from this node \
                 (see `brume ps`)"
            ),
            _ => anyhow::bail!("several services have a task {task}: say which with --service"),
        };
        let req = Request::Logs {
            instance: InstanceId::new(service, task, replica),
            tail,
        };
        match self.ask_placed(&placed, &req).await? {
            Reply::Logs(text) => Ok(text),
            Reply::Refused { reason } => anyhow::bail!(reason),
            other => anyhow::bail!("the host answered {other:?} to a logs request"),
        }
    }

    /// Stops a service deployed from here on every host; returns the stopped instances.
    pub async fn stop(&self, service: &str) -> anyhow::Result<Vec<String>> {
        let Some(entry) = self.ledger.get(service) else {
            anyhow::bail!(
                "service {service} was not deployed from this node (see `brume ps`); stop it \
                 on the node that deployed it"
            );
        };
        let hosts: BTreeMap<PeerId, &Placed> =
            entry.instances.iter().map(|p| (p.peer, p)).collect();
        let req = Request::Stop {
            service: service.to_string(),
            epoch: None,
        };
        let mut stopped = Vec::new();
        let mut failed = Vec::new();
        for p in hosts.values() {
            match self.ask_placed(p, &req).await {
                Ok(Reply::Stopped { instances }) => stopped.extend(instances),
                Ok(other) => failed.push(format!("{}: answered {other:?}", p.host)),
                Err(e) => failed.push(format!("{}: {e:#}", p.host)),
            }
        }
        if !failed.is_empty() {
            anyhow::bail!(
                "stopped {} instance(s), but some hosts could not be reached: {} (run `brume \
                 stop {service}` again when they are back)",
                stopped.len(),
                failed.join("; ")
            );
        }
        self.ledger.remove(service).await?;
        Ok(stopped)
    }

    /// Runs one instance of a service deployed from here again, on `to` (its host `from.peer`
    /// was declared dead: [`crate::heal`]): the same epoch, signed again by this node (its
    /// owner), at `to.generation`, calling its callees where the ledger has them now. Records
    /// the new place in the ledger; the spec it started, for telling the callers.
    pub(crate) async fn replace(
        &self,
        service: &str,
        from: &Placed,
        to: &Placed,
    ) -> anyhow::Result<InstanceSpec> {
        let entry = self
            .ledger
            .get(service)
            .with_context(|| format!("{service} is no longer in the ledger"))?;
        let manifest = Manifest::load(&entry.manifest)
            .with_context(|| format!("cannot read {service}'s manifest again"))?;
        let payloads = self.pack(&manifest, Some(&from.task)).await?;
        let _pin = self.pin(&payloads);
        let assignments: Vec<Assignment> = entry
            .instances
            .iter()
            .map(|p| {
                let p = if p.task == from.task && p.replica == from.replica {
                    to
                } else {
                    p
                };
                Assignment {
                    task: p.task.clone(),
                    replica: p.replica,
                    node: brume_overlay::ids::NodeId(0),
                    peer: p.peer,
                    addrs: p.addrs.clone(),
                    parent_rtt_ms: None,
                }
            })
            .collect();
        let a = assignments
            .iter()
            .find(|a| a.task == from.task && a.replica == from.replica)
            .with_context(|| format!("{service} has no {} {}", from.task, from.replica))?;
        let mut spec = instance_spec(
            &manifest,
            &payloads,
            &assignments,
            a,
            entry.epoch,
            self.overlay.peer_id(),
        )?;
        spec.generation = to.generation;
        let mut spec = spec.signed(self.overlay.keypair());
        // A stateful copy starts from the latest checkpoint kept here (not signed: a move's
        // state line is not either).
        restore_latest(&self.deployer, &mut spec, &to.host);
        let req = Request::Deploy(spec.clone());
        match ask(&self.deployer, to.peer, &to.addrs, &req, |_| async {}).await? {
            Reply::Started { .. } => {}
            Reply::Refused { reason } => anyhow::bail!("{} refused it: {reason}", to.host),
            other => anyhow::bail!("{} answered {other:?} to a deploy", to.host),
        }
        self.ledger
            .relocate(service, &from.task, from.replica, to.clone())
            .await?;
        // The images did their work on the new host; nobody else needs a copy of them.
        let mut spec = spec;
        spec.restore_images = None;
        Ok(spec)
    }

    /// The ledger this initiator keeps.
    pub(crate) fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// The overlay this initiator maps and signs with.
    pub(crate) fn overlay(&self) -> &OverlayHandle {
        &self.overlay
    }

    /// Asks `peer` a request of the deploy protocol (this node's own deployer directly).
    pub(crate) async fn ask_host(
        &self,
        peer: PeerId,
        addrs: &[brume_overlay::Multiaddr],
        req: &Request,
    ) -> anyhow::Result<Reply> {
        ask(&self.deployer, peer, addrs, req, |_| async {}).await
    }

    /// Asks the host an instance of the ledger runs on.
    async fn ask_placed(&self, p: &Placed, req: &Request) -> anyhow::Result<Reply> {
        self.ask_host(p.peer, &p.addrs, req).await
    }

    /// Undoes every deploy the ledger holds as pending (this node died while carrying it out):
    /// each planned host is told to stop that epoch, as a roll-back does, and the entry is
    /// dropped (the one it replaced, if any, is put back). A deploy with a host that cannot be
    /// reached stays pending, to be undone on the next start. Returns the services undone.
    pub async fn undo_pending(&self) -> Vec<String> {
        let mut undone = Vec::new();
        for (service, entry) in self.ledger.pending() {
            let stop = Request::Stop {
                service: service.clone(),
                epoch: Some(entry.epoch),
            };
            let hosts: BTreeMap<PeerId, &Placed> =
                entry.instances.iter().map(|p| (p.peer, p)).collect();
            let mut unreachable = Vec::new();
            for p in hosts.values() {
                match self.ask_placed(p, &stop).await {
                    Ok(Reply::Stopped { instances }) => tracing::info!(
                        %service, epoch = entry.epoch, host = %p.host, ?instances,
                        "restart: undid a deploy left pending on this host"
                    ),
                    Ok(other) => unreachable.push(format!("{}: answered {other:?}", p.host)),
                    Err(e) => unreachable.push(format!("{}: {e:#}", p.host)),
                }
            }
            if !unreachable.is_empty() {
                tracing::warn!(
                    %service, epoch = entry.epoch,
                    "restart: a deploy left pending could not be undone everywhere ({}); it \
                     stays pending until the next start",
                    unreachable.join("; ")
                );
                continue;
            }
            match self.ledger.undo_pending(&service, entry.epoch).await {
                Ok(_) => {
                    tracing::info!(%service, epoch = entry.epoch, "restart: undid the deploy left pending");
                    undone.push(service);
                }
                Err(e) => {
                    tracing::warn!(%service, error = %e, "restart: cannot drop the pending deploy")
                }
            }
        }
        undone
    }
}

/// How long `ps` waits for a host's list.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(5);
/// Where to send a deploy's steps.
struct Reporter(mpsc::Sender<Event>);

impl Reporter {
    async fn step(&self, a: &Assignment, step: Step) {
        let event = Event {
            task: a.task.clone(),
            replica: a.replica,
            peer: a.peer.to_string(),
            step,
        };
        let _ = self.0.send(event).await;
    }
}

/// Where an instance of a deploy runs, as the ledger keeps it.
/// The artifact manifests among `payloads`.
fn artifacts_of(payloads: &BTreeMap<String, Payload>) -> Vec<artifact::ArtifactManifest> {
    payloads
        .values()
        .filter_map(|p| match p {
            Payload::Artifact(m) => Some(m.clone()),
            Payload::Command(_) => None,
        })
        .collect()
}

fn placed(a: &Assignment) -> Placed {
    Placed {
        task: a.task.clone(),
        replica: a.replica,
        host: a.node.to_string(),
        peer: a.peer,
        addrs: a.addrs.clone(),
        generation: Default::default(),
    }
}

fn row(host: String, peer: PeerId, v: &InstanceView) -> Row {
    Row {
        task: v.task.clone(),
        replica: v.replica,
        host,
        peer: peer.to_string(),
        engine: v.engine.clone(),
        state: v.state.clone(),
        address: format!("127.0.0.1:{}", v.port),
        checkpoint_age_ms: None,
    }
}

/// The request for one instance: its artifact, demands, environment and where its callees run.
/// Puts the latest checkpoint the owner keeps of `spec`'s instance (of its epoch) in its
/// `restore`, and says which way it starts.
fn restore_latest(deployer: &Deployer, spec: &mut InstanceSpec, to: &str) {
    if spec.checkpoint == CheckpointMode::None {
        return;
    }
    let kept = deployer
        .keeper()
        .and_then(|k| k.latest(&spec.id, spec.epoch));
    match kept {
        Some(c) => {
            tracing::warn!(instance = %spec.id, %to, from_generation = %c.generation, bytes = c.bytes(),
                "restored from checkpoint taken {} ms ago: writes since then are lost", c.age_ms());
            match spec.checkpoint {
                CheckpointMode::Criu => spec.restore_images = c.images.map(Box::new),
                _ => spec.restore = Some(c.state),
            }
        }
        None => tracing::warn!(instance = %spec.id, %to,
            "started fresh: no checkpoint of this stateful task is held here, its state is lost"),
    }
}

fn instance_spec(
    manifest: &Manifest,
    payloads: &BTreeMap<String, Payload>,
    assignments: &[Assignment],
    a: &Assignment,
    epoch: u64,
    initiator: PeerId,
) -> anyhow::Result<InstanceSpec> {
    let task = manifest
        .tasks
        .iter()
        .find(|t| t.name == a.task)
        .with_context(|| format!("placement returned an unknown task {}", a.task))?;
    let calls = manifest
        .calls
        .iter()
        .filter(|c| c.from == a.task)
        .map(|c| {
            let mut replicas: Vec<&Assignment> =
                assignments.iter().filter(|x| x.task == c.to).collect();
            replicas.sort_by_key(|x| x.replica);
            CallTarget {
                task: c.to.clone(),
                hosts: replicas.iter().map(|x| x.peer).collect(),
                addrs: replicas.iter().map(|x| x.addrs.clone()).collect(),
            }
        })
        .collect();
    let spec = InstanceSpec {
        id: InstanceId::new(&manifest.service.name, &a.task, a.replica),
        epoch,
        payload: payloads
            .get(&a.task)
            .cloned()
            .with_context(|| format!("no artifact packed for {}", a.task))?,
        cpu_millis: task.cpu_millis,
        memory_mb: task.memory_mb,
        env: task.env.clone(),
        calls,
        max_restarts: MAX_RESTARTS,
        checkpoint: match task.checkpoint {
            Checkpoint::None => CheckpointMode::None,
            Checkpoint::App => CheckpointMode::App,
            Checkpoint::Criu => CheckpointMode::Criu,
        },
        checkpoint_every_s: task.checkpoint_every_s,
        initiator: Some(initiator),
        generation: Default::default(),
        grant: None,
        user: task.user.clone(),
        downtime_budget_ms: task.downtime_budget_ms,
        max_runtime_s: task.max_runtime_s,
        restore: None,
        restore_images: None,
    };
    spec.check().map_err(anyhow::Error::msg)?;
    Ok(spec)
}
