//! The I/O side of a restart: what the node does, before it serves anything, about the tasks
//! it ran before it stopped (see [`super::hosted`], whose [`reconcile`] decides).
//!
//! It gathers the facts (the hosted file, the engine's listing of this node's tasks, the start
//! time of each recorded pid), asks [`reconcile`] what to do, and does it: an adopted task is
//! taken into the instance table with its route and its call forwarders on the ports its
//! `BRUME_CALL_*` point at (capacity is reserved by the table itself); a restarted one starts
//! again from its record the way a deploy starts it (on its old port when it is free); a
//! forgotten record or an orphan is removed. Every decision is logged at info level with the
//! instance's name; the table is written back to disk at the end.

use std::collections::BTreeMap;

use brume_engine::{AnyEngine, Engine, ImageInput, ImageKind, ImageRef};
use brume_tunnel::{Route, Routes};
use tracing::{info, warn};

use super::deployer::{node_tag, Deployer};
use super::hosted::{reconcile, Action, Leftover, Listed, Record};
use super::instances::Instance;
use super::wire::Payload;
use brume_artifact::ArtifactKind;

/// What a restart did, by kind of decision.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    pub adopted: usize,
    pub restarted: usize,
    pub forgotten: usize,
    pub orphans_removed: usize,
}

impl Deployer {
    /// Adopts, restarts or removes what this node ran before it (re)started. Fails only when
    /// the hosted file cannot be read (the node should not start and orphan what it lists).
    pub async fn recover(&self) -> anyhow::Result<Recovered> {
        let Some((file, _)) = &self.hosted else {
            return Ok(Recovered::default());
        };
        let records = file.read()?;
        let listed = self.listed().await;
        let mut started = BTreeMap::new();
        for r in &records {
            if let Some(p) = r.process {
                if let Some(t) = brume_engine::criu_task::start_time(p.pid) {
                    started.insert(p.pid, t);
                }
            }
        }
        let actions = reconcile(&records, self.engine.kind(), &listed, &started);
        let mut done = Recovered::default();
        for action in actions {
            match action {
                Action::Adopt(r) => match self.adopt(&r).await {
                    Ok(()) => {
                        info!(instance = %r.spec.id, name = %r.name, port = r.port, "restart: adopted the task that still runs");
                        done.adopted += 1;
                    }
                    Err(why) => {
                        warn!(instance = %r.spec.id, name = %r.name, %why, "restart: cannot adopt the task; starting it again");
                        self.remove_leftover(&self.leftover_of(&r)).await;
                        done.add_restart(self.restart(&r).await, &r);
                    }
                },
                Action::Restart {
                    record,
                    remove_first,
                } => {
                    if let Some(l) = &remove_first {
                        self.remove_leftover(l).await;
                    }
                    done.add_restart(self.restart(&record).await, &record);
                }
                Action::Forget {
                    record,
                    why,
                    remove,
                } => {
                    info!(instance = %record.spec.id, name = %record.name, %why, "restart: forgetting the instance");
                    if let Some(l) = &remove {
                        self.remove_leftover(l).await;
                    }
                    done.forgotten += 1;
                }
                Action::RemoveOrphan(l) => {
                    info!(leftover = ?l, "restart: removing a task of this node that no record explains");
                    self.remove_leftover(&l).await;
                    done.orphans_removed += 1;
                }
            }
        }
        self.save_hosted().await;
        self.readvertise().await;
        Ok(done)
    }

    /// This node's tasks as the engine sees them at start: containers with brume's labels and
    /// this node's tag in their name (nodes sharing one Docker daemon leave each other's alone);
    /// for the process engine, the task directories it left (their processes died with it, but
    /// a directory no record explains is an orphan's).
    async fn listed(&self) -> Vec<Listed> {
        let tag = format!("-{}", node_tag(&self.overlay.peer_id()));
        match &*self.engine {
            AnyEngine::Docker(d) => {
                // A task a live move restored outside Docker (a runc container) is Docker's
                // no more: the engine takes it back from its record, or it would look gone.
                let d2 = d.clone();
                let tag2 = tag.clone();
                let taken = tokio::task::spawn_blocking(move || d2.readopt(|n| n.ends_with(&tag2)))
                    .await
                    .unwrap_or_default();
                for name in taken {
                    info!(%name, "restart: found the restored runc container still running");
                }
                self.listed_docker(d, &tag).await
            }
            AnyEngine::Process(p) => std::fs::read_dir(p.root().join("tasks"))
                .map(|dir| {
                    dir.flatten()
                        .filter_map(|e| e.file_name().into_string().ok())
                        .filter(|n| n.starts_with("brume-") && n.ends_with(&tag))
                        .map(|name| Listed { name, alive: false })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    async fn listed_docker(&self, d: &brume_engine::DockerEngine, tag: &str) -> Vec<Listed> {
        match d.list().await {
            Ok(tasks) => tasks
                .into_iter()
                .filter(|t| t.name.ends_with(&tag))
                .map(|t| Listed {
                    name: t.name,
                    alive: t.state.is_alive(),
                })
                .collect(),
            Err(e) => {
                warn!(error = %e, "restart: cannot list the engine's tasks; leaving orphans alone");
                Vec::new()
            }
        }
    }

    fn leftover_of(&self, r: &Record) -> Leftover {
        match r.process {
            Some(p) if matches!(&*self.engine, AnyEngine::Process(_)) => Leftover::Process(p),
            _ => Leftover::Task(r.name.clone()),
        }
    }

    /// Removes a task left on the host: a container by name (the engine removes only what
    /// carries brume's label), a process only if it still runs with its recorded start time,
    /// and a process task's directory.
    async fn remove_leftover(&self, l: &Leftover) {
        match l {
            Leftover::Task(name) => {
                if let Err(e) = self.engine.remove(name).await {
                    warn!(%name, error = %e, "restart: cannot remove a leftover task");
                }
                if let AnyEngine::Process(p) = &*self.engine {
                    let dir = p.root().join("tasks").join(name);
                    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
                }
            }
            Leftover::Process(facts) => {
                if brume_engine::criu_task::start_time(facts.pid) == Some(facts.start_time) {
                    brume_engine::criu_task::kill(facts.pid, libc::SIGKILL);
                }
            }
        }
    }

    /// The image of a recorded instance, from what this node already holds (the artifact was
    /// fetched when it was deployed): its assembled tarball, else its chunks.
    async fn recorded_image(&self, r: &Record) -> Result<(ImageInput, ImageRef), String> {
        let Payload::Artifact(m) = &r.spec.payload else {
            return Err("it has no artifact".into());
        };
        let tar = self.images.join(format!("{}.tar", m.digest.to_hex()));
        if !tar.exists() {
            let (store, m2, out) = (self.store.clone(), m.clone(), tar.clone());
            tokio::task::spawn_blocking(move || store.assemble(&m2, &out))
                .await
                .map_err(|e| format!("assembling its artifact failed: {e}"))?
                .map_err(|e| format!("its artifact is no longer here: {e}"))?;
        }
        let input = ImageInput {
            kind: match m.kind {
                ArtifactKind::Context => ImageKind::BuildContext,
                ArtifactKind::ImageTar => ImageKind::DockerSave,
            },
            tar,
            digest: m.digest.to_hex(),
        };
        let image = self
            .engine
            .prepare(&input)
            .await
            .map_err(|e| format!("cannot prepare its image: {e}"))?;
        Ok((input, image))
    }

    /// Takes a task that still runs into the table, as the deploy that started it left it.
    async fn adopt(&self, r: &Record) -> Result<(), String> {
        let spec = &r.spec;
        let (forwarders, call_vars) = self.forwarders_at(spec, &r.call_ports).await?;
        if let (AnyEngine::Process(p), Some(facts)) = (&*self.engine, r.process) {
            let Payload::Artifact(m) = &spec.payload else {
                return Err("it has no artifact".into());
            };
            let image = ImageRef::from_digest(&m.digest.to_hex()).map_err(|e| e.to_string())?;
            let mut env = spec.env.clone();
            env.extend(call_vars);
            let mut launch = self.launch_spec(spec, image, env, r.port);
            launch.name = r.name.clone();
            // The task's output has a drain of its own that outlived the node; a task whose
            // pipe nobody reads (its reader died) gets a new drain, its pipe reopened through
            // /proc.
            let pid = facts.pid;
            let read =
                tokio::task::spawn_blocking(move || brume_migration::drain::stdout_is_read(pid))
                    .await
                    .unwrap_or(false);
            let output = if read {
                None
            } else {
                let output = std::fs::File::open(format!("/proc/{pid}/fd/1"))
                    .map_err(|e| format!("cannot reopen its output: {e}"))?;
                Some(std::io::PipeReader::from(std::os::fd::OwnedFd::from(
                    output,
                )))
            };
            p.adopt(&launch, facts.pid, output)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.install(r, r.port, forwarders);
        Ok(())
    }

    /// Starts a recorded instance again, the way a deploy starts it: on its old port if it is
    /// free, else on a free one; `Err` says why not (the record is then dropped).
    async fn restart(&self, r: &Record) -> Result<u16, String> {
        let spec = &r.spec;
        self.instances.room_for(spec)?;
        let (_, image) = self.recorded_image(r).await?;
        let (forwarders, call_vars) = match self.forwarders_at(spec, &r.call_ports).await {
            Ok(f) => f,
            Err(_) => self.forwarders_at(spec, &[]).await?,
        };
        let mut env = spec.env.clone();
        env.extend(call_vars);
        let mut launch = self.launch_spec(spec, image, env, r.port);
        launch.name = r.name.clone();
        let port = match self.start_task(spec, &launch).await {
            Ok(()) => r.port,
            Err(e) => {
                let _ = self.engine.remove(&launch.name).await;
                info!(instance = %spec.id, error = %e, "restart: not on its old port; picking another");
                self.start_on_a_free_port(spec, launch).await?
            }
        };
        self.install(r, port, forwarders);
        Ok(port)
    }

    /// The instance's route and its row in the table (which reserves its capacity).
    fn install(&self, r: &Record, port: u16, forwarders: Vec<brume_tunnel::Forwarder>) {
        let routes: &Routes = &self.routes;
        routes.set(r.spec.id.clone(), Route::Local { port });
        self.instances.insert(Instance {
            spec: r.spec.clone(),
            name: r.name.clone(),
            port,
            forwarders,
            sent_by: r.sent_by,
        });
    }
}

impl Recovered {
    fn add_restart(&mut self, outcome: Result<u16, String>, r: &Record) {
        match outcome {
            Ok(port) => {
                info!(instance = %r.spec.id, name = %r.name, port, "restart: started the instance again from its record");
                self.restarted += 1;
            }
            Err(why) => {
                warn!(instance = %r.spec.id, name = %r.name, %why, "restart: cannot start the instance again; forgetting it");
                self.forgotten += 1;
            }
        }
    }
}
