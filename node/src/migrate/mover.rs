//! The mover of one node: the shell around [`Move`](super::machine::Move) that performs its
//! actions, and the server of `/brume/move/2` and `/brume/live/3`.
//!
//! The node that runs the instance (the source) drives the move, because it holds the instance,
//! its spec and its state. Each action of the machine is one await here (bounded by the move's
//! deadline); what it came to goes back to the machine, which says what next. The target's
//! part goes over the deploy protocol ([`crate::deploy::client::ask`]): `Prepare`, then
//! `Deploy` with the state in the spec's `restore`, or `Remove` to undo.

use std::sync::Arc;
use std::time::Instant;

use brume_overlay::limits::Slots;
use brume_overlay::{Multiaddr, PeerId};
use brume_tunnel::{Hold, InstanceId, Route};
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::live::book::FenceBook;
use super::live::fault::LiveFault;
use super::machine::{Action, Carry, End, Input, Move};
use super::predictor::DumpModels;
use super::wire::{Mode, Phase, Reply, Request, LIVE_PROTOCOL, MAX_FRAME, MOVE_PROTOCOL};
use super::{freeze_budget, target, Limits, LiveMigration, MoveRequest};
use crate::deploy::authority::check;
use crate::deploy::client::ask;
use crate::deploy::deployer::Deployer;
use crate::deploy::ledger::Ledger;
use crate::deploy::wire::{self as deploy, CallTarget, CheckpointMode, InstanceSpec, InstanceView};
use crate::streams::respond;
use brume_control::NodeName;
use brume_migration::app::{self as checkpoint, CHECKPOINT_TIMEOUT};
use brume_migration::live::shared::{MigrationStore, MigrationStoreConfig};

/// Live moves received at once from one peer, and in all.
const LIVE_PER_PEER: usize = 8;
const LIVE_TOTAL: usize = 32;

/// Told of every move this node drove, as it ends (the daemon counts them for its metrics).
pub type OnMoved = Arc<dyn Fn(&Reply) + Send + Sync>;

/// Moves instances off this node and takes the ones that arrive live.
pub struct Mover {
    pub(crate) deployer: Arc<Deployer>,
    /// The services this node deployed, when it is their initiator: their moves are recorded.
    ledger: Option<Arc<Ledger>>,
    /// The memory chunks of the live migrations this node received, shared by every later
    /// one into it (opened by the first).
    pub(crate) migration_store: MigrationStore,
    /// How CRIU tasks move on the process engine.
    pub(crate) live: LiveMigration,
    on_moved: Option<OnMoved>,
    /// The live moves coming in and the fences heard ([`super::fence`]).
    pub(crate) fences: Arc<FenceBook>,
    /// A failure this node suffers on purpose as a live move's target (tests only).
    pub(crate) fault: Option<LiveFault>,
    /// What this node learned about its own CRIU dumps ([`super::predictor`]).
    pub(crate) dump_models: DumpModels,
}

/// Where the instance goes: its peer, its overlay node id (as the ledger keeps hosts), the name
/// people read, and addresses.
pub(super) struct Destination {
    pub(super) peer: PeerId,
    pub(super) host: String,
    pub(super) name: String,
    pub(super) addrs: Vec<Multiaddr>,
}

/// `fut`'s output, or `None` once `deadline` has passed.
pub(super) async fn within<T>(
    deadline: Option<Instant>,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    match deadline {
        None => Some(fut.await),
        Some(at) => tokio::time::timeout_at(at.into(), fut).await.ok(),
    }
}

/// What an answer of the target to `Prepare` or `Deploy` comes to, for the machine.
fn input_of(reply: Option<anyhow::Result<deploy::Reply>>) -> (Input, Option<InstanceView>) {
    match reply {
        None => (Input::Late, None),
        Some(Ok(deploy::Reply::Prepared)) => (Input::Completed, None),
        Some(Ok(deploy::Reply::Started { instance, .. })) => (Input::Completed, Some(instance)),
        Some(Ok(deploy::Reply::Refused { reason })) => (Input::Refused(reason), None),
        Some(Ok(other)) => (Input::Refused(format!("it answered {other:?}")), None),
        Some(Err(e)) => (Input::Unreachable(format!("{e:#}")), None),
    }
}

impl Mover {
    pub fn new(
        deployer: Arc<Deployer>,
        ledger: Option<Arc<Ledger>>,
        migration_store: MigrationStoreConfig,
        live: LiveMigration,
        on_moved: Option<OnMoved>,
        fault: Option<LiveFault>,
        dump_models: DumpModels,
    ) -> Arc<Self> {
        if let Some(f) = fault {
            warn!(fault = ?f, "live_fault is set: this node fails live moves into it on purpose");
        }
        Arc::new(Mover {
            deployer,
            ledger,
            migration_store: MigrationStore::new(migration_store),
            live,
            on_moved,
            fences: Arc::default(),
            fault,
            dump_models,
        })
    }

    /// Serves move requests and incoming live moves until the overlay stops.
    pub async fn serve(self: Arc<Self>) -> anyhow::Result<()> {
        let overlay = &self.deployer.overlay;
        let mut moves = overlay.accept_limited(MOVE_PROTOCOL)?;
        let mut live = overlay.accept_streams(LIVE_PROTOCOL)?;
        let live_slots = Slots::new(LIVE_PER_PEER, LIVE_TOTAL);
        loop {
            let mover = self.clone();
            tokio::select! {
                next = moves.next() => {
                    let Some((peer, stream)) = next else { return Ok(()) };
                    tokio::spawn(async move {
                        let handle = |request, phases| mover.handle(peer, request, phases);
                        let refuse = |reason| Reply::Refused { reason };
                        let answered = respond(stream, MAX_FRAME, handle, Reply::Phase, refuse);
                        if let Err(e) = answered.await {
                            debug!(%peer, error = %e, "move stream ended badly");
                        }
                    });
                }
                next = live.next() => {
                    let Some((peer, stream)) = next else { return Ok(()) };
                    // A live move may rightly pause (post-copy waits on the task's faults), so
                    // no idle timeout, but a peer gets only a few at once.
                    let Some(slot) = live_slots.try_take(&peer) else {
                        debug!(%peer, "too many live moves from one peer at once; stream dropped");
                        continue;
                    };
                    tokio::spawn(async move {
                        mover.receive_live(peer, stream).await;
                        drop(slot);
                    });
                }
            }
        }
    }

    /// Answers one move request (phases of a move go to `phases`).
    pub async fn handle(
        &self,
        from: PeerId,
        request: Request,
        phases: mpsc::Sender<Phase>,
    ) -> Reply {
        let me = self.deployer.overlay.peer_id();
        match request {
            Request::Migrate {
                instance,
                to,
                budget_ms,
                allow_cold,
                deadline_ms,
                max_downtime_ms,
                force,
            } => {
                // Its state goes wherever the move takes it: only the owner may ask.
                if let Some((spec, _, _)) = self.deployer.instances.get(&instance) {
                    if let Err(reason) = check(from, me, "move", &instance, spec.initiator, &[]) {
                        return Reply::Refused { reason };
                    }
                }
                let request = MoveRequest {
                    instance,
                    to,
                    budget: std::time::Duration::from_millis(budget_ms.clamp(1, 10_000)),
                    allow_cold,
                    deadline: deadline_ms.map(std::time::Duration::from_millis),
                    max_downtime: max_downtime_ms.map(std::time::Duration::from_millis),
                    force,
                };
                // Boxed: a move asks other nodes, and a request to this node comes back here.
                Box::pin(self.migrate(request, phases)).await
            }
            Request::Moved {
                instance,
                peer,
                host,
                addrs,
                delegation,
            } => {
                if let Err(reason) = self.may_say_moved(from, &instance, delegation.as_deref()) {
                    return Reply::Refused { reason };
                }
                self.moved(&instance, peer, &host, addrs).await
            }
            Request::Fence {
                instance,
                generation,
            } => {
                if let Some((spec, _, _)) = self.deployer.instances.get(&instance) {
                    let also: Vec<PeerId> = self
                        .deployer
                        .instances
                        .sent_by(&instance)
                        .into_iter()
                        .collect();
                    if let Err(reason) = check(from, me, "fence", &instance, spec.initiator, &also)
                    {
                        return Reply::Refused { reason };
                    }
                }
                self.fence(from, &instance, generation).await
            }
        }
    }

    pub(crate) fn ledger(&self) -> Option<&Arc<Ledger>> {
        self.ledger.as_ref()
    }

    /// Moves one instance running here to another node; on `Refused` it still runs here,
    /// untouched (see [`super::machine`]).
    pub async fn migrate(&self, req: MoveRequest, phases: mpsc::Sender<Phase>) -> Reply {
        let reply = self.run_move(req, phases).await;
        if let Some(on_moved) = &self.on_moved {
            on_moved(&reply);
        }
        reply
    }

    /// The shell of one move: performs the machine's actions until it is done.
    async fn run_move(&self, req: MoveRequest, phases: mpsc::Sender<Phase>) -> Reply {
        let id = req.instance.clone();
        let Some((spec, _, port)) = self.deployer.instances.get(&id) else {
            return Reply::Refused {
                reason: format!("{id} does not run on this node"),
            };
        };
        let carry = match spec.checkpoint {
            CheckpointMode::Criu if !req.allow_cold => Carry::Live,
            CheckpointMode::App => Carry::AppState,
            CheckpointMode::None | CheckpointMode::Criu => Carry::Nothing,
        };
        if carry == Carry::Live {
            if let Err(why) = self.live_preflight(&id) {
                return Reply::Refused {
                    reason: format!(
                        "{id} asks for CRIU checkpoints, but {why}; move it with --cold (it \
                         restarts on the target without its state), or give the task \
                         checkpoint = \"app\""
                    ),
                };
            }
        }
        let deadline = req.deadline.map(|d| Instant::now() + d);
        let (mut machine, mut action) = Move::start(id.to_string(), carry, req.deadline);

        // What the actions produce, for the later ones.
        let mut dest: Option<Destination> = None;
        let mut moved = spec.clone();
        moved.restore = None;
        // The copy the move makes is the instance's next generation: a fence names it.
        moved.generation = spec.generation.next();
        let mut hold: Option<Hold> = None;
        let mut held = Instant::now();
        let mut state_bytes = 0;
        let mut instance: Option<InstanceView> = None;
        let mut told = 0;
        let forward = |p: deploy::Phase| {
            let phases = phases.clone();
            async move {
                let _ = phases.send(Phase::Preparing(p)).await;
            }
        };

        loop {
            let input = match action {
                Action::ChooseTarget => match self.destination(&req, &spec).await {
                    Ok(d) => {
                        let _ = phases
                            .send(Phase::Target {
                                peer: d.peer,
                                host: d.host.clone(),
                            })
                            .await;
                        moved.calls = self.current_calls(&spec).await;
                        dest = Some(d);
                        Input::Chosen
                    }
                    Err(reason) => Input::Refused(reason),
                },
                Action::Prepare => {
                    let Some(d) = &dest else { break self.bug(&id) };
                    let req = deploy::Request::Prepare(moved.clone());
                    let asked = ask(&self.deployer, d.peer, &d.addrs, &req, &forward);
                    input_of(within(deadline, asked).await).0
                }
                Action::MoveLive => {
                    let Some(d) = &dest else { break self.bug(&id) };
                    let limits = Limits {
                        deadline,
                        max_downtime: freeze_budget(
                            req.max_downtime,
                            spec.downtime_budget_ms,
                            req.force,
                        ),
                    };
                    break self.move_live(&id, moved, d, limits, &phases).await;
                }
                Action::Hold => {
                    // Live calls through this node are cut, new ones wait, so nothing reaches
                    // the old instance after its checkpoint.
                    hold = Some(self.deployer.routes.hold(&id));
                    held = Instant::now();
                    Input::Completed
                }
                Action::Capture => {
                    match within(deadline, checkpoint::capture(port, CHECKPOINT_TIMEOUT)).await {
                        None => Input::Late,
                        Some(Ok(state)) => {
                            state_bytes = state.len() as u64;
                            moved.restore = Some(state);
                            Input::Completed
                        }
                        Some(Err(e)) => Input::CaptureFailed(e.to_string()),
                    }
                }
                Action::Start => {
                    let Some(d) = &dest else { break self.bug(&id) };
                    let _ = phases
                        .send(Phase::Checkpointed { bytes: state_bytes })
                        .await;
                    let req = deploy::Request::Deploy(moved.clone());
                    let asked = ask(&self.deployer, d.peer, &d.addrs, &req, &forward);
                    let (input, started) = input_of(within(deadline, asked).await);
                    instance = started;
                    input
                }
                Action::Undo => {
                    let Some(d) = &dest else { break self.bug(&id) };
                    // Removed there after its deploy ends; its calls to the instance come back.
                    let undo = deploy::Request::Remove {
                        instance: id.clone(),
                        epoch: moved.epoch,
                        back_to: Some(self.deployer.overlay.peer_id()),
                        delegation: None,
                    };
                    let asked = ask(&self.deployer, d.peer, &d.addrs, &undo, |_| async {}).await;
                    if let Err(e) = &asked {
                        warn!(instance = %id, error = %e, "cannot undo the start on the target");
                    }
                    Input::Undone {
                        confirmed: asked.is_ok(),
                    }
                }
                Action::Release => {
                    drop(hold.take());
                    Input::Completed
                }
                Action::Switch => {
                    let Some(d) = &dest else { break self.bug(&id) };
                    // Calls from here go there (held ones first; streams from other nodes are
                    // redirected until they are told), then the old instance stops.
                    let _ = phases.send(Phase::Switching).await;
                    let routes = &self.deployer.routes;
                    routes.set_host_addrs(d.peer, d.addrs.clone());
                    routes.set(id.clone(), Route::Remote { peer: d.peer });
                    drop(hold.take());
                    told = self
                        .tell_moved(&spec, d.peer, &d.host, &d.addrs, None)
                        .await;
                    self.deployer.stop_instance(&id).await;
                    self.deployer.readvertise().await;
                    Input::Completed
                }
                Action::Done(End::Untouched(reason)) => break Reply::Refused { reason },
                Action::Done(End::Live) => break self.bug(&id),
                Action::Done(End::Moved) => {
                    let (Some(d), Some(instance)) = (dest, instance) else {
                        break self.bug(&id);
                    };
                    let held_ms = held.elapsed().as_millis() as u64;
                    let mode = if carry == Carry::AppState {
                        Mode::App
                    } else {
                        Mode::Cold
                    };
                    info!(instance = %id, to = %d.name, state_bytes, held_ms, told, "instance moved");
                    break Reply::Migrated {
                        to: d.peer,
                        host: d.host,
                        instance,
                        mode,
                        state_bytes,
                        held_ms,
                        told,
                    };
                }
            };
            action = machine.next(input);
        }
    }

    /// A state the machine never reaches (its tests say so); refused rather than panicked on.
    fn bug(&self, id: &InstanceId) -> Reply {
        Reply::Refused {
            reason: format!("internal error in the move of {id}; it still runs here"),
        }
    }

    /// The named target, or the nearest node of a fresh map with room for the instance.
    async fn destination(
        &self,
        req: &MoveRequest,
        spec: &InstanceSpec,
    ) -> Result<Destination, String> {
        let overlay = &self.deployer.overlay;
        let me = overlay.peer_id();
        let map = overlay
            .map_with(req.budget, true)
            .await
            .map_err(|e| format!("cannot map the neighbourhood: {e}"))?
            .map;
        match req.to {
            Some(peer) => {
                if peer == me {
                    return Err("the instance already runs on this node".to_string());
                }
                let record = map.nodes.iter().find(|n| n.peer == Some(peer));
                Ok(Destination {
                    peer,
                    // The same name whether or not the map found the node (under load a fresh
                    // map can miss it): node ids derive from peer ids.
                    host: brume_overlay::ids::node_id_of(&peer).to_string(),
                    name: record
                        .map_or_else(|| NodeName::of(peer), NodeName::of_record)
                        .to_string(),
                    addrs: record.map(|r| r.addrs.clone()).unwrap_or_default(),
                })
            }
            None => {
                let choice = target::pick(&map, overlay.node_id(), spec.cpu_millis, spec.memory_mb)
                    .ok_or_else(|| {
                        format!(
                            "no other node within {:?} has {} mCPU and {} MB free for {} \
                                 (map of {} node(s)); name one with --to or widen --budget",
                            req.budget,
                            spec.cpu_millis,
                            spec.memory_mb,
                            spec.id,
                            map.nodes.len()
                        )
                    })?;
                Ok(Destination {
                    peer: choice.peer,
                    host: choice.record.id.to_string(),
                    name: NodeName::of_record(&choice.record).to_string(),
                    addrs: choice.record.addrs,
                })
            }
        }
    }

    /// The instance's calls with each callee where it runs now (callees may have moved since
    /// the deploy): this node's routes know. Each host goes with the addresses this node knows
    /// for it (it has been calling it), else those of the deploy: the target may never have met
    /// it.
    async fn current_calls(&self, spec: &InstanceSpec) -> Vec<CallTarget> {
        let overlay = &self.deployer.overlay;
        let me = overlay.peer_id();
        let mut calls = Vec::new();
        for c in &spec.calls {
            let (mut hosts, mut addrs) = (Vec::new(), Vec::new());
            for (replica, &host) in c.hosts.iter().enumerate() {
                let callee = InstanceId::new(&spec.id.service, &c.task, replica as u32);
                let now = match self.deployer.routes.get(&callee) {
                    Some(Route::Remote { peer }) => peer,
                    Some(Route::Local { .. }) => me,
                    None => host,
                };
                let known = if now == me {
                    Vec::new()
                } else {
                    overlay.known_addresses(now).await.unwrap_or_default()
                };
                addrs.push(match (known.is_empty(), now == host) {
                    (false, _) => known,
                    (true, true) => c.addrs.get(replica).cloned().unwrap_or_default(),
                    (true, false) => Vec::new(),
                });
                hosts.push(now);
            }
            calls.push(CallTarget {
                task: c.task.clone(),
                hosts,
                addrs,
            });
        }
        calls
    }
}
