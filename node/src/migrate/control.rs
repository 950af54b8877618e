//! What a node does when its control socket asks for a move: `brume migrate` and `brume drain`.
//!
//! A move is driven by the node that runs the instance. Asked on that node, its agent moves
//! the instance itself; asked on the node that deployed the service, the node finds the host in
//! its ledger and forwards the request there, relaying the host's progress. `drain` moves every
//! instance this node runs, one after another, and reports each.

use std::time::{Duration, Instant};

use anyhow::Context;
use brume_overlay::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::client::ask;
use super::mover::Mover;
use super::wire::{Phase, Reply, Request};
use super::MoveRequest;
use crate::daemon::control::{MigrateRequest, Response};
use brume_tunnel::InstanceId;

/// One finished move, as `brume migrate` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Moved {
    pub service: String,
    pub task: String,
    pub replica: u32,
    /// The new host's node id and peer id.
    pub host: String,
    pub peer: String,
    /// `app` (the task's own checkpoint went along), `criu` (moved live, `state_bytes` is what
    /// the pre-copy sent) or `cold`.
    pub mode: String,
    pub state_bytes: u64,
    /// How long calls to the instance were held: the pause its callers saw.
    pub held_ms: u64,
    /// The whole move, from the request.
    pub elapsed_ms: u64,
    /// Nodes that acknowledged the new route.
    pub told: usize,
    /// Where the new instance listens on its host.
    pub address: String,
}

/// One line of a drain's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainLine {
    pub service: String,
    pub task: String,
    pub replica: u32,
    pub outcome: Result<Moved, String>,
}

/// A phase of a move, as a progress line for the client.
fn progress_line(service: &str, task: &str, replica: u32, phase: &Phase) -> Response {
    Response::Progress(serde_json::json!({
        "service": service, "task": task, "replica": replica, "phase": phase,
    }))
}

/// Moves the instance `req` names, wherever it runs (here, or a host of a service deployed
/// from here).
pub async fn migrate(
    mover: &Mover,
    req: MigrateRequest,
    progress: mpsc::Sender<Response>,
) -> anyhow::Result<Moved> {
    let started = Instant::now();
    let budget = Duration::from_millis(req.budget_ms.clamp(1, 10_000));
    let to = match &req.to {
        Some(to) => Some(
            to.parse::<PeerId>()
                .map_err(|_| anyhow::anyhow!("{to:?} is not a peer id (see `brume peers`)"))?,
        ),
        None => None,
    };
    let local = mover.deployer.instances.ids(|id| {
        id.task == req.task
            && id.replica == req.replica
            && req.service.as_ref().is_none_or(|w| *w == id.service)
    });
    let (service, host): (String, Option<(PeerId, Vec<Multiaddr>)>) = match &local[..] {
        [one] => (one.service.clone(), None),
        [] => {
            let (service, peer, addrs) = find_in_ledger(mover, &req)?;
            (service, Some((peer, addrs)))
        }
        _ => anyhow::bail!(
            "several services run a task {} here: say which with --service",
            req.task
        ),
    };
    let on_phase = |phase: Phase| {
        let line = progress_line(&service, &req.task, req.replica, &phase);
        let progress = progress.clone();
        async move {
            let _ = progress.send(line).await;
        }
    };
    let reply = match host {
        None => {
            let (tx, mut rx) = mpsc::channel::<Phase>(16);
            let request = MoveRequest {
                instance: InstanceId::new(&service, &req.task, req.replica),
                to,
                budget,
                allow_cold: req.cold,
                deadline: req.deadline_ms.map(Duration::from_millis),
                max_downtime: req.max_downtime_ms.map(Duration::from_millis),
            };
            let work = mover.migrate(request, tx);
            tokio::pin!(work);
            loop {
                tokio::select! {
                    reply = &mut work => break reply,
                    Some(phase) = rx.recv() => on_phase(phase).await,
                }
            }
        }
        Some((peer, addrs)) => {
            let request = Request::Migrate {
                instance: InstanceId::new(&service, &req.task, req.replica),
                to,
                budget_ms: req.budget_ms,
                allow_cold: req.cold,
                deadline_ms: req.deadline_ms,
                max_downtime_ms: req.max_downtime_ms,
            };
            ask(mover, peer, &addrs, &request, on_phase)
                .await
                .with_context(|| format!("cannot reach the host of {service}/{}", req.task))?
        }
    };
    match reply {
        Reply::Migrated {
            to,
            host,
            instance,
            mode,
            state_bytes,
            held_ms,
            told,
        } => Ok(Moved {
            service,
            task: req.task,
            replica: req.replica,
            host,
            peer: to.to_string(),
            mode: mode.as_str().to_string(),
            state_bytes,
            held_ms,
            elapsed_ms: started.elapsed().as_millis() as u64,
            told,
            address: format!("127.0.0.1:{}", instance.port),
        }),
        Reply::Refused { reason } => anyhow::bail!(reason),
        other => anyhow::bail!("the host answered {other:?} to a move"),
    }
}

/// The host of an instance of a service deployed from this node.
fn find_in_ledger(
    mover: &Mover,
    req: &MigrateRequest,
) -> anyhow::Result<(String, PeerId, Vec<Multiaddr>)> {
    let mut found = mover
        .ledger()
        .map(|l| l.locate(req.service.as_deref(), &req.task, req.replica))
        .unwrap_or_default();
    let (service, placed) = match found.len() {
        1 => found.remove(0),
        0 => anyhow::bail!(
            "no task {} (replica {}) runs on this node or in the services deployed from it \
             (see `brume ps --all`); run the move on the node that runs it or deployed it",
            req.task,
            req.replica
        ),
        _ => anyhow::bail!(
            "several services have a task {}: say which with --service",
            req.task
        ),
    };
    Ok((service, placed.peer, placed.addrs))
}

/// Moves every instance running here to a node picked from the map; one line per instance.
pub async fn drain(
    mover: &Mover,
    budget: Duration,
    cold: bool,
    progress: mpsc::Sender<Response>,
) -> Vec<DrainLine> {
    let ids = mover.deployer.instances.ids(|_| true);
    let mut lines = Vec::new();
    for InstanceId {
        service,
        task,
        replica,
    } in ids
    {
        let req = MigrateRequest {
            service: Some(service.clone()),
            task: task.clone(),
            replica,
            to: None,
            budget_ms: budget.as_millis() as u64,
            cold,
            deadline_ms: None,
            max_downtime_ms: None,
        };
        let outcome = migrate(mover, req, progress.clone())
            .await
            .map_err(|e| format!("{e:#}"));
        lines.push(DrainLine {
            service,
            task,
            replica,
            outcome,
        });
    }
    lines
}
