//! What a node does when its control socket asks for a move: `brume migrate` and `brume drain`.
//!
//! A move is driven by the node that runs the instance. Asked on that node, its agent moves
//! the instance itself; asked on the node that deployed the service, the node finds the host in
//! its ledger and forwards the request there, relaying the host's progress. `drain` moves every
//! instance this node runs, one after another, and reports each. With a deadline
//! (`brume drain --deadline T`) each move starts at T minus the predicted duration of it and of
//! the moves after it minus a margin ([`latest_starts`]), not at once, and each line says
//! whether its instance ran on its new host before T.
//!
//! The move's part of the control API (`MigrateRequest`, `Moved`, `DrainLine`, `MoveProgress`)
//! is brume-control's; the host's wire [`Phase`]s become its `MoveStep`s here.

use std::time::{Duration, Instant};

use anyhow::Context;
use brume_overlay::{Multiaddr, PeerId};
use tokio::sync::mpsc;

use super::client::ask;
use super::mover::Mover;
use super::wire::{Phase, Reply, Request};
use super::MoveRequest;
use crate::deploy::wire::Phase as DeployPhase;
use brume_control::{DrainLine, MigrateRequest, MoveProgress, MoveStep, Moved};
use brume_tunnel::InstanceId;

impl From<Phase> for MoveStep {
    fn from(phase: Phase) -> Self {
        match phase {
            Phase::Target { peer, host } => MoveStep::Target {
                peer: peer.to_string(),
                host,
            },
            Phase::Checkpointed { bytes } => MoveStep::Checkpointed { bytes },
            Phase::Preparing(DeployPhase::Fetching { done, total }) => {
                MoveStep::Fetching { done, total }
            }
            Phase::Preparing(DeployPhase::Building) => MoveStep::Building,
            Phase::Preparing(DeployPhase::Starting) => MoveStep::Starting,
            Phase::Round {
                round,
                last,
                dumped_bytes,
                delta_bytes,
                wire_bytes,
                round_ms,
                dump_ms,
                rate,
                predicted_downtime_ms,
            } => MoveStep::Round {
                round,
                last,
                dumped_bytes,
                delta_bytes,
                wire_bytes,
                round_ms,
                dump_ms,
                rate,
                predicted_downtime_ms,
            },
            Phase::Restored {
                downtime_ms,
                restore_ms,
                rounds,
                wire_bytes,
            } => MoveStep::Restored {
                downtime_ms,
                restore_ms,
                rounds,
                wire_bytes,
            },
            Phase::Switching => MoveStep::Switching,
        }
    }
}

/// Moves the instance `req` names, wherever it runs (here, or a host of a service deployed
/// from here).
pub async fn migrate(
    mover: &Mover,
    req: MigrateRequest,
    progress: mpsc::Sender<MoveProgress>,
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
        let line = MoveProgress {
            service: service.clone(),
            task: req.task.clone(),
            replica: req.replica,
            step: phase.into(),
        };
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
                force: req.force,
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
                force: req.force,
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

/// A drain's deadline: every instance should run on its new host within `within` (from the
/// request), each move started as late as leaves it `margin` to spare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    pub within: Duration,
    pub margin: Duration,
}

/// The slack a drain deadline keeps when the request names none.
pub const DRAIN_MARGIN: Duration = Duration::from_secs(1);

/// When each of a sequence of moves predicted to take `estimates` (run one after another)
/// should start, counted from now, so that the last ends `margin` before `within`: move `i`
/// starts as late as leaves room for it and every move after it, and never before now.
pub fn latest_starts(within: Duration, margin: Duration, estimates: &[Duration]) -> Vec<Duration> {
    let end = within.saturating_sub(margin);
    let mut after = Duration::ZERO;
    let mut starts = vec![Duration::ZERO; estimates.len()];
    for (start, estimate) in starts.iter_mut().zip(estimates).rev() {
        after += *estimate;
        *start = end.saturating_sub(after);
    }
    starts
}

/// Moves every instance running here to a node picked from the map; one line per instance.
/// With a deadline, each move waits for its start ([`latest_starts`]).
pub async fn drain(
    mover: &Mover,
    budget: Duration,
    cold: bool,
    deadline: Option<Deadline>,
    progress: mpsc::Sender<MoveProgress>,
) -> Vec<DrainLine> {
    let ids = mover.deployer.instances.ids(|_| true);
    let begun = Instant::now();
    let starts = match deadline {
        None => vec![Duration::ZERO; ids.len()],
        Some(d) => {
            let estimates: Vec<Duration> =
                ids.iter().map(|id| mover.move_estimate(id, cold)).collect();
            let starts = latest_starts(d.within, d.margin, &estimates);
            for ((id, e), s) in ids.iter().zip(&estimates).zip(&starts) {
                tracing::info!(instance = %id, predicted_move_ms = e.as_millis() as u64,
                               start_in_ms = s.as_millis() as u64,
                               deadline_ms = d.within.as_millis() as u64,
                               margin_ms = d.margin.as_millis() as u64, "drain: move scheduled");
            }
            starts
        }
    };
    let mut lines = Vec::new();
    for (
        InstanceId {
            service,
            task,
            replica,
        },
        start,
    ) in ids.into_iter().zip(starts)
    {
        tokio::time::sleep_until((begun + start).into()).await;
        let req = MigrateRequest {
            service: Some(service.clone()),
            task: task.clone(),
            replica,
            to: None,
            budget_ms: budget.as_millis() as u64,
            cold,
            deadline_ms: None,
            max_downtime_ms: None,
            force: false,
        };
        let outcome = migrate(mover, req, progress.clone())
            .await
            .map_err(|e| format!("{e:#}"));
        let on_time = deadline.map(|d| outcome.is_ok() && begun.elapsed() <= d.within);
        if on_time == Some(false) {
            tracing::warn!(%service, %task, replica, "drain: not on its new host before the deadline");
        }
        lines.push(DrainLine {
            service,
            task,
            replica,
            outcome,
            on_time,
        });
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_move_starts_as_late_as_the_ones_after_it_allow() {
        let s = Duration::from_secs;
        // 30 s deadline, 1 s margin: the last move (4 s) starts at 25 s, the one before it
        // (2 s) at 23 s, the first (3 s) at 20 s.
        assert_eq!(
            latest_starts(s(30), s(1), &[s(3), s(2), s(4)]),
            vec![s(20), s(23), s(25)]
        );
        // Too little time: start at once.
        assert_eq!(latest_starts(s(5), s(1), &[s(3), s(2)]), vec![s(0), s(2)]);
        assert_eq!(latest_starts(s(1), s(2), &[s(1)]), vec![s(0)]);
        assert!(latest_starts(s(5), s(1), &[]).is_empty());
    }
}
