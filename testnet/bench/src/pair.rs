//! Two overlay nodes on loopback, B joined through A: the rig the transfer and tunnel benches
//! measure across. [`Pair::start`] returns once each node has the other in its peer table.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use brume_overlay::{Overlay, OverlayConfig, OverlayError, OverlayHandle};
use tokio::task::JoinHandle;

pub struct Pair {
    pub a: OverlayHandle,
    pub b: OverlayHandle,
    tasks: [JoinHandle<Result<(), OverlayError>>; 2],
}

impl Pair {
    pub async fn start() -> anyhow::Result<Pair> {
        let loopback = || vec!["/ip4/127.0.0.1/tcp/0".parse().expect("a valid multiaddr")];
        let (a, a_task) = Overlay::spawn(OverlayConfig {
            listen: loopback(),
            ..OverlayConfig::default()
        })
        .await
        .context("starting overlay node A")?;
        let (b, b_task) = Overlay::spawn(OverlayConfig {
            listen: loopback(),
            bootstrap: a.listen_addrs().await?,
            ..OverlayConfig::default()
        })
        .await
        .context("starting overlay node B")?;
        let pair = Pair {
            a,
            b,
            tasks: [a_task, b_task],
        };
        let start = Instant::now();
        while !(pair.sees(&pair.a, &pair.b).await? && pair.sees(&pair.b, &pair.a).await?) {
            if start.elapsed() > Duration::from_secs(10) {
                pair.stop().await;
                bail!("the two bench nodes did not connect within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(pair)
    }

    async fn sees(&self, from: &OverlayHandle, to: &OverlayHandle) -> anyhow::Result<bool> {
        Ok(from
            .peers()
            .await?
            .iter()
            .any(|p| p.peer_id == to.peer_id()))
    }

    /// Shuts both nodes down (each gets 5 s).
    pub async fn stop(self) {
        for (node, task) in [self.a, self.b].into_iter().zip(self.tasks) {
            let _ = node.shutdown().await;
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}
