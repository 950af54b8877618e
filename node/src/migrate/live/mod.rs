//! Moving a `checkpoint = "criu"` task live: brume's CRIU pre-copy ([`brume_migration::live`])
//! over an overlay stream of its own, `/brume/live/3`. On the process engine CRIU dumps the
//! task's process tree (below); on the Docker engine `runc checkpoint` dumps its host-network
//! container and the target restores a runc container Docker does not know, which its engine
//! adopts ([`Mover::move_live_docker`], [`brume_engine::runc_task`], docs/criu.md).
//!
//! The task was started checkpointable (fixed path, own PID namespace, output through a pipe:
//! [`brume_engine::criu_task`]). After the target has fetched the image (`Prepare`), the source
//! holds the instance's callers and waits (bounded) until the task holds no TCP connection but
//! its listener, then opens the stream and says what comes (`Hello`: the spec, the
//! task's port, the ports of its call forwarders and its stdout pipe's key). The target checks
//! it, lays the files out at the fixed path and answers `Ready`; then the two ends run
//! `migrate_out` / `migrate_in` on the stream, the source reporting every round as a phase. Once
//! the target restored the task, the source forgets its own instance (the final dump ended its
//! process), which frees the forwarder ports, and says `Released`; the target binds its
//! forwarders on those same ports (the restored task's environment names them), adopts the
//! restored pid as the instance and answers `Adopted`. The source then routes the instance's
//! calls to the target, releases them and tells the overlay.
//!
//! ```text
//!  source: hold ─ quiet ─ Hello ──▶ target: check, lay out ─ Ready
//!          pre-copy rounds ... final dump ──▶ restore (inherit the stdout pipe)
//!          forget own instance ─ Released ──▶ forwarders on the same ports, adopt ─ Adopted
//!          route → target, release the hold, tell the overlay
//! ```
//!
//! Chunk store: every migration into the node, on either engine, shares one store of the memory
//! chunks of the migrations it received before, which the mover owns (`brume_migration::live::shared`:
//! `<data_dir>/migration-chunks`, at most `migration_cache_mb`, oldest packs evicted first;
//! [`brume_migration::live::store`]). Round 1 of a pre-copy then sends only the chunks it lacks:
//! a task coming back, or a replica of a service that already moved here, costs what changed
//! rather than its whole memory. A store that cannot be opened is logged and the migration goes
//! on without one; `migration_cache_mb = 0` keeps none.
//!
//! Exactly one copy ([`crate::migrate::machine::Finish`] holds the rule, [`guard`] the I/O,
//! [`crate::migrate::fence`] the target's table). The moved spec carries the next generation
//! of the instance (in `Hello`); the target records it with the instance. Failure points:
//!
//! * before the final dump (the target refuses, dies mid pre-copy, the link breaks, the planner
//!   gives up): the task was never stopped and runs on the source untouched; the target drops
//!   what it staged (a target that died holds nothing);
//! * the target's restore fails: it says `Failed`, and `migrate_out` restores the task on the
//!   source at once, whose engine adopts the new pid;
//! * the link breaks during the final step, or the target's `Restored` is lost or too late
//!   ([`guard::COMMIT_WITHIN`]): the target may run a copy. The source fences it on
//!   `/brume/move/2` ("stop it if it runs at generation G"; the target kills a restored copy,
//!   makes a restore under way kill what it restores, and refuses G from then on) and restores
//!   the task from its final images only on the target's answer, or, if the target cannot be
//!   reached, once the target's lease ([`guard::LEASE`]) has surely run out: a target never
//!   keeps a copy the source did not release within it;
//! * tracked post-copy (to a target in another network namespace, [`network`]) restores the
//!   copy before its pages come, with the original frozen on the source until the target holds
//!   every page: a failure the target reports, or one before the images went, thaws the
//!   original; a link lost after the images went leaves it frozen
//!   ([`LiveError::FrozenInDoubt`]) until the target is fenced or its lease ran out, then
//!   thaws it. The target's lease bounds the whole post-copy (`receive_guarded`);
//! * after `Released` the source's instance is gone: a target that cannot take the task (its
//!   forwarder ports are taken) kills it and the move ends with the instance lost, and says so;
//!   an `Adopted` that never comes leaves the target's copy the only one, and calls are
//!   switched to it.
//!
//! Before this, a source whose link broke after the final dump restored the task at once while
//! the target kept its restored copy for up to 30 s waiting for `Released` (two copies), and a
//! target that restored but could not send `Restored` lost track of the pid (an orphan copy).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use brume_migration::checkpointer::{
    prepare_bundle, runc_usable, PortableBundle, RuncContainer, DOCKER_BUNDLES, DOCKER_RUNC_ROOT,
};
use brume_migration::criu::{InheritFd, NetworkLock};
use brume_migration::live::scratch_dir;
use brume_migration::live::{
    migrate_in, migrate_out, LiveError, Migrated, RoundStats, SourceOptions, TargetOptions,
};
use brume_migration::preflight;
use brume_overlay::{PeerId, Stream};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};
use tracing::{debug, info, warn};

use super::mover::{within, Destination, Mover};
use super::wire::{Mode, Phase, Reply, LIVE_PROTOCOL};
use super::Limits;
use crate::deploy::instances::Instance;
use crate::deploy::wire::{CheckpointMode, InstanceSpec, InstanceView};
use brume_engine::docker::DockerRestartPolicy;
use brume_engine::runc_task::RuncTask;
use brume_engine::{
    criu_task, taskroot, AnyEngine, DockerEngine, Engine, LaunchSpec, ProcessEngine, TaskState,
    TaskSummary,
};
use brume_overlay::frames::{read_frame, write_frame};
use brume_tunnel::{Forwarder, Hold, InstanceId, Route};

/// Largest frame of this protocol outside the migration itself.
const MAX_FRAME: usize = 1 << 20;

/// How long the source waits for the task's connections to close once its callers are held.
const QUIET_WAIT: Duration = Duration::from_secs(2);

/// How long the source waits for the target's `Adopted` after `Released` (the target binds the
/// forwarder ports the source is freeing, and takes the task).
const RELEASE_WAIT: Duration = Duration::from_secs(30);

/// How long a move waits for a periodic checkpoint of the task under way to end.
const CLAIM_WAIT: Duration = Duration::from_secs(10);

/// How long the target retries binding a forwarder port the source is releasing.
const BIND_WAIT: Duration = Duration::from_secs(3);

/// The frames around the migration proper.
#[derive(Debug, Serialize, Deserialize)]
enum Frame {
    /// Source: the instance that comes, where it listens, its forwarders' ports (calls then
    /// replicas) and its stdout's CRIU key.
    Hello {
        spec: Box<InstanceSpec>,
        port: u16,
        call_ports: Vec<u16>,
        stdout_key: Option<String>,
        /// A Docker-engine task's OCI config and bind-mounted files: the target lays its
        /// runc bundle out around its own export of the image.
        #[serde(default)]
        bundle: Option<PortableBundle>,
    },
    /// Target: laid out, the migration may start; the target's network namespace says
    /// whether its copy may coexist with the frozen original ([`network`]).
    Ready {
        network: Option<NetworkId>,
    },
    Refused {
        reason: String,
    },
    /// Source: its instance is forgotten; the forwarder ports are free.
    Released,
    /// Target: the restored task is the instance here.
    Adopted {
        instance: InstanceView,
    },
    Failed {
        reason: String,
    },
}

impl Frame {
    /// The target's `Ready`, saying where it is.
    fn ready() -> Frame {
        Frame::Ready {
            network: NetworkId::here(),
        }
    }
}

/// The pipeline's options on either engine's source: a fresh work dir, no network lock (only
/// listeners are dumped; connections are held off), and the move's freeze budget when it gave
/// one.
fn source_options(max_downtime: Option<Duration>) -> SourceOptions {
    let mut opts = SourceOptions::new(scratch_dir("live-out"));
    if let Some(d) = max_downtime {
        opts.planner.max_downtime = d;
    }
    opts.network_lock = NetworkLock::Skip;
    // A missing answer after the final dump is settled by the mover (fence, lease), not by a
    // restore here that could make a second copy.
    opts.in_doubt = InDoubt::Return;
    opts.final_wait = Some(COMMIT_WITHIN);
    opts.commit_within = Some(COMMIT_WITHIN);
    opts
}

/// A pre-copy round as the progress phase the mover prints.
fn round_phase(r: &RoundStats) -> Phase {
    Phase::Round {
        round: r.round,
        last: r.last,
        dumped_bytes: r.dumped_bytes,
        delta_bytes: r.delta_bytes,
        wire_bytes: r.wire_bytes,
        round_ms: ms(r.round_time),
        dump_ms: ms(r.dump),
        rate: r.progress.as_ref().map_or_else(
            || (r.wire_bytes as f64 / r.transfer.as_secs_f64().max(1e-6)) as u64,
            |p| p.rate as u64,
        ),
        predicted_downtime_ms: r.progress.as_ref().map(|p| ms(p.predicted_downtime)),
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

pub(crate) mod book;
pub(crate) mod docker;
pub mod fault;
mod finish;
pub(crate) mod guard;
mod held;
pub(crate) mod network;
mod process;

use crate::migrate::fence::FenceStep;
use crate::migrate::machine::{Finish, FinishAction, FinishEnd, FinishInput};
use brume_migration::checkpointer::Restorer;
use brume_migration::live::{restore_at_source, FrozenTask, InDoubt, Received};
use fault::{Link, Watched};
use finish::{Frozen, LocalCopy};
use guard::{Guarded, COMMIT_WITHIN};
use network::NetworkId;

/// The answer of a move whose task the pipeline restored on the source (`adopted`: whether the
/// engine took it).
fn back_here<E: std::fmt::Display>(
    adopted: Result<(), E>,
    to: &str,
    cause: &str,
    what: &str,
    pid: u32,
) -> Reply {
    Reply::Refused {
        reason: match adopted {
            Ok(()) => format!(
                "the live migration to {to} failed after the final dump ({cause}); {what} was \
                 restored here (pid {pid}) and runs here again"
            ),
            Err(e) => format!(
                "the live migration to {to} failed after the final dump ({cause}); {what} was \
                 restored here as pid {pid}, but the engine cannot watch it: {e}"
            ),
        },
    }
}

impl Mover {
    /// Why a live move of `id` cannot even start here, if it cannot.
    pub(super) fn live_preflight(&self, id: &InstanceId) -> Result<(), String> {
        let name = self
            .deployer
            .instances
            .lock()
            .get(id)
            .map(|i| i.name.clone())
            .ok_or("it does not run here")?;
        match &*self.deployer.engine {
            AnyEngine::Process(_) => {
                let p = self.live_engine()?;
                p.checkpoint_pid(&name).map_err(|e| e.to_string())?;
            }
            AnyEngine::Docker(_) => runc_usable()?,
        }
        preflight::criu_usable()
    }

    /// The live move of `key` (prepared on `dest` already): see the module comment. `moved` is
    /// the spec as the target should run it.
    pub(super) async fn move_live(
        &self,
        id: &InstanceId,
        moved: InstanceSpec,
        dest: &Destination,
        limits: Limits,
        phases: &mpsc::Sender<Phase>,
    ) -> Reply {
        // A periodic checkpoint of it under way ends first (one dump at a time).
        let Some(_claim) = self.deployer.dumps.claim(id, CLAIM_WAIT).await else {
            return Reply::Refused {
                reason: format!(
                    "a periodic checkpoint of {id} did not end within {CLAIM_WAIT:?}; it still \
                     runs here"
                ),
            };
        };
        match &*self.deployer.engine {
            AnyEngine::Docker(d) => {
                self.move_live_docker(id, moved, dest, limits, phases, d.clone())
                    .await
            }
            AnyEngine::Process(_) => {
                self.move_live_process(id, moved, dest, limits, phases)
                    .await
            }
        }
    }

    /// The target side of a live move, on one `/brume/live/3` stream from `peer`.
    pub(crate) async fn receive_live(&self, peer: PeerId, stream: Stream) {
        let mut stream = stream.compat();
        let hello = match read_frame::<_, Frame>(stream.get_mut(), MAX_FRAME).await {
            Ok(h) => h,
            Err(e) => {
                warn!(%peer, error = %e, "unreadable live migration request");
                return;
            }
        };
        let Frame::Hello {
            spec,
            port,
            call_ports,
            stdout_key,
            bundle,
        } = hello
        else {
            let reason = "a live migration starts with Hello".to_string();
            let _ = write_frame(stream.get_mut(), &Frame::Refused { reason }).await;
            return;
        };
        // One deploy or move at a time: the resource check stays honest.
        let _one_at_a_time = self.deployer.deploying.lock().await;
        if let AnyEngine::Docker(d) = &*self.deployer.engine {
            let d = d.clone();
            return self
                .receive_live_docker(peer, stream, d, *spec, port, call_ports, bundle)
                .await;
        }
        self.receive_live_process(peer, stream, *spec, port, call_ports, stdout_key, bundle)
            .await
    }

    /// The engine-independent half of [`Mover::accept_live`].
    pub(super) fn accept_live_spec(&self, spec: &InstanceSpec) -> Result<(), String> {
        spec.check()?;
        self.deployer.check_owner(spec)?;
        if spec.checkpoint != CheckpointMode::Criu {
            return Err("only checkpoint = \"criu\" tasks move live".to_string());
        }
        if self.deployer.instances.contains(&spec.id) {
            return Err(format!("{} already runs here", spec.id));
        }
        self.deployer.instances.room_for(spec)?;
        Ok(())
    }

    /// Gives a moving instance up for lost (its task is gone here and nowhere else took it):
    /// its route goes, the hold ends so held calls fail instead of waiting, and the node's room
    /// is advertised again.
    async fn lost(&self, endpoint: &InstanceId, hold: Hold, reason: String) -> Reply {
        self.deployer.routes.remove(endpoint);
        drop(hold);
        self.deployer.readvertise().await;
        Reply::Refused { reason }
    }

    /// Gives the task to the target, which restored it (the machine's `Commit`): the instance
    /// here goes (the final checkpoint ended its process; its forwarders free their ports),
    /// `Released` lets the target bind them and adopt the task; returns what it answered and,
    /// on `Adopted`, the instance there.
    async fn commit(
        &self,
        id: &InstanceId,
        stream: &mut Compat<Stream>,
        dest: &Destination,
        migrated: &Migrated,
        phases: &mpsc::Sender<Phase>,
    ) -> (FinishInput, Option<InstanceView>) {
        let _ = phases
            .send(Phase::Restored {
                downtime_ms: ms(migrated.downtime),
                restore_ms: ms(migrated.restore),
                rounds: migrated.rounds.len() as u32,
                wire_bytes: migrated.wire_bytes,
            })
            .await;
        self.deployer.stop_instance(id).await;
        let adopted = async {
            write_frame(stream.get_mut(), &Frame::Released).await?;
            read_frame::<_, Frame>(stream.get_mut(), MAX_FRAME).await
        };
        match tokio::time::timeout(RELEASE_WAIT, adopted).await {
            Ok(Ok(Frame::Adopted { instance })) => (FinishInput::Adopted, Some(instance)),
            Ok(Ok(Frame::Failed { reason })) => (FinishInput::NotAdopted(reason), None),
            Ok(Ok(f)) => (FinishInput::NotAdopted(format!("it answered {f:?}")), None),
            Ok(Err(e)) => {
                warn!(instance = %id, to = %dest.name, error = %e, "the target's Adopted was lost");
                (FinishInput::AdoptionUnheard(e.to_string()), None)
            }
            Err(_) => (
                FinishInput::AdoptionUnheard(format!("no answer within {RELEASE_WAIT:?}")),
                None,
            ),
        }
    }

    /// The end of a move to the target (the machine's `Done(Moved)`): calls are routed there,
    /// the hold released and the overlay told. `view` is the target's `Adopted` instance; when
    /// that answer was lost (`confirmed` false) the instance is described from its spec.
    #[allow(clippy::too_many_arguments)]
    async fn switch(
        &self,
        endpoint: InstanceId,
        hold: Hold,
        held: Instant,
        spec: &InstanceSpec,
        dest: &Destination,
        migrated: &Migrated,
        view: Option<InstanceView>,
        confirmed: bool,
        what: &str,
        how: &str,
    ) -> Reply {
        let instance = view.unwrap_or_else(|| {
            self.deployer.view(
                spec,
                "(unconfirmed)",
                0,
                "unconfirmed: its Adopted was lost".into(),
            )
        });
        self.deployer
            .routes
            .set_host_addrs(dest.peer, dest.addrs.clone());
        self.deployer
            .routes
            .set(endpoint, Route::Remote { peer: dest.peer });
        drop(hold);
        let held_ms = held.elapsed().as_millis() as u64;
        let told = self
            .tell_moved(spec, dest.peer, &dest.host, &dest.addrs, None)
            .await;
        self.deployer.readvertise().await;
        info!(%what, to = %dest.name, held_ms, downtime_ms = ms(migrated.downtime),
              rounds = migrated.rounds.len(), wire_bytes = migrated.wire_bytes, told, confirmed,
              "{how}");
        Reply::Migrated {
            to: dest.peer,
            host: dest.host.clone(),
            instance,
            mode: if migrated.post_copy.is_some() {
                Mode::Tracked
            } else {
                Mode::Criu
            },
            state_bytes: migrated.wire_bytes,
            held_ms,
            told,
        }
    }

    /// The restorer of an incoming move of `id` at `g`: `inner`, behind the fence table, the
    /// lease and this node's test fault.
    fn guarded(
        &self,
        inner: Arc<dyn Restorer>,
        id: &InstanceId,
        g: crate::deploy::wire::Generation,
        link: &Arc<Link>,
    ) -> Arc<dyn Restorer> {
        Arc::new(Guarded {
            inner,
            book: self.fences.clone(),
            id: id.clone(),
            generation: g,
            link: link.clone(),
            fault: self.fault,
        })
    }

    /// `migrate_in` on the target's end of `stream`, timed for the lease (and faulted, in tests).
    async fn receive_guarded(
        &self,
        stream: &mut Compat<Stream>,
        opts: TargetOptions,
        link: &Arc<Link>,
        id: &InstanceId,
        g: crate::deploy::wire::Generation,
    ) -> Result<Received, LiveError> {
        let watched = Watched::new(stream, link.clone(), self.fault);
        // A copy restored here lives within its lease even while the move goes on (post-copy
        // restores before the pages come): when it runs out first, the copy is fenced and
        // killed here, as the source, which may thaw its own then, counts on.
        let received = tokio::select! {
            r = migrate_in(watched, opts) => r,
            () = link.lease_out() => {
                warn!(instance = %id, generation = %g,
                      "the lease ran out before the move ended: fencing the copy restored here");
                if let FenceStep::Settled { kill: Some(pid) } = self.fences.with(|f| f.fence(id, g)) {
                    guard::kill_copy(pid).await;
                }
                self.fences.fence_came.notify_waiters();
                Err(LiveError::Link(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("this node's lease ({:?}) ran out before the move ended", guard::LEASE),
                )))
            }
        };
        if let Err(e) = &received {
            debug!(instance = %id, generation = %g, error = %e, "nothing restored");
        }
        received
    }

    /// Waits for the source to release the restored copy of `id` at `g`: `Ok` once it did (the
    /// copy may be adopted), `Err` when the copy must go: the source cannot release it (it never
    /// heard of the restore, or the link broke), fenced it, or the lease ran out.
    async fn await_release(
        &self,
        stream: &mut Compat<Stream>,
        link: &Link,
        id: &InstanceId,
        g: crate::deploy::wire::Generation,
        told: bool,
    ) -> Result<(), String> {
        if !told {
            return Err("the source never heard of the restore".to_string());
        }
        let lease_end = link.lease_end().unwrap_or_else(Instant::now);
        let cut = link.is_cut();
        let released = async {
            if cut {
                // Behind a cut link (a test fault) nothing comes.
                std::future::pending::<()>().await;
            }
            read_frame::<_, Frame>(stream.get_mut(), MAX_FRAME).await
        };
        tokio::select! {
            r = released => match r {
                Ok(Frame::Released) if self.fences.with(|f| f.adopt(id, g)) => Ok(()),
                Ok(Frame::Released) => Err(format!("generation {g} of {id} was fenced")),
                Ok(f) => Err(format!("the source answered {f:?} instead of Released")),
                Err(e) => Err(format!("the source did not release the instance: {e}")),
            },
            () = self.fences.fenced(id, g) => Err(format!("the source fenced generation {g}")),
            () = tokio::time::sleep_until(lease_end.into()) => Err(format!(
                "the source did not release it within this node's lease ({:?})", guard::LEASE
            )),
        }
    }

    /// How the incoming instance will run here: its image fetched from `peer` (or already
    /// here), on the port the restored task listens on.
    async fn incoming_launch(
        &self,
        peer: PeerId,
        spec: &InstanceSpec,
        port: u16,
    ) -> Result<LaunchSpec, String> {
        let (tx, _rx) = mpsc::channel(64);
        let image = self.deployer.image(peer, spec, &tx).await?;
        Ok(self
            .deployer
            .launch_spec(spec, image, spec.env.clone(), port))
    }

    /// The restored task's call forwarders, on the ports its environment names (the source
    /// is freeing them: retried for a short while).
    async fn bind_forwarders(
        &self,
        spec: &InstanceSpec,
        call_ports: &[u16],
    ) -> Result<Vec<Forwarder>, String> {
        let until = Instant::now() + BIND_WAIT;
        loop {
            match self.deployer.forwarders_at(spec, call_ports).await {
                Ok((f, _)) => return Ok(f),
                Err(e) if Instant::now() >= until => {
                    return Err(format!(
                        "its call forwarders cannot listen where it calls: {e}"
                    ))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Makes a task the engine took the instance here: its route, its ledger entry.
    async fn install_restored(
        &self,
        from: PeerId,
        spec: InstanceSpec,
        launch: &LaunchSpec,
        forwarders: Vec<Forwarder>,
        pid: u32,
        how: &str,
    ) -> InstanceView {
        let port = launch.port;
        self.deployer
            .routes
            .set(spec.id.clone(), Route::Local { port });
        let view = self
            .deployer
            .view(&spec, &launch.name, port, "running".into());
        info!(instance = %spec.id, port, pid, "{how}");
        self.deployer.instances.insert(Instance {
            spec,
            name: launch.name.clone(),
            port,
            forwarders,
            sent_by: from,
        });
        self.deployer.save_hosted().await;
        self.deployer.readvertise().await;
        view
    }
}
