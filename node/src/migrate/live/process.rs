//! The process engine's side of a live move: CRIU dumps the task's process tree (started
//! checkpointable: [`brume_engine::criu_task`]) and restores it on the target, whose engine
//! adopts the restored pid.

use super::held::HeldCallers;
use super::*;
use crate::migrate::predictor::probe;
use brume_migration::predictor::{procfs, Features};

/// A task of the process engine frozen by a move: a copy restored here is adopted by the engine
/// with the output pipe kept for it.
struct ProcessCopy {
    engine: ProcessEngine,
    launch: LaunchSpec,
    output: Option<std::io::PipeReader>,
}

impl LocalCopy for ProcessCopy {
    const FINAL: &'static str = "final dump";
    const RESTORED: &'static str = "restored here";
    const MOVED: &'static str = "instance moved live with CRIU";

    async fn thawed(&mut self) {
        self.engine.set_migrating(&self.launch.name, false);
    }

    async fn take_back(&mut self, pid: u32) -> Result<(), String> {
        let output = self.output.take().ok_or("internal: no pipe")?;
        self.engine
            .adopt(&self.launch, pid, Some(output))
            .await
            .map_err(|e| format!("the engine cannot watch it: {e}"))
    }
}

impl Mover {
    /// The process engine, when this node moves tasks with CRIU; why not otherwise.
    pub(super) fn live_engine(&self) -> Result<&ProcessEngine, String> {
        match &*self.deployer.engine {
            AnyEngine::Process(p) => {
                taskroot::available()
                    .map_err(|why| format!("this node cannot move it live: {why}"))?;
                Ok(p)
            }
            AnyEngine::Docker(_) => Err("this node runs its tasks on Docker".to_string()),
        }
    }

    /// The predicted duration of a move of `id` (a drain's schedule): a `checkpoint = "criu"`
    /// task this engine moves live (not `cold`) is probed for its dumps, any other counts the
    /// move's fixed cost only ([`crate::migrate::predictor::DumpModels::move_estimate`]).
    pub(crate) fn move_estimate(&self, id: &InstanceId, cold: bool) -> Duration {
        let live = self
            .deployer
            .instances
            .lock()
            .get(id)
            .filter(|i| i.spec.checkpoint == CheckpointMode::Criu && !cold)
            .map(|i| i.name.clone());
        let pid = live.and_then(|name| self.live_engine().ok()?.checkpoint_pid(&name).ok());
        self.dump_models.move_estimate(pid)
    }

    /// The source side on the process engine: CRIU dumps the task's process tree.
    pub(super) async fn move_live_process(
        &self,
        id: &InstanceId,
        moved: InstanceSpec,
        dest: &Destination,
        limits: Limits,
        phases: &mpsc::Sender<Phase>,
    ) -> Reply {
        let Limits {
            deadline,
            max_downtime,
        } = limits;
        let what = id.to_string();
        let untouched = |why: String| Reply::Refused {
            reason: format!("{why}; {what} still runs here"),
        };
        let p = match self.live_engine() {
            Ok(p) => p.clone(),
            Err(why) => return untouched(why),
        };
        let Some((name, port, call_ports, spec)) =
            self.deployer.instances.lock().get(id).map(|i| {
                let ports = i.forwarders.iter().map(|f| f.local_addr().port()).collect();
                (i.name.clone(), i.port, ports, i.spec.clone())
            })
        else {
            return Reply::Refused {
                reason: format!("{what} does not run on this node"),
            };
        };
        let Some(launch) = p.spec_of(&name) else {
            return untouched(format!("the engine does not know {name}"));
        };

        let endpoint = id.clone();
        let pid = match p.checkpoint_pid(&name) {
            Ok(pid) => pid,
            Err(e) => return untouched(e.to_string()),
        };
        let callers = HeldCallers::new(self.deployer.routes.clone(), endpoint.clone(), pid);
        let stdout_key = criu_task::stdout_key(pid);
        let Some(stream) = within(
            deadline,
            self.deployer.overlay.open_stream(dest.peer, LIVE_PROTOCOL),
        )
        .await
        else {
            return untouched("the move did not finish within the deadline".to_string());
        };
        let mut stream = match stream {
            Ok(s) => s.compat(),
            Err(e) => {
                return untouched(format!(
                    "cannot open a migration stream to {}: {e}",
                    dest.name
                ))
            }
        };
        let generation = moved.generation;
        let hello = Frame::Hello {
            spec: Box::new(moved),
            port,
            call_ports,
            stdout_key: stdout_key.clone(),
            bundle: None,
        };
        let answer = within(deadline, async {
            write_frame(stream.get_mut(), &hello).await?;
            read_frame::<_, Frame>(stream.get_mut(), MAX_FRAME).await
        })
        .await;
        let there = match answer {
            None => return untouched("the move did not finish within the deadline".to_string()),
            Some(Ok(Frame::Ready { network })) => network,
            Some(Ok(Frame::Refused { reason })) => {
                return untouched(format!("{} refused {what}: {reason}", dest.name))
            }
            Some(Ok(other)) => return untouched(format!("{} answered {other:?}", dest.name)),
            Some(Err(e)) => return untouched(format!("talking to {} failed: {e}", dest.name)),
        };

        // A pipe for the task's output should it be restored here after all.
        let (local_out, local_in) = match std::io::pipe() {
            Ok(p) => p,
            Err(e) => return untouched(format!("cannot make a pipe: {e}")),
        };
        let mut opts = source_options(max_downtime);
        // Where the kernel tracks written pages, the task's memory crosses before the freeze
        // and the final step carries only what it wrote since (brume_migration::live::tracked),
        // restoring the copy beside the frozen original: only where the setting and the
        // target's network namespace allow it (`network`). Elsewhere, full-dump pre-copy.
        let tracking = brume_migration::track::probe();
        let lazy = brume_migration::lazy::check_pipe_max_size();
        if let Err(why) =
            network::may_coexist(self.live, NetworkId::here().as_ref(), there.as_ref())
        {
            info!(instance = %id, to = %dest.name, "moving with full-dump pre-copy: {why}");
        } else if tracking.method == brume_migration::track::Method::Tracked && lazy.is_ok() {
            info!(instance = %id, to = %dest.name, "moving with tracked pre-copy and post-copy of the last pages");
            opts.mode = brume_migration::live::Mode::PostCopy;
            opts.track = true;
        } else {
            let why = lazy.err().map_or(tracking.why, |e| e.to_string());
            info!(instance = %id, to = %dest.name, "moving with full-dump pre-copy: {why}");
        }
        opts.restore_root = Some(ProcessEngine::rootfs_of(&launch));
        if let Some(key) = &stdout_key {
            opts.restore_inherit_fds = vec![InheritFd {
                key: key.clone(),
                fd: local_in.as_raw_fd(),
            }];
        }
        // Callers are held from the first checkpoint (see `held`).
        opts.gate = Some(Arc::new(callers.clone()));
        // The planner starts from what the last move taught it; every full dump of this move is
        // a sample for the node's dump models (post-copy's tracked rounds are not full dumps).
        opts.predictor = self.dump_models.planner();
        let budget_ms = ms(opts.planner.max_downtime);
        let learning = opts.mode == brume_migration::live::Mode::PreCopy;
        let mut samples: Vec<(Features, Duration)> = Vec::new();
        let mut busy = procfs::cpu_jiffies();
        let mut begun = Instant::now();
        let mut next = learning.then(|| probe(pid, None, busy));
        if let Some(f) = &next {
            let g = self.dump_models.predict(f);
            info!(instance = %what, model = g.model, predicted_ms = (g.seconds * 1e3) as u64,
                  "dump duration predicted before round 1");
        }
        p.set_migrating(&name, true);
        let work_dir = opts.work_dir.clone();
        let kept = opts.clone();
        let rounds = phases.clone();
        let out = migrate_out(&mut stream, pid, opts, |r| {
            let _ = rounds.try_send(round_phase(r));
            if let Some(pr) = &r.progress {
                info!(instance = %what, round = pr.round,
                      predicted_downtime_ms = ms(pr.predicted_downtime),
                      predicted_upper_ms = ms(pr.predicted_downtime_upper), budget_ms,
                      decision = %pr.decision, "freeze gate");
            }
            if let Some(f) = next.take() {
                samples.push((f, r.dump));
            }
            if learning && !r.last {
                let since = begun;
                (busy, begun) = (procfs::cpu_jiffies(), Instant::now());
                next = Some(probe(pid, Some(since), busy));
            }
        })
        .await;
        self.dump_models.learn(
            &what,
            &samples,
            out.as_ref().ok().map(|m| m.predictor.clone()),
        );
        match &out {
            Ok(m) => {
                if let Some(f) = m.forecast {
                    info!(instance = %what, predicted_downtime_ms = ms(f.predicted_downtime),
                          predicted_upper_ms = ms(f.predicted_downtime_upper),
                          measured_downtime_ms = ms(f.downtime), budget_ms,
                          "freeze gate: measured downtime beside the prediction");
                }
            }
            Err(LiveError::Aborted(stopped)) => {
                info!(instance = %what, %stopped, "freeze gate: move deferred");
            }
            Err(_) => {}
        }
        let (first, doubt, migrated) = match out {
            Ok(m) => (FinishInput::RestoredThere { in_time: true }, None, Some(m)),
            Err(LiveError::Aborted(stopped)) => {
                let _ = std::fs::remove_dir_all(&work_dir);
                p.set_migrating(&name, false);
                return untouched(format!(
                    "the live move to {} was deferred: {stopped}",
                    dest.name
                ));
            }
            Err(e) if e.task_untouched() => {
                let _ = std::fs::remove_dir_all(&work_dir);
                p.set_migrating(&name, false);
                return untouched(format!("the live migration to {} failed: {e}", dest.name));
            }
            // The target said it failed, and the pipeline restored the task here already.
            Err(LiveError::RestoredAtSource { cause, pid, .. }) => {
                let _ = std::fs::remove_dir_all(&work_dir);
                let adopted = p.adopt(&launch, pid, Some(local_out)).await;
                drop(local_in);
                callers.release();
                return back_here(adopted, &dest.name, &cause.to_string(), &what, pid);
            }
            Err(e) => match finish::in_doubt(e) {
                Ok((input, doubt)) => (input, Some(doubt), None),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&work_dir);
                    self.deployer.stop_instance(id).await;
                    return self
                        .lost(&endpoint, callers.take().0, format!("{what} is lost: {e}"))
                        .await;
                }
            },
        };
        // The task is frozen for good here: the finish machine says who runs it.
        let mut local = ProcessCopy {
            engine: p,
            launch,
            output: Some(local_out),
        };
        let (hold, held) = callers.take();
        let frozen = Frozen {
            id,
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
        drop(local_in);
        let _ = std::fs::remove_dir_all(&work_dir);
        reply
    }

    /// The target side on the process engine: CRIU restores the process tree.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn receive_live_process(
        &self,
        peer: PeerId,
        mut stream: Compat<Stream>,
        spec: InstanceSpec,
        port: u16,
        call_ports: Vec<u16>,
        stdout_key: Option<String>,
        bundle: Option<PortableBundle>,
    ) {
        if bundle.is_some() {
            // A runc checkpoint of a container needs runc and the image's rootfs here.
            let reason = "this node runs its tasks as processes and cannot restore a Docker \
                          container's checkpoint"
                .to_string();
            let _ = write_frame(stream.get_mut(), &Frame::Refused { reason }).await;
            return;
        }
        let p = match self.accept_live(&spec) {
            Ok(p) => p.clone(),
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
        let (out, into_task) = match std::io::pipe() {
            Ok(pair) => pair,
            Err(e) => {
                let reason = format!("cannot make a pipe: {e}");
                let _ = write_frame(stream.get_mut(), &Frame::Refused { reason }).await;
                return;
            }
        };
        let (id, g) = (spec.id.clone(), spec.generation);
        if let Err(reason) = self.fences.with(|f| f.arrive(&id, g)) {
            let _ = write_frame(stream.get_mut(), &Frame::Refused { reason }).await;
            return;
        }
        if let Err(e) = p.lay_out(&launch).await {
            p.drop_layout(&launch).await;
            self.fences.with(|f| f.gone(&id, g));
            let reason = format!("cannot lay the task's files out: {e}");
            let _ = write_frame(stream.get_mut(), &Frame::Refused { reason }).await;
            return;
        }
        // The lease counts from the target's last message: this one is the first.
        let link = Link::new();
        if write_frame(stream.get_mut(), &Frame::ready())
            .await
            .is_err()
        {
            p.drop_layout(&launch).await;
            self.fences.with(|f| f.gone(&id, g));
            return;
        }
        let mut opts = TargetOptions::new(scratch_dir("live-in"));
        opts.network_lock = NetworkLock::Skip;
        opts.pid_namespace = true;
        opts.root = Some(ProcessEngine::rootfs_of(&launch));
        opts.store = self.migration_store.get().await;
        if let Some(key) = stdout_key {
            opts.inherit_fds = vec![InheritFd {
                key,
                fd: into_task.as_raw_fd(),
            }];
        }
        opts.restorer = Some(self.guarded(opts.restorer(), &id, g, &link));
        let received = self.receive_guarded(&mut stream, opts, &link, &id, g).await;
        drop(into_task);
        let received = match received {
            Ok(r) => {
                if r.from_store > 0 {
                    info!(task = %launch.name, chunks = r.from_store,
                          "round 1 took chunks from this node's migration chunk store");
                }
                r
            }
            Err(e) => {
                info!(%peer, task = %launch.name, error = %e, "live migration in failed");
                p.drop_layout(&launch).await;
                self.fences.with(|f| f.gone(&id, g));
                return;
            }
        };
        let outcome = match self
            .await_release(&mut stream, &link, &id, g, received.told)
            .await
        {
            Ok(()) => {
                self.take_restored(&p, peer, spec, &launch, &call_ports, received.pid, out)
                    .await
            }
            Err(why) => Err(why),
        };
        let reply = match outcome {
            Ok(instance) => Frame::Adopted { instance },
            Err(reason) => {
                warn!(task = %launch.name, pid = received.pid, %reason, "killing a restored task this node cannot take");
                guard::kill_copy(received.pid).await;
                p.drop_layout(&launch).await;
                self.fences.with(|f| f.gone(&id, g));
                Frame::Failed { reason }
            }
        };
        if !link.is_cut() {
            let _ = write_frame(stream.get_mut(), &reply).await;
        }
    }

    /// Whether a live move of `spec` into this node is acceptable, and the engine that takes it.
    fn accept_live(&self, spec: &InstanceSpec) -> Result<&ProcessEngine, String> {
        self.accept_live_spec(spec)?;
        self.live_engine()
    }

    /// Makes the restored `pid` the instance here: its forwarders on the ports its environment
    /// names, the engine watching it, its route.
    #[allow(clippy::too_many_arguments)]
    async fn take_restored(
        &self,
        p: &ProcessEngine,
        from: PeerId,
        spec: InstanceSpec,
        launch: &brume_engine::LaunchSpec,
        call_ports: &[u16],
        pid: u32,
        out: std::io::PipeReader,
    ) -> Result<InstanceView, String> {
        let forwarders = self.bind_forwarders(&spec, call_ports).await?;
        p.adopt(launch, pid, Some(out))
            .await
            .map_err(|e| format!("the engine cannot take it: {e}"))?;
        Ok(self
            .install_restored(
                from,
                spec,
                launch,
                forwarders,
                pid,
                "task restored here by a live migration",
            )
            .await)
    }
}
