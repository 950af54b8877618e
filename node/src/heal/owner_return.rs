//! An owner back from the dead (restarted) or from a freeze or a partition: what the holders
//! of its service records did meanwhile ([`super::replicator`]) is taken into its ledger, so
//! that exactly one copy of each instance runs.

use std::collections::{BTreeMap, BTreeSet};

use brume_overlay::{Multiaddr, PeerId};
use brume_tunnel::InstanceId;
use tracing::warn;

use super::retire::Stale;
use super::retire_book::RetireBook;
use crate::deploy::deployer::Deployer;
use crate::deploy::initiator::Initiator;
use crate::deploy::ledger::Placed;
use crate::deploy::wire::{Reply, Request};

/// How long a holder is given to answer.
const ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Asks the holders named in the ledger (but those in `skip`) what they did while this node
/// was away (dead, frozen or cut off), and takes their newer placements (see the module's
/// doc): on start before the healer, and by the healer before it re-places anything. The old
/// copies go to `stale`. Which services learned something.
pub async fn learn_from_holders(
    initiator: &Initiator,
    deployer: &Deployer,
    stale: &RetireBook,
    skip: &BTreeSet<PeerId>,
) -> Vec<String> {
    let me = initiator.overlay().peer_id();
    let mut learned = Vec::new();
    let ledger = initiator.ledger().all();
    // Every holder once, all at once (a dead one costs one timeout, not one per service).
    let holders: BTreeMap<PeerId, Vec<Multiaddr>> = ledger
        .values()
        .flat_map(|e| e.holders.iter().cloned())
        .filter(|(p, _)| !skip.contains(p) && *p != me)
        .collect();
    let asks = holders.iter().map(|(&peer, addrs)| async move {
        let asked = initiator.ask_host(peer, addrs, &Request::HeldRecords);
        match tokio::time::timeout(ASK_TIMEOUT, asked).await {
            Ok(Ok(Reply::Records(records))) => (peer, records),
            _ => (peer, Vec::new()),
        }
    });
    let answers = futures::future::join_all(asks).await;
    for (service, entry) in ledger {
        let mut newest: BTreeMap<(String, u32), Placed> = BTreeMap::new();
        for (peer, records) in &answers {
            for r in records.iter().cloned() {
                let fits = r.service == service && r.epoch == entry.epoch && r.owner == me;
                if !fits || r.check(*peer, *peer).is_err() {
                    continue;
                }
                for p in r.instances {
                    let key = (p.task.clone(), p.replica);
                    if newest.get(&key).is_none_or(|q| q.generation < p.generation) {
                        newest.insert(key, p);
                    }
                }
            }
        }
        for old in &entry.instances {
            let Some(new) = newest.get(&(old.task.clone(), old.replica)) else {
                continue;
            };
            if new.generation <= old.generation {
                continue;
            }
            let relocated = initiator
                .ledger()
                .relocate(&service, &old.task, old.replica, new.clone())
                .await;
            if let Err(e) = relocated {
                warn!(%service, "cannot record a holder's re-placement: {e:#}");
                continue;
            }
            let id = InstanceId::new(&service, &old.task, old.replica);
            warn!(instance = %id, from = %old.host, to = %new.host, generation = %new.generation,
                "a holder of the service record placed this instance again while this node was away");
            if !learned.contains(&service) {
                learned.push(service.clone());
            }
            if old.peer == me {
                // This node's restart started its old copy again: the holder's copy wins.
                let _ = deployer.remove_one(me, &id, entry.epoch, None, None).await;
            } else {
                stale.record(Stale {
                    instance: id,
                    epoch: entry.epoch,
                    generation: old.generation,
                    peer: old.peer,
                    host: old.host.clone(),
                    addrs: old.addrs.clone(),
                });
            }
        }
    }
    learned
}
