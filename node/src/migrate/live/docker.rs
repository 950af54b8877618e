//! The Docker engine's side of a live move: `runc checkpoint` on Docker's runc state dumps the
//! task's host-network container, and the target restores it as a runc container Docker does
//! not know, which its engine adopts ([`brume_engine::runc_task`], docs/criu.md). Between
//! network namespaces (separate devices) the move is post-copy: a lazy `runc checkpoint`, the
//! target's lazy `runc restore`, the pages after it; elsewhere full-dump pre-copy, since the
//! copy could not listen beside its frozen original ([`network::may_coexist`]).

use super::held::HeldCallers;
use super::*;
use brume_migration::checkpointer::Checkpointer;

/// What the source checkpoints: Docker's own container, or a runc container that an earlier
/// move restored on this node (so a task moves on as often as it is asked).
enum Checkpointed {
    Docker { id: String, summary: TaskSummary },
    Adopted(RuncTask),
}

impl Checkpointed {
    /// The runc root and container id `runc checkpoint` works on.
    fn runc_state(&self) -> (PathBuf, String) {
        match self {
            Checkpointed::Docker { id, .. } => (PathBuf::from(DOCKER_RUNC_ROOT), id.clone()),
            Checkpointed::Adopted(t) => (t.restore.root.clone(), t.restore.id.clone()),
        }
    }

    /// The container's OCI config, as its runtime holds it.
    fn config(&self) -> PathBuf {
        match self {
            Checkpointed::Docker { id, .. } => {
                Path::new(DOCKER_BUNDLES).join(id).join("config.json")
            }
            Checkpointed::Adopted(t) => t.bundle().join("config.json"),
        }
    }

    /// Makes the container checkpointable: an adopted one's bundle names a CRIU config with
    /// `mntns-compat-mode` (its restore needed it), which runc passes to the dump too and CRIU
    /// refuses there ("only valid on restore"). The config is read only by runc's checkpoint
    /// and restore, so emptying it changes nothing else.
    fn ready_for_dump(&self) -> std::io::Result<()> {
        match self {
            Checkpointed::Docker { .. } => Ok(()),
            Checkpointed::Adopted(t) => std::fs::write(t.bundle().join("criu.conf"), ""),
        }
    }

    fn summary(&self) -> TaskSummary {
        match self {
            Checkpointed::Docker { summary, .. } => summary.clone(),
            Checkpointed::Adopted(t) => t.summary.clone(),
        }
    }
}

/// What `runc checkpoint` works on for the task `name` (a Docker container, or a runc
/// container an earlier move restored here), ready for a dump, and its PID.
async fn checkpoint_source(d: &DockerEngine, name: &str) -> Result<(Checkpointed, u32), String> {
    let source = match d.adopted(name) {
        Some(t) => Checkpointed::Adopted(t),
        None => {
            let summary = match d.summary_of(name).await {
                Ok(Some(s)) => s,
                Ok(None) => return Err(format!("Docker does not know {name}")),
                Err(e) => return Err(e.to_string()),
            };
            let id = d.container_id(name).await.map_err(|e| e.to_string())?;
            Checkpointed::Docker { id, summary }
        }
    };
    let pid = match d.state(name).await {
        Ok(s) if s.state == TaskState::Running => {
            s.pid.ok_or_else(|| format!("{name} runs without a pid"))?
        }
        Ok(s) => return Err(format!("{name} is not running ({:?})", s.state)),
        Err(e) => return Err(e.to_string()),
    };
    source
        .ready_for_dump()
        .map_err(|e| format!("cannot ready its runc bundle for a checkpoint: {e}"))?;
    let (root, id) = source.runc_state();
    if !root.join(&id).is_dir() {
        return Err(format!(
            "runc has no state for its container in {}",
            root.display()
        ));
    }
    Ok((source, pid))
}

/// A periodic checkpoint of the running Docker task `name` (`crate::heal::checkpointer`):
/// `runc checkpoint --leave-running` into `images` (created), the container runs on. Its PID
/// and what another host needs to restore it, or why not and whether only a connection the
/// dump caught was in the way.
pub(crate) async fn checkpoint_running(
    d: &DockerEngine,
    name: &str,
    images: &Path,
) -> Result<(u32, PortableBundle), (String, bool)> {
    runc_usable().map_err(|e| (e, false))?;
    let (source, pid) = checkpoint_source(d, name).await.map_err(|e| (e, false))?;
    let (root, id) = source.runc_state();
    let config = source.config();
    let images = images.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let portable = PortableBundle::read(&config).map_err(|e| (e.to_string(), false))?;
        let mut runc = RuncContainer::docker(id);
        runc.root = root;
        let log = images.with_extension("log");
        let dumped = runc.dump(&images, true, &log);
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_dir_all(log.with_extension("work"));
        dumped.map_err(|e| (e.to_string(), e.transient()))?;
        Ok((pid, portable))
    })
    .await
    .map_err(|e| (format!("the dump's thread failed: {e}"), false))?
}

/// A runc container to restore the instance `spec` in, as `launch` (its name and port) says:
/// its bundle laid out around an export of the image with the dumped container's `portable`
/// config and files. Nothing of it is left on failure.
pub(crate) async fn restore_bundle(
    d: &DockerEngine,
    spec: &InstanceSpec,
    launch: &LaunchSpec,
    portable: PortableBundle,
) -> Result<RuncTask, String> {
    let summary = TaskSummary {
        name: launch.name.clone(),
        service: spec.id.service.clone(),
        task: spec.id.task.clone(),
        replica: spec.id.replica,
        epoch: spec.epoch,
        port: launch.port,
        state: TaskState::Running,
    };
    let runc = RuncTask::new(summary, "in");
    let laid_out = async {
        d.export_rootfs(&launch.image, &runc.bundle().join("rootfs"))
            .await
            .map_err(|e| format!("cannot export the image's rootfs: {e}"))?;
        let (bundle, cgroup) = (runc.bundle().to_path_buf(), runc.cgroup.clone());
        tokio::task::spawn_blocking(move || portable.lay_out(&bundle, &cgroup))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot lay the runc bundle out: {e}"))
    }
    .await;
    match laid_out {
        Ok(()) => Ok(runc),
        Err(why) => {
            let t = runc.clone();
            let _ = tokio::task::spawn_blocking(move || t.remove()).await;
            Err(why)
        }
    }
}

/// A Docker task frozen by a move: a copy restored here is a runc container (from the fallback
/// bundle) the engine adopts, in place of the checkpointed one.
struct DockerCopy {
    engine: DockerEngine,
    name: String,
    source: Checkpointed,
    fallback: RuncTask,
    /// The Docker container's restart policy, lifted for the move.
    restart: Option<DockerRestartPolicy>,
}

impl DockerCopy {
    /// Deletes the fallback's bundle (off the async threads: it removes a file tree).
    async fn discard_fallback(&self) {
        let t = self.fallback.clone();
        let _ = tokio::task::spawn_blocking(move || t.remove()).await;
    }
}

impl LocalCopy for DockerCopy {
    const FINAL: &'static str = "final checkpoint";
    const RESTORED: &'static str = "restored here as a runc container";
    const MOVED: &'static str = "Docker instance moved live with runc checkpoints";

    async fn committing(&mut self) {
        self.discard_fallback().await;
    }

    async fn take_back(&mut self, _pid: u32) -> Result<(), String> {
        // The exited container gives way to the one restored here.
        match &self.source {
            Checkpointed::Docker { .. } => {
                if let Err(e) = self.engine.remove_docker_container(&self.name).await {
                    warn!(name = %self.name, error = %e, "cannot remove the checkpointed Docker container");
                }
            }
            Checkpointed::Adopted(old) => {
                let old = old.clone();
                let _ = tokio::task::spawn_blocking(move || old.remove()).await;
            }
        }
        self.engine
            .adopt(self.fallback.clone())
            .map(|_| ())
            .map_err(|e| format!("the engine cannot take it: {e}"))
    }

    async fn losing(&mut self) {
        self.discard_fallback().await;
    }

    async fn thawed(&mut self) {
        // Post-copy's frozen container runs on as it was: the fallback is not needed, and a
        // Docker container gets its restart policy back.
        self.discard_fallback().await;
        if let Some(policy) = self.restart.take() {
            if let Err(e) = self.engine.set_restart(&self.name, policy).await {
                warn!(name = %self.name, error = %e, "cannot give its restart policy back");
            }
        }
    }
}

impl Mover {
    /// The source side of a live move of a Docker-engine instance: post-copy (a lazy `runc
    /// checkpoint` that keeps the container frozen until the target holds its pages) where the
    /// network namespaces allow it, else pre-copy rounds of `runc checkpoint --leave-running`
    /// of its container and a final checkpoint that stops it; the target restores a runc
    /// container (docs/criu.md). The stopped Docker container is removed
    /// only once the target took the task; if the target cannot restore it, it comes back here
    /// as a runc container from a bundle copied while it ran, which the engine adopts.
    pub(super) async fn move_live_docker(
        &self,
        instance: &InstanceId,
        moved: InstanceSpec,
        dest: &Destination,
        limits: Limits,
        phases: &mpsc::Sender<Phase>,
        d: DockerEngine,
    ) -> Reply {
        let Limits {
            deadline,
            max_downtime,
        } = limits;
        let what = instance.to_string();
        let untouched = |why: String| Reply::Refused {
            reason: format!("{why}; {what} still runs here"),
        };
        if let Err(why) = runc_usable() {
            return untouched(format!("this node cannot move it live: {why}"));
        }
        let Some((name, port, call_ports, spec)) =
            self.deployer.instances.lock().get(instance).map(|i| {
                let ports = i.forwarders.iter().map(|f| f.local_addr().port()).collect();
                (i.name.clone(), i.port, ports, i.spec.clone())
            })
        else {
            return Reply::Refused {
                reason: format!("{what} does not run on this node"),
            };
        };
        let (source, pid) = match checkpoint_source(&d, &name).await {
            Ok(s) => s,
            Err(why) => return untouched(why),
        };
        let (root, id) = source.runc_state();
        // The fallback's bundle, copied while the container runs (Docker unmounts its rootfs
        // once it stops), and what the target needs to make its own.
        let fallback = RuncTask::new(source.summary(), "back");
        let config = source.config();
        let (bundle_dir, cgroup) = (fallback.bundle().to_path_buf(), fallback.cgroup.clone());
        let prepared = tokio::task::spawn_blocking(move || {
            prepare_bundle(&config, &bundle_dir, &cgroup)?;
            PortableBundle::read(&config)
        })
        .await;
        let discard = |t: RuncTask| tokio::task::spawn_blocking(move || t.remove());
        let portable = match prepared {
            Ok(Ok(p)) => p,
            other => {
                let _ = discard(fallback.clone()).await;
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                    Ok(Ok(_)) => String::new(),
                };
                return untouched(format!("cannot prepare its runc bundle: {why}"));
            }
        };

        // Docker must not start the container again when the final checkpoint stops it.
        let no = DockerRestartPolicy {
            name: Some(bollard::models::RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        };
        let restart = match &source {
            Checkpointed::Adopted(_) => None,
            Checkpointed::Docker { .. } => match d.set_restart(&name, no).await {
                Ok(old) => old,
                Err(e) => {
                    let _ = discard(fallback.clone()).await;
                    return untouched(format!("cannot lift its restart policy: {e}"));
                }
            },
        };
        let endpoint = instance.clone();
        // Callers are held from the first checkpoint (see `held`).
        let callers = HeldCallers::new(self.deployer.routes.clone(), endpoint.clone(), pid);
        let fail = |why: String| {
            let t = fallback.clone();
            let (d, name, restart) = (d.clone(), name.clone(), restart.clone());
            async move {
                let _ = tokio::task::spawn_blocking(move || t.remove()).await;
                if let Some(policy) = restart {
                    if let Err(e) = d.set_restart(&name, policy).await {
                        warn!(%name, error = %e, "cannot give its restart policy back");
                    }
                }
                untouched(why)
            }
        };
        let Some(stream) = within(
            deadline,
            self.deployer.overlay.open_stream(dest.peer, LIVE_PROTOCOL),
        )
        .await
        else {
            return fail("the move did not finish within the deadline".to_string()).await;
        };
        let mut stream = match stream {
            Ok(s) => s.compat(),
            Err(e) => {
                return fail(format!(
                    "cannot open a migration stream to {}: {e}",
                    dest.name
                ))
                .await
            }
        };
        let generation = moved.generation;
        let hello = Frame::Hello {
            spec: Box::new(moved),
            port,
            call_ports,
            stdout_key: None,
            bundle: Some(portable),
        };
        let answer = within(deadline, async {
            write_frame(stream.get_mut(), &hello).await?;
            read_frame::<_, Frame>(stream.get_mut(), MAX_FRAME).await
        })
        .await;
        let there = match answer {
            None => return fail("the move did not finish within the deadline".to_string()).await,
            Some(Ok(Frame::Ready { network })) => network,
            Some(Ok(Frame::Refused { reason })) => {
                return fail(format!("{} refused {what}: {reason}", dest.name)).await
            }
            Some(Ok(other)) => return fail(format!("{} answered {other:?}", dest.name)).await,
            Some(Err(e)) => return fail(format!("talking to {} failed: {e}", dest.name)).await,
        };

        let mut opts = source_options(max_downtime);
        // Post-copy (a lazy `runc checkpoint`, the target's lazy `runc restore`) restores the
        // copy beside the frozen original: only where the setting and the network namespaces
        // allow it. The container's namespace is Docker's (host network) or, for a container
        // an earlier move restored, the namespace of the node that restored it; the target
        // restores into its own. Elsewhere, full-dump pre-copy.
        let lazy = brume_migration::lazy::check_pipe_max_size();
        match network::may_coexist(self.live, NetworkId::of(pid).as_ref(), there.as_ref()) {
            Err(why) => {
                info!(instance = %instance, to = %dest.name, "moving with full-dump pre-copy: {why}")
            }
            Ok(()) => match lazy {
                Ok(()) => {
                    // The container's memory crosses in the dirty-page tracker's rounds while
                    // it runs where the kernel tracks written pages; the rest after the restore.
                    let tracking = brume_migration::track::probe();
                    opts.mode = brume_migration::live::Mode::PostCopy;
                    opts.track = tracking.method == brume_migration::track::Method::Tracked;
                    if opts.track {
                        info!(instance = %instance, to = %dest.name, "moving with tracked pre-copy and post-copy of the last pages (a lazy runc checkpoint)");
                    } else {
                        info!(instance = %instance, to = %dest.name, why = %tracking.why,
                              "moving with post-copy: a lazy runc checkpoint, the pages after the restore");
                    }
                }
                Err(e) => {
                    info!(instance = %instance, to = %dest.name, "moving with full-dump pre-copy: {e}")
                }
            },
        }
        let mut checkpointer = RuncContainer::docker(id.clone());
        checkpointer.root = root;
        checkpointer.fallback = Some(fallback.restore.clone());
        opts.checkpointer = Some(Arc::new(checkpointer));
        opts.gate = Some(Arc::new(callers.clone()));
        let work_dir = opts.work_dir.clone();
        let kept = opts.clone();
        let rounds = phases.clone();
        let out = migrate_out(&mut stream, pid, opts, |r| {
            let _ = rounds.try_send(round_phase(r));
        })
        .await;
        let mut local = DockerCopy {
            engine: d.clone(),
            name: name.clone(),
            source,
            fallback: fallback.clone(),
            restart: restart.clone(),
        };
        let (first, doubt, migrated) = match out {
            Ok(m) => (FinishInput::RestoredThere { in_time: true }, None, Some(m)),
            Err(e) if e.task_untouched() => {
                let _ = std::fs::remove_dir_all(&work_dir);
                return fail(format!("the live migration to {} failed: {e}", dest.name)).await;
            }
            // The target said it failed, and the pipeline restored the task here already.
            Err(LiveError::RestoredAtSource { cause, pid, .. }) => {
                let _ = std::fs::remove_dir_all(&work_dir);
                let adopted = local.take_back(pid).await;
                callers.release();
                return Reply::Refused {
                    reason: match adopted {
                        Ok(()) => format!(
                            "the live migration to {} failed after the final checkpoint \
                             ({cause}); {what} was restored here as a runc container (pid {pid}) \
                             and runs here again",
                            dest.name
                        ),
                        Err(e) => format!(
                            "the live migration to {} failed after the final checkpoint \
                             ({cause}); {what} was restored here as pid {pid}, but {e}",
                            dest.name
                        ),
                    },
                };
            }
            Err(e) => match finish::in_doubt(e) {
                Ok((input, doubt)) => (input, Some(doubt), None),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&work_dir);
                    local.losing().await;
                    self.deployer.stop_instance(instance).await;
                    return self
                        .lost(&endpoint, callers.take().0, format!("{what} is lost: {e}"))
                        .await;
                }
            },
        };
        // The task is frozen for good here: the finish machine says who runs it.
        let (hold, held) = callers.take();
        let frozen = Frozen {
            id: instance,
            hold,
            held,
            spec: &spec,
            dest,
            stream: &mut stream,
            phases,
            generation,
            kept: &kept,
            pid,
            first,
            doubt,
            migrated,
        };
        let reply = self.finish_frozen(frozen, &mut local).await;
        let _ = std::fs::remove_dir_all(&work_dir);
        reply
    }

    /// The target side of a live move of a Docker-engine task: its rootfs exported from the
    /// image here, the bundle laid out around it, the checkpoint restored as a runc container
    /// the engine adopts.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn receive_live_docker(
        &self,
        peer: PeerId,
        mut stream: tokio_util::compat::Compat<Stream>,
        d: DockerEngine,
        spec: InstanceSpec,
        port: u16,
        call_ports: Vec<u16>,
        bundle: Option<PortableBundle>,
    ) {
        let checked = self
            .accept_live_spec(&spec)
            .and_then(|()| runc_usable())
            .and_then(|()| bundle.ok_or_else(|| "a Docker task comes with its bundle".to_string()));
        let portable = match checked {
            Ok(p) => p,
            Err(reason) => {
                let _ = write_frame(stream.get_mut(), &Frame::Refused { reason }).await;
                return;
            }
        };
        // The artifact stays until the arrival ends (adopted or given up).
        let _pin = self.deployer.pin(&spec);
        let launch = match self.incoming_launch(peer, &spec, port).await {
            Ok(l) => l,
            Err(reason) => {
                let _ = write_frame(stream.get_mut(), &Frame::Refused { reason }).await;
                return;
            }
        };
        let discard = |t: RuncTask| tokio::task::spawn_blocking(move || t.remove());
        let runc = match restore_bundle(&d, &spec, &launch, portable).await {
            Ok(runc) => runc,
            Err(reason) => {
                let _ = write_frame(stream.get_mut(), &Frame::Refused { reason }).await;
                return;
            }
        };
        let (id, g) = (spec.id.clone(), spec.generation);
        if let Err(reason) = self.fences.with(|f| f.arrive(&id, g)) {
            let _ = discard(runc.clone()).await;
            let _ = write_frame(stream.get_mut(), &Frame::Refused { reason }).await;
            return;
        }
        // The lease counts from the target's last message: this one is the first.
        let link = Link::new();
        if write_frame(stream.get_mut(), &Frame::ready())
            .await
            .is_err()
        {
            let _ = discard(runc.clone()).await;
            self.fences.with(|f| f.gone(&id, g));
            return;
        }
        // runc's work directory of the restore goes beside the staging directory, removed
        // with it once the move succeeded (kept when the restore fails: the error names the
        // CRIU log in it).
        let staging = scratch_dir("live-in");
        let mut opts = TargetOptions::new(staging);
        opts.network_lock = NetworkLock::Skip;
        opts.restorer = Some(self.guarded(Arc::new(runc.restore.clone()), &id, g, &link));
        opts.store = self.migration_store.get().await;
        let received = self.receive_guarded(&mut stream, opts, &link, &id, g).await;
        let received = match received {
            Ok(r) => r,
            Err(e) => {
                info!(%peer, task = %launch.name, error = %e, "live migration in failed");
                let _ = discard(runc.clone()).await;
                self.fences.with(|f| f.gone(&id, g));
                return;
            }
        };
        let outcome = match self
            .await_release(&mut stream, &link, &id, g, received.told)
            .await
        {
            Ok(()) => {
                self.take_restored_docker(&d, peer, spec, &launch, &call_ports, runc.clone())
                    .await
            }
            Err(why) => Err(why),
        };
        let reply = match outcome {
            Ok(instance) => Frame::Adopted { instance },
            Err(reason) => {
                warn!(task = %launch.name, pid = received.pid, %reason, "removing a restored container this node cannot take");
                guard::kill_copy(received.pid).await;
                let _ = d.remove(&launch.name).await;
                let _ = discard(runc.clone()).await;
                self.fences.with(|f| f.gone(&id, g));
                Frame::Failed { reason }
            }
        };
        if !link.is_cut() {
            let _ = write_frame(stream.get_mut(), &reply).await;
        }
    }

    /// Makes the restored runc container the instance here (see [`Mover::take_restored`]).
    async fn take_restored_docker(
        &self,
        d: &DockerEngine,
        from: PeerId,
        spec: InstanceSpec,
        launch: &brume_engine::LaunchSpec,
        call_ports: &[u16],
        runc: RuncTask,
    ) -> Result<InstanceView, String> {
        let forwarders = self.bind_forwarders(&spec, call_ports).await?;
        let pid = d
            .adopt(runc)
            .map_err(|e| format!("the engine cannot take it: {e}"))?;
        Ok(self
            .install_restored(
                from,
                spec,
                launch,
                forwarders,
                pid,
                "Docker task restored here as a runc container by a live migration",
            )
            .await)
    }
}
