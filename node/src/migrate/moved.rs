//! Telling the overlay that an instance moved, and hearing it.
//!
//! Each node routes calls to an instance through its own routing table, filled at deploy time
//! from the hosts the initiator chose. After a move the source tells every node it is connected
//! to, and the service's initiator (whose ledger `brume ps`, `logs` and `stop` read), with one
//! `Moved` request each, in parallel and bounded in time. A node changes only routes it has (it
//! runs a caller of the instance) and never its own local route.

use std::time::Duration;

use brume_overlay::{Multiaddr, PeerId};
use brume_tunnel::{InstanceId, Route};
use futures::future::join_all;
use tracing::debug;

use super::client::ask;
use super::mover::Mover;
use super::wire::{Reply, Request};
use crate::deploy::authority::check_delegated;
use crate::deploy::ledger::Placed;
use crate::deploy::wire::InstanceSpec;
use crate::heal::delegation::Delegation;

/// How long one node may take to acknowledge a move.
const TELL_TIMEOUT: Duration = Duration::from_secs(3);

impl Mover {
    /// Sends `Moved` for `spec`'s instance, now on `to`, to every connected node and the
    /// initiator; returns how many acknowledged.
    pub(crate) async fn tell_moved(
        &self,
        spec: &InstanceSpec,
        to: PeerId,
        host: &str,
        addrs: &[Multiaddr],
        delegation: Option<&Delegation>,
    ) -> usize {
        let overlay = &self.deployer.overlay;
        let me = overlay.peer_id();
        let mut peers: Vec<PeerId> = match overlay.peers().await {
            Ok(p) => p.into_iter().map(|p| p.peer_id).collect(),
            Err(_) => Vec::new(),
        };
        if let Some(initiator) = spec.initiator {
            if !peers.contains(&initiator) {
                peers.push(initiator);
            }
        }
        peers.retain(|p| *p != me);
        let request = Request::Moved {
            instance: spec.id.clone(),
            peer: to,
            host: host.to_string(),
            addrs: addrs.to_vec(),
            delegation: delegation.map(|d| Box::new(d.clone())),
        };
        let asks = peers.iter().map(|&peer| {
            let request = &request;
            async move {
                let asked = ask(self, peer, &[], request, |_| async {});
                match tokio::time::timeout(TELL_TIMEOUT, asked).await {
                    Ok(Ok(Reply::Rerouted { .. })) => true,
                    other => {
                        debug!(%peer, ?other, "a node did not take the move");
                        false
                    }
                }
            }
        });
        let told = join_all(asks).await.into_iter().filter(|ok| *ok).count();
        // This node's own ledger, if the service was deployed from here.
        self.relocate_in_ledger(&spec.id, to, host, addrs).await;
        told
    }

    /// Whether `from` may say where `id` runs now: the service's owner, or the host that runs
    /// it now as this node knows it (its route here, or its place in this node's ledger when
    /// the service was deployed from here). A node that has neither for the instance has
    /// nothing a `Moved` could change, and takes it. A holder of the service's record that
    /// shows the owner's delegation naming it may too (it re-placed the instance for a dead
    /// owner: [`crate::heal::takeover`]).
    pub(crate) fn may_say_moved(
        &self,
        from: PeerId,
        id: &InstanceId,
        delegation: Option<&Delegation>,
    ) -> Result<(), String> {
        let me = self.deployer.overlay.peer_id();
        let route = match self.deployer.routes.get(id) {
            Some(Route::Remote { peer }) => Some(peer),
            Some(Route::Local { .. }) => Some(me),
            None => None,
        };
        let placed = self.ledger().and_then(|l| {
            l.locate(Some(&id.service), &id.task, id.replica)
                .into_iter()
                .next()
                .map(|(_, p)| p.peer)
        });
        if route.is_none() && placed.is_none() {
            return Ok(());
        }
        // The ledger's service was deployed from here: this node is its owner.
        let owner = match placed {
            Some(_) => Some(me),
            None => self.deployer.instances.owner_of(&id.service),
        };
        let hosts: Vec<PeerId> = route.into_iter().chain(placed).collect();
        check_delegated(
            from,
            me,
            "reroute",
            id,
            &id.service,
            owner,
            &hosts,
            delegation,
        )
    }

    /// Hears that an instance now runs on `peer` (whose addresses the overlay keeps: this node
    /// may never have met it).
    pub(crate) async fn moved(
        &self,
        id: &InstanceId,
        to: PeerId,
        host: &str,
        addrs: Vec<Multiaddr>,
    ) -> Reply {
        let overlay = &self.deployer.overlay;
        let routes = &self.deployer.routes;
        let _ = overlay.add_addresses(to, addrs.clone()).await;
        if !addrs.is_empty() {
            routes.set_host_addrs(to, addrs.clone());
        }
        let mut changed = 0;
        if to != overlay.peer_id() {
            if let Some(Route::Remote { peer: old }) = routes.get(id) {
                if old != to {
                    routes.set(id.clone(), Route::Remote { peer: to });
                    changed = 1;
                }
            }
        }
        self.relocate_in_ledger(id, to, host, &addrs).await;
        Reply::Rerouted { routes: changed }
    }

    /// Records the move in this node's ledger, if the service was deployed from here.
    async fn relocate_in_ledger(
        &self,
        id: &InstanceId,
        peer: PeerId,
        host: &str,
        addrs: &[Multiaddr],
    ) {
        let Some(ledger) = self.ledger() else {
            return;
        };
        let to = Placed {
            task: id.task.clone(),
            replica: id.replica,
            host: host.to_string(),
            peer,
            addrs: addrs.to_vec(),
            // The ledger counts the new copy ([`crate::deploy::ledger::Ledger::relocate`]).
            generation: Default::default(),
        };
        if let Err(e) = ledger.relocate(&id.service, &id.task, id.replica, to).await {
            tracing::warn!(error = %e, "cannot record a move in the ledger");
        }
    }
}
