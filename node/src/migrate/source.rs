//! The source side of a move: the node that runs the instance picks the target, captures the
//! state, has the target start the instance, and only then switches callers and stops its own.

use std::time::Instant;

use brume_overlay::{Multiaddr, PeerId};
use tokio::sync::mpsc;
use tracing::info;

use super::checkpoint::{self, CHECKPOINT_TIMEOUT};
use super::{target, Limits, MoveRequest};
use crate::deploy::agent::Agent;
use crate::deploy::initiator::ask;
use crate::deploy::wire::{AgentReply, AgentRequest, CheckpointMode, InstanceSpec, Phase};
use brume_tunnel::{Endpoint, Route};

/// The environment variable a restored instance finds its state line in.
pub const RESTORE_ENV: &str = "BRUME_RESTORE";

/// Why the target did not do what it was asked, from a reply other than the expected one.
fn target_failure(host: &str, what: &str, reply: anyhow::Result<AgentReply>) -> String {
    match reply {
        Ok(AgentReply::Refused { reason }) => format!("{host} refused {what}: {reason}"),
        Ok(other) => format!("{host} answered {other:?}"),
        Err(e) => format!("talking to {host} failed: {e:#}"),
    }
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

/// Where the instance goes: its peer, node id as maps print it, and addresses.
pub(super) struct Destination {
    pub(super) peer: PeerId,
    pub(super) host: String,
    pub(super) addrs: Vec<String>,
}

impl Agent {
    /// Moves one instance running here to another node; on `Refused` it still runs here,
    /// untouched.
    pub async fn migrate(&self, req: MoveRequest, phases: mpsc::Sender<Phase>) -> AgentReply {
        let refuse = |reason: String| AgentReply::Refused { reason };
        let (service, task, replica) = &req.key;
        let what = format!("{service}/{task}#{replica}");
        let Some((spec, port)) = self.lock().get(&req.key).map(|i| (i.spec.clone(), i.port)) else {
            return refuse(format!("{what} does not run on this node"));
        };
        let live = spec.checkpoint == CheckpointMode::Criu && !req.allow_cold;
        let carry_state = match spec.checkpoint {
            CheckpointMode::App => true,
            CheckpointMode::None | CheckpointMode::Criu => false,
        };
        if live {
            if let Err(why) = self.live_preflight(&req.key) {
                return refuse(format!(
                    "{what} asks for CRIU checkpoints, but {why}; move it with --cold (it \
                     restarts on the target without its state), or give the task \
                     checkpoint = \"app\""
                ));
            }
        }
        let dest = match self.destination(&req, &spec).await {
            Ok(d) => d,
            Err(reason) => return refuse(reason),
        };
        let _ = phases
            .send(Phase::Target {
                peer: dest.peer.to_string(),
                host: dest.host.clone(),
            })
            .await;

        let mut moved = spec.clone();
        moved.calls = self.current_calls(&spec).await;
        moved.env.remove(RESTORE_ENV);
        let addrs: Vec<Multiaddr> = dest.addrs.iter().filter_map(|a| a.parse().ok()).collect();
        let forward = |p: Phase| {
            let phases = phases.clone();
            async move {
                let _ = phases.send(p).await;
            }
        };
        let untouched = |what_failed: String| AgentReply::Refused {
            reason: format!("{what_failed}; {what} still runs here"),
        };

        let deadline = req.deadline.map(|d| Instant::now() + d);
        let late = || {
            untouched(format!(
                "the move did not finish within the deadline ({:?})",
                req.deadline.unwrap_or_default()
            ))
        };

        // The image first, while callers still reach the old instance: the hold below then
        // lasts only the checkpoint and the start.
        let prepared = within(
            deadline,
            ask(
                &self.overlay,
                self,
                dest.peer,
                &addrs,
                &AgentRequest::Prepare(moved.clone()),
                &forward,
            ),
        )
        .await;
        let Some(prepared) = prepared else {
            return late();
        };
        match prepared {
            Ok(AgentReply::Prepared) => {}
            other => return untouched(target_failure(&dest.host, &what, other)),
        }
        if live {
            return self
                .move_live(
                    &req.key,
                    moved,
                    &dest,
                    Limits {
                        deadline,
                        max_downtime: req.max_downtime,
                    },
                    &phases,
                )
                .await;
        }

        // Hold the instance's callers: live calls through this node are cut, new ones wait,
        // so nothing reaches the old instance after its checkpoint.
        let endpoint = Endpoint::new(service, task, *replica);
        let hold = self.routes.hold(&endpoint);
        let held = Instant::now();
        let mut state_bytes = 0;
        if carry_state {
            let captured = within(deadline, checkpoint::capture(port, CHECKPOINT_TIMEOUT)).await;
            match captured {
                None => return late(),
                Some(Ok(state)) => {
                    state_bytes = state.len() as u64;
                    moved.env.insert(RESTORE_ENV.to_string(), state);
                }
                Some(Err(e)) => return untouched(format!("{what} gave no checkpoint ({e})")),
            }
        }
        let _ = phases
            .send(Phase::Checkpointed { bytes: state_bytes })
            .await;
        let epoch = moved.epoch;
        let started = within(
            deadline,
            ask(
                &self.overlay,
                self,
                dest.peer,
                &addrs,
                &AgentRequest::Deploy(moved),
                &forward,
            ),
        )
        .await;
        let Some(started) = started else {
            // The target may still start it: have it removed there (after its deploy ends),
            // and its calls to the instance sent back here.
            let undo = AgentRequest::Remove {
                service: service.clone(),
                task: task.clone(),
                replica: *replica,
                epoch,
                back_to: Some(self.overlay.peer_id().to_string()),
            };
            if let Err(e) = ask(&self.overlay, self, dest.peer, &addrs, &undo, |_| async {}).await {
                tracing::warn!(%what, error = %e, "cannot undo the late start on the target");
            }
            drop(hold);
            return late();
        };
        let instance = match started {
            Ok(AgentReply::Started { instance, .. }) => instance,
            other => return untouched(target_failure(&dest.host, &what, other)),
        };

        // The new instance runs: calls from here go there (held ones first; streams from other
        // nodes are redirected until they are told), then the old instance stops.
        let _ = phases.send(Phase::Switching).await;
        self.routes.set_host_addrs(dest.peer, dest.addrs.clone());
        self.routes.set(endpoint, Route::Remote { peer: dest.peer });
        drop(hold);
        let held_ms = held.elapsed().as_millis() as u64;
        let told = self
            .tell_moved(&spec, dest.peer, &dest.host, &dest.addrs)
            .await;
        self.stop_instance(&req.key).await;
        self.readvertise().await;
        info!(%what, to = %dest.host, state_bytes, held_ms, told, "instance moved");
        AgentReply::Migrated {
            to: dest.peer.to_string(),
            host: dest.host,
            instance,
            mode: if carry_state {
                CheckpointMode::App.as_str().to_string()
            } else {
                "cold".to_string()
            },
            state_bytes,
            held_ms,
            told,
        }
    }

    /// The named target, or the nearest node of a fresh map with room for the instance.
    async fn destination(
        &self,
        req: &MoveRequest,
        spec: &InstanceSpec,
    ) -> Result<Destination, String> {
        let me = self.overlay.peer_id();
        let map = self
            .overlay
            .map_with(req.budget, true)
            .await
            .map_err(|e| format!("cannot map the neighbourhood: {e}"))?
            .map;
        match &req.to {
            Some(to) => {
                let peer: PeerId = to
                    .parse()
                    .map_err(|_| format!("{to:?} is not a peer id (see `brume peers`)"))?;
                if peer == me {
                    return Err("the instance already runs on this node".to_string());
                }
                let record = map.nodes.iter().find(|n| n.peer == peer.to_string());
                Ok(Destination {
                    peer,
                    // The same name whether or not the map found the node (under load a fresh
                    // map can miss it): node ids derive from peer ids.
                    host: brume_overlay::swarm::node_id_of(&peer).to_string(),
                    addrs: record.map(|r| r.addrs.clone()).unwrap_or_default(),
                })
            }
            None => {
                let choice = target::pick(
                    &map,
                    self.overlay.node_id(),
                    spec.cpu_millis,
                    spec.memory_mb,
                )
                .ok_or_else(|| {
                    format!(
                        "no other node within {:?} has {} mCPU and {} MB free for \
                                 {}/{}#{} (map of {} node(s)); name one with --to or widen \
                                 --budget",
                        req.budget,
                        spec.cpu_millis,
                        spec.memory_mb,
                        spec.service,
                        spec.task,
                        spec.replica,
                        map.nodes.len()
                    )
                })?;
                let peer: PeerId =
                    choice.record.peer.parse().map_err(|_| {
                        format!("the map holds a bad peer id {:?}", choice.record.peer)
                    })?;
                Ok(Destination {
                    peer,
                    host: choice.record.id.to_string(),
                    addrs: choice.record.addrs.clone(),
                })
            }
        }
    }

    /// The instance's calls with each callee where it runs now (callees may have moved since
    /// the deploy): this node's routes know. Each host goes with the addresses this node knows
    /// for it (it has been calling it), else those of the deploy: the target may never have met
    /// it.
    async fn current_calls(&self, spec: &InstanceSpec) -> Vec<crate::deploy::wire::CallTarget> {
        let me = self.overlay.peer_id();
        let mut calls = Vec::new();
        for c in &spec.calls {
            let (mut hosts, mut addrs) = (Vec::new(), Vec::new());
            for (replica, host) in c.hosts.iter().enumerate() {
                let endpoint = Endpoint::new(&spec.service, &c.task, replica as u32);
                let now = match self.routes.get(&endpoint) {
                    Some(Route::Remote { peer }) => Some(peer),
                    Some(Route::Local { .. }) => Some(me),
                    None => host.parse::<PeerId>().ok(),
                };
                let known = match now {
                    Some(peer) if peer != me => {
                        self.overlay.known_addresses(peer).await.unwrap_or_default()
                    }
                    _ => Vec::new(),
                };
                let now_host = now.map(|p| p.to_string()).unwrap_or_else(|| host.clone());
                let unmoved = &now_host == host;
                addrs.push(match (known.is_empty(), unmoved) {
                    (false, _) => known.iter().map(|a| a.to_string()).collect(),
                    (true, true) => c.addrs.get(replica).cloned().unwrap_or_default(),
                    (true, false) => Vec::new(),
                });
                hosts.push(now_host);
            }
            calls.push(crate::deploy::wire::CallTarget {
                task: c.task.clone(),
                hosts,
                addrs,
            });
        }
        calls
    }
}
