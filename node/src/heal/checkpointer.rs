//! The host side of periodic checkpoints: every instance running here whose spec asks for
//! them (`checkpoint_every_s`, `checkpoint = "app"`) has its state captured every period, the
//! way a move captures it (`CHECKPOINT` on its port), and sent to the service's owner as a
//! `Checkpointed` request of the deploy protocol ([`super::checkpoints`] keeps it there). When
//! the owner is this node, the request goes straight to its own deployer.
//!
//! Bounded: at most one capture (and send) in flight per instance, each bounded in time; a
//! state over [`MAX_CHECKPOINT`] is not sent; a failed capture or send is logged and tried
//! again the next period. Which instances are due is [`Schedule`]'s (no I/O, no clock of its
//! own); this is its I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use brume_migration::app::{self as app, CHECKPOINT_TIMEOUT};
use brume_tunnel::InstanceId;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::checkpoints::{now_unix_ms, MAX_CHECKPOINT};
use crate::deploy::client::ask;
use crate::deploy::deployer::Deployer;
use crate::deploy::wire::{CheckpointMode, Generation, Reply, Request};

/// How often the table is looked at (periods are whole seconds).
const TICK: Duration = Duration::from_millis(250);

/// How long the owner is given to take one checkpoint.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// One instance that asks for checkpoints, as the table shows it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub id: InstanceId,
    pub generation: Generation,
    pub port: u16,
}

/// When each instance is next due, and which have a capture in flight.
#[derive(Debug, Default)]
pub struct Schedule {
    next: BTreeMap<(InstanceId, Generation), Instant>,
    in_flight: BTreeSet<(InstanceId, Generation)>,
}

impl Schedule {
    /// Of the instances running now (with their periods), those to capture at `now`; each is
    /// then in flight until [`Schedule::done`]. The first capture of an instance is one period
    /// after it is first seen.
    pub fn due(&mut self, running: &[(Due, Duration)], now: Instant) -> Vec<Due> {
        let keys: BTreeSet<_> = running
            .iter()
            .map(|(d, _)| (d.id.clone(), d.generation))
            .collect();
        self.next.retain(|k, _| keys.contains(k));
        let mut out = Vec::new();
        for (d, period) in running {
            let key = (d.id.clone(), d.generation);
            let next = *self.next.entry(key.clone()).or_insert(now + *period);
            if now >= next && !self.in_flight.contains(&key) {
                self.next.insert(key.clone(), now + *period);
                self.in_flight.insert(key);
                out.push(d.clone());
            }
        }
        out
    }

    /// The capture of `id` at `generation` ended (either way).
    pub fn done(&mut self, id: &InstanceId, generation: Generation) {
        self.in_flight.remove(&(id.clone(), generation));
    }
}

/// Runs until the task is aborted.
pub async fn run(deployer: Arc<Deployer>) {
    let mut schedule = Schedule::default();
    let (done_tx, mut done) = mpsc::channel::<(InstanceId, Generation)>(64);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some((id, g)) = done.recv() => {
                schedule.done(&id, g);
                continue;
            }
        }
        let running: Vec<(Due, Duration, u64, Option<brume_overlay::PeerId>)> = deployer
            .instances
            .lock()
            .values()
            .filter(|i| i.spec.checkpoint == CheckpointMode::App)
            .filter_map(|i| {
                let every = i.spec.checkpoint_every_s?;
                let due = Due {
                    id: i.spec.id.clone(),
                    generation: i.spec.generation,
                    port: i.port,
                };
                let period = Duration::from_secs(u64::from(every.max(1)));
                Some((due, period, i.spec.epoch, i.spec.initiator))
            })
            .collect();
        let table: Vec<(Due, Duration)> =
            running.iter().map(|(d, p, _, _)| (d.clone(), *p)).collect();
        for d in schedule.due(&table, Instant::now()) {
            let Some((_, _, epoch, owner)) = running.iter().find(|r| r.0 == d) else {
                continue;
            };
            let (epoch, owner) = (*epoch, *owner);
            let (deployer, done_tx) = (deployer.clone(), done_tx.clone());
            tokio::spawn(async move {
                if let Some(owner) = owner {
                    checkpoint_one(&deployer, &d, epoch, owner).await;
                }
                let _ = done_tx.send((d.id, d.generation)).await;
            });
        }
    }
}

/// Captures one instance's state and sends it to its owner; failures are logged.
async fn checkpoint_one(deployer: &Deployer, d: &Due, epoch: u64, owner: brume_overlay::PeerId) {
    let seq = now_unix_ms();
    let state = match app::capture(d.port, CHECKPOINT_TIMEOUT).await {
        Ok(s) => s,
        Err(e) => {
            warn!(instance = %d.id, "periodic checkpoint failed: {e}; trying again next period");
            return;
        }
    };
    if state.len() > MAX_CHECKPOINT {
        warn!(instance = %d.id, bytes = state.len(),
            "periodic checkpoint not sent: larger than the {MAX_CHECKPOINT} bytes kept");
        return;
    }
    let bytes = state.len();
    let req = Request::Checkpointed {
        instance: d.id.clone(),
        generation: d.generation,
        epoch,
        seq,
        state,
    };
    let sent =
        tokio::time::timeout(SEND_TIMEOUT, ask(deployer, owner, &[], &req, |_| async {})).await;
    match sent {
        Ok(Ok(Reply::Taken)) => {
            debug!(instance = %d.id, bytes, "periodic checkpoint kept by the owner")
        }
        Ok(Ok(Reply::Refused { reason })) => {
            warn!(instance = %d.id, "the owner refused the periodic checkpoint: {reason}")
        }
        Ok(Ok(other)) => warn!(instance = %d.id, "the owner answered {other:?} to a checkpoint"),
        Ok(Err(e)) => warn!(instance = %d.id, "cannot send the periodic checkpoint: {e:#}"),
        Err(_) => warn!(instance = %d.id, "the owner did not take the checkpoint in time"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(replica: u32, generation: u64) -> Due {
        Due {
            id: InstanceId::new("web", "db", replica),
            generation: Generation(generation),
            port: 1000 + replica as u16,
        }
    }

    #[test]
    fn one_capture_per_period_and_none_while_one_is_in_flight() {
        let mut s = Schedule::default();
        let t0 = Instant::now();
        let p = Duration::from_secs(1);
        let table = vec![(due(0, 0), p)];
        assert!(s.due(&table, t0).is_empty(), "first one a period after");
        assert_eq!(s.due(&table, t0 + p), vec![due(0, 0)]);
        // Still in flight a period later: not started again.
        assert!(s.due(&table, t0 + 3 * p).is_empty());
        s.done(&due(0, 0).id, Generation(0));
        assert_eq!(s.due(&table, t0 + 3 * p), vec![due(0, 0)]);
        s.done(&due(0, 0).id, Generation(0));
        assert!(s.due(&table, t0 + 3 * p + p / 2).is_empty());
        // A new generation is a new instance; the old one is forgotten.
        let table = vec![(due(0, 1), p)];
        assert!(s.due(&table, t0 + 4 * p).is_empty());
        assert_eq!(s.next.len(), 1);
    }
}
