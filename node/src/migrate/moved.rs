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
use crate::tunnel::{Endpoint, Route};

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
        self.relocate_in_ledger(&request);
        told
    }

    /// Hears that an instance now runs on `peer`.
    pub(crate) fn moved(
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
        self.relocate_in_ledger(&AgentRequest::Moved {
            service: key.0.clone(),
            task: key.1.clone(),
            replica: key.2,
            peer: peer.to_string(),
            host: host.to_string(),
            addrs,
        });
        AgentReply::Rerouted { routes }
    }

    fn relocate_in_ledger(&self, moved: &AgentRequest) {
        let (
            Some(ledger),
            AgentRequest::Moved {
                service,
                task,
                replica,
                peer,
                host,
                addrs,
            },
        ) = (self.ledger(), moved)
        else {
            return;
        };
        let placed = Placed {
            task: task.clone(),
            replica: *replica,
            host: host.clone(),
            peer: peer.clone(),
            addrs: addrs.clone(),
        };
        if let Err(e) = ledger.relocate(service, task, *replica, placed) {
            tracing::warn!(error = %e, "cannot record a move in the ledger");
        }
    }
}
