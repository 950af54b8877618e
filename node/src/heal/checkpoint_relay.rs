//! The owner passes each instance's latest checkpoint on to the holders of its service's
//! record ([`super::record_replicas`]): if the owner dies, and then the instance's host, the
//! holder that re-places the instance ([`super::replicator`]) starts it from that checkpoint
//! instead of from nothing. What is lost is then what the task did since the last checkpoint
//! the owner passed on, as when the owner re-places it itself.
//!
//! One send per kept checkpoint and holder, one at a time, each bounded by [`ASK_TIMEOUT`]; a
//! holder that does not take it is logged at debug level and gets the next one.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::debug;

use super::checkpoints::Relayed;
use crate::deploy::client::ask;
use crate::deploy::deployer::Deployer;
use crate::deploy::ledger::Ledger;
use crate::deploy::wire::{Reply, Request};

/// How long one holder may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// How many checkpoints may wait to be passed on before new ones are dropped.
pub const BACKLOG: usize = 64;

/// Passes every checkpoint that arrives on `kept` on to the holders the ledger names for its
/// service (of its epoch), until the channel closes.
pub async fn run(deployer: Arc<Deployer>, ledger: Arc<Ledger>, mut kept: mpsc::Receiver<Relayed>) {
    while let Some((instance, c)) = kept.recv().await {
        let Some(entry) = ledger.get(&instance.service).filter(|e| e.epoch == c.epoch) else {
            continue;
        };
        let req = Request::HeldCheckpoint {
            instance: instance.clone(),
            generation: c.generation,
            epoch: c.epoch,
            seq: c.seq,
            state: c.state,
        };
        for (peer, addrs) in &entry.holders {
            let asked = ask(&deployer, *peer, addrs, &req, |_| async {});
            match tokio::time::timeout(ASK_TIMEOUT, asked).await {
                Ok(Ok(Reply::Taken)) => {}
                other => debug!(%peer, %instance, ?other, "a holder did not take the checkpoint"),
            }
        }
    }
}
