//! Answering control requests: each request from the socket becomes a call on the daemon's
//! [`Backend`] and its result the command's typed reply ([`Command::wrap`]). Calls run
//! concurrently, so a map that takes its whole budget does not hold up `brume status`; the
//! progress a deploy or a move reports is forwarded as it comes, ahead of the reply.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use brume_overlay::neighbourhood::NeighbourhoodMap;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use brume_control::{
    Call, Command, DeployRequest, DrainRequest, GcReport, GcRequest, LogLines, LogsRequest,
    MapRequest, MigrateRequest, PeersRequest, Progress, PsRequest, Request, Response,
    StatusRequest, StopRequest, Stopped,
};
use brume_control::{Deployed, Event, Row};
use brume_control::{DrainLine, MoveProgress, Moved};
use brume_control::{PeerView, PsRow, StatusView};

use crate::migrate::control::{Deadline, DRAIN_MARGIN};

/// Longest budget a client may ask a map for.
pub const MAX_BUDGET: Duration = Duration::from_secs(10);

/// What the daemon needs from the overlay and its services. The real one wraps the libp2p
/// node's handle, the initiator and the agent; tests use a stand-in.
pub trait Backend: Send + Sync + 'static {
    fn status(&self) -> BoxFuture<'_, anyhow::Result<StatusView>>;
    fn peers(&self) -> BoxFuture<'_, anyhow::Result<Vec<PeerView>>>;
    fn map(&self, budget: Duration, fresh: bool)
        -> BoxFuture<'_, anyhow::Result<NeighbourhoodMap>>;
    /// Deploys a service, reporting each instance's steps as it goes.
    fn deploy(
        &self,
        _request: DeployRequest,
        _progress: mpsc::Sender<Event>,
    ) -> BoxFuture<'_, anyhow::Result<Deployed>> {
        Box::pin(async { anyhow::bail!("this node cannot deploy") })
    }
    /// Instances as `(service, row)`.
    fn ps(&self, _all: bool) -> BoxFuture<'_, anyhow::Result<Vec<(String, Row)>>> {
        Box::pin(async { anyhow::bail!("this node runs no tasks") })
    }
    /// The instance's last `tail` lines, as one text.
    fn logs(
        &self,
        _service: Option<String>,
        _task: String,
        _replica: u32,
        _tail: usize,
    ) -> BoxFuture<'_, anyhow::Result<String>> {
        Box::pin(async { anyhow::bail!("this node runs no tasks") })
    }
    /// Stops a service; the instances stopped.
    fn stop(&self, _service: String) -> BoxFuture<'_, anyhow::Result<Vec<String>>> {
        Box::pin(async { anyhow::bail!("this node runs no tasks") })
    }
    /// Moves an instance, reporting its phases as it goes.
    fn migrate(
        &self,
        _request: MigrateRequest,
        _progress: mpsc::Sender<MoveProgress>,
    ) -> BoxFuture<'_, anyhow::Result<Moved>> {
        Box::pin(async { anyhow::bail!("this node runs no tasks") })
    }
    /// Deletes now what nothing on this node uses.
    fn gc(&self) -> BoxFuture<'_, anyhow::Result<GcReport>> {
        Box::pin(async { anyhow::bail!("this node keeps no artifacts") })
    }
    /// Moves every instance running here away, reporting their phases as it goes.
    fn drain(
        &self,
        _budget: Duration,
        _cold: bool,
        _deadline: Option<Deadline>,
        _progress: mpsc::Sender<MoveProgress>,
    ) -> BoxFuture<'_, anyhow::Result<Vec<DrainLine>>> {
        Box::pin(async { anyhow::bail!("this node runs no tasks") })
    }
}

/// Answers calls until the control server goes away.
pub async fn dispatch(backend: Arc<dyn Backend>, mut calls: mpsc::Receiver<Call>) {
    while let Some((request, reply)) = calls.recv().await {
        let backend = backend.clone();
        tokio::spawn(async move {
            let last = answer(backend.as_ref(), request, &reply).await;
            let _ = reply.send(last).await;
        });
    }
}

async fn answer(
    backend: &dyn Backend,
    request: Request,
    progress: &mpsc::Sender<Response>,
) -> Response {
    match request {
        Request::Status => reply::<StatusRequest>(backend.status().await),
        Request::Peers => reply::<PeersRequest>(backend.peers().await),
        Request::Map(MapRequest { budget_ms, fresh }) => {
            if !(budget_ms.is_finite() && budget_ms > 0.0)
                || budget_ms > MAX_BUDGET.as_secs_f64() * 1e3
            {
                return Response::Error(format!(
                    "budget {budget_ms} ms is out of range: give a positive budget up to {} ms",
                    MAX_BUDGET.as_millis()
                ));
            }
            let budget = Duration::from_secs_f64(budget_ms / 1e3);
            reply::<MapRequest>(backend.map(budget, fresh).await)
        }
        Request::Deploy(request) => reply::<DeployRequest>(
            forwarding(progress, Progress::Deploy, |tx| backend.deploy(request, tx)).await,
        ),
        Request::Ps(PsRequest { all }) => reply::<PsRequest>(
            backend
                .ps(all)
                .await
                .map(|rows| rows.into_iter().map(PsRow::from).collect()),
        ),
        Request::Logs(LogsRequest {
            service,
            task,
            replica,
            tail,
        }) => {
            let text = backend.logs(service, task.clone(), replica, tail).await;
            reply::<LogsRequest>(text.map(|text| LogLines {
                task,
                replica,
                lines: text.lines().map(String::from).collect(),
            }))
        }
        Request::Stop(StopRequest { service }) => {
            let stopped = backend.stop(service.clone()).await;
            reply::<StopRequest>(stopped.map(|instances| Stopped { service, instances }))
        }
        Request::Migrate(request) => reply::<MigrateRequest>(
            forwarding(progress, Progress::Move, |tx| backend.migrate(request, tx)).await,
        ),
        Request::Drain(DrainRequest {
            budget_ms,
            cold,
            deadline_ms,
            margin_ms,
        }) => {
            let budget = Duration::from_millis(budget_ms.clamp(1, MAX_BUDGET.as_millis() as u64));
            let deadline = deadline_ms.map(|d| Deadline {
                within: Duration::from_millis(d),
                margin: margin_ms.map_or(DRAIN_MARGIN, Duration::from_millis),
            });
            reply::<DrainRequest>(
                forwarding(progress, Progress::Move, |tx| {
                    backend.drain(budget, cold, deadline, tx)
                })
                .await,
            )
        }
        Request::Gc => reply::<GcRequest>(backend.gc().await),
    }
}

/// The final line: command `C`'s reply, or what went wrong.
fn reply<C: Command>(result: anyhow::Result<C::Reply>) -> Response {
    match result {
        Ok(r) => Response::Ok(C::wrap(r)),
        Err(e) => Response::Error(format!("{e:#}")),
    }
}

/// Runs `work` with a progress channel of its own, forwarding each report (as `wrap` makes it a
/// [`Progress`]) to the client as it comes, and every report still queued before the result.
async fn forwarding<P, T, F>(
    out: &mpsc::Sender<Response>,
    wrap: fn(P) -> Progress,
    work: impl FnOnce(mpsc::Sender<P>) -> F,
) -> anyhow::Result<T>
where
    F: Future<Output = anyhow::Result<T>>,
{
    let (tx, mut rx) = mpsc::channel(64);
    let work = work(tx);
    tokio::pin!(work);
    let result = loop {
        tokio::select! {
            biased;
            Some(p) = rx.recv() => {
                let _ = out.send(Response::Progress(wrap(p))).await;
            }
            result = &mut work => break result,
        }
    };
    while let Ok(p) = rx.try_recv() {
        let _ = out.send(Response::Progress(wrap(p))).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use brume_overlay::ids::NodeId;
    use brume_overlay::neighbourhood::NodeRecord;

    use brume_control::Reply;
    use brume_control::Step;

    /// A backend whose map does not finish until the test releases it.
    #[derive(Default)]
    struct Fake {
        release: Arc<tokio::sync::Notify>,
    }

    impl Backend for Fake {
        fn status(&self) -> BoxFuture<'_, anyhow::Result<StatusView>> {
            Box::pin(async { anyhow::bail!("overlay not ready") })
        }
        fn peers(&self) -> BoxFuture<'_, anyhow::Result<Vec<PeerView>>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn map(&self, _: Duration, _: bool) -> BoxFuture<'_, anyhow::Result<NeighbourhoodMap>> {
            Box::pin(async move {
                // A map that cannot end before the test says so, to show that other calls are
                // not held up behind it.
                self.release.notified().await;
                Ok(NeighbourhoodMap::single(NodeRecord::bare(NodeId(7))))
            })
        }
        fn deploy(
            &self,
            request: DeployRequest,
            progress: mpsc::Sender<Event>,
        ) -> BoxFuture<'_, anyhow::Result<Deployed>> {
            Box::pin(async move {
                for replica in 0..3 {
                    let event = Event {
                        task: "t".into(),
                        replica,
                        peer: "p".into(),
                        step: Step::Placed,
                    };
                    progress.send(event).await?;
                }
                Ok(Deployed {
                    service: request.policy,
                    epoch: 1,
                    elapsed_ms: 0,
                    map_nodes: 1,
                    instances: Vec::new(),
                })
            })
        }
    }

    /// Sends a request; the returned future yields its final response.
    async fn ask(
        tx: &mpsc::Sender<Call>,
        req: Request,
    ) -> impl std::future::Future<Output = Result<Response, &'static str>> {
        let lines = ask_all(tx, req).await;
        async move {
            let mut lines = lines.await?;
            lines.pop().ok_or("no final response")
        }
    }

    /// Sends a request; the returned future yields every line of the answer, the final last.
    async fn ask_all(
        tx: &mpsc::Sender<Call>,
        req: Request,
    ) -> impl std::future::Future<Output = Result<Vec<Response>, &'static str>> {
        let (reply, mut rx) = mpsc::channel(8);
        tx.send((req, reply)).await.unwrap();
        async move {
            let mut lines = Vec::new();
            while let Some(r) = rx.recv().await {
                let last = r.is_final();
                lines.push(r);
                if last {
                    return Ok(lines);
                }
            }
            Err("no final response")
        }
    }

    #[tokio::test]
    async fn progress_comes_in_order_before_the_reply() {
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(dispatch(Arc::new(Fake::default()), rx));
        let request = DeployRequest {
            manifest: "/m.toml".into(),
            budget_ms: 80.0,
            policy: "latency".into(),
            seed: 1,
            rounds: 1,
        };
        let lines = ask_all(&tx, Request::Deploy(request)).await.await.unwrap();
        let replicas: Vec<u32> = lines
            .iter()
            .filter_map(|l| match l {
                Response::Progress(Progress::Deploy(e)) => Some(e.replica),
                _ => None,
            })
            .collect();
        assert_eq!(replicas, vec![0, 1, 2], "{lines:?}");
        assert!(
            matches!(lines.last(), Some(Response::Ok(Reply::Deployed(d))) if d.service == "latency"),
            "{lines:?}"
        );
        // A command the backend cannot serve is refused with its reason.
        let r = ask(&tx, Request::Ps(PsRequest { all: false }))
            .await
            .await
            .unwrap();
        assert_eq!(r, Response::Error("this node runs no tasks".into()));
    }

    #[tokio::test]
    async fn answers_concurrently_and_refuses_bad_budgets() {
        let (tx, rx) = mpsc::channel(8);
        let backend = Arc::new(Fake::default());
        tokio::spawn(dispatch(backend.clone(), rx));
        let slow = ask(
            &tx,
            Request::Map(MapRequest {
                budget_ms: 300.0,
                fresh: false,
            }),
        )
        .await;
        // The map is still held: peers is answered all the same (a dispatcher that queued it
        // behind the map would never answer; the bound turns that hang into a failure).
        let peers = tokio::time::timeout(Duration::from_secs(60), ask(&tx, Request::Peers).await)
            .await
            .expect("peers waited for the map")
            .unwrap();
        assert_eq!(peers, Response::Ok(Reply::Peers(Vec::new())));
        backend.release.notify_one();
        match slow.await.unwrap() {
            Response::Ok(Reply::Map(m)) => assert_eq!(m.nodes[0].id, NodeId(7)),
            other => panic!("{other:?}"),
        }
        for bad in [0.0, -5.0, f64::NAN, 1e9] {
            let r = ask(
                &tx,
                Request::Map(MapRequest {
                    budget_ms: bad,
                    fresh: false,
                }),
            )
            .await
            .await
            .unwrap();
            assert!(matches!(r, Response::Error(m) if m.contains("out of range")));
        }
        let r = ask(&tx, Request::Status).await.await.unwrap();
        assert_eq!(r, Response::Error("overlay not ready".into()));
    }
}
