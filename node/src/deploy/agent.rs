//! The host side of a deployment: what a node does when an initiator asks it to run a task.
//!
//! Every request arrives on its own `/brume/deploy/1` stream. A deploy is checked (names, sizes,
//! the epoch against what already runs, this node's free share of its advertised capacity),
//! then the artifact's missing chunks are fetched from the initiator and verified, the image is
//! built or loaded by the engine, each called task gets a local tunnel forwarder whose address
//! goes into `BRUME_CALL_*`, and the task starts on a port of its own. Any failure undoes what
//! this request did (forwarders, routes, the container or process) and answers `Refused`, so a
//! refused deploy leaves nothing here. Deploys on one node run one at a time, which keeps the
//! resource check honest; stops and queries do not wait for them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use brume_overlay::neighbourhood::NodeRecord;
use brume_overlay::{OverlayHandle, PeerId, Stream};
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::ledger::Ledger;
use super::wire::{
    AgentReply, AgentRequest, CallTarget, CheckpointMode, InstanceSpec, InstanceView, Payload,
    Phase, DEPLOY_PROTOCOL, MAX_FRAME,
};
use crate::migrate::live::chunk_store::{MigrationStore, MigrationStoreConfig};
use brume_artifact::{self as artifact, ArtifactKind, ArtifactManifest, ChunkStore, FetchOptions};
use brume_engine::{
    free_task_port, AnyEngine, Engine, EngineError, ImageInput, ImageKind, ImageRef, LaunchSpec,
    RestartPolicy, TaskState,
};
use brume_overlay::frames::{read_frame, write_frame};
use brume_tunnel::{call_env, Endpoint, Forwarder, Route, Routes};

/// How long a stopping task gets before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Starts tried, each on a newly picked port, when the picked port gets taken before the task
/// binds it.
const PORT_TRIES: usize = 3;

/// What this node may hand out to tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub cpu_millis: u64,
    pub memory_mb: u64,
}

/// Instances are keyed by service, task and replica: one epoch of each at a time.
pub(crate) type Key = (String, String, u32);

pub(crate) struct Instance {
    pub(crate) spec: InstanceSpec,
    pub(crate) name: String,
    pub(crate) port: u16,
    /// Dropping them closes the listeners behind `BRUME_CALL_*`.
    pub(crate) forwarders: Vec<Forwarder>,
}

/// Builds this node's state record for given reservations (CPU mCPU, memory MB), or `None`.
pub type Advertiser = Arc<dyn Fn(u64, u64) -> Option<NodeRecord> + Send + Sync>;

/// The deployment agent of one node.
pub struct Agent {
    pub(crate) overlay: OverlayHandle,
    pub(crate) engine: Arc<AnyEngine>,
    store: ChunkStore,
    pub(crate) routes: Routes,
    images: PathBuf,
    pub(crate) capacity: Capacity,
    instances: Mutex<BTreeMap<Key, Instance>>,
    pub(crate) deploying: tokio::sync::Mutex<()>,
    advertiser: Option<Advertiser>,
    /// The services this node deployed, when it runs an initiator: a move of one of their
    /// instances is written there.
    ledger: OnceLock<Arc<Ledger>>,
    /// The memory chunks of the live migrations this node received, shared by every later
    /// one into it (opened by the first).
    pub(crate) migration_store: MigrationStore,
}

impl Agent {
    /// An agent; with an `advertiser` it re-advertises the node's free resources whenever its
    /// reservations change, before it answers, so a map taken right after a deploy or a stop
    /// sees them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        overlay: OverlayHandle,
        engine: Arc<AnyEngine>,
        store: ChunkStore,
        routes: Routes,
        images: PathBuf,
        capacity: Capacity,
        advertiser: Option<Advertiser>,
        migration_store: MigrationStoreConfig,
    ) -> Arc<Self> {
        Arc::new(Agent {
            overlay,
            engine,
            store,
            routes,
            images,
            capacity,
            instances: Mutex::new(BTreeMap::new()),
            deploying: tokio::sync::Mutex::new(()),
            advertiser,
            ledger: OnceLock::new(),
            migration_store: MigrationStore::new(migration_store),
        })
    }

    /// Gives the agent this node's deployment ledger (once; later calls are ignored).
    pub fn attach_ledger(&self, ledger: Arc<Ledger>) {
        let _ = self.ledger.set(ledger);
    }

    pub(crate) fn ledger(&self) -> Option<&Arc<Ledger>> {
        self.ledger.get()
    }

    /// Sends the record for the current reservations to the overlay.
    pub(crate) async fn readvertise(&self) {
        if let Some(advertise) = &self.advertiser {
            let (cpu, mem) = self.reserved();
            if let Some(record) = advertise(cpu, mem) {
                let _ = self.overlay.set_record(record).await;
            }
        }
    }

    pub fn engine_name(&self) -> &'static str {
        self.engine.kind()
    }

    /// CPU and memory promised to running instances.
    pub fn reserved(&self) -> (u64, u64) {
        self.lock().values().fold((0, 0), |(c, m), i| {
            (c + i.spec.cpu_millis, m + i.spec.memory_mb)
        })
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Instance>> {
        // A panic while holding the lock cannot leave the map half-written (every update is
        // one insert or remove), so a poisoned lock is still sound to use.
        self.instances.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves deploy streams (and live migrations into this node) until the overlay stops.
    pub async fn serve(self: Arc<Self>) -> anyhow::Result<()> {
        let mut incoming = self.overlay.accept_streams(DEPLOY_PROTOCOL)?;
        let mut live = self
            .overlay
            .accept_streams(crate::migrate::live::LIVE_PROTOCOL)?;
        let agent = self.clone();
        tokio::spawn(async move {
            while let Some((peer, stream)) = live.next().await {
                let agent = agent.clone();
                tokio::spawn(async move { agent.receive_live(peer, stream).await });
            }
        });
        while let Some((peer, stream)) = incoming.next().await {
            let agent = self.clone();
            tokio::spawn(async move {
                if let Err(e) = agent.answer(peer, stream).await {
                    debug!(%peer, error = %e, "deploy stream ended badly");
                }
            });
        }
        Ok(())
    }

    async fn answer(&self, peer: PeerId, mut stream: Stream) -> anyhow::Result<()> {
        let request: AgentRequest = match read_frame(&mut stream, MAX_FRAME).await {
            Ok(r) => r,
            Err(e) => {
                warn!(%peer, error = %e, "unreadable deploy request");
                let reason = format!("unreadable request: {e}");
                write_frame(&mut stream, &AgentReply::Refused { reason }).await?;
                return Ok(());
            }
        };
        let (tx, mut rx) = mpsc::channel::<Phase>(16);
        let work = self.handle(peer, request, tx);
        tokio::pin!(work);
        let reply = loop {
            tokio::select! {
                reply = &mut work => break reply,
                Some(phase) = rx.recv() => {
                    // The initiator gone mid-way does not stop the deploy: its rollback (or a
                    // later deploy) cleans up.
                    let _ = write_frame(&mut stream, &AgentReply::Phase(phase)).await;
                }
            }
        };
        write_frame(&mut stream, &reply).await?;
        Ok(())
    }

    /// Answers one request from `from` (phases of a deploy go to `phases`).
    pub async fn handle(
        &self,
        from: PeerId,
        request: AgentRequest,
        phases: mpsc::Sender<Phase>,
    ) -> AgentReply {
        match request {
            AgentRequest::Deploy(spec) => self.deploy(from, spec, phases).await,
            AgentRequest::Prepare(spec) => self.prepare(from, spec, phases).await,
            AgentRequest::Stop { service, epoch } => AgentReply::Stopped {
                instances: self.stop(&service, epoch).await,
            },
            AgentRequest::Remove {
                service,
                task,
                replica,
                epoch,
                back_to,
            } => AgentReply::Stopped {
                instances: self
                    .remove_one(&(service, task, replica), epoch, back_to.as_deref())
                    .await,
            },
            AgentRequest::List { service } => {
                AgentReply::Instances(self.list(service.as_deref()).await)
            }
            AgentRequest::Logs {
                service,
                task,
                replica,
                tail,
            } => match self.logs(&service, &task, replica, tail.min(10_000)).await {
                Ok(text) => AgentReply::Logs(text),
                Err(reason) => AgentReply::Refused { reason },
            },
            AgentRequest::Migrate {
                service,
                task,
                replica,
                to,
                budget_ms,
                allow_cold,
                deadline_ms,
                max_downtime_ms,
            } => {
                let request = crate::migrate::MoveRequest {
                    key: (service, task, replica),
                    to,
                    budget: Duration::from_millis(budget_ms.clamp(1, 10_000)),
                    allow_cold,
                    deadline: deadline_ms.map(Duration::from_millis),
                    max_downtime: max_downtime_ms.map(Duration::from_millis),
                };
                // Boxed: a move asks other agents, and asking this node's own agent comes
                // back here.
                Box::pin(self.migrate(request, phases)).await
            }
            AgentRequest::Moved {
                service,
                task,
                replica,
                peer,
                host,
                addrs,
            } => {
                self.moved(&(service, task, replica), &peer, &host, addrs)
                    .await
            }
        }
    }

    /// Runs one instance, or says why not; on `Refused` nothing of it is left.
    pub async fn deploy(
        &self,
        initiator: PeerId,
        spec: InstanceSpec,
        phases: mpsc::Sender<Phase>,
    ) -> AgentReply {
        let refuse = |reason: String| AgentReply::Refused { reason };
        if let Err(reason) = spec.check() {
            return refuse(reason);
        }
        let _one_at_a_time = self.deploying.lock().await;
        let key = (spec.service.clone(), spec.task.clone(), spec.replica);

        // The same epoch again: idempotent. An older one: replaced. A newer one: refused.
        let existing = self
            .lock()
            .get(&key)
            .map(|i| (i.spec.epoch, i.name.clone(), i.port));
        if let Some((epoch, name, port)) = existing {
            if epoch > spec.epoch {
                return refuse(format!(
                    "{}/{}#{} already runs here with the newer epoch {epoch}; this request \
                     (epoch {}) is stale",
                    spec.service, spec.task, spec.replica, spec.epoch
                ));
            }
            if epoch == spec.epoch {
                let state = self.engine.state(&name).await.map(|s| s.state);
                if matches!(state, Ok(s) if s.is_alive()) {
                    return AgentReply::Started {
                        instance: self.view(&spec, &name, port, "running".into()),
                        reused: true,
                    };
                }
            }
            self.remove_instance(&key).await;
        }

        if let Err(reason) = self.room_for(&spec) {
            return refuse(reason);
        }

        let image_ref = match self.image(initiator, &spec, &phases).await {
            Ok(r) => r,
            Err(reason) => return refuse(reason),
        };

        let (forwarders, call_vars) = match self.forwarders(&spec).await {
            Ok(f) => f,
            Err(reason) => return refuse(reason),
        };
        let mut env = spec.env.clone();
        env.extend(call_vars);
        let mut launch = self.launch_spec(&spec, image_ref, env, 0);
        let name = launch.name.clone();
        let _ = phases.send(Phase::Starting).await;
        // The port is checked free when picked, but something else on the host may bind it before
        // the task does: pick another and start again, a few times.
        let mut tries = 0;
        let port = loop {
            launch.port = match free_task_port() {
                Ok(p) => p,
                Err(e) => return refuse(format!("no free port on this node: {e}")),
            };
            match self.start_task(&spec, &launch).await {
                Ok(()) => break launch.port,
                Err(e) => {
                    // The engine removes what it created when start fails; make sure.
                    let _ = self.engine.remove(&name).await;
                    tries += 1;
                    if matches!(e, EngineError::PortInUse { .. }) && tries < PORT_TRIES {
                        warn!(
                            port = launch.port,
                            "the task's port was taken; picking another"
                        );
                        continue;
                    }
                    return refuse(format!("the task did not start: {e}"));
                }
            }
        };
        self.routes.set(
            Endpoint::new(&spec.service, &spec.task, spec.replica),
            Route::Local { port },
        );
        info!(service = %spec.service, task = %spec.task, replica = spec.replica, port, %name, "task started");
        let view = self.view(&spec, &name, port, "running".into());
        self.lock().insert(
            key,
            Instance {
                spec,
                name,
                port,
                forwarders,
            },
        );
        self.readvertise().await;
        AgentReply::Started {
            instance: view,
            reused: false,
        }
    }

    /// Whether this node has the free share of its capacity `spec` asks for, or why not.
    pub(crate) fn room_for(&self, spec: &InstanceSpec) -> Result<(), String> {
        let (used_cpu, used_mem) = self.reserved();
        let free_cpu = self.capacity.cpu_millis.saturating_sub(used_cpu);
        let free_mem = self.capacity.memory_mb.saturating_sub(used_mem);
        if spec.cpu_millis > free_cpu || spec.memory_mb > free_mem {
            return Err(format!(
                "not enough free resources on this node for {}/{}: it asks {} mCPU and {} MB, \
                 {free_cpu} mCPU and {free_mem} MB are free of {} mCPU and {} MB",
                spec.service,
                spec.task,
                spec.cpu_millis,
                spec.memory_mb,
                self.capacity.cpu_millis,
                self.capacity.memory_mb
            ));
        }
        Ok(())
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
            service: spec.service.clone(),
            task: spec.task.clone(),
            replica: spec.replica,
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
        }
    }

    /// Records an instance that runs here (its route is the caller's business).
    pub(crate) fn insert_instance(&self, key: Key, instance: Instance) {
        self.lock().insert(key, instance);
    }

    /// Starts one task: a `checkpoint = "criu"` one on the process engine of a node that has
    /// the fixed task directory runs so that CRIU can move it ([`ProcessEngine::start_checkpointable`]);
    /// any other as usual.
    ///
    /// [`ProcessEngine::start_checkpointable`]: brume_engine::ProcessEngine::start_checkpointable
    async fn start_task(
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
        self.engine
            .prepare(&image)
            .await
            .map_err(|e| format!("cannot prepare the image: {e}"))
    }

    /// Gets an instance's image ready here without starting anything, so that a move's
    /// start (while callers wait) costs only the start.
    pub async fn prepare(
        &self,
        from: PeerId,
        spec: InstanceSpec,
        phases: mpsc::Sender<Phase>,
    ) -> AgentReply {
        if let Err(reason) = spec.check() {
            return AgentReply::Refused { reason };
        }
        match self.image(from, &spec, &phases).await {
            Ok(_) => AgentReply::Prepared,
            Err(reason) => AgentReply::Refused { reason },
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

    /// One forwarder per replica of every called task; their addresses as `BRUME_CALL_*`.
    async fn forwarders(
        &self,
        spec: &InstanceSpec,
    ) -> Result<(Vec<Forwarder>, Vec<(String, String)>), String> {
        self.forwarders_at(spec, &[]).await
    }

    /// [`Agent::forwarders`] on the given ports, in the same order (calls, then replicas);
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
            for (replica, host) in hosts.iter().enumerate() {
                let host: PeerId = host
                    .parse()
                    .map_err(|_| format!("call to {task}: {host:?} is not a peer id"))?;
                let endpoint = Endpoint::new(&spec.service, task, replica as u32);
                if host != me {
                    // This node may never have met the callee's host: tell the overlay where it is.
                    let told = dial.get(replica).cloned().unwrap_or_default();
                    let _ = self.overlay.add_addresses(host, parse_addrs(&told)).await;
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

    pub(crate) async fn remove_instance(&self, key: &Key) -> Option<String> {
        let name = self.stop_instance(key).await?;
        self.routes.remove(&Endpoint::new(&key.0, &key.1, key.2));
        Some(name)
    }

    /// Takes an instance out of this node's table and stops and removes its task, leaving its
    /// route alone (a move has already pointed it elsewhere); returns its name.
    pub(crate) async fn stop_instance(&self, key: &Key) -> Option<String> {
        let instance = self.lock().remove(key)?;
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
        let keys: Vec<Key> = self
            .lock()
            .iter()
            .filter(|(k, i)| k.0 == service && epoch.is_none_or(|e| i.spec.epoch == e))
            .map(|(k, _)| k.clone())
            .collect();
        let mut stopped = Vec::new();
        for k in keys {
            stopped.extend(self.remove_instance(&k).await);
        }
        if !stopped.is_empty() {
            self.readvertise().await;
        }
        if !self.lock().keys().any(|k| k.0 == service) {
            for (endpoint, _) in self.routes.snapshot() {
                if endpoint.service == service {
                    self.routes.remove(&endpoint);
                }
            }
        }
        stopped
    }

    /// Stops and removes one instance if it runs here with `epoch`; with `back_to`, calls to
    /// it from this node go to that peer afterwards.
    pub async fn remove_one(&self, key: &Key, epoch: u64, back_to: Option<&str>) -> Vec<String> {
        // After any deploy in progress here: the one being undone may still be starting.
        let _one_at_a_time = self.deploying.lock().await;
        let matches = self.lock().get(key).is_some_and(|i| i.spec.epoch == epoch);
        let removed: Vec<String> = if matches {
            self.remove_instance(key).await.into_iter().collect()
        } else {
            Vec::new()
        };
        if !removed.is_empty() {
            self.readvertise().await;
        }
        if let Some(peer) = back_to.and_then(|p| p.parse::<PeerId>().ok()) {
            let endpoint = Endpoint::new(&key.0, &key.1, key.2);
            if peer != self.overlay.peer_id() && self.routes.get(&endpoint).is_none() {
                self.routes.set(endpoint, Route::Remote { peer });
            }
        }
        removed
    }

    /// Stops and removes every instance here (the node is leaving).
    pub async fn stop_all(&self) -> Vec<String> {
        let services: std::collections::BTreeSet<String> =
            self.lock().keys().map(|k| k.0.clone()).collect();
        let mut stopped = Vec::new();
        for s in services {
            stopped.extend(self.stop(&s, None).await);
        }
        stopped
    }

    /// The instances here, with the engine's view of their state.
    pub async fn list(&self, service: Option<&str>) -> Vec<InstanceView> {
        let rows: Vec<(InstanceSpec, String, u16)> = self
            .lock()
            .values()
            .filter(|i| service.is_none_or(|s| i.spec.service == s))
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

    async fn logs(
        &self,
        service: &str,
        task: &str,
        replica: u32,
        tail: usize,
    ) -> Result<String, String> {
        let name = self
            .lock()
            .get(&(service.to_string(), task.to_string(), replica))
            .map(|i| i.name.clone())
            .ok_or_else(|| format!("{service}/{task}#{replica} does not run on this node"))?;
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
            service: spec.service.clone(),
            epoch: spec.epoch,
            task: spec.task.clone(),
            replica: spec.replica,
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
    let me = me.to_string();
    let node: String = me
        .chars()
        .rev()
        .take(8)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!(
        "brume-{}-{}-{}-{}-{}",
        spec.service, spec.task, spec.replica, spec.epoch, node
    )
}

/// The addresses of `addrs` that parse (a peer's advertised addresses; the rest are skipped).
pub(crate) fn parse_addrs(addrs: &[String]) -> Vec<brume_overlay::Multiaddr> {
    addrs.iter().filter_map(|a| a.parse().ok()).collect()
}
