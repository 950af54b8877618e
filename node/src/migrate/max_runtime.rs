//! A task's `max_runtime_s`: the longest one instance runs on one host before the host moves it
//! on (a borrowed device's lease, a duty cycle, a gateway that must be left free at night).
//!
//! A deadline is what the predictor is for: starting the move at the deadline would leave the
//! instance running here past it by however long the move takes, and starting it early wastes
//! the time the task could have run here. So, as `brume drain --deadline` does, each move starts
//! at the deadline minus the move's predicted duration minus the node's margin
//! (`drain_margin_ms`), re-predicted every tick, since the task's memory and the machine's load
//! change while it runs. The clock of an instance starts when this node first sees it (its
//! start, or its arrival by a move: a new generation is a new instance; a node restart starts
//! the clocks of the instances it adopts again).
//!
//! A move that fails (no node in reach has room, the target refused) leaves the instance
//! running here, says why, and is tried again [`RETRY`] later: the limit is a time to move by,
//! not a time to kill by. Which instances are due is [`Schedule`]'s (no I/O, no clock of its
//! own); [`run`] is its I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use brume_control::MigrateRequest;
use brume_tunnel::InstanceId;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::control;
use super::mover::Mover;
use crate::deploy::wire::Generation;

/// How often the table is looked at.
const TICK: Duration = Duration::from_millis(500);

/// How long after a failed move the next try starts.
pub const RETRY: Duration = Duration::from_secs(30);

/// One instance with a maximum runtime, as the table shows it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    pub id: InstanceId,
    pub generation: Generation,
    /// Its `max_runtime_s`.
    pub limit: Duration,
}

/// A move [`Schedule::due`] says must start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub id: InstanceId,
    pub generation: Generation,
    /// How long the instance had left here when its move was started.
    pub left: Duration,
}

/// When each instance was first seen, which have a move under way, and when failed ones may
/// try again.
#[derive(Debug, Default)]
pub struct Schedule {
    seen: BTreeMap<(InstanceId, Generation), Instant>,
    moving: BTreeSet<(InstanceId, Generation)>,
    retry_at: BTreeMap<(InstanceId, Generation), Instant>,
}

impl Schedule {
    /// Of the instances running now, those whose move must start at `now`: the ones whose
    /// deadline (first seen + limit) is no further than their predicted move (`estimate`) plus
    /// `margin`. Each is then under way until [`Schedule::done`]. Instances gone from the table
    /// are forgotten.
    pub fn due(
        &mut self,
        running: &[Limited],
        estimate: impl Fn(&InstanceId) -> Duration,
        margin: Duration,
        now: Instant,
    ) -> Vec<Due> {
        let keys: BTreeSet<_> = running
            .iter()
            .map(|l| (l.id.clone(), l.generation))
            .collect();
        self.seen.retain(|k, _| keys.contains(k));
        self.moving.retain(|k| keys.contains(k));
        self.retry_at.retain(|k, _| keys.contains(k));
        let mut out = Vec::new();
        for l in running {
            let key = (l.id.clone(), l.generation);
            let seen = *self.seen.entry(key.clone()).or_insert(now);
            if self.moving.contains(&key) || self.retry_at.get(&key).is_some_and(|t| now < *t) {
                continue;
            }
            let deadline = seen + l.limit;
            let start = deadline
                .checked_sub(estimate(&l.id) + margin)
                .unwrap_or(seen);
            if now >= start {
                self.moving.insert(key);
                out.push(Due {
                    id: l.id.clone(),
                    generation: l.generation,
                    left: deadline.saturating_duration_since(now),
                });
            }
        }
        out
    }

    /// The move of `id` at `generation` ended: moved (the instance leaves the table at its next
    /// look) or failed (tried again [`RETRY`] after `now`).
    pub fn done(&mut self, id: &InstanceId, generation: Generation, moved: bool, now: Instant) {
        let key = (id.clone(), generation);
        self.moving.remove(&key);
        if !moved {
            self.retry_at.insert(key, now + RETRY);
        }
    }
}

/// Watches the instances here that have a maximum runtime and moves each on in time, within
/// the map budget `budget` (as `brume drain --budget`), keeping `margin` to spare.
pub async fn run(mover: Arc<Mover>, budget: Duration, margin: Duration) {
    let mut schedule = Schedule::default();
    let (done_tx, mut done) = mpsc::channel::<(InstanceId, Generation, bool)>(64);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some((id, g, moved)) = done.recv() => {
                schedule.done(&id, g, moved, Instant::now());
                continue;
            }
        }
        let running: Vec<Limited> = mover
            .deployer
            .instances
            .lock()
            .values()
            .filter_map(|i| {
                Some(Limited {
                    id: i.spec.id.clone(),
                    generation: i.spec.generation,
                    limit: Duration::from_secs(u64::from(i.spec.max_runtime_s?)),
                })
            })
            .collect();
        if running.is_empty() {
            continue;
        }
        let estimate = |id: &InstanceId| mover.move_estimate(id, false);
        for d in schedule.due(&running, estimate, margin, Instant::now()) {
            let predicted = mover.move_estimate(&d.id, false);
            info!(instance = %d.id, left_ms = d.left.as_millis() as u64,
                  predicted_move_ms = predicted.as_millis() as u64,
                  margin_ms = margin.as_millis() as u64,
                  "max runtime: moving the instance on");
            let (mover, done_tx) = (mover.clone(), done_tx.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let req = MigrateRequest {
                    service: Some(d.id.service.clone()),
                    task: d.id.task.clone(),
                    replica: d.id.replica,
                    to: None,
                    budget_ms: budget.as_millis() as u64,
                    cold: false,
                    deadline_ms: None,
                    max_downtime_ms: None,
                    force: false,
                };
                // Progress lines have no reader here.
                let (progress, _) = mpsc::channel(1);
                let moved = match control::migrate(&mover, req, progress).await {
                    Ok(m) => {
                        let took = started.elapsed();
                        info!(instance = %d.id, to = %m.host, took_ms = took.as_millis() as u64,
                              predicted_move_ms = predicted.as_millis() as u64,
                              on_time = took <= d.left,
                              "max runtime: moved on");
                        true
                    }
                    Err(e) => {
                        warn!(instance = %d.id, retry_s = RETRY.as_secs(),
                              "max runtime: cannot move the instance on ({e:#}); it keeps running here");
                        false
                    }
                };
                let _ = done_tx.send((d.id, d.generation, moved)).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(replica: u32, generation: u64, limit_s: u64) -> Limited {
        Limited {
            id: InstanceId::new("web", "db", replica),
            generation: Generation(generation),
            limit: Duration::from_secs(limit_s),
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_move_starts_at_the_deadline_less_its_prediction_and_the_margin() {
        let mut s = Schedule::default();
        let t0 = Instant::now();
        let table = vec![limited(0, 0, 60)];
        let est = |_: &InstanceId| 10 * S;
        assert!(s.due(&table, est, 2 * S, t0).is_empty(), "first seen at t0");
        assert!(s.due(&table, est, 2 * S, t0 + 47 * S).is_empty());
        let due = s.due(&table, est, 2 * S, t0 + 48 * S);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].left, 12 * S, "60 s less the 48 s run here");
        // Under way: not started again.
        assert!(s.due(&table, est, 2 * S, t0 + 50 * S).is_empty());
    }

    #[test]
    fn a_larger_prediction_starts_the_move_earlier_and_one_past_the_limit_at_once() {
        let mut s = Schedule::default();
        let t0 = Instant::now();
        let table = vec![limited(0, 0, 60), limited(1, 0, 5)];
        let est = |id: &InstanceId| if id.replica == 0 { 30 * S } else { 20 * S };
        assert_eq!(
            s.due(&table, est, S, t0)
                .iter()
                .map(|d| d.id.replica)
                .collect::<Vec<_>>(),
            vec![1],
            "replica 1 cannot make its deadline any more: it starts at once"
        );
        assert!(s.due(&table, est, S, t0 + 28 * S).is_empty());
        assert_eq!(s.due(&table, est, S, t0 + 29 * S).len(), 1);
    }

    #[test]
    fn a_failed_move_is_tried_again_after_the_retry_and_a_new_generation_has_its_own_clock() {
        let mut s = Schedule::default();
        let t0 = Instant::now();
        let est = |_: &InstanceId| S;
        let table = vec![limited(0, 0, 10)];
        s.due(&table, est, S, t0);
        assert_eq!(s.due(&table, est, S, t0 + 8 * S).len(), 1);
        s.done(&table[0].id, Generation(0), false, t0 + 9 * S);
        assert!(s.due(&table, est, S, t0 + 9 * S + RETRY - S).is_empty());
        assert_eq!(s.due(&table, est, S, t0 + 9 * S + RETRY).len(), 1);
        // Moved away and back (a new generation): its clock starts again, the old is forgotten.
        let table = vec![limited(0, 1, 10)];
        assert!(s.due(&table, est, S, t0 + 100 * S).is_empty());
        assert_eq!(s.seen.len(), 1);
        assert!(s.moving.is_empty() && s.retry_at.is_empty());
        assert_eq!(s.due(&table, est, S, t0 + 108 * S).len(), 1);
    }
}
