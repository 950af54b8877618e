//! A deploy's all-or-nothing rule, as a state machine with no I/O: which instances ran, and
//! whether the service is recorded or stopped again everywhere.
//!
//! The initiator asks every host at once and hands each answer to [`Rollout::report`]. Once
//! every instance has answered, the rollout decides: all running, [`Decision::Record`] (the
//! ledger entry to write); any refused or unreachable, [`Decision::RollBack`] with every host
//! asked, refused and silent ones included (a reply lost on the way may hide a task that
//! started, and a refusal may have come after a partial start). The initiator tells those hosts
//! to stop that epoch and hands their answers to [`RollBack::finish`], which says what the user
//! is told: which instances failed and why, which were stopped again, and which hosts could not
//! be reached (they refuse the stale epoch later). Tested without daemons below; the shell is
//! `Initiator::deploy`.

use std::collections::BTreeSet;

use brume_overlay::PeerId;

use super::wire::InstanceView;

/// How one instance's deploy ended on its host.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Running(InstanceView),
    /// The host answered no: nothing of the instance is left there.
    Refused(String),
    /// No answer (unreachable, or the reply was lost): the instance may or may not run.
    Unreachable(String),
}

/// One instance of the deploy: where it was sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    pub task: String,
    pub replica: u32,
    pub peer: PeerId,
    /// The host's name as the user reads it.
    pub host: String,
}

/// The instances of one deploy and what each host answered so far.
#[derive(Debug)]
pub struct Rollout {
    service: String,
    slots: Vec<Slot>,
    outcomes: Vec<Option<Outcome>>,
}

/// What the initiator does once every host answered.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Every instance runs: record them (in slot order).
    Record(Vec<InstanceView>),
    /// Tell each of these hosts to stop this epoch of the service, then [`RollBack::finish`].
    RollBack(RollBack),
}

/// A deploy being undone.
#[derive(Debug, PartialEq)]
pub struct RollBack {
    service: String,
    /// Every host asked, once each.
    pub hosts: Vec<PeerId>,
    failures: Vec<String>,
    total: usize,
    /// The slots that had started (they are stopped again).
    started: Vec<usize>,
}

/// How a rolled-back deploy ends.
#[derive(Debug, PartialEq)]
pub struct RolledBack {
    /// What went wrong, for the user.
    pub message: String,
    /// The slots (indices) that ran and were stopped again.
    pub stopped: Vec<usize>,
}

impl Rollout {
    pub fn new(service: impl Into<String>, slots: Vec<Slot>) -> Self {
        let outcomes = vec![None; slots.len()];
        Rollout {
            service: service.into(),
            slots,
            outcomes,
        }
    }

    /// Hands over slot `index`'s outcome; once every slot has one, the decision. A second
    /// report for a slot is ignored (the first answer stands).
    pub fn report(&mut self, index: usize, outcome: Outcome) -> Option<Decision> {
        if let Some(slot @ None) = self.outcomes.get_mut(index) {
            *slot = Some(outcome);
        }
        if self.outcomes.iter().any(Option::is_none) {
            return None;
        }
        Some(self.decide())
    }

    fn decide(&self) -> Decision {
        let mut failures = Vec::new();
        let mut started = Vec::new();
        let mut views = Vec::new();
        for (i, (slot, outcome)) in self.slots.iter().zip(&self.outcomes).enumerate() {
            let what = format!("{}#{} on {}", slot.task, slot.replica, slot.host);
            match outcome {
                Some(Outcome::Running(v)) => {
                    started.push(i);
                    views.push(v.clone());
                }
                Some(Outcome::Refused(why)) => failures.push(format!("{what}: {why}")),
                Some(Outcome::Unreachable(why)) => {
                    failures.push(format!("{what}: no answer ({why})"))
                }
                None => {}
            }
        }
        if failures.is_empty() {
            return Decision::Record(views);
        }
        let mut seen = BTreeSet::new();
        let hosts = self
            .slots
            .iter()
            .map(|s| s.peer)
            .filter(|p| seen.insert(*p))
            .collect();
        Decision::RollBack(RollBack {
            service: self.service.clone(),
            hosts,
            failures,
            total: self.slots.len(),
            started,
        })
    }
}

impl RollBack {
    /// The end of the rollback, given the hosts that could not be told to stop.
    pub fn finish(self, unreachable: &[PeerId]) -> RolledBack {
        let mut message = format!(
            "{} of {} instance(s) of {} failed, so every instance was stopped again: {}",
            self.failures.len(),
            self.total,
            self.service,
            self.failures.join("; ")
        );
        if !unreachable.is_empty() {
            let names: Vec<String> = unreachable.iter().map(PeerId::to_string).collect();
            message += &format!(
                " (could not reach {} to roll back; it will refuse this stale epoch later)",
                names.join(", ")
            );
        }
        RolledBack {
            message,
            stopped: self.started,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The peer id of the node whose key is `seed` repeated (tests are deterministic).
    fn peer(seed: u8) -> PeerId {
        brume_overlay::Keypair::ed25519_from_bytes([seed; 32])
            .expect("32 bytes are an ed25519 key")
            .public()
            .to_peer_id()
    }

    fn view(task: &str) -> InstanceView {
        InstanceView {
            service: "svc".into(),
            epoch: 7,
            task: task.into(),
            replica: 0,
            name: format!("brume-svc-{task}"),
            engine: "process".into(),
            port: 20_001,
            state: "running".into(),
            cpu_millis: 100,
            memory_mb: 64,
        }
    }

    /// Three instances: a and b on host 1, c on host 2.
    fn rollout() -> (Rollout, PeerId, PeerId) {
        let (h1, h2) = (peer(1), peer(2));
        let slot = |task: &str, peer| Slot {
            task: task.into(),
            replica: 0,
            peer,
            host: format!("host-{task}"),
        };
        let r = Rollout::new("svc", vec![slot("a", h1), slot("b", h1), slot("c", h2)]);
        (r, h1, h2)
    }

    #[test]
    fn nothing_is_decided_until_every_host_answered() {
        let (mut r, _, _) = rollout();
        assert_eq!(r.report(0, Outcome::Running(view("a"))), None);
        assert_eq!(r.report(2, Outcome::Running(view("c"))), None);
        // A repeated report does not count as another slot's.
        assert_eq!(r.report(2, Outcome::Refused("late".into())), None);
        assert_eq!(
            r.report(1, Outcome::Running(view("b"))),
            Some(Decision::Record(vec![view("a"), view("b"), view("c")]))
        );
    }

    #[test]
    fn a_refusing_host_rolls_back_every_host_once() {
        let (mut r, h1, h2) = rollout();
        r.report(0, Outcome::Running(view("a")));
        r.report(1, Outcome::Running(view("b")));
        let Some(Decision::RollBack(back)) = r.report(2, Outcome::Refused("no room".into())) else {
            panic!("a refusal must roll back");
        };
        assert_eq!(back.hosts, vec![h1, h2], "the refusing host is told too");
        let end = back.finish(&[]);
        assert_eq!(end.stopped, vec![0, 1]);
        assert!(
            end.message.contains("1 of 3 instance(s) of svc failed"),
            "{}",
            end.message
        );
        assert!(
            end.message.contains("c#0 on host-c: no room"),
            "{}",
            end.message
        );
    }

    #[test]
    fn an_unreachable_host_or_a_lost_reply_counts_as_a_failure_and_is_stopped_too() {
        let (mut r, h1, h2) = rollout();
        r.report(2, Outcome::Running(view("c")));
        r.report(0, Outcome::Unreachable("connection refused".into()));
        let Some(Decision::RollBack(back)) =
            r.report(1, Outcome::Unreachable("stream reset".into()))
        else {
            panic!("silence must roll back");
        };
        // Host 1 may have started a or b before its answer was lost: it is told to stop.
        assert_eq!(back.hosts, vec![h1, h2]);
        let end = back.finish(&[]);
        assert_eq!(end.stopped, vec![2]);
        assert!(end.message.contains("2 of 3"), "{}", end.message);
        assert!(
            end.message.contains("no answer (stream reset)"),
            "{}",
            end.message
        );
    }

    #[test]
    fn hosts_the_rollback_cannot_reach_are_named() {
        let (mut r, h1, _) = rollout();
        r.report(0, Outcome::Refused("bad image".into()));
        r.report(1, Outcome::Running(view("b")));
        let Some(Decision::RollBack(back)) = r.report(2, Outcome::Running(view("c"))) else {
            panic!("a refusal must roll back");
        };
        let end = back.finish(&[h1]);
        assert_eq!(end.stopped, vec![1, 2]);
        assert!(
            end.message
                .contains(&format!("could not reach {h1} to roll back")),
            "{}",
            end.message
        );
    }
}
