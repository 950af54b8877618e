//! The host side of a deployment: what a node does when an initiator asks it to run a task.
//!
//! Every request arrives on its own `/brume/deploy/3` stream. A deploy is checked (names, sizes,
//! the epoch against what already runs, this node's free share of its capacity in the
//! [`Instances`] table), then the artifact's missing chunks are fetched from the initiator and
//! verified, the image is built or loaded by the engine, each called task gets a local tunnel
//! forwarder whose address goes into `BRUME_CALL_*`, and the task starts on a port of its own.
//! Any failure undoes what this request did (forwarders, routes, the container or process) and
//! answers `Refused`, so a refused deploy leaves nothing here. Deploys on one node start one at
//! a time, which keeps the resource check honest; their artifacts are fetched and images
//! prepared before that lock, so one slow initiator does not hold up the others. Stops and
//! queries do not wait for deploys. The
//! mover ([`crate::migrate::mover`]) uses the same steps to take an instance that arrives live.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use brume_overlay::neighbourhood::NodeRecord;
use brume_overlay::{OverlayHandle, PeerId};
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::authority::{check, check_delegated};
use super::hosted::{HostedFile, ProcessFacts, Record};
use super::instances::{Capacity, Instance, Instances};
use super::wire::{
    CallTarget, CheckpointMode, InstanceSpec, InstanceView, Payload, Phase, Reply, Request,
    DEPLOY_PROTOCOL, MAX_FRAME,
};
use crate::gc::{Collector, Goal, LiveSet, PinGuard, Report};
use crate::heal::checkpoints::Keeper;
use crate::heal::delegation::Delegation;
use crate::streams::respond;
use brume_artifact::{self as artifact, ArtifactKind, ArtifactManifest, ChunkStore, FetchOptions};
use brume_engine::{
    free_task_port, AnyEngine, Engine, EngineError, ImageInput, ImageKind, ImageRef, LaunchSpec,
    RestartPolicy, TaskState,
};
use brume_tunnel::{call_env, Forwarder, InstanceId, Route, Routes};

/// How long a stopping task gets before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Starts tried, each on a newly picked port, when the picked port gets taken before the task
/// binds it.
const PORT_TRIES: usize = 3;

/// Builds this node's state record for given reservations (CPU mCPU, memory MB), or `None`.
pub type Advertiser = Arc<dyn Fn(u64, u64) -> Option<NodeRecord> + Send + Sync>;

/// The deployer of one node: runs, lists and removes the instances it is asked to.
pub struct Deployer {
    pub(crate) overlay: OverlayHandle,
    pub(crate) engine: Arc<AnyEngine>,
    pub(crate) store: ChunkStore,
    pub(crate) routes: Routes,
    pub(crate) images: PathBuf,
    pub(crate) instances: Arc<Instances>,
    /// Held by every deploy and live arrival: one at a time keeps the resource check honest.
    pub(crate) deploying: tokio::sync::Mutex<()>,
    advertiser: Option<Advertiser>,
    /// Where the instance table is kept on disk ([`super::hosted`]), if anywhere; the mutex
    /// orders the writes.
    pub(crate) hosted: Option<(HostedFile, tokio::sync::Mutex<()>)>,
    /// Where the checkpoints of the services this node owns are kept, once set
    /// ([`crate::heal::checkpoints`]); without it, `Checkpointed` is refused.
    keeper: std::sync::OnceLock<Arc<Keeper>>,
    /// The node's garbage collector ([`crate::gc`]), once set: deploys pin their artifacts
    /// and fetches keep its disk budget.
    gc: std::sync::OnceLock<Arc<Collector>>,
    /// The records this node holds for others ([`crate::heal::replicator`]), once set;
    /// without it, `Replica` is refused.
    holder: std::sync::OnceLock<Arc<crate::heal::holder::Holder>>,
    /// One CRIU dump of an instance at a time: a live move's or a periodic checkpoint's.
    pub(crate) dumps: super::dump_claims::DumpClaims,
    /// The node's metrics, once set: periodic checkpoints are counted there.
    metrics: std::sync::OnceLock<brume_metrics::Metrics>,
}

impl Deployer {
    /// A deployer; with an `advertiser` it re-advertises the node's free resources whenever its
    /// reservations change, before it answers, so a map taken right after a deploy or a stop
    /// sees them; with `hosted` it keeps its instance table on disk there ([`super::hosted`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        overlay: OverlayHandle,
        engine: Arc<AnyEngine>,
        store: ChunkStore,
        routes: Routes,
        images: PathBuf,
        capacity: Capacity,
        advertiser: Option<Advertiser>,
        hosted: Option<HostedFile>,
    ) -> Arc<Self> {
        Arc::new(Deployer {
            overlay,
            engine,
            store,
            routes,
            images,
            instances: Arc::new(Instances::new(capacity)),
            deploying: tokio::sync::Mutex::new(()),
            advertiser,
            hosted: hosted.map(|f| (f, tokio::sync::Mutex::new(()))),
            keeper: std::sync::OnceLock::new(),
            gc: std::sync::OnceLock::new(),
            holder: std::sync::OnceLock::new(),
            dumps: Default::default(),
            metrics: std::sync::OnceLock::new(),
        })
    }

    /// Collects this node's garbage with `gc` and keeps its budget (set once; later calls are
    /// ignored).
    pub fn set_gc(&self, gc: Arc<Collector>) {
        let _ = self.gc.set(gc);
    }

    /// The garbage collector, if set.
    pub fn gc(&self) -> Option<&Arc<Collector>> {
        self.gc.get()
    }

    /// Keeps `spec`'s artifact from being collected while the guard lives.
    pub fn pin(&self, spec: &InstanceSpec) -> Option<PinGuard> {
        let gc = self.gc.get()?;
        let manifests = match &spec.payload {
            Payload::Artifact(m) => vec![m.clone()],
            Payload::Command(_) => Vec::new(),
        };
        Some(gc.pins().pin(manifests))
    }

    /// What must not be collected: the artifacts of the instances here, of the services this
    /// node initiated, and of the operations under way.
    pub fn live_set(&self) -> LiveSet {
        let mut live = self.gc.get().map(|g| g.live_base()).unwrap_or_default();
        for i in self.instances.lock().values() {
            if let Payload::Artifact(m) = &i.spec.payload {
                live.add(m);
            }
        }
        live
    }

    /// Deletes the garbage `goal` names, then (on Docker) removes the images this node
    /// prepared that nothing here needs and no container uses.
    pub async fn collect(&self, goal: Goal) -> Result<Report, String> {
        let Some(gc) = self.gc.get() else {
            return Err("this node has no garbage collector".into());
        };
        let live = self.live_set();
        let mut report = gc.sweep(live, goal).await.map_err(|e| e.to_string())?;
        if let AnyEngine::Docker(docker) = &*self.engine {
            // The live set again: a deploy may have started since.
            let live = self.live_set();
            // Images are not in the budget: only sweeps by age (and `brume gc`) remove them.
            let candidates = match goal.before {
                Some(before) => gc
                    .docker_garbage(&live, before)
                    .map_err(|e| e.to_string())?,
                None => Vec::new(),
            };
            let mut gone = Vec::new();
            for name in candidates {
                match docker.remove_brume_image(&ImageRef(name.clone())).await {
                    Ok(true) => {
                        info!(image = %name, "gc: removed a docker image nothing uses");
                        report.images_removed.push(name.clone());
                        gone.push(name);
                    }
                    Ok(false) => {
                        // In use by a container, or already gone: forget it only if gone.
                        if !docker.image_exists(&name).await.unwrap_or(true) {
                            gone.push(name);
                        }
                    }
                    Err(e) => warn!(image = %name, error = %e, "gc: cannot remove a docker image"),
                }
            }
            gc.forget_docker_images(&gone).map_err(|e| e.to_string())?;
        }
        Ok(report)
    }

    /// Keeps the checkpoints hosts send this node (as owner) in `keeper` (set once; later
    /// calls are ignored).
    pub fn set_keeper(&self, keeper: Arc<Keeper>) {
        let _ = self.keeper.set(keeper);
    }

    /// Keeps the service records others push here in `holder` (set once).
    pub fn set_holder(&self, holder: Arc<crate::heal::holder::Holder>) {
        let _ = self.holder.set(holder);
    }

    /// The records held for others, if set.
    pub(crate) fn holder(&self) -> Option<&Arc<crate::heal::holder::Holder>> {
        self.holder.get()
    }

    /// Counts into `metrics` from now on (periodic checkpoints).
    pub fn set_metrics(&self, metrics: brume_metrics::Metrics) {
        let _ = self.metrics.set(metrics);
    }

    /// The node's metrics, if set.
    pub(crate) fn metrics(&self) -> Option<&brume_metrics::Metrics> {
        self.metrics.get()
    }

    /// The owner's checkpoint keeper, if set.
    pub(crate) fn keeper(&self) -> Option<&Arc<Keeper>> {
        self.keeper.get()
    }

    /// Writes the instance table to the hosted file ([`super::hosted`]), if there is one. A
    /// failed write is logged: the instance runs either way, and the next change writes again.
    pub(crate) async fn save_hosted(&self) {
        let Some((file, turn)) = &self.hosted else {
            return;
        };
        let _turn = turn.lock().await;
        let rows: Vec<(InstanceSpec, String, u16, Vec<u16>, PeerId)> = self
            .instances
            .lock()
            .values()
            .map(|i| {
                let calls = i.forwarders.iter().map(|f| f.local_addr().port()).collect();
                (i.spec.clone(), i.name.clone(), i.port, calls, i.sent_by)
            })
            .collect();
        let mut records = Vec::with_capacity(rows.len());
        for (spec, name, port, call_ports, sent_by) in rows {
            let criu = spec.checkpoint == CheckpointMode::Criu;
            let process = self.process_facts(&name, criu).await;
            records.push(Record {
                spec,
                name,
                engine: self.engine.kind().to_string(),
                port,
                call_ports,
                sent_by,
                process,
            });
        }
        let file = file.clone();
        let written = tokio::task::spawn_blocking(move || file.write(&records)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot record the hosted instances"),
            Err(e) => warn!(error = %e, "the hosted instances' writer failed"),
        }
    }

    /// A process-engine task's process and its start time (for a CRIU-mode task, the init of
    /// its namespace, which outlives the node); `None` on Docker or when it does not run.
    async fn process_facts(&self, name: &str, criu: bool) -> Option<ProcessFacts> {
        let AnyEngine::Process(p) = &*self.engine else {
            return None;
        };
        // A CRIU-mode task's own pid is its namespace's init (the engine's child is the
        // `unshare` above it); a plain task's is the engine's child.
        let pid = match p.checkpoint_pid(name) {
            Ok(pid) => pid,
            Err(e) if criu => {
                // A restarted node could then neither adopt nor clean up this task's process.
                warn!(task = %name, error = %e, "a CRIU-mode task's process is unknown; its record goes without it");
                return None;
            }
            Err(_) => p.state(name).await.ok()?.pid?,
        };
        let start_time = brume_engine::criu_task::start_time(pid)?;
        Some(ProcessFacts { pid, start_time })
    }

    /// Sends the record for the current reservations to the overlay.
    pub(crate) async fn readvertise(&self) {
        if let Some(advertise) = &self.advertiser {
            let (cpu, mem) = self.instances.reserved();
            if let Some(record) = advertise(cpu, mem) {
                let _ = self.overlay.set_record(record).await;
            }
        }
    }

    /// CPU and memory promised to running instances.
    pub fn reserved(&self) -> (u64, u64) {
        self.instances.reserved()
    }

    /// Serves deploy streams until the overlay stops.
    pub async fn serve(self: Arc<Self>) -> anyhow::Result<()> {
        let mut incoming = self.overlay.accept_limited(DEPLOY_PROTOCOL)?;
        while let Some((peer, stream)) = incoming.next().await {
            let deployer = self.clone();
            tokio::spawn(async move {
                let handle = |request, phases| deployer.handle(peer, request, phases);
                let answered = respond(stream, MAX_FRAME, handle, Reply::Phase, |reason| {
                    Reply::Refused { reason }
                });
                if let Err(e) = answered.await {
                    debug!(%peer, error = %e, "deploy stream ended badly");
                }
            });
        }
        Ok(())
    }

    /// Answers one request from `from` (phases of a deploy go to `phases`). A spec must carry
    /// its owner's signature and not claim a service another owner runs here; everything else
    /// about a service is obeyed from its owner only ([`super::authority`]), or from the node
    /// that brought the instance here where a move needs it.
    pub async fn handle(
        &self,
        from: PeerId,
        request: Request,
        phases: mpsc::Sender<Phase>,
    ) -> Reply {
        let me = self.overlay.peer_id();
        match request {
            Request::Deploy(spec) => self.deploy(from, spec, phases).await,
            Request::Prepare(spec) => self.prepare(from, spec, phases).await,
            Request::Stop { service, epoch } => {
                let owner = self.instances.owner_of(&service);
                if owner.is_some() {
                    if let Err(reason) = check(from, me, "stop", &service, owner, &[]) {
                        return Reply::Refused { reason };
                    }
                }
                Reply::Stopped {
                    instances: self.stop(&service, epoch).await,
                }
            }
            Request::Remove {
                instance,
                epoch,
                back_to,
                delegation,
            } => match self
                .remove_one(from, &instance, epoch, back_to, delegation.as_deref())
                .await
            {
                Ok(instances) => Reply::Stopped { instances },
                Err(reason) => Reply::Refused { reason },
            },
            Request::List { service } => {
                let mut list = self.list(service.as_deref()).await;
                if from != me {
                    // A node sees only what it owns.
                    list.retain(|v| {
                        let id = InstanceId::new(&v.service, &v.task, v.replica);
                        self.instances
                            .get(&id)
                            .is_some_and(|(spec, _, _)| spec.initiator == Some(from))
                    });
                }
                Reply::Instances(list)
            }
            Request::Checkpointed {
                instance,
                generation,
                epoch,
                seq,
                state,
                images,
            } => {
                let Some(keeper) = self.keeper() else {
                    return Reply::Refused {
                        reason: "this node keeps no checkpoints".into(),
                    };
                };
                match keeper
                    .accept(
                        from,
                        &instance,
                        generation,
                        epoch,
                        seq,
                        state,
                        images.map(|i| *i),
                    )
                    .await
                {
                    Ok(_) => Reply::Taken,
                    Err(reason) => Reply::Refused { reason },
                }
            }
            Request::HeldCheckpoint {
                instance,
                generation,
                epoch,
                seq,
                state,
            } => match self.holder.get() {
                Some(holder) => {
                    let taken = holder
                        .take_checkpoint(from, &instance, generation, epoch, seq, state)
                        .await;
                    match taken {
                        Ok(()) => Reply::Taken,
                        Err(reason) => Reply::Refused { reason },
                    }
                }
                None => Reply::Refused {
                    reason: "this node keeps no service records".into(),
                },
            },
            Request::Replica(record) => match self.holder.get() {
                Some(holder) => holder.take(from, *record).await,
                None => Reply::Refused {
                    reason: "this node keeps no service records".into(),
                },
            },
            Request::ForgetRecord { service } => {
                if let Some(h) = self.holder.get() {
                    h.forget(from, &service);
                }
                Reply::Taken
            }
            Request::HeldRecords => Reply::Records(
                self.holder
                    .get()
                    .map(|h| h.book().of_owner(from))
                    .unwrap_or_default(),
            ),
            Request::Logs { instance, tail } => {
                if let Some((spec, _, _)) = self.instances.get(&instance) {
                    if let Err(reason) =
                        check(from, me, "read the logs of", &instance, spec.initiator, &[])
                    {
                        return Reply::Refused { reason };
                    }
                }
                match self.logs(&instance, tail.min(10_000)).await {
                    Ok(text) => Reply::Logs(text),
                    Err(reason) => Reply::Refused { reason },
                }
            }
        }
    }

    /// Whether `spec` may run here: signed by its owner ([`super::grant`]), and not of a
    /// service another owner runs here (a name cannot be taken over, whatever its epoch).
    pub(crate) fn check_owner(&self, spec: &InstanceSpec) -> Result<PeerId, String> {
        let owner = spec
            .owner()
            .map_err(|e| format!("refused: {} is not signed by its owner: {e}", spec.id))?;
        match self.instances.owner_of(&spec.id.service) {
            Some(theirs) if theirs != owner => Err(format!(
                "refused: service {} belongs to {theirs} here; {owner} may not deploy over it",
                spec.id.service
            )),
            _ => Ok(owner),
        }
    }

    /// Runs one instance, or says why not; on `Refused` nothing of it is left.
    pub async fn deploy(
        &self,
        initiator: PeerId,
        spec: InstanceSpec,
        phases: mpsc::Sender<Phase>,
    ) -> Reply {
        let refuse = |reason: String| Reply::Refused { reason };
        if let Err(reason) = spec.check() {
            return refuse(reason);
        }
        // Its artifact is kept from the first chunk fetched until it runs (or is refused).
        let _pin = self.pin(&spec);
        // Cheap checks first, without the lock: a stale request, or one this node has no room
        // for, fetches nothing (all are made again under the lock).
        match self.instances.get(&spec.id) {
            Some((running, _, _)) if running.epoch > spec.epoch => {
                return refuse(format!(
                    "{} already runs here with the newer epoch {}; this request (epoch {}) is \
                     stale",
                    spec.id, running.epoch, spec.epoch
                ))
            }
            Some(_) => {}
            None => {
                if let Err(reason) = self.instances.room_for(&spec) {
                    return refuse(reason);
                }
            }
        }
        // The artifact is fetched and the image prepared before the lock is taken: a slow or
        // stalled initiator delays its own deploy, not every deploy on this node. (Both steps
        // are idempotent and skip what is already here, so racing deploys of one artifact are
        // fine.)
        let image = self.image(initiator, &spec, &phases).await;
        let _one_at_a_time = self.deploying.lock().await;
        // Under the lock: no other deploy can take the name between the check and the start.
        if let Err(reason) = self.check_owner(&spec) {
            return refuse(reason);
        }

        // The same epoch again: idempotent. An older one: replaced. A newer one: refused.
        if let Some((running, name, port)) = self.instances.get(&spec.id) {
            let epoch = running.epoch;
            if epoch > spec.epoch {
                return refuse(format!(
                    "{} already runs here with the newer epoch {epoch}; this request (epoch {}) \
                     is stale",
                    spec.id, spec.epoch
                ));
            }
            if epoch == spec.epoch {
                let state = self.engine.state(&name).await.map(|s| s.state);
                if matches!(state, Ok(s) if s.is_alive()) {
                    return Reply::Started {
                        instance: self.view(&spec, &name, port, "running".into()),
                        reused: true,
                    };
                }
            }
            self.remove_instance(&spec.id).await;
        }

        if let Err(reason) = self.instances.room_for(&spec) {
            return refuse(reason);
        }

        let image_ref = match image {
            Ok(r) => r,
            Err(reason) => return refuse(reason),
        };

        // A CRIU-checkpointed task re-placed by its owner comes back from its images; where it
        // cannot, it starts fresh, as it would have without them.
        let mut spec = spec;
        if let Some(images) = spec.restore_images.take() {
            let _ = phases.send(Phase::Starting).await;
            let restored = self
                .restore_from_images(initiator, &spec, image_ref.clone(), *images)
                .await;
            match restored {
                Ok((name, port, forwarders)) => {
                    let how = "task restored from its latest CRIU checkpoint";
                    return self
                        .installed(initiator, spec, name, port, forwarders, how)
                        .await;
                }
                Err(why) => warn!(instance = %spec.id,
                    "cannot restore it from its CRIU checkpoint ({why}): starting it fresh, its state is lost"),
            }
        }

        let (forwarders, call_vars) = match self.forwarders(&spec).await {
            Ok(f) => f,
            Err(reason) => return refuse(reason),
        };
        let mut env = spec.env.clone();
        env.extend(call_vars);
        let launch = self.launch_spec(&spec, image_ref, env, 0);
        let name = launch.name.clone();
        let _ = phases.send(Phase::Starting).await;
        let port = match self.start_on_a_free_port(&spec, launch).await {
            Ok(port) => port,
            Err(reason) => return refuse(reason),
        };
        self.installed(initiator, spec, name, port, forwarders, "task started")
            .await
    }

    /// Makes the task running as `name` on `port` the instance `spec` here: its route, its
    /// entry in the instance table (and on disk), the node's room advertised again.
    pub(crate) async fn installed(
        &self,
        sent_by: PeerId,
        spec: InstanceSpec,
        name: String,
        port: u16,
        forwarders: Vec<Forwarder>,
        how: &str,
    ) -> Reply {
        self.routes.set(spec.id.clone(), Route::Local { port });
        info!(instance = %spec.id, port, %name, "{how}");
        let view = self.view(&spec, &name, port, "running".into());
        self.instances.insert(Instance {
            spec,
            name,
            port,
            forwarders,
            sent_by,
        });
        self.save_hosted().await;
        self.readvertise().await;
        Reply::Started {
            instance: view,
            reused: false,
        }
    }

    /// Starts `launch` on a free port and returns the port. The port is checked free when picked,
    /// but something else on the host may bind it before the task does: then another is picked
    /// and the start tried again, a few times. A failed start leaves nothing behind.
    pub(crate) async fn start_on_a_free_port(
        &self,
        spec: &InstanceSpec,
        mut launch: LaunchSpec,
    ) -> Result<u16, String> {
        let mut tries = 0;
        loop {
            launch.port =
                free_task_port().map_err(|e| format!("no free port on this node: {e}"))?;
            let Err(e) = self.start_task(spec, &launch).await else {
                return Ok(launch.port);
            };
            // The engine removes what it created when start fails; make sure.
            let _ = self.engine.remove(&launch.name).await;
            tries += 1;
            if !(matches!(e, EngineError::PortInUse { .. }) && tries < PORT_TRIES) {
                return Err(format!("the task did not start: {e}"));
            }
            warn!(
                port = launch.port,
                "the task's port was taken; picking another"
            );
        }
    }

    /// How the engine runs `spec` here, on `port`, with `env`.
    pub(crate) fn launch_spec(
        &self,
        spec: &InstanceSpec,
        image: ImageRef,
        env: BTreeMap<String, String>,
        port: u16,
    ) -> LaunchSpec {
        LaunchSpec {
            name: instance_name(spec, &self.overlay.peer_id()),
            service: spec.id.service.clone(),
            task: spec.id.task.clone(),
            replica: spec.id.replica,
            epoch: spec.epoch,
            image,
            env,
            port,
            cpu_millis: u32::try_from(spec.cpu_millis).unwrap_or(u32::MAX),
            memory_mb: u32::try_from(spec.memory_mb).unwrap_or(u32::MAX),
            restart: if spec.max_restarts > 0 {
                RestartPolicy::OnFailure {
                    max_restarts: spec.max_restarts,
                }
            } else {
                RestartPolicy::Never
            },
            workdir: None,
            user: spec.user.clone(),
            restore: spec.restore.clone(),
        }
    }

    /// Starts one task: a `checkpoint = "criu"` one on the process engine of a node that has
    /// the fixed task directory runs so that CRIU can move it ([`ProcessEngine::start_checkpointable`]);
    /// any other as usual.
    ///
    /// [`ProcessEngine::start_checkpointable`]: brume_engine::ProcessEngine::start_checkpointable
    pub(crate) async fn start_task(
        &self,
        spec: &InstanceSpec,
        launch: &LaunchSpec,
    ) -> Result<(), EngineError> {
        match &*self.engine {
            AnyEngine::Process(p)
                if spec.checkpoint == CheckpointMode::Criu
                    && brume_engine::taskroot::available().is_ok() =>
            {
                p.start_checkpointable(launch).await
            }
            _ => self.engine.start(launch).await,
        }
    }

    /// The instance's image, ready to run here: its artifact's missing chunks fetched from
    /// `from`, then built or loaded (both skipped when already done).
    pub(crate) async fn image(
        &self,
        from: PeerId,
        spec: &InstanceSpec,
        phases: &mpsc::Sender<Phase>,
    ) -> Result<ImageRef, String> {
        let image = match &spec.payload {
            Payload::Artifact(m) => self.fetch(from, m, phases).await?,
            Payload::Command(_) => {
                return Err(
                    "tasks given as a command are not deployed over the overlay yet: give the \
                     task a build context (build = \"dir\") or an image tarball"
                        .into(),
                )
            }
        };
        let _ = phases.send(Phase::Building).await;
        let prepared = self
            .engine
            .prepare(&image)
            .await
            .map_err(|e| format!("cannot prepare the image: {e}"))?;
        if let (AnyEngine::Docker(_), Some(gc)) = (&*self.engine, self.gc.get()) {
            if let Err(e) = gc.record_docker_image(prepared.as_str()) {
                warn!(image = %prepared, error = %e, "cannot record a prepared image");
            }
        }
        Ok(prepared)
    }

    /// Gets an instance's image ready here without starting anything, so that a move's
    /// start (while callers wait) costs only the start.
    pub async fn prepare(
        &self,
        from: PeerId,
        spec: InstanceSpec,
        phases: mpsc::Sender<Phase>,
    ) -> Reply {
        if let Err(reason) = spec
            .check()
            .and_then(|()| self.check_owner(&spec).map(|_| ()))
        {
            return Reply::Refused { reason };
        }
        let _pin = self.pin(&spec);
        match self.image(from, &spec, &phases).await {
            Ok(_) => Reply::Prepared,
            Err(reason) => Reply::Refused { reason },
        }
    }

    /// Fetches the artifact's missing chunks from the initiator and writes the whole artifact
    /// (digest checked) where the engine can read it.
    async fn fetch(
        &self,
        initiator: PeerId,
        manifest: &ArtifactManifest,
        phases: &mpsc::Sender<Phase>,
    ) -> Result<ImageInput, String> {
        let opts = FetchOptions {
            peer: initiator.to_string(),
            ..FetchOptions::default()
        };
        let overlay = self.overlay.clone();
        let open = || {
            let overlay = overlay.clone();
            async move {
                overlay
                    .open_stream(initiator, artifact::TRANSFER_PROTOCOL)
                    .await
                    .map_err(std::io::Error::other)
            }
        };
        let total = manifest.size;
        self.make_room(manifest).await?;
        let progress = |done: u64, _total: u64| {
            let _ = phases.try_send(Phase::Fetching { done, total });
        };
        artifact::fetch(&self.store, manifest, &opts, open, progress)
            .await
            .map_err(|e| format!("cannot fetch the artifact from the initiator: {e}"))?;
        let _ = phases.try_send(Phase::Fetching { done: total, total });
        std::fs::create_dir_all(&self.images)
            .map_err(|e| format!("cannot create {}: {e}", self.images.display()))?;
        let tar = self
            .images
            .join(format!("{}.tar", manifest.digest.to_hex()));
        if !tar.exists() {
            let store = self.store.clone();
            let m = manifest.clone();
            let out = tar.clone();
            tokio::task::spawn_blocking(move || store.assemble(&m, &out))
                .await
                .map_err(|e| format!("assembling the artifact failed: {e}"))?
                .map_err(|e| format!("cannot assemble the artifact: {e}"))?;
        }
        Ok(ImageInput {
            kind: match manifest.kind {
                ArtifactKind::Context => ImageKind::BuildContext,
                ArtifactKind::ImageTar => ImageKind::DockerSave,
            },
            tar,
            digest: manifest.digest.to_hex(),
        })
    }

    /// Keeps the disk budget before `manifest` is fetched: makes room for what it will write
    /// here (its missing chunks, its assembled tarball and, on the process engine, its image
    /// tree; an estimate, the tree taken as big as the tarball), or refuses.
    async fn make_room(&self, manifest: &ArtifactManifest) -> Result<(), String> {
        let Some(gc) = self.gc.get() else {
            return Ok(());
        };
        if gc.budget().is_none() {
            return Ok(());
        }
        let (store, m) = (self.store.clone(), manifest.clone());
        let missing: u64 = tokio::task::spawn_blocking(move || {
            store
                .missing(&m)
                .iter()
                .map(|(_, len)| u64::from(*len))
                .sum()
        })
        .await
        .map_err(|e| format!("cannot check the chunk store: {e}"))?;
        let hex = manifest.digest.to_hex();
        let mut extra = missing;
        if !self.images.join(format!("{hex}.tar")).exists() {
            extra += manifest.size;
        }
        if let AnyEngine::Process(_) = &*self.engine {
            let tree = self
                .images
                .parent()
                .map(|d| d.join("tasks/images").join(&hex[..16]));
            if tree.is_some_and(|t| !t.exists()) {
                extra += manifest.size;
            }
        }
        // The manifest is pinned by the caller, so its chunks already here stay.
        gc.make_room(self.live_set(), extra)
            .await
            .map(|_| ())
            .map_err(|e| format!("refused: {e}"))
    }

    /// One forwarder per replica of every called task; their addresses as `BRUME_CALL_*`.
    async fn forwarders(
        &self,
        spec: &InstanceSpec,
    ) -> Result<(Vec<Forwarder>, Vec<(String, String)>), String> {
        self.forwarders_at(spec, &[]).await
    }

    /// [`Deployer::forwarders`] on the given ports, in the same order (calls, then replicas);
    /// empty: any free ports.
    pub(crate) async fn forwarders_at(
        &self,
        spec: &InstanceSpec,
        ports: &[u16],
    ) -> Result<(Vec<Forwarder>, Vec<(String, String)>), String> {
        let me = self.overlay.peer_id();
        let mut forwarders = Vec::new();
        let mut vars = Vec::new();
        for CallTarget {
            task,
            hosts,
            addrs: dial,
        } in &spec.calls
        {
            let mut addrs: Vec<SocketAddr> = Vec::new();
            for (replica, &host) in hosts.iter().enumerate() {
                let endpoint = InstanceId::new(&spec.id.service, task, replica as u32);
                if host != me {
                    // This node may never have met the callee's host: tell the overlay where it is.
                    let told = dial.get(replica).cloned().unwrap_or_default();
                    let _ = self.overlay.add_addresses(host, told.clone()).await;
                    if !told.is_empty() {
                        self.routes.set_host_addrs(host, told);
                    }
                    self.routes
                        .set(endpoint.clone(), Route::Remote { peer: host });
                }
                // A callee on this node sets its own local route when it starts.
                let port = ports.get(forwarders.len()).copied().unwrap_or(0);
                let f =
                    Forwarder::bind_at(endpoint, self.routes.clone(), self.overlay.clone(), port)
                        .await
                        .map_err(|e| {
                            format!("cannot open a local port for calls to {task}: {e}")
                        })?;
                addrs.push(f.local_addr());
                forwarders.push(f);
            }
            vars.extend(call_env(task, &addrs));
        }
        Ok((forwarders, vars))
    }

    pub(crate) async fn remove_instance(&self, id: &InstanceId) -> Option<String> {
        let name = self.stop_instance(id).await?;
        self.routes.remove(id);
        Some(name)
    }

    /// Takes an instance out of this node's table and stops and removes its task, leaving its
    /// route alone (a move has already pointed it elsewhere); returns its name.
    pub(crate) async fn stop_instance(&self, id: &InstanceId) -> Option<String> {
        let instance = self.instances.remove(id)?;
        self.save_hosted().await;
        if let Err(e) = self.engine.stop(&instance.name, STOP_GRACE).await {
            debug!(name = %instance.name, error = %e, "stop failed; removing anyway");
        }
        if let Err(e) = self.engine.remove(&instance.name).await {
            warn!(name = %instance.name, error = %e, "cannot remove a stopped task");
        }
        Some(instance.name)
    }

    /// Stops and removes a service's instances here (one epoch, or all); returns their names.
    pub async fn stop(&self, service: &str, epoch: Option<u64>) -> Vec<String> {
        let keys: Vec<InstanceId> = self
            .instances
            .lock()
            .iter()
            .filter(|(k, i)| k.service == service && epoch.is_none_or(|e| i.spec.epoch == e))
            .map(|(k, _)| k.clone())
            .collect();
        let mut stopped = Vec::new();
        for k in keys {
            stopped.extend(self.remove_instance(&k).await);
        }
        if !stopped.is_empty() {
            self.readvertise().await;
        }
        if self.instances.ids(|k| k.service == service).is_empty() {
            for (endpoint, _) in self.routes.snapshot() {
                if endpoint.service == service {
                    self.routes.remove(&endpoint);
                }
            }
        }
        stopped
    }

    /// Stops and removes one instance if it runs here with `epoch`; with `back_to`, calls to
    /// it from this node go to that peer afterwards. Asked by `from`: the owner, this node, or
    /// the node that brought the instance here (a move undoing its start); checked once any
    /// deploy in progress here has ended, so the instance it may be starting is judged too. A
    /// `back_to` from anyone else is ignored when no such instance runs here.
    pub async fn remove_one(
        &self,
        from: PeerId,
        id: &InstanceId,
        epoch: u64,
        back_to: Option<PeerId>,
        delegation: Option<&Delegation>,
    ) -> Result<Vec<String>, String> {
        // After any deploy in progress here: the one being undone may still be starting.
        let _one_at_a_time = self.deploying.lock().await;
        let me = self.overlay.peer_id();
        let here = self.instances.get(id).map(|(spec, _, _)| spec);
        if let Some(spec) = &here {
            let also: Vec<PeerId> = self.instances.sent_by(id).into_iter().collect();
            check_delegated(
                from,
                me,
                "remove",
                id,
                &id.service,
                spec.initiator,
                &also,
                delegation,
            )?;
        }
        let matches = here.as_ref().is_some_and(|spec| spec.epoch == epoch);
        if matches {
            self.keep_retired(id).await;
        }
        let removed: Vec<String> = if matches {
            self.remove_instance(id).await.into_iter().collect()
        } else {
            Vec::new()
        };
        if !removed.is_empty() {
            self.readvertise().await;
        }
        if let Some(peer) = back_to.filter(|_| !removed.is_empty() || from == me) {
            if peer != me && self.routes.get(id).is_none() {
                self.routes.set(id.clone(), Route::Remote { peer });
            }
        }
        Ok(removed)
    }

    /// Keeps the last state of a copy about to be removed (the loser of a partition):
    /// [`crate::heal::retired`]; a failure is logged, never blocks the removal.
    async fn keep_retired(&self, id: &InstanceId) {
        let Some((spec, name, port)) = self.instances.get(id) else {
            return;
        };
        let root = self.images.parent().unwrap_or(&self.images).join("retired");
        match crate::heal::retired::keep(&self.engine, &root, &spec, &name, port).await {
            Ok(dir) => info!(instance = ?id, generation = %spec.generation, dir = %dir.display(),
                "a removed copy's log and state are kept"),
            Err(e) => warn!(instance = ?id, "cannot keep a removed copy's state: {e}"),
        }
    }

    /// Stops and removes every instance here (the node is leaving).
    pub async fn stop_all(&self) -> Vec<String> {
        let services: std::collections::BTreeSet<String> = self
            .instances
            .ids(|_| true)
            .into_iter()
            .map(|k| k.service)
            .collect();
        let mut stopped = Vec::new();
        for s in services {
            stopped.extend(self.stop(&s, None).await);
        }
        stopped
    }

    /// The instances here, with the engine's view of their state.
    pub async fn list(&self, service: Option<&str>) -> Vec<InstanceView> {
        let rows: Vec<(InstanceSpec, String, u16)> = self
            .instances
            .lock()
            .values()
            .filter(|i| service.is_none_or(|s| i.spec.id.service == s))
            .map(|i| (i.spec.clone(), i.name.clone(), i.port))
            .collect();
        let mut out = Vec::new();
        for (spec, name, port) in rows {
            let state = match self.engine.state(&name).await {
                Ok(s) => state_text(s.state, s.restarts),
                Err(e) => format!("unknown ({e})"),
            };
            out.push(self.view(&spec, &name, port, state));
        }
        out
    }

    async fn logs(&self, id: &InstanceId, tail: usize) -> Result<String, String> {
        let (_, name, _) = self
            .instances
            .get(id)
            .ok_or_else(|| format!("{id} does not run on this node"))?;
        self.engine
            .logs(&name, tail)
            .await
            .map_err(|e| format!("cannot read the log of {name}: {e}"))
    }

    pub(crate) fn view(
        &self,
        spec: &InstanceSpec,
        name: &str,
        port: u16,
        state: String,
    ) -> InstanceView {
        InstanceView {
            service: spec.id.service.clone(),
            epoch: spec.epoch,
            task: spec.id.task.clone(),
            replica: spec.id.replica,
            name: name.to_string(),
            engine: self.engine.kind().to_string(),
            port,
            state,
            cpu_millis: spec.cpu_millis,
            memory_mb: spec.memory_mb,
        }
    }
}

fn state_text(state: TaskState, restarts: u32) -> String {
    let s = match state {
        TaskState::Created => "created".to_string(),
        TaskState::Running => "running".to_string(),
        TaskState::Restarting => "restarting".to_string(),
        TaskState::Exited { code } => format!("exited({code})"),
        TaskState::Missing => "missing".to_string(),
    };
    if restarts > 0 {
        format!("{s}, {restarts} restarts")
    } else {
        s
    }
}

/// `brume-<service>-<task>-<replica>-<epoch>-<node>`: unique across the nodes that share one
/// Docker engine (a testnet on one machine), readable in `docker ps`.
fn instance_name(spec: &InstanceSpec, me: &PeerId) -> String {
    let node = node_tag(me);
    let id = &spec.id;
    format!(
        "brume-{}-{}-{}-{}-{node}",
        id.service, id.task, id.replica, spec.epoch
    )
}

/// The last eight characters of the node's peer id, which end the names of its tasks.
pub(crate) fn node_tag(me: &PeerId) -> String {
    let me = me.to_string();
    me.chars()
        .rev()
        .take(8)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}
