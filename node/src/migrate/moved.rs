//! Telling the overlay that an instance moved, and hearing it.
//!
//! Each node routes calls to an instance through its own routing table, filled at deploy time
//! from the hosts the initiator chose. After a move the source tells every node it is connected
//! to, and the service's initiator (whose ledger `brume ps`, `logs` and `stop` read), with one
//! `Moved` request each, in parallel and bounded in time. A node changes only routes it has (it
//! runs a caller of the instance) and never its own local route.

use std::time::Duration;

use brume_overlay::PeerId;
use futures::future::join_all;
use tracing::debug;

use crate::deploy::agent::{Agent, Key};
use crate::deploy::initiator::ask;
use crate::deploy::ledger::Placed;
use crate::deploy::wire::{AgentReply, AgentRequest, InstanceSpec};
use brume_tunnel::{Endpoint, Route};

/// How long one node may take to acknowledge a move.
const TELL_TIMEOUT: Duration = Duration::from_secs(3);

impl Agent {
    /// Sends `Moved` for `spec`'s instance, now on `to`, to every connected node and the
    /// initiator; returns how many acknowledged.
    pub(crate) async fn tell_moved(
        &self,
        spec: &InstanceSpec,
        to: PeerId,
        host: &str,
        addrs: &[String],
    ) -> usize {
        let me = self.overlay.peer_id();
        let mut peers: Vec<PeerId> = match self.overlay.peers().await {
            Ok(p) => p.into_iter().map(|p| p.peer_id).collect(),
            Err(_) => Vec::new(),
        };
        if let Ok(initiator) = spec.initiator.parse::<PeerId>() {
            if !peers.contains(&initiator) {
                peers.push(initiator);
            }
        }
        peers.retain(|p| *p != me);
        let request = AgentRequest::Moved {
            service: spec.service.clone(),
            task: spec.task.clone(),
            replica: spec.replica,
            peer: to.to_string(),
            host: host.to_string(),
            addrs: addrs.to_vec(),
        };
        let asks = peers.iter().map(|&peer| {
            let request = &request;
            async move {
                let asked = ask(&self.overlay, self, peer, &[], request, |_| async {});
                match tokio::time::timeout(TELL_TIMEOUT, asked).await {
                    Ok(Ok(AgentReply::Rerouted { .. })) => true,
                    other => {
                        debug!(%peer, ?other, "a node did not take the move");
                        false
                    }
                }
            }
        });
        let told = join_all(asks).await.into_iter().filter(|ok| *ok).count();
        // This node's own ledger, if the service was deployed from here.
        self.relocate_in_ledger(
            &spec.service,
            placed(&spec.task, spec.replica, to, host, addrs),
        )
        .await;
        told
    }

    /// Hears that an instance now runs on `peer` (whose addresses the overlay keeps: this node
    /// may never have met it).
    pub(crate) async fn moved(
        &self,
        key: &Key,
        peer: &str,
        host: &str,
        addrs: Vec<String>,
    ) -> AgentReply {
        let Ok(to) = peer.parse::<PeerId>() else {
            return AgentReply::Refused {
                reason: format!("{peer:?} is not a peer id"),
            };
        };
        let _ = self
            .overlay
            .add_addresses(to, crate::deploy::agent::parse_addrs(&addrs))
            .await;
        if !addrs.is_empty() {
            self.routes.set_host_addrs(to, addrs.clone());
        }
        let endpoint = Endpoint::new(&key.0, &key.1, key.2);
        let mut routes = 0;
        if to != self.overlay.peer_id() {
            if let Some(Route::Remote { peer: old }) = self.routes.get(&endpoint) {
                if old != to {
                    self.routes.set(endpoint, Route::Remote { peer: to });
                    routes = 1;
                }
            }
        }
        self.relocate_in_ledger(&key.0, placed(&key.1, key.2, to, host, &addrs))
            .await;
        AgentReply::Rerouted { routes }
    }

    /// Records the move in this node's ledger, if the service was deployed from here.
    async fn relocate_in_ledger(&self, service: &str, to: Placed) {
        if let Some(ledger) = self.ledger() {
            if let Err(e) = ledger
                .relocate(service, &to.task, to.replica, to.clone())
                .await
            {
                tracing::warn!(error = %e, "cannot record a move in the ledger");
            }
        }
    }
}

/// Where an instance runs now, as the ledger keeps it.
fn placed(task: &str, replica: u32, peer: PeerId, host: &str, addrs: &[String]) -> Placed {
    Placed {
        task: task.to_string(),
        replica,
        host: host.to_string(),
        peer: peer.to_string(),
        addrs: addrs.to_vec(),
    }
}
