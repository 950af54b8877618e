//! The initiator side of a deployment: `brume deploy` as the node carries it out.
//!
//! Load the manifest, pack every task's artifact into this node's chunk store (hosts fetch
//! from it), map the neighbourhood, place the call graph, then ask every chosen host at once to
//! run its instances, relaying each host's phases as progress. If any instance is refused or
//! its host cannot be reached, every host is told to stop that epoch of the service: the deploy
//! either runs whole or leaves nothing. A successful deploy is written to the [`Ledger`], which
//! `ps`, `logs` and `stop` read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use brume_overlay::{Multiaddr, OverlayHandle, PeerId};
use futures::future::join_all;
use tokio::sync::mpsc;

use super::agent::Agent;
use super::ledger::{Entry, Ledger, Placed};
use super::plan::{self, Assignment, PlaceOptions};
use super::progress::{DeployRequest, Deployed, Event, Row, Step};
use super::wire::{
    AgentReply, AgentRequest, CallTarget, CheckpointMode, InstanceSpec, InstanceView, Payload,
    Phase, DEPLOY_PROTOCOL, MAX_FRAME,
};
use crate::manifest::{Artifact, Checkpoint, Manifest};
use crate::names::NodeName;
use brume_artifact::{self as artifact, ChunkStore};
use brume_overlay::frames::{read_frame, write_frame};

/// How long reaching a host that is not a neighbour may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Restarts allowed to a crashed task.
const MAX_RESTARTS: u32 = 5;

pub struct Initiator {
    overlay: OverlayHandle,
    store: ChunkStore,
    ledger: Arc<Ledger>,
    agent: Arc<Agent>,
}

impl Initiator {
    pub fn new(
        overlay: OverlayHandle,
        store: ChunkStore,
        ledger: Arc<Ledger>,
        agent: Arc<Agent>,
    ) -> Self {
        Initiator {
            overlay,
            store,
            ledger,
            agent,
        }
    }

    pub async fn deploy(
        &self,
        req: DeployRequest,
        progress: mpsc::Sender<Event>,
    ) -> anyhow::Result<Deployed> {
        let started = Instant::now();
        let manifest = Manifest::load(&req.manifest)?;
        let payloads = self.pack(&manifest).await?;
        let budget = Duration::from_secs_f64(req.budget_ms / 1e3);
        let outcome = self
            .overlay
            .map_with(budget, true)
            .await
            .context("cannot map the neighbourhood")?;
        let options = PlaceOptions {
            policy: req.policy.clone(),
            seed: req.seed,
            rounds: req.rounds.max(1),
        };
        let assignments = plan::place(&manifest, &outcome.map, self.overlay.node_id(), &options)?;
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        let service = manifest.service.name.clone();

        let send = |task: &str, replica: u32, host: String, step: Step| {
            let event = Event {
                task: task.to_string(),
                replica,
                peer: host,
                step,
            };
            let progress = progress.clone();
            async move {
                let _ = progress.send(event).await;
            }
        };

        // Every instance at once; each host fetches what it lacks from us.
        let runs = assignments.iter().map(|a| {
            let spec = instance_spec(
                &manifest,
                &payloads,
                &assignments,
                a,
                epoch,
                self.overlay.peer_id(),
            );
            let host = a.peer.to_string();
            async move {
                send(&a.task, a.replica, host.clone(), Step::Placed).await;
                let on_phase = |phase: Phase| {
                    let step = match phase {
                        Phase::Fetching { done, total } => Step::Fetching { done, total },
                        Phase::Building => Step::Building,
                        // A deploy's host never reports a migration's phases.
                        Phase::Starting
                        | Phase::Target { .. }
                        | Phase::Checkpointed { .. }
                        | Phase::Round { .. }
                        | Phase::Restored { .. }
                        | Phase::Switching => Step::Starting,
                    };
                    send(&a.task, a.replica, host.clone(), step)
                };
                let reply = match spec {
                    Ok(spec) => {
                        ask(
                            &self.overlay,
                            &self.agent,
                            a.peer,
                            &a.addrs,
                            &AgentRequest::Deploy(spec),
                            on_phase,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
                let result = match reply {
                    Ok(AgentReply::Started { instance, reused }) => {
                        send(
                            &a.task,
                            a.replica,
                            host.clone(),
                            Step::Running {
                                port: instance.port,
                                reused,
                            },
                        )
                        .await;
                        Ok(instance)
                    }
                    Ok(AgentReply::Refused { reason }) => Err(reason),
                    Ok(other) => Err(format!("the host answered {other:?} to a deploy")),
                    Err(e) => Err(format!("{e:#}")),
                };
                if let Err(reason) = &result {
                    send(
                        &a.task,
                        a.replica,
                        host.clone(),
                        Step::Failed {
                            reason: reason.clone(),
                        },
                    )
                    .await;
                }
                result
            }
        });
        let results = join_all(runs).await;

        let failures: Vec<String> = assignments
            .iter()
            .zip(&results)
            .filter_map(|(a, r)| {
                r.as_ref()
                    .err()
                    .map(|e| format!("{}#{} on {}: {e}", a.task, a.replica, NodeName::of(a.peer)))
            })
            .collect();
        if !failures.is_empty() {
            // Roll back everywhere, refused hosts included (a refusal may have come late).
            let hosts: BTreeMap<PeerId, Vec<Multiaddr>> = assignments
                .iter()
                .map(|a| (a.peer, a.addrs.clone()))
                .collect();
            let stop = AgentRequest::Stop {
                service: service.clone(),
                epoch: Some(epoch),
            };
            let stops = hosts.iter().map(|(peer, addrs)| {
                ask(&self.overlay, &self.agent, *peer, addrs, &stop, |_| async {
                })
            });
            let stopped = join_all(stops).await;
            let unreachable: Vec<String> = hosts
                .keys()
                .zip(&stopped)
                .filter(|(_, r)| r.is_err())
                .map(|(p, _)| p.to_string())
                .collect();
            for (a, r) in assignments.iter().zip(&results) {
                if r.is_ok() {
                    send(&a.task, a.replica, a.peer.to_string(), Step::RolledBack).await;
                }
            }
            let mut msg = format!(
                "{} of {} instance(s) of {service} failed, so every instance was stopped again: {}",
                failures.len(),
                assignments.len(),
                failures.join("; ")
            );
            if !unreachable.is_empty() {
                msg += &format!(
                    " (could not reach {} to roll back; it will refuse this stale epoch later)",
                    unreachable.join(", ")
                );
            }
            anyhow::bail!(msg);
        }

        let instances: Vec<InstanceView> = results.into_iter().filter_map(Result::ok).collect();
        let rows = assignments
            .iter()
            .zip(&instances)
            .map(|(a, i)| row(a.node.to_string(), a.peer.to_string(), i))
            .collect();
        self.ledger.put(
            &service,
            Entry {
                epoch,
                manifest: req.manifest.clone(),
                instances: assignments
                    .iter()
                    .map(|a| Placed {
                        task: a.task.clone(),
                        replica: a.replica,
                        host: a.node.to_string(),
                        peer: a.peer.to_string(),
                        addrs: a.addrs.iter().map(|m| m.to_string()).collect(),
                    })
                    .collect(),
            },
        )?;
        Ok(Deployed {
            service,
            epoch,
            elapsed_ms: started.elapsed().as_millis() as u64,
            map_nodes: outcome.map.nodes.len(),
            instances: rows,
        })
    }

    /// Packs every task's artifact into the chunk store (hosts fetch from it).
    async fn pack(&self, manifest: &Manifest) -> anyhow::Result<BTreeMap<String, Payload>> {
        let mut out = BTreeMap::new();
        for t in &manifest.tasks {
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

    /// Every instance of every service deployed from here (and with `all`, whatever this node
    /// runs for others), as (service, row).
    pub async fn ps(&self, all: bool) -> Vec<(String, Row)> {
        let mut out = Vec::new();
        for (service, entry) in self.ledger.all() {
            let hosts: BTreeMap<String, &Placed> = entry
                .instances
                .iter()
                .map(|p| (p.peer.clone(), p))
                .collect();
            let mut views: BTreeMap<(String, u32), (String, InstanceView)> = BTreeMap::new();
            let mut unreachable = BTreeSet::new();
            for (peer, p) in hosts {
                let req = AgentRequest::List {
                    service: Some(service.clone()),
                };
                match ask_placed(&self.overlay, &self.agent, p, &req).await {
                    Ok(AgentReply::Instances(list)) => {
                        for v in list {
                            views.insert((v.task.clone(), v.replica), (p.host.clone(), v));
                        }
                    }
                    _ => {
                        unreachable.insert(peer);
                    }
                }
            }
            for p in &entry.instances {
                let r = match views.get(&(p.task.clone(), p.replica)) {
                    Some((host, v)) => row(host.clone(), p.peer.clone(), v),
                    None => Row {
                        task: p.task.clone(),
                        replica: p.replica,
                        host: p.host.clone(),
                        peer: p.peer.clone(),
                        engine: "-".into(),
                        state: if unreachable.contains(&p.peer) {
                            "unreachable".into()
                        } else {
                            "missing".into()
                        },
                        address: "-".into(),
                    },
                };
                out.push((service.clone(), r));
            }
        }
        if all {
            let me = self.overlay.node_id().to_string();
            let peer = self.overlay.peer_id().to_string();
            let mine: BTreeSet<String> = self.ledger.all().into_keys().collect();
            for v in self.agent.list(None).await {
                if !mine.contains(&v.service) {
                    out.push((v.service.clone(), row(me.clone(), peer.clone(), &v)));
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
        let req = AgentRequest::Logs {
            service: service.clone(),
            task,
            replica,
            tail,
        };
        match ask_placed(&self.overlay, &self.agent, &placed, &req).await? {
            AgentReply::Logs(text) => Ok(text),
            AgentReply::Refused { reason } => anyhow::bail!(reason),
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
        let hosts: BTreeMap<String, &Placed> = entry
            .instances
            .iter()
            .map(|p| (p.peer.clone(), p))
            .collect();
        let req = AgentRequest::Stop {
            service: service.to_string(),
            epoch: None,
        };
        let mut stopped = Vec::new();
        let mut failed = Vec::new();
        for p in hosts.values() {
            match ask_placed(&self.overlay, &self.agent, p, &req).await {
                Ok(AgentReply::Stopped { instances }) => stopped.extend(instances),
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
        self.ledger.remove(service)?;
        Ok(stopped)
    }
}

fn row(host: String, peer: String, v: &InstanceView) -> Row {
    Row {
        task: v.task.clone(),
        replica: v.replica,
        host,
        peer,
        engine: v.engine.clone(),
        state: v.state.clone(),
        address: format!("127.0.0.1:{}", v.port),
    }
}

/// The request for one instance: its artifact, demands, environment and where its callees run.
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
                hosts: replicas.iter().map(|x| x.peer.to_string()).collect(),
                addrs: replicas
                    .iter()
                    .map(|x| x.addrs.iter().map(|a| a.to_string()).collect())
                    .collect(),
            }
        })
        .collect();
    let spec = InstanceSpec {
        service: manifest.service.name.clone(),
        epoch,
        task: a.task.clone(),
        replica: a.replica,
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
        initiator: initiator.to_string(),
    };
    spec.check().map_err(anyhow::Error::msg)?;
    Ok(spec)
}

async fn ask_placed(
    overlay: &OverlayHandle,
    agent: &Agent,
    p: &Placed,
    req: &AgentRequest,
) -> anyhow::Result<AgentReply> {
    let (peer, addrs) = p.target()?;
    ask(overlay, agent, peer, &addrs, req, |_| async {}).await
}

/// Sends one request to a host's agent (this node's own agent directly) and reads its phases
/// and final reply.
pub(crate) async fn ask<F, Fut>(
    overlay: &OverlayHandle,
    agent: &Agent,
    peer: PeerId,
    addrs: &[Multiaddr],
    req: &AgentRequest,
    mut on_phase: F,
) -> anyhow::Result<AgentReply>
where
    F: FnMut(Phase) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if peer == overlay.peer_id() {
        let (tx, mut rx) = mpsc::channel::<Phase>(16);
        let work = agent.handle(peer, req.clone(), tx);
        tokio::pin!(work);
        return Ok(loop {
            tokio::select! {
                reply = &mut work => break reply,
                Some(phase) = rx.recv() => on_phase(phase).await,
            }
        });
    }
    overlay
        .connect(peer, addrs.to_vec(), CONNECT_TIMEOUT)
        .await
        .with_context(|| format!("cannot reach host {peer}"))?;
    // An overlay node drops inbound streams that arrive faster than its acceptor takes them
    // (libp2p-stream hands them over through a one-slot channel), so a stream that breaks before
    // its first reply is opened again. Every request is safe to repeat: a deploy of the same
    // epoch is a no-op on the host.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut stream = overlay
            .open_stream(peer, DEPLOY_PROTOCOL)
            .await
            .with_context(|| format!("host {peer} does not take deploy requests"))?;
        write_frame(&mut stream, req).await?;
        let mut answered = false;
        let last = loop {
            match read_frame::<_, AgentReply>(&mut stream, MAX_FRAME).await {
                Ok(AgentReply::Phase(p)) => {
                    answered = true;
                    on_phase(p).await;
                }
                Ok(last) => break Ok(last),
                Err(e) => break Err(e),
            }
        };
        match last {
            Ok(reply) => return Ok(reply),
            Err(e) if !answered && attempt < 3 => {
                tracing::debug!(%peer, error = %e, attempt, "deploy stream lost; opening another");
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("host {peer} broke off")),
        }
    }
}
