//! Answering control requests: each request from the socket becomes a call on the overlay
//! [`Backend`] and its result a [`Response`]. Calls run concurrently, so a map that takes its
//! whole budget does not hold up `brume status`.

use std::sync::Arc;
use std::time::Duration;

use brume_overlay::neighbourhood::NeighbourhoodMap;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::control::{Call, DeployRequest, MigrateRequest, Request, Response};
use super::views::{PeerView, StatusView};

/// Longest budget a client may ask a map for.
pub const MAX_BUDGET: Duration = Duration::from_secs(10);

/// What the daemon needs from the overlay. The real one wraps the libp2p node's handle; tests
/// use a stand-in.
pub trait Backend: Send + Sync + 'static {
    fn status(&self) -> BoxFuture<'_, anyhow::Result<StatusView>>;
    fn peers(&self) -> BoxFuture<'_, anyhow::Result<Vec<PeerView>>>;
    fn map(&self, budget: Duration, fresh: bool)
        -> BoxFuture<'_, anyhow::Result<NeighbourhoodMap>>;
    /// Deploys a service, sending progress lines as it goes.
    fn deploy(
        &self,
        _request: DeployRequest,
        _progress: mpsc::Sender<Response>,
    ) -> BoxFuture<'_, anyhow::Result<serde_json::Value>> {
        Box::pin(async { anyhow::bail!("this node cannot deploy") })
    }
    fn ps(&self, _all: bool) -> BoxFuture<'_, anyhow::Result<serde_json::Value>> {
        Box::pin(async { anyhow::bail!("this node runs no tasks") })
    }
    fn logs(
        &self,
        _service: Option<String>,
        _task: String,
        _replica: u32,
        _tail: usize,
    ) -> BoxFuture<'_, anyhow::Result<serde_json::Value>> {
        Box::pin(async { anyhow::bail!("this node runs no tasks") })
    }
    fn stop(&self, _service: String) -> BoxFuture<'_, anyhow::Result<serde_json::Value>> {
        Box::pin(async { anyhow::bail!("this node runs no tasks") })
    }
    /// Moves an instance, sending progress lines as it goes.
    fn migrate(
        &self,
        _request: MigrateRequest,
        _progress: mpsc::Sender<Response>,
    ) -> BoxFuture<'_, anyhow::Result<serde_json::Value>> {
        Box::pin(async { anyhow::bail!("this node runs no tasks") })
    }
    /// Moves every instance running here away, sending progress lines as it goes.
    fn drain(
        &self,
        _budget: Duration,
        _cold: bool,
        _progress: mpsc::Sender<Response>,
    ) -> BoxFuture<'_, anyhow::Result<serde_json::Value>> {
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
    let result = match request {
        Request::Status => backend.status().await.and_then(to_json),
        Request::Peers => backend.peers().await.and_then(to_json),
        Request::Map { budget_ms, fresh } => {
            if !(budget_ms.is_finite() && budget_ms > 0.0)
                || budget_ms > MAX_BUDGET.as_secs_f64() * 1e3
            {
                return Response::Error(format!(
                    "budget {budget_ms} ms is out of range: give a positive budget up to {} ms",
                    MAX_BUDGET.as_millis()
                ));
            }
            let budget = Duration::from_secs_f64(budget_ms / 1e3);
            backend.map(budget, fresh).await.and_then(to_json)
        }
        Request::Deploy(request) => backend.deploy(request, progress.clone()).await,
        Request::Ps { all } => backend.ps(all).await,
        Request::Logs {
            service,
            task,
            replica,
            tail,
        } => backend.logs(service, task, replica, tail).await,
        Request::Stop { service } => backend.stop(service).await,
        Request::Migrate(request) => backend.migrate(request, progress.clone()).await,
        Request::Drain { budget_ms, cold } => {
            let budget = Duration::from_millis(budget_ms.clamp(1, MAX_BUDGET.as_millis() as u64));
            backend.drain(budget, cold, progress.clone()).await
        }
    };
    match result {
        Ok(v) => Response::Ok(v),
        Err(e) => Response::Error(format!("{e:#}")),
    }
}

fn to_json(value: impl serde::Serialize) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::to_value(value)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use brume_overlay::ids::NodeId;
    use brume_overlay::neighbourhood::NodeRecord;

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
    }

    /// Sends a request; the returned future yields its final response.
    async fn ask(
        tx: &mpsc::Sender<Call>,
        req: Request,
    ) -> impl std::future::Future<Output = Result<Response, &'static str>> {
        let (reply, mut rx) = mpsc::channel(8);
        tx.send((req, reply)).await.unwrap();
        async move {
            while let Some(r) = rx.recv().await {
                if r.is_final() {
                    return Ok(r);
                }
            }
            Err("no final response")
        }
    }

    #[tokio::test]
    async fn answers_concurrently_and_refuses_bad_budgets() {
        let (tx, rx) = mpsc::channel(8);
        let backend = Arc::new(Fake::default());
        tokio::spawn(dispatch(backend.clone(), rx));
        let slow = ask(
            &tx,
            Request::Map {
                budget_ms: 300.0,
                fresh: false,
            },
        )
        .await;
        // The map is still held: peers is answered all the same (a dispatcher that queued it
        // behind the map would never answer; the bound turns that hang into a failure).
        let peers = tokio::time::timeout(Duration::from_secs(60), ask(&tx, Request::Peers).await)
            .await
            .expect("peers waited for the map")
            .unwrap();
        assert_eq!(peers, Response::Ok(serde_json::json!([])));
        backend.release.notify_one();
        match slow.await.unwrap() {
            Response::Ok(v) => assert_eq!(v["nodes"][0]["id"], 7),
            other => panic!("{other:?}"),
        }
        for bad in [0.0, -5.0, f64::NAN, 1e9] {
            let r = ask(
                &tx,
                Request::Map {
                    budget_ms: bad,
                    fresh: false,
                },
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
