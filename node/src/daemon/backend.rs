//! The daemon's side of the control API: each command a client sends becomes a call on the
//! overlay handle, the initiator or the mover ([`OverlayBackend`]), and every move this node
//! drives is counted in the metrics ([`count_moves`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use brume_control::{
    DeployRequest, Deployed, DrainLine, Event, MigrateRequest, MoveProgress, Moved, PeerView, Row,
    StatusView,
};
use brume_metrics::{Metrics, Outcome as MetricsOutcome};
use brume_overlay::neighbourhood::NeighbourhoodMap;
use brume_overlay::OverlayHandle;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::dispatch::Backend;
use crate::deploy::initiator::Initiator;
use crate::migrate::control::Deadline;
use crate::migrate::mover::Mover;

/// The daemon's view of the overlay handle.
pub(super) struct OverlayBackend {
    pub(super) handle: OverlayHandle,
    pub(super) started: Instant,
    pub(super) initiator: Arc<Initiator>,
    pub(super) mover: Arc<Mover>,
    pub(super) metrics: Metrics,
    /// This node's human name (the `name` setting).
    pub(super) name: Option<String>,
}

/// Counts every move this node drove in the metrics, with the state bytes it carried.
pub(super) fn count_moves(metrics: Metrics) -> crate::migrate::mover::OnMoved {
    use crate::migrate::wire::Reply;
    Arc::new(move |reply: &Reply| match reply {
        Reply::Migrated { state_bytes, .. } => {
            metrics.record_move(MetricsOutcome::Ok);
            metrics.add_moved_bytes(*state_bytes);
        }
        _ => metrics.record_move(MetricsOutcome::Failed),
    })
}

impl Backend for OverlayBackend {
    fn status(&self) -> BoxFuture<'_, anyhow::Result<StatusView>> {
        Box::pin(async move {
            let s = self.handle.status().await?;
            Ok(StatusView {
                peer_id: s.peer_id.to_string(),
                name: self.name.clone(),
                node_id: s.node_id.0,
                listen: s.listen_addrs.iter().map(ToString::to_string).collect(),
                degree: s.degree,
                coord: [s.coordinate.x, s.coordinate.y, s.coordinate.height],
                coord_error: s.coord_error,
                uptime_s: self.started.elapsed().as_secs_f64(),
                predictor: Some({
                    let v = self.mover.dump_models.view();
                    brume_control::PredictorView {
                        model: v.model.to_string(),
                        dumps: v.dumps,
                        pbmlr_features: v.pbmlr_features.iter().map(ToString::to_string).collect(),
                        refused: v.refused,
                    }
                }),
                probes: Some(brume_control::ProbesView {
                    srtt: s.probes.srtt,
                    handshake: s.probes.handshake,
                    ping: s.probes.ping,
                    unreached: s.probes.unreached,
                }),
            })
        })
    }

    fn peers(&self) -> BoxFuture<'_, anyhow::Result<Vec<PeerView>>> {
        Box::pin(async move {
            let me = self.handle.status().await?;
            let peers = self.handle.peers().await?;
            Ok(peers
                .into_iter()
                .map(|p| PeerView {
                    peer_id: p.peer_id.to_string(),
                    name: p.record.as_ref().and_then(|r| r.name.clone()),
                    node_id: p.node_id.0,
                    addr: p.addr.map(|a| a.to_string()),
                    srtt_ms: p.srtt_ms,
                    rttvar_ms: p.rttvar_ms,
                    predicted_ms: p.coord.map(|(c, _)| me.coordinate.predicted_rtt(&c)),
                    links: p.links.len(),
                    cone: me.cone_links.contains(&p.peer_id),
                })
                .collect())
        })
    }

    fn map(
        &self,
        budget: Duration,
        fresh: bool,
    ) -> BoxFuture<'_, anyhow::Result<NeighbourhoodMap>> {
        Box::pin(async move { Ok(self.handle.map_with(budget, fresh).await?.map) })
    }

    fn deploy(
        &self,
        request: DeployRequest,
        progress: mpsc::Sender<Event>,
    ) -> BoxFuture<'_, anyhow::Result<Deployed>> {
        Box::pin(async move {
            let options = brume_plan::onmap::PlaceOptions {
                policy: request.policy.clone(),
                seed: request.seed,
                rounds: request.rounds.max(1),
            };
            let budget = Duration::from_secs_f64(request.budget_ms.max(0.0) / 1e3);
            let done = self
                .initiator
                .deploy(&request.manifest, budget, &options, progress)
                .await;
            self.metrics.record_deploy(if done.is_ok() {
                MetricsOutcome::Ok
            } else {
                MetricsOutcome::Failed
            });
            done
        })
    }

    fn ps(&self, all: bool) -> BoxFuture<'_, anyhow::Result<Vec<(String, Row)>>> {
        Box::pin(async move { Ok(self.initiator.ps(all).await) })
    }

    fn logs(
        &self,
        service: Option<String>,
        task: String,
        replica: u32,
        tail: usize,
    ) -> BoxFuture<'_, anyhow::Result<String>> {
        Box::pin(self.initiator.logs(service, task, replica, tail))
    }

    fn stop(&self, service: String) -> BoxFuture<'_, anyhow::Result<Vec<String>>> {
        Box::pin(async move { self.initiator.stop(&service).await })
    }

    fn migrate(
        &self,
        request: MigrateRequest,
        progress: mpsc::Sender<MoveProgress>,
    ) -> BoxFuture<'_, anyhow::Result<Moved>> {
        Box::pin(crate::migrate::control::migrate(
            &self.mover,
            request,
            progress,
        ))
    }

    fn gc(&self) -> BoxFuture<'_, anyhow::Result<brume_control::GcReport>> {
        Box::pin(async move {
            let deployer = &self.mover.deployer;
            let report = deployer
                .collect(crate::gc::Goal::everything())
                .await
                .map_err(anyhow::Error::msg)?;
            let budget = deployer.gc().and_then(|g| g.budget());
            Ok(crate::gc::control_report(&report, budget))
        })
    }

    fn drain(
        &self,
        budget: Duration,
        cold: bool,
        deadline: Option<Deadline>,
        progress: mpsc::Sender<MoveProgress>,
    ) -> BoxFuture<'_, anyhow::Result<Vec<DrainLine>>> {
        Box::pin(async move {
            Ok(crate::migrate::control::drain(&self.mover, budget, cold, deadline, progress).await)
        })
    }
}
